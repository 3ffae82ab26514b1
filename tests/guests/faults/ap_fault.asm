; ap_fault: with 4 CPUs, the BSP starts the APs (smp.inc); APs 1 and 3 check in and park in
; cli; hlt, and so does the BSP once they have. AP 2 waits for that (and 20 ms more, for the BSP's
; hlt), loads an empty IDT and executes ud2: #UD cannot be delivered, nor the #DF after it, and
; AP 2 triple-faults. The fault report must name vCPU 2 and show the others halted.
%include "lib.inc"
%include "apic.inc"
%include "smp.inc"
%define COUNT       SVARS + 0x00        ; dword: APs 1 and 3 checked in
%define PARKED      SVARS + 0x04        ; dword: 1 once the BSP goes to cli; hlt

    SNIPPET_START
    PRINT "ap_fault: AP 2 will run ud2 with an empty IDT", 10
    ENTER_LONG_APIC
    call start_aps
    WAIT_AT_LEAST COUNT, 2, MS(2000)
    mov dword [PARKED], 1
    HALT

ap_main:
    mov eax, [LAPIC + APIC_ID]
    shr eax, 24
    cmp eax, 2
    je .fault
    lock inc dword [COUNT]
    HALT
.fault:
    WAIT_AT_LEAST PARKED, 1, MS(2000)
    mov rcx, MS(20)
    call ref_wait
    lidt [empty_idt]
    ud2

empty_idt:
    dw 0
    dq 0

    SMP_GUEST_END
