; gp_bad_selector: 32-bit protected mode (no paging) with an IDT whose gates are all not present,
; then `mov ds` with selector 0x48, beyond the GDT's limit 0x2f: #GP(0x48). Its gate is not
; present (#NP, contributory after #GP: #DF), nor is the #DF gate: triple fault.
%include "lib.inc"
%define ZERO_IDT 0x2000                 ; 256 zeroed 8-byte gates (RAM starts zeroed)
    SNIPPET_START
    PRINT "gp_bad_selector: entering protected mode", 10
    ENTER_PM32
    lidt [zero_idtr]
    PRINT "gp_bad_selector: loading DS with selector 0x48", 10
    mov ax, 0x48
    mov ds, ax
    PRINT "gp_bad_selector: still running", 10
    HALT

zero_idtr:
    dw 256 * 8 - 1
    dd ZERO_IDT
    LIB_ROUTINES
bits 16
    LIB_ROUTINES
    STD_GDT
