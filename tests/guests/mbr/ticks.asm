; ticks: the BIOS timer interrupt (IRQ 0 -> int 08h) advances the tick count at 40:6Ch, seen
; through int 1Ah 00h, and calls the user hook int 1Ch, while the guest waits with hlt.
%include "mbr.inc"
    MBR_START 2

main:
    cli
    mov word [0x1C * 4], hook       ; int 1Ch: count calls
    mov word [0x1C * 4 + 2], 0
    mov dword [SCRATCH + 0x20], 0
    mov ah, 0x00
    BIOS 0x1A
    mov [SCRATCH + 0x24], dx
    mov si, 3                       ; int 1Ah 00h returns ticks in CX:DX
.wait:
    sti
    hlt                             ; woken by the next interrupt
    cli
    mov ah, 0x00
    BIOS 0x1A
    cmp dx, [SCRATCH + 0x24]
    je .wait
    mov [SCRATCH + 0x24], dx
    dec si
    jnz .wait
    PRINT "ticks: advanced 3 times, int 1Ch calls >= 3: "
    cmp dword [SCRATCH + 0x20], 3
    jb .few
    PRINT "yes", 10
    EXIT 0
.few:
    PRINT "no", 10
    EXIT 1

hook:
    inc dword [cs:SCRATCH + 0x20]
    iret

    MBR_ROUTINES
    times 3 * 512 - ($ - $$) db 0
