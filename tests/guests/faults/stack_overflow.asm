; stack_overflow: long mode with #PF and #DF handlers (no IST) and the page below the stack left
; unmapped as a guard; then unbounded recursion. The push into the guard page is a #PF whose
; delivery pushes onto the same dead stack (#PF again: #DF), and so does the #DF: triple fault.
%include "lib.inc"
%include "faults.inc"
%define GUARD     0x60000               ; the unmapped page
%define STACK_TOP2 0x62000              ; the stack: 0x61000-0x61fff
    SNIPPET_START
    PRINT "stack_overflow: entering long mode", 10
    ENTER_LONG_4K
    mov qword [PT + (GUARD >> 12) * 8], 0
    mov rax, cr3
    mov cr3, rax                        ; drop the guard page's old translation
    SET_GATE 14, handler, 0
    SET_GATE 8, handler, 0
    lidt [fidtr]
    PRINT "stack_overflow: recursing on a 4 KiB stack above an unmapped page", 10
    mov rsp, STACK_TOP2
    xor eax, eax
recurse:
    inc rax
    push rax
    call recurse

handler:
    PRINT "stack_overflow: a fault handler ran", 10
    HALT

    LIB_ROUTINES
bits 16
    LIB_ROUTINES
    FAULT_GDT
