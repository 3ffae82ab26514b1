; smp_ipi_wake: IPIs wake a halted AP. The BSP starts the APs (smp.inc); AP 1 enables its local
; APIC and waits in `sti; hlt`, counting each wake for which a fixed-vector handler ran (the
; others park in cli; hlt). Other wakes are not counted: KVM ends the hlt of a started CPU once
; with the second STARTUP (hardware ignores a STARTUP outside wait-for-SIPI), and whether the NMI
; (which cli does not hold off) finds AP 1 in hlt or just before it is timing. The BSP sends AP 1
; a fixed IPI (vector 0x40, physical destination APIC ID 1) three times, each time waiting until
; AP 1's handler has counted it, then an NMI IPI (the NMI handler counts it), then vector 0x41,
; whose handler tells AP 1 to park. The BSP prints what AP 1 counted: each fixed IPI woke it
; exactly once, and nothing reached the BSP or a vector without a handler. Run with 4 CPUs.
%include "lib.inc"
%include "apic.inc"
%include "smp.inc"
%define READY       SVARS + 0x00        ; dword: AP 1 waits for IPIs
%define HANDLED     SVARS + 0x04        ; dword: AP 1's fixed-vector handlers run
%define WAKES       SVARS + 0x08        ; dword: AP 1's returns from hlt after a fixed IPI
%define HITS_40     SVARS + 0x0C        ; dword: vector 0x40 handled
%define HITS_NMI    SVARS + 0x10        ; dword: NMIs handled
%define HITS_41     SVARS + 0x14        ; dword: vector 0x41 handled (then AP 1 parks)
%define PARKED      SVARS + 0x18        ; dword: AP 1 left its loop
%define TARGET      1                   ; the AP woken
%define VEC_WAKE    0x40
%define VEC_STOP    0x41

    SNIPPET_START
    PRINT "smp_ipi_wake: long mode, starting the APs", 10
    ENTER_LONG_APIC
    SET_GATE 2, nmi_handler
    SET_GATE VEC_WAKE, wake_handler
    SET_GATE VEC_STOP, stop_handler
    SET_GATE 0xFF, spurious_handler
    call start_aps
    WAIT_AT_LEAST READY, 1, MS(2000)
    RESULT_ZF "AP 1 waits in sti; hlt"

    mov edx, TARGET
    mov r12d, 1
.fixed:
    mov eax, ICR_ASSERT | ICR_FIXED | VEC_WAKE
    call send_ipi
    WAIT_AT_LEAST HITS_40, r12d, MS(1000)
    jnz .fixed_done                     ; lost: the counts below show it
    inc r12d
    cmp r12d, 3
    jbe .fixed
.fixed_done:
    mov eax, [HITS_40]
    PRINT "smp_ipi_wake: AP 1 woke "
    PUTHEX rax, 1
    PRINT " times by IPI", 10

    mov eax, ICR_ASSERT | ICR_NMI
    call send_ipi
    WAIT_AT_LEAST HITS_NMI, 1, MS(1000)
    RESULT_ZF "NMI IPI: AP 1 took it"

    mov eax, ICR_ASSERT | ICR_FIXED | VEC_STOP
    call send_ipi
    WAIT_AT_LEAST PARKED, 1, MS(1000)
    RESULT_ZF "vector 0x41: AP 1 parked"
    mov eax, [WAKES]
    mov ebx, [HITS_40]
    add ebx, [HITS_41]
    PRINT "AP 1: "
    PUTHEX rax, 1
    PRINT " wakes from hlt for "
    PUTHEX rbx, 1
    PRINT " fixed IPIs", 10
    call stray_report
    PRINT "smp_ipi_wake: done", 10
    CLEAR_GPRS
    HALT

ap_main:
    mov eax, [LAPIC + APIC_ID]
    shr eax, 24
    cmp eax, TARGET
    je .target
    HALT
.target:
    call lapic_enable
    mov dword [LAPIC + APIC_TPR], 0
    mov dword [READY], 1
.wait:
    mov ebx, [HANDLED]
    sti
    hlt                                 ; an interrupt ends it after its handler ran
    cli
    cmp [HANDLED], ebx
    je .wait                            ; no handler ran: not a wake by an interrupt
    lock inc dword [WAKES]
    cmp dword [HITS_41], 0
    je .wait
    mov dword [PARKED], 1
    HALT

wake_handler:
    lock inc dword [HITS_40]
    lock inc dword [HANDLED]
    mov dword [LAPIC + APIC_EOI], 0
    iretq

stop_handler:
    lock inc dword [HITS_41]
    lock inc dword [HANDLED]
    mov dword [LAPIC + APIC_EOI], 0
    iretq

nmi_handler:                            ; no EOI: an NMI is not in service at the local APIC
    lock inc dword [HITS_NMI]
    iretq

spurious_handler:                       ; no EOI for the spurious vector
    iretq

    SMP_GUEST_END
