; tick_fault: a fault whose details depend on timing. The PIT interrupts a loop that counts in EBX
; and reads the TSC into ESI, 1000 times a second; the 20th tick's handler loads an empty IVT
; (limit 0) and executes int3, which cannot be delivered: #GP, #DF, triple fault. Where the loop
; was (EBX, ESI, the instructions before the fault) is host timing in a normal run and the same
; every time with --deterministic.
%include "lib.inc"
%include "pic.inc"
%define TICKS   0x0600
%define RATE    1000
    SNIPPET_START
    PRINT "tick_fault: counting until the 20th timer tick", 10
    mov word [0x20 * 4], irq0
    mov word [0x20 * 4 + 2], 0
    mov dword [TICKS], 0
    PIC_PIT_IRQ0 RATE
    xor ebx, ebx
    sti
count:
    inc ebx
    rdtsc
    mov esi, eax
    jmp count

irq0:
    push ax
    inc dword [TICKS]
    mov al, 0x20                    ; EOI
    out 0x20, al
    cmp dword [TICKS], 20
    jae .fault
    pop ax
    iret
.fault:
    lidt [no_ivt]
    int3

no_ivt:
    dw 0
    dd 0
    LIB_ROUTINES
