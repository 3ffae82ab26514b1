; pf_no_idt: long mode with no IDT (IDTR limit 0), then a read of an unmapped address. The #PF
; cannot be delivered (vector 14 is beyond the IDT limit: #GP, which with a #PF is a #DF), nor
; can the #DF: triple fault.
%include "lib.inc"
%include "faults.inc"
    SNIPPET_START
    PRINT "pf_no_idt: entering long mode", 10
    ENTER_LONG_4K
    lidt [no_idtr]
    PRINT "pf_no_idt: no IDT, reading 0x40000000 (not mapped)", 10
    mov rax, [0x40000000]
    PRINT "pf_no_idt: still running", 10
    HALT

no_idtr:
    dw 0
    dq 0
    LIB_ROUTINES
bits 16
    LIB_ROUTINES
    FAULT_GDT
