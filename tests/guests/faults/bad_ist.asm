; bad_ist: long mode whose #UD, #PF and #DF gates all use IST1, but the TSS's IST1 is 0. The
; #UD's frame goes to 0xffff...ffd8 (not mapped): #PF, delivered on the same IST (#PF again: #DF),
; and so is the #DF: triple fault.
%include "lib.inc"
%include "faults.inc"
    SNIPPET_START
    PRINT "bad_ist: entering long mode", 10
    ENTER_LONG_4K
    SET_GATE 6, handler, 1
    SET_GATE 14, handler, 1
    SET_GATE 8, handler, 1
    lidt [fidtr]
    PRINT "bad_ist: TSS.IST1 is 0, executing ud2", 10
    ud2
    PRINT "bad_ist: still running", 10
    HALT

handler:
    PRINT "bad_ist: a fault handler ran", 10
    HALT

    LIB_ROUTINES
bits 16
    LIB_ROUTINES
    FAULT_GDT
