; services: int 15h (memory map, A20, config table, APM, wait), int 1Ah, int 10h and int 16h.
; tests/test_bios.py feeds "ab", ESC [ A to COM1 before the run and "q" later, and checks the
; screen at 0xB8000 as well as this report.
%include "mbr.inc"
%define BUF 0x1000
    MBR_START 9

main:
    ; -- int 15h E820: the whole map, 24-byte entries -------------------------------------
    xor ebx, ebx
.e820:
    mov eax, 0xE820
    mov edx, 0x534D4150
    mov ecx, 24
    mov di, BUF
    mov dword [BUF + 20], 0
    BIOS 0x15
    jc .e820_done
    PRINT "e820: "
    HEX [BUF + 4], 8
    HEX [BUF], 8
    CHAR ' '
    HEX [BUF + 12], 8
    HEX [BUF + 8], 8
    CHAR ' '
    HEX [BUF + 16], 1
    PRINT " ext="
    HEX [BUF + 20], 1
    PRINT " ecx="
    HEX ecx, 2
    PRINT " eax="
    HEX eax, 8
    PRINT 10
    test ebx, ebx
    jnz .e820
.e820_done:
    mov eax, 0xE820
    mov edx, 0x12345678
    xor ebx, ebx
    mov ecx, 20
    BIOS 0x15
    PRINT "e820 bad signature:"
    AH_CF
    mov eax, 0xE820
    mov edx, 0x534D4150
    mov ebx, 99
    mov ecx, 20
    BIOS 0x15
    PRINT " bad index:"
    AH_CF
    mov eax, 0xE820
    mov edx, 0x534D4150
    xor ebx, ebx
    mov ecx, 20
    mov di, BUF
    BIOS 0x15
    PRINT " 20-byte ecx="
    HEX ecx, 2
    PRINT 10

    mov ax, 0xE801
    BIOS 0x15
    PRINT "e801:"
    AH_CF
    PRINT " ax="
    HEX eax, 4
    PRINT " bx="
    HEX ebx, 4
    PRINT " cx="
    HEX ecx, 4
    PRINT " dx="
    HEX edx, 4
    mov ah, 0x88
    BIOS 0x15
    PRINT " 88h: ax="
    HEX eax, 4
    PRINT 10

    mov ah, 0xC0
    BIOS 0x15
    PRINT "c0h:"
    AH_CF
    PRINT " es:bx="
    HEX es, 4
    CHAR ':'
    HEX ebx, 4
    PRINT " size="
    HEX [es:bx], 4
    PRINT " model="
    HEX [es:bx + 2], 2
    PRINT " features="
    HEX [es:bx + 5], 2
    xor ax, ax
    mov es, ax
    PRINT 10

    PRINT "a20:"
    mov ax, 0x2402
    BIOS 0x15
    PRINT " on="
    HEX eax, 2
    mov ax, 0x2400
    BIOS 0x15
    AH_CF
    mov ax, 0x2402
    BIOS 0x15
    PRINT " off="
    HEX eax, 2
    mov ax, 0x2401
    BIOS 0x15
    AH_CF
    mov ax, 0x2402
    BIOS 0x15
    PRINT " on="
    HEX eax, 2
    mov ax, 0x2403
    BIOS 0x15
    PRINT " support="
    HEX ebx, 4
    PRINT 10

    mov ax, 0x5300
    xor bx, bx
    BIOS 0x15
    PRINT "apm:"
    AH_CF
    mov ax, 0xEC00
    mov bl, 2
    BIOS 0x15
    PRINT " ec00:"
    AH_CF
    mov ah, 0x86
    mov cx, 0
    mov dx, 50000                   ; 50 ms
    BIOS 0x15
    PRINT " wait:"
    AH_CF
    mov ah, 0xC1
    BIOS 0x15
    PRINT " c1h: es="
    HEX es, 4
    xor ax, ax
    mov es, ax
    PRINT 10

    ; -- int 1Ah --------------------------------------------------------------------------
    cli                             ; no tick may land between set and read
    mov ah, 0x01
    mov cx, 0x0012
    mov dx, 0x3456
    BIOS 0x1A
    mov ah, 0x00
    BIOS 0x1A
    sti
    PRINT "1ah ticks: cx:dx="
    HEX ecx, 4
    HEX edx, 4
    PRINT " al="
    HEX eax, 2
    mov ah, 0x02
    BIOS 0x1A
    PRINT " time:"
    AH_CF
    mov si, cx
    mov di, dx
    call check_bcd
    mov ah, 0x04
    BIOS 0x1A
    PRINT " date:"
    AH_CF
    mov si, cx
    mov di, dx
    call check_bcd
    mov ax, 0xB101
    BIOS 0x1A
    PRINT " pci:"
    AH_CF
    PRINT 10

    ; -- int 10h --------------------------------------------------------------------------
    mov ah, 0x0F
    BIOS 0x10
    PRINT "10h 0f: ax="
    HEX eax, 4
    PRINT " bh="
    mov al, bh
    HEX eax, 2
    mov ax, 0x0003
    BIOS 0x10
    PRINT " 00: al="
    HEX eax, 2
    mov si, hello
.tty:
    lodsb
    test al, al
    jz .tty_done
    mov ah, 0x0E
    xor bx, bx
    BIOS 0x10
    jmp .tty
.tty_done:
    mov ah, 0x03
    xor bh, bh
    BIOS 0x10
    PRINT " cursor="
    HEX edx, 4
    PRINT " shape="
    HEX ecx, 4
    ; 13h: attribute string at row 5, column 10, cursor moved.
    mov ax, 0x1301
    mov bx, 0x001E
    mov cx, string_end - string
    mov dx, 0x050A
    mov bp, string
    BIOS 0x10
    mov ah, 0x03
    xor bh, bh
    BIOS 0x10
    PRINT " after 13h="
    HEX edx, 4
    ; 09h: three 'X' in white on blue at row 7, column 0; 0Ah: 'y' at column 1 keeps the colour.
    mov ah, 0x02
    xor bh, bh
    mov dx, 0x0700
    BIOS 0x10
    mov ax, 0x0958
    mov bx, 0x001F
    mov cx, 3
    BIOS 0x10
    mov ah, 0x02
    mov dx, 0x0701
    BIOS 0x10
    mov ax, 0x0A79
    mov cx, 1
    BIOS 0x10
    mov ah, 0x08
    xor bh, bh
    BIOS 0x10
    PRINT 10, "10h 08: ax="
    HEX eax, 4
    mov ah, 0x12
    mov bl, 0x10
    BIOS 0x10
    PRINT " 12: bx="
    HEX ebx, 4
    mov ax, 0x1A00
    BIOS 0x10
    PRINT " 1a: ax="
    HEX eax, 4
    PRINT " bx="
    HEX ebx, 4
    mov ax, 0x4F00
    mov di, BUF
    BIOS 0x10
    PRINT " 4f00: ax="
    HEX eax, 4
    PRINT 10
    ; Scroll: 20 lines through 0Eh from row 8 on: the screen scrolls up by 3 rows.
    mov ah, 0x02
    xor bh, bh
    mov dx, 0x0800
    BIOS 0x10
    mov cx, 20
    mov bl, '0'
.line:
    mov ax, 0x0E00 | 'L'
    BIOS 0x10
    mov al, bl
    mov ah, 0x0E
    BIOS 0x10
    mov ax, 0x0E0D
    BIOS 0x10
    mov ax, 0x0E0A
    BIOS 0x10
    inc bl
    loop .line

    ; -- int 16h --------------------------------------------------------------------------
    mov ah, 0x01
    BIOS 0x16
    PRINT "16h 01:"
    ZF
    PRINT " ax="
    HEX eax, 4
    mov ah, 0x00
    BIOS 0x16
    PRINT " 00: ax="
    HEX eax, 4
    mov ah, 0x10
    BIOS 0x16
    PRINT " 10: ax="
    HEX eax, 4
    mov ah, 0x10
    BIOS 0x16
    PRINT " up: ax="
    HEX eax, 4
    mov ah, 0x11
    BIOS 0x16
    PRINT " 11:"
    ZF
    mov ah, 0x02
    BIOS 0x16
    PRINT " 02: al="
    HEX eax, 2
    PRINT 10
    PRINT "16h 00 waits..."
    mov ah, 0x00
    BIOS 0x16
    PRINT " ax="
    HEX eax, 4
    PRINT 10
    PRINT "services: done", 10
    EXIT 0

; check_bcd: print " bcd" when every nibble of SI and DI is a decimal digit, else " notbcd".
check_bcd:
    push cx
    push ax
    mov cx, 4
.nibble:
    mov ax, si
    and ax, 0x0F
    cmp ax, 9
    ja .bad
    mov ax, di
    and ax, 0x0F
    cmp ax, 9
    ja .bad
    shr si, 4
    shr di, 4
    loop .nibble
    PRINT " bcd"
    pop ax
    pop cx
    ret
.bad:
    PRINT " notbcd"
    pop ax
    pop cx
    ret

hello:  db "Hi", 13, 10, 0
string: db "emu"
string_end:

    MBR_ROUTINES
    times 10 * 512 - ($ - $$) db 0
