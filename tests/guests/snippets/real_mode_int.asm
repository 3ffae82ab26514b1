; real_mode_int: interrupts in real mode go through the IVT at linear 0 (4 bytes per vector:
; offset, segment). We install a handler for the software interrupt 0x30 and one for #UD
; (vector 6), then raise both: `int 0x30` and `ud2`. The #UD handler resumes after the
; faulting instruction by adding its length (2) to the saved IP.
%include "lib.inc"
    SNIPPET_START
    PRINT "real_mode_int: installing IVT entries for 0x30 and #UD", 10
    mov word [0x30 * 4], int30_handler
    mov word [0x30 * 4 + 2], 0
    mov word [6 * 4], ud_handler
    mov word [6 * 4 + 2], 0

    mov ax, 0x1234
    int 0x30                        ; the handler adds 0x1111 to AX
    movzx eax, ax
    PRINT "after int 0x30: ax="
    PUTHEX eax, 4
    PUTC 10

    ud2                             ; #UD: a fault, so the saved IP points at the ud2 itself
    PRINT "after ud2", 10
    HALT

int30_handler:
    PRINT "int 0x30 handler", 10
    add ax, 0x1111                  ; visible to the interrupted code: registers are not saved
    iret

; Stack on entry: [sp] = IP, [sp+2] = CS, [sp+4] = FLAGS of the faulting instruction.
ud_handler:
    push bp
    mov bp, sp
    push ds
    push bx
    lds bx, [bp + 2]                ; DS:BX = saved CS:IP
    cmp word [bx], 0x0B0F           ; ud2 is 0F 0B
    jne .unexpected
    PRINT "#UD handler: saved cs:ip is at the ud2, skipping it", 10
    add word [bp + 2], 2            ; resume after the 2-byte ud2
    pop bx
    pop ds
    pop bp
    iret
.unexpected:
    PRINT "#UD handler: saved cs:ip does not point at a ud2", 10
    HALT

    LIB_ROUTINES
