; port_io: port I/O of every flavour - byte in/out to a real device register (COM1's scratch
; register, which stores whatever is written), reads of an unclaimed port (all-ones at every
; width), the debugcon read-back, and rep outsb/insb string I/O.
%include "lib.inc"
    SNIPPET_START
    PRINT "port_io: start", 10

    ; --- COM1 scratch register: a write must be readable back ---
    mov dx, COM1_SCR
    mov al, 0x5A
    out dx, al
    xor al, al                      ; so the value printed really came from the `in`
    in al, dx
    movzx ebx, al
    PRINT "scratch: wrote 5a read "
    PUTHEX ebx, 2
    cmp bl, 0x5A
    jne .scratch_bad
    PRINT " ok", 10
    jmp .scratch_done
.scratch_bad:
    PRINT " MISMATCH", 10
.scratch_done:

    ; --- nothing decodes 0x2F0: the bus floats high, so every width reads all-ones ---
    mov dx, 0x2F0
    xor eax, eax
    in al, dx
    mov ebx, eax
    in ax, dx
    mov ecx, eax
    in eax, dx
    mov esi, eax
    PRINT "unclaimed 0x2f0: b="
    PUTHEX ebx, 2
    PRINT " w="
    PUTHEX ecx, 4
    PRINT " d="
    PUTHEX esi, 8
    PUTC 10

    ; --- debugcon (Bochs/QEMU port 0xE9) identifies itself by reading back 0xE9 ---
    xor eax, eax
    in al, PORT_DEBUGCON
    mov ebx, eax
    PRINT "debugcon 0xe9 reads "
    PUTHEX ebx, 2
    PUTC 10

    ; --- string I/O: four writes to the scratch register leave the last byte ('D') in it,
    ; four reads then fetch that byte four times ---
    mov si, pattern
    mov dx, COM1_SCR
    mov cx, 4
    rep outsb
    mov di, BUFFER
    mov cx, 4
    rep insb
    mov byte [di], 0                ; terminate the buffer so it prints as a string
    movzx ebx, cx
    movzx edx, di
    PRINT "rep outsb 'ABCD', rep insb: '"
    PUTS BUFFER
    PRINT "' cx="
    PUTHEX ebx, 4
    PRINT " di="
    PUTHEX edx, 4
    PUTC 10

    PRINT "port_io: done", 10
    HALT

pattern:
    db "ABCD"

    LIB_ROUTINES
