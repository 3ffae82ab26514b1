; pm_switch: the switch from real to protected mode far-jumps through selector 0x10, the GDT's
; data segment, instead of the code segment: #GP(0x10) right after CR0.PE is set. The IDTR still
; holds the real-mode IVT, whose zeroed entries are no gates (#GP, then #DF, then triple fault).
%include "lib.inc"
    SNIPPET_START
    PRINT "pm_switch: entering protected mode", 10
    o32 lgdt [gdtr]
    mov eax, cr0
    or eax, CR0_PE
    mov cr0, eax
    jmp dword SEL_DATA:pm32             ; the bug: should be SEL_CODE32
bits 32
pm32:
    HALT

bits 16
    LIB_ROUTINES
    STD_GDT
