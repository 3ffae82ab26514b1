; tick_fault: a fault whose details depend on timing. The PIT interrupts a loop that counts in EBX
; and reads the TSC into ESI, 1000 times a second; the 20th tick's handler loads an empty IVT
; (limit 0) and executes int3, which cannot be delivered: #GP, #DF, triple fault. Where the loop
; was (EBX, ESI, the instructions before the fault) is host timing in a normal run and the same
; every time with --deterministic.
%include "lib.inc"
%define TICKS   0x0600
%define PIT_HZ  1193182
%define RATE    1000
    SNIPPET_START
    PRINT "tick_fault: counting until the 20th timer tick", 10
    mov word [0x20 * 4], irq0
    mov word [0x20 * 4 + 2], 0
    mov dword [TICKS], 0
    mov al, 0x11                    ; ICW1: edge, cascade, ICW4 follows
    out 0x20, al
    out 0xA0, al
    mov al, 0x20                    ; ICW2: vector bases 0x20 / 0x28
    out 0x21, al
    mov al, 0x28
    out 0xA1, al
    mov al, 4                       ; ICW3: slave on IRQ 2
    out 0x21, al
    mov al, 2
    out 0xA1, al
    mov al, 1                       ; ICW4: 8086 mode
    out 0x21, al
    out 0xA1, al
    mov al, 0xFE                    ; only IRQ 0
    out 0x21, al
    mov al, 0xFF
    out 0xA1, al
    mov al, 0x34                    ; channel 0, lobyte/hibyte, mode 2
    out 0x43, al
    mov ax, PIT_HZ / RATE
    out 0x40, al
    mov al, ah
    out 0x40, al
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
