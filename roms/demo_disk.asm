; demo_disk.asm - the bundled default guest of `emu run`: a small disk image (roms/demo.img) that
; boots the way a PC boots a hard disk. emu's BIOS (roms/bios.asm) loads sector 0 at 0000:7C00 and
; jumps there with DL = the boot drive; this MBR loads the rest of the image with int 13h
; extensions (AH=42h), reads the memory map with int 15h E820, turns A20 on with int 15h 2401h,
; then switches to 32-bit protected mode and 64-bit long mode, greets on COM1 in each mode and
; halts for good (emu exits 0).
;
; Build: scripts/build-roms (nasm -f bin; *_disk.asm sources build to *.img). tests/test_roms.py
; checks roms/demo.img is what this source builds and boots it on both backends.
;
; RAM used: 0x0600 scratch (an E820 entry, then the cpuid strings), the stack below 0x7C00 (where
; the BIOS put it), 0x7C00 this image, 0x10000-0x12FFF the long-mode page tables. Nothing uses
; paging outside long mode, iretd or x87/SSE, so the guest runs on any KVM host as well.
; A failure (no int 13h extensions, a read error) is reported and ends the run through the
; debug-exit port with status 3.

%define COM1        0x3F8
%define COM1_THR    COM1 + 0        ; transmit holding register (DLAB=0)
%define COM1_DLL    COM1 + 0        ; divisor latch low (DLAB=1)
%define COM1_IER    COM1 + 1        ; interrupt enable (DLAB=0)
%define COM1_DLM    COM1 + 1        ; divisor latch high (DLAB=1)
%define COM1_FCR    COM1 + 2
%define COM1_LCR    COM1 + 3
%define COM1_MCR    COM1 + 4
%define COM1_LSR    COM1 + 5
%define LSR_THRE    0x20
%define DEBUG_EXIT  0xF4

%define SCRATCH     0x0600
%define STACK_TOP   0x7C00
%define PML4        0x10000
%define PDPT        0x11000
%define PD          0x12000

%define SMAP        0x534D4150      ; "SMAP": the E820 signature
%define CR0_PE      0x00000001
%define CR0_PG      0x80000000
%define CR4_PAE     0x00000020
%define MSR_EFER    0xC0000080
%define EFER_LME    0x00000100
%define CPUID_LM    (1 << 29)       ; leaf 0x80000001 EDX: long mode

%define SEL_CODE32  0x08
%define SEL_DATA    0x10
%define SEL_CODE64  0x18

    org 0x7C00
    bits 16

; ---------------------------------------------------------------------------------------------
; Sector 0: greet, then load sectors 1.. right behind this one with int 13h AH=42h.
mbr:
    jmp 0x0000:.start               ; a known CS (some BIOSes enter at 07C0:0000)
.start:
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, STACK_TOP
    cld
    mov [boot_drive], dl
    call serial_init
    mov si, msg_real
    call puts16

    mov ah, 0x41                    ; extensions present? BX = 55AAh, returned as AA55h
    mov bx, 0x55AA
    mov dl, [boot_drive]
    int 0x13
    jc .no_ext
    cmp bx, 0xAA55
    jne .no_ext
    test cl, 1                      ; the packet interface (42h/43h) is offered
    jz .no_ext

    mov ah, 0x42
    mov dl, [boot_drive]
    mov si, dap
    int 0x13
    jc .read_failed
    jmp stage2

.no_ext:
    mov si, msg_no_ext
    jmp fail
.read_failed:
    mov si, msg_read_failed

; Print DS:SI and end the run with debug-exit status 3.
fail:
    call puts16
    mov al, 1                       ; status (1 << 1) | 1
    out DEBUG_EXIT, al
.halt:
    cli
    hlt
    jmp .halt

; 115200 baud (divisor 1), 8N1, FIFOs on, no interrupts: everything here polls.
serial_init:
    mov dx, COM1_IER
    xor al, al
    out dx, al
    mov dx, COM1_LCR
    mov al, 0x80                    ; DLAB=1: +0/+1 become the divisor latch
    out dx, al
    mov dx, COM1_DLL
    mov al, 1
    out dx, al
    mov dx, COM1_DLM
    xor al, al
    out dx, al
    mov dx, COM1_LCR
    mov al, 0x03                    ; 8N1, DLAB=0 again
    out dx, al
    mov dx, COM1_FCR
    mov al, 0xC7                    ; enable and clear both FIFOs
    out dx, al
    mov dx, COM1_MCR
    mov al, 0x03                    ; DTR | RTS
    out dx, al
    ret

; PUTS: putsN for the current mode (N = __BITS__): the NUL-terminated string at SI/ESI/RSI to
; COM1, waiting for THRE before each byte. Preserves every register but the flags.
%macro PUTS 0
  %if __BITS__ == 64
    %define %%ax rax
    %define %%dx rdx
    %define %%si rsi
  %else
    %define %%ax eax
    %define %%dx edx
    %define %%si esi
  %endif
puts%[__BITS__]:
    push %%ax
    push %%dx
    push %%si
%%next:
    lodsb
    test al, al
    jz %%done
    mov ah, al
    mov dx, COM1_LSR
%%wait:
    in al, dx
    test al, LSR_THRE
    jz %%wait
    mov al, ah
    mov dx, COM1_THR
    out dx, al
    jmp %%next
%%done:
    pop %%si
    pop %%dx
    pop %%ax
    ret
%endmacro

    PUTS

boot_drive: db 0
; int 13h AH=42h disk address packet: the rest of the image to 0000:7E00.
dap:
    db 16, 0
    dw STAGE2_SECTORS
    dw stage2, 0
    dq 1

msg_real:        db "emu demo guest: hello from real mode", 13, 10, 0
msg_no_ext:      db "emu demo guest: the BIOS has no int 13h extensions", 13, 10, 0
msg_read_failed: db "emu demo guest: int 13h AH=42h failed", 13, 10, 0

    times 510 - ($ - $$) db 0
    dw 0xAA55

; ---------------------------------------------------------------------------------------------
; Sectors 1..: the rest of real mode, then protected and long mode.
stage2:
    mov si, msg_loaded
    call puts16
    mov eax, STAGE2_SECTORS
    call putdec16
    mov si, msg_loaded_from
    call puts16
    movzx eax, byte [boot_drive]
    mov cl, 2
    call puthex16
    mov si, msg_loaded_end
    call puts16

    ; The memory map, one 24-byte entry per call; EBX = 0 after the last one.
    mov si, msg_e820
    call puts16
    xor ebx, ebx
    xor ebp, ebp                    ; usable KiB, summed
.e820:
    mov eax, 0xE820
    mov edx, SMAP
    mov ecx, 24
    mov di, SCRATCH
    mov dword [SCRATCH + 20], 1     ; ACPI 3.0 attributes: "valid" unless the BIOS says otherwise
    int 0x15
    jc .e820_done
    cmp eax, SMAP
    jne .e820_done
    push ebx
    call show_e820_entry
    pop ebx
    test ebx, ebx
    jnz .e820
.e820_done:
    mov si, msg_usable
    call puts16
    mov eax, ebp
    call putdec16
    mov si, msg_kib
    call puts16

    ; A20 through the BIOS (int 15h 2401h); without it, odd MiBs alias even ones.
    mov ax, 0x2401
    int 0x15
    jc .a20_failed
    mov si, msg_a20
    call puts16
    jmp .a20_done
.a20_failed:
    mov si, msg_a20_failed
    call puts16
.a20_done:

    ; Long mode must exist before we go there.
    mov eax, 0x80000000
    cpuid
    cmp eax, 0x80000001
    jb .no_long_mode
    mov eax, 0x80000001
    cpuid
    test edx, CPUID_LM
    jnz .protected
.no_long_mode:
    mov si, msg_no_lm
    jmp fail

    ; Protected mode: no more BIOS calls, so interrupts stay off from here on.
.protected:
    cli
    o32 lgdt [gdtr]
    mov eax, cr0
    or eax, CR0_PE
    mov cr0, eax
    jmp dword SEL_CODE32:pm32

; SCRATCH holds an E820 entry: print "  BASE-LAST type" and add usable entries to EBP (KiB).
show_e820_entry:
    mov si, msg_indent
    call puts16
    mov eax, [SCRATCH + 4]
    mov cl, 8
    call puthex16
    mov eax, [SCRATCH]
    call puthex16
    mov al, '-'
    call putc16
    ; last byte = base + length - 1, in two 32-bit halves
    mov eax, [SCRATCH]
    mov edx, [SCRATCH + 4]
    add eax, [SCRATCH + 8]
    adc edx, [SCRATCH + 12]
    sub eax, 1
    sbb edx, 0
    push eax
    mov eax, edx
    call puthex16
    pop eax
    call puthex16
    mov al, ' '
    call putc16
    mov eax, [SCRATCH + 16]
    mov si, type_unknown
    cmp eax, 1
    jb .named
    cmp eax, 5
    ja .named
    je .bad
    cmp eax, 1
    jne .not_usable
    mov edx, [SCRATCH + 8]          ; usable: add length >> 10 (fits 32 bits below 4 TiB)
    mov ecx, [SCRATCH + 12]
    shrd edx, ecx, 10
    add ebp, edx
.not_usable:
    movzx si, al
    shl si, 1
    mov si, [type_names + si - 2]
    jmp .named
.bad:
    mov si, type_bad
.named:
    call puts16
    cmp si, type_unknown
    jne .newline
    mov cl, 2
    call puthex16                   ; "type 0x..": the number itself
.newline:
    mov si, msg_crlf
    jmp puts16

; AL to COM1.
putc16:
    push si
    mov [SCRATCH + 0x80], al
    mov byte [SCRATCH + 0x81], 0
    mov si, SCRATCH + 0x80
    call puts16
    pop si
    ret

; EAX as CL hex digits (CL <= 8).
puthex16:
    push eax
    push cx
    push bx
    movzx bx, cl
    mov cl, 8
    sub cl, bl
    shl cl, 2
    shl eax, cl                     ; the wanted digits to the top
.digit:
    rol eax, 4
    push ax
    and al, 0x0F
    add al, '0'
    cmp al, '9'
    jbe .emit
    add al, 'a' - '0' - 10
.emit:
    call putc16
    pop ax
    dec bx
    jnz .digit
    pop bx
    pop cx
    pop eax
    ret

; EAX in decimal.
putdec16:
    push eax
    push ecx
    push edx
    push di
    mov di, SCRATCH + 0x9F
    mov byte [di], 0
    mov ecx, 10
.digit:
    xor edx, edx
    div ecx
    add dl, '0'
    dec di
    mov [di], dl
    test eax, eax
    jnz .digit
    push si
    mov si, di
    call puts16
    pop si
    pop di
    pop edx
    pop ecx
    pop eax
    ret

; ---------------------------------------------------------------------------------------------
; 32-bit protected mode, flat 4 GiB segments.
    bits 32
pm32:
    mov ax, SEL_DATA
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax
    mov esp, STACK_TOP
    mov esi, msg_pm
    call puts32

    ; The first GiB identity-mapped with 2 MiB pages: PML4[0] -> PDPT, PDPT[0] -> PD, 512 PD
    ; entries with PS set. RAM is not zeroed at power-on, so the tables are cleared first.
    mov edi, PML4
    xor eax, eax
    mov ecx, 3 * 4096 / 4
    rep stosd
    mov dword [PML4], PDPT | 0x03   ; present | writable
    mov dword [PDPT], PD | 0x03
    mov edi, PD
    mov eax, 0x83                   ; present | writable | PS, physical 0
    mov ecx, 512
.map:
    mov [edi], eax
    add eax, 0x200000
    add edi, 8
    loop .map

    ; PAE, EFER.LME, then CR0.PG: paging comes on together with long mode (compatibility mode
    ; until the far jump loads the 64-bit code segment).
    mov eax, cr4
    or eax, CR4_PAE
    mov cr4, eax
    mov eax, PML4
    mov cr3, eax
    mov ecx, MSR_EFER
    rdmsr
    or eax, EFER_LME
    wrmsr
    mov eax, cr0
    or eax, CR0_PG
    mov cr0, eax
    jmp SEL_CODE64:lm64

    PUTS

; ---------------------------------------------------------------------------------------------
; 64-bit long mode.
    bits 64
lm64:
    mov ax, SEL_DATA
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax
    mov rsp, STACK_TOP
    lea rsi, [rel msg_long]
    call puts64

    ; The CPU vendor (leaf 0: EBX, EDX, ECX) and the brand string (0x80000002-4) when there is one.
    lea rsi, [rel msg_vendor]
    call puts64
    xor eax, eax
    cpuid
    mov edi, SCRATCH
    mov [rdi], ebx
    mov [rdi + 4], edx
    mov [rdi + 8], ecx
    mov byte [rdi + 12], 0
    mov rsi, rdi
    call puts64
    mov eax, 0x80000000
    cpuid
    cmp eax, 0x80000004
    jb .no_brand
    mov edi, SCRATCH
    mov r8d, 0x80000002
.brand_leaf:
    mov eax, r8d
    cpuid
    stosd
    mov eax, ebx
    stosd
    mov eax, ecx
    stosd
    mov eax, edx
    stosd
    inc r8d
    cmp r8d, 0x80000004
    jbe .brand_leaf
    mov byte [rdi], 0               ; 48 characters need not end with a NUL
    mov esi, SCRATCH
.skip_blank:                        ; Intel right-aligns the brand string
    cmp byte [rsi], ' '
    jne .print_brand
    inc rsi
    jmp .skip_blank
.print_brand:
    cmp byte [rsi], 0
    je .no_brand
    push rsi
    lea rsi, [rel msg_sep]
    call puts64
    pop rsi
    call puts64
.no_brand:
    lea rsi, [rel msg_done]
    call puts64

    ; Interrupts off and halted: nothing can wake the CPU, which emu reports as a clean exit.
.halt:
    cli
    hlt
    jmp .halt

    PUTS

; ---------------------------------------------------------------------------------------------
; Data.
msg_loaded:      db "emu demo guest: loaded ", 0
msg_loaded_from: db " sectors from drive ", 0
msg_loaded_end:  db "h with int 13h AH=42h", 13, 10, 0
msg_e820:        db "emu demo guest: int 15h E820 memory map:", 13, 10, 0
msg_indent:      db "  ", 0
msg_usable:      db "emu demo guest: ", 0
msg_kib:         db " KiB usable", 13, 10, 0
msg_a20:         db "emu demo guest: A20 on (int 15h AX=2401h)", 13, 10, 0
msg_a20_failed:  db "emu demo guest: int 15h AX=2401h failed, A20 left as it was", 13, 10, 0
msg_no_lm:       db "emu demo guest: this CPU has no long mode", 13, 10, 0
msg_pm:          db "emu demo guest: 32-bit protected mode", 13, 10, 0
msg_long:        db "emu demo guest: 64-bit long mode (first GiB identity-mapped, 2 MiB pages)", 13, 10, 0
msg_vendor:      db "emu demo guest: cpu ", 0
msg_sep:         db ", ", 0
msg_done:        db 13, 10, "emu demo guest: done, halting", 13, 10, 0
msg_crlf:        db 13, 10, 0

type_usable:     db "usable", 0
type_reserved:   db "reserved", 0
type_acpi:       db "ACPI data", 0
type_nvs:        db "ACPI NVS", 0
type_bad:        db "bad memory", 0
type_unknown:    db "type ", 0
type_names:      dw type_usable, type_reserved, type_acpi, type_nvs

    align 8
gdt:
    dq 0                            ; 0x00: null
    dq 0x00CF9B000000FFFF           ; 0x08: 32-bit code, base 0, limit 4 GiB
    dq 0x00CF93000000FFFF           ; 0x10: data, base 0, limit 4 GiB
    dq 0x00AF9B000000FFFF           ; 0x18: 64-bit code (L=1)
gdt_end:
gdtr:
    dw gdt_end - gdt - 1
    dd gdt

stage2_end:
STAGE2_SECTORS equ (stage2_end - stage2 + 511) / 512
    times (STAGE2_SECTORS + 1) * 512 - ($ - $$) db 0
