; real_mode: plain 16-bit real-mode code - arithmetic, the stack, a far call into another code
; segment, segment:offset arithmetic and rep string instructions - each result printed in hex.
%include "lib.inc"
    SNIPPET_START
    PRINT "real_mode: start", 10

    ; --- arithmetic (16-bit and 32-bit operand sizes; a 386 allows both in real mode) ---
    mov ax, 0x1234
    add ax, 0x4321                  ; 0x5555
    movzx ebx, ax
    PRINT "add: "
    PUTHEX ebx, 4
    mov bx, 0x0300
    mul bx                          ; DX:AX = 0x5555 * 0x300 = 0x00ff:ff00
    movzx esi, dx
    movzx edi, ax
    PRINT " mul: "
    PUTHEX esi, 4
    PUTC ':'
    PUTHEX edi, 4
    mov bx, 0x1001
    div bx                          ; 0x00ffff00 / 0x1001 = 0x0ffe rem 0x0f02 (AX, DX)
    movzx esi, ax
    movzx edi, dx
    PRINT " div: q="
    PUTHEX esi, 4
    PRINT " r="
    PUTHEX edi, 4
    mov eax, 0x00012345
    imul eax, eax, -7               ; 32-bit signed multiply: -0x7f6e3 = 0xfff8091d
    mov ebx, eax
    sar ebx, 4                      ; arithmetic shift keeps the sign: 0xffff8091
    PRINT " imul: "
    PUTHEX eax, 8
    PRINT " sar: "
    PUTHEX ebx, 8
    PUTC 10

    ; --- stack: LIFO order, and SP back where it started ---
    mov si, sp
    push word 0x1111
    push word 0x2222
    push word 0x3333
    pop ax                          ; 0x3333
    pop bx                          ; 0x2222
    pop cx                          ; 0x1111
    mov di, sp
    movzx eax, ax
    movzx ebx, bx
    movzx ecx, cx
    PRINT "stack: pop "
    PUTHEX eax, 4
    PUTC ' '
    PUTHEX ebx, 4
    PUTC ' '
    PUTHEX ecx, 4
    cmp si, di
    jne .sp_moved
    PRINT " sp balanced", 10
    jmp .stack_done
.sp_moved:
    PRINT " sp NOT balanced", 10
.stack_done:

    ; --- far call into segment 0x0700 (same linear code, different CS:IP) and back ---
    call 0x0700:(far_proc - 0x7000)
    mov ax, cs
    movzx eax, ax
    PRINT "far ret: cs="
    PUTHEX eax, 4
    PUTC 10

    ; --- segment arithmetic: 1234:0010 and 1235:0000 are the same linear byte (0x12350) ---
    mov ax, 0x1234
    mov es, ax
    mov byte [es:0x0010], 0xA5
    mov ax, 0x1235
    mov fs, ax
    movzx eax, byte [fs:0x0000]
    PRINT "segments: 1234:0010 -> 1235:0000 = "
    PUTHEX eax, 2
    PUTC 10
    xor ax, ax                      ; back to the zero segments the rest of the code assumes
    mov es, ax
    mov fs, ax

    ; --- string instructions: rep stosb fills, rep movsb copies (DF=0: ascending) ---
    mov di, BUFFER
    mov al, '*'
    mov cx, 3
    rep stosb
    mov si, copy_src
    mov cx, copy_len                ; includes the terminating NUL
    rep movsb
    movzx ebx, cx                   ; 0 once the count ran out
    movzx edx, di                   ; BUFFER + 3 + copy_len
    PRINT "strings: "
    PUTS BUFFER
    PRINT " cx="
    PUTHEX ebx, 4
    PRINT " di="
    PUTHEX edx, 4
    PUTC 10

    PRINT "real_mode: done", 10
    HALT

; Entered with CS=0x0700: near calls and jumps are IP-relative and puts16 takes linear
; addresses, so the print helpers still work from here.
far_proc:
    mov ax, cs
    movzx eax, ax
    PRINT "far call: cs="
    PUTHEX eax, 4
    PUTC 10
    retf

copy_src:
    db "copied by rep movsb", 0
copy_len equ $ - copy_src

    LIB_ROUTINES
