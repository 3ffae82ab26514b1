; triple_fault: 32-bit protected mode with an empty IDT (limit 0), then `ud2`. The #UD cannot be
; delivered (vector 6 is beyond the IDT limit) -> #GP, which cannot be delivered either -> #DF,
; likewise -> triple fault (shutdown). The machine must report exit status 4.
%include "lib.inc"
    SNIPPET_START
    PRINT "triple_fault: entering protected mode", 10
    ENTER_PM32
    lidt [empty_idtr]
    PRINT "triple_fault: empty IDT loaded, executing ud2", 10
    ud2
    PRINT "triple_fault: still running after ud2", 10
    HALT

empty_idtr:
    dw 0                            ; limit 0: not even one gate fits
    dd 0

bits 16
    LIB_ROUTINES
bits 32
    LIB_ROUTINES
    STD_GDT
