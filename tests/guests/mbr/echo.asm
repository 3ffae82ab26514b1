; echo: text through int 10h only, then through int 10h and COM1 character by character (as
; syslinux does), then int 10h only again. emu's console must show each line once.
%include "mbr.inc"
%define COM1 0x3F8
    MBR_START 2

main:
    mov si, first
    call tty
    mov ah, 0x86                    ; 300 ms: the partial line "partial" is echoed meanwhile
    mov cx, 0x0004
    mov dx, 0x93E0
    BIOS 0x15
    mov si, both
.both:
    mov al, [si]
    test al, al
    jz .both_done
    mov ah, 0x0E
    xor bx, bx
    BIOS 0x10
    mov dx, COM1
    out dx, al
    inc si
    jmp .both
.both_done:
    mov si, last
    call tty
    PRINT "echo: done", 10
    EXIT 0

tty:
    lodsb
    test al, al
    jz .done
    mov ah, 0x0E
    xor bx, bx
    BIOS 0x10
    jmp tty
.done:
    ret

first:  db "boot", 13, 10, "partial", 0
both:   db 13, 10, "both", 13, 10, 0
last:   db "tail", 13, 10, 0

    MBR_ROUTINES
    times 3 * 512 - ($ - $$) db 0
