; lapic_timer: the local APIC timer (SDM vol. 3A 10.5.4) in 64-bit long mode, with the 8259s
; masked. The APIC is enabled (IA32_APIC_BASE.EN if clear, SVR software enable with spurious
; vector 0xFF) and its ID, version and reset state printed. The timer's input clock is measured
; against PIT channel 1 (and checked against CPUID 0x15's crystal when a CPU reports one), then:
;   one-shot (divide 16, 20 ms): the current count runs down while armed, exactly one interrupt
;     wakes the CPU from hlt after 20 ms +- 30%, the current count reads 0 afterwards; a masked
;     one-shot runs out without an interrupt;
;   periodic (divide 2, 10 ms): 10 interrupts take 100 ms +- 30%, the count reloads; initial
;     count 0 stops it and no interrupt follows;
;   TSC-deadline (when CPUID.1:ECX[24]): initial-count writes are ignored, IA32_TSC_DEADLINE at
;     TSC + 20 ms gives one interrupt after 20 ms +- 30% and reads 0 once it fired; writing 0
;     disarms, a deadline in the past fires at once, leaving the mode disarms.
; Only pass/fail of the range checks is printed, never a measured time. (In-service and priority
; rules are apic_priority's: this host's PVM KVM does not keep ISR.)
%include "lib.inc"
%include "apic.inc"
%define VEC_TIMER   0x40
%define COUNT       VARS + 0x00         ; timer interrupts
%define SPURIOUS    VARS + 0x10
%define APIC_HZ     VARS + 0x18         ; the timer's input clock, measured
%define TSC_HZ      VARS + 0x20
%define TDCR_DIV1   0xB
%define TDCR_DIV2   0x0
%define TDCR_DIV16  0x3

    SNIPPET_START
    PRINT "lapic_timer: long mode, 8259s masked", 10
    ENTER_LONG_APIC
    SET_GATE VEC_TIMER, timer_handler
    SET_GATE 0xFF, spurious_handler

    ; -- identification and reset state -------------------------------------------------------
    mov ecx, MSR_APIC_BASE
    rdmsr
    mov ebx, eax
    PRINT "IA32_APIC_BASE: "
    PUTHEX rbx, 8
    PUTC 10
    mov eax, [LAPIC + APIC_SVR]
    mov ebx, [LAPIC + APIC_LVTT]
    PRINT "at reset: svr="
    PUTHEX rax, 8
    PRINT " lvt timer="
    PUTHEX rbx, 8
    PUTC 10
    call lapic_enable
    mov eax, [LAPIC + APIC_ID]
    shr eax, 24
    mov ebx, [LAPIC + APIC_VER]
    PRINT "apic id "
    PUTHEX rax, 2
    PRINT ", version "
    PUTHEX rbx, 2
    PUTC 10
    shr ebx, 16
    and ebx, 0xFF
    RANGE "max lvt entry >= 5", rbx, 5, 0xFF

    ; -- the timer's clock: TMICT = 0xFFFFFFFF, divide 1, masked; 20 ms of PIT channel 1 -------
    mov dword [LAPIC + APIC_TDCR], TDCR_DIV1
    mov dword [LAPIC + APIC_LVTT], LVT_MASKED | VEC_TIMER
    mov dword [LAPIC + APIC_TMICT], 0xFFFFFFFF
    call sample_clocks
    mov r12, r8                         ; reference, current count, TSC at the start
    mov r13, r9
    mov r14, r10
    mov rcx, MS(20)
    call ref_wait
    call sample_clocks
    mov dword [LAPIC + APIC_TMICT], 0
    sub r8, r12                         ; reference ticks
    sub r13, r9                         ; APIC timer ticks (it counts down)
    sub r10, r14                        ; TSC ticks
    mov rax, r13
    mov rcx, PIT_CLOCK
    mul rcx
    div r8
    mov [APIC_HZ], rax
    mov rax, r10
    mov rcx, PIT_CLOCK
    mul rcx
    div r8
    mov [TSC_HZ], rax
    RANGE "timer clock measured against the PIT (100 kHz .. 10 GHz)", [APIC_HZ], 100000, 10000000000
    call check_cpuid_15
    RESULT_ZF "CPUID 0x15 crystal and TSC ratio agree with it (where reported)"

    ; -- one-shot, divide 16, 20 ms --------------------------------------------------------------
    mov rax, [APIC_HZ]
    xor edx, edx
    mov rcx, 16 * 50
    div rcx
    mov r12, rax                        ; initial count
    mov qword [COUNT], 0
    mov dword [LAPIC + APIC_TDCR], TDCR_DIV16
    mov dword [LAPIC + APIC_LVTT], VEC_TIMER            ; one-shot, unmasked
    call ref_now
    mov r13, rax
    mov [LAPIC + APIC_TMICT], r12d
    mov ebx, [LAPIC + APIC_TMCCT]
    mov rcx, MS(1)
    call ref_wait
    mov edx, [LAPIC + APIC_TMCCT]
    xor eax, eax
    cmp rbx, r12                        ; first reading <= the initial count
    ja .ran_down
    cmp rdx, rbx                        ; second one below it, still above 0
    jae .ran_down
    test rdx, rdx
    jz .ran_down
    mov eax, 1
.ran_down:
    cmp eax, 1
    RESULT_ZF "one-shot: current count runs down"
    HLT_UNTIL_SET [COUNT]
    call ref_now
    sub rax, r13
    RANGE "one-shot: woke from hlt after 20 ms +- 30%", rax, MS(14), MS(26)
    STI_WAIT MS(20)
    cmp qword [COUNT], 1
    RESULT_ZF "one-shot: exactly one interrupt"
    cmp dword [LAPIC + APIC_TMCCT], 0
    RESULT_ZF "one-shot: current count reads 0 after it fired"

    ; A masked one-shot of 1 ms (divide 1) runs out silently.
    mov qword [COUNT], 0
    mov dword [LAPIC + APIC_TDCR], TDCR_DIV1
    mov dword [LAPIC + APIC_LVTT], LVT_MASKED | VEC_TIMER
    mov rax, [APIC_HZ]
    xor edx, edx
    mov ecx, 1000
    div rcx
    mov [LAPIC + APIC_TMICT], eax
    STI_WAIT MS(5)
    mov eax, [LAPIC + APIC_TMCCT]
    or rax, [COUNT]
    RESULT_ZF "masked one-shot: runs out without an interrupt"

    ; -- periodic, divide 2, 10 ms ---------------------------------------------------------------
    mov rax, [APIC_HZ]
    xor edx, edx
    mov ecx, 2 * 100
    div rcx
    mov r12, rax                        ; initial count: 10 ms
    mov qword [COUNT], 0
    mov dword [LAPIC + APIC_TDCR], TDCR_DIV2
    mov dword [LAPIC + APIC_LVTT], LVT_PERIODIC | VEC_TIMER
    call ref_now
    mov r13, rax
    mov [LAPIC + APIC_TMICT], r12d
.periodic_wait:
    sti
    hlt
    cli
    call ref_now                        ; (also keeps the reference clock read every 10 ms)
    cmp qword [COUNT], 10
    jb .periodic_wait
    mov ebx, [LAPIC + APIC_TMCCT]       ; reloaded: in 1 .. initial count
    mov dword [LAPIC + APIC_TMICT], 0   ; stop
    sub rax, r13
    RANGE "periodic: 10 interrupts in 100 ms +- 30%", rax, MS(70), MS(130)
    RANGE "periodic: current count reloads", rbx, 1, r12
    STI_WAIT MS(5)                      ; one already requested before the stop may still come
    mov edi, VEC_TIMER
    call take_if_pending
    mov rbx, [COUNT]
    STI_WAIT MS(30)
    mov eax, [LAPIC + APIC_TMCCT]
    sub rbx, [COUNT]
    or rax, rbx
    RESULT_ZF "periodic: initial count 0 stops it, no more interrupts"

    ; -- TSC-deadline ----------------------------------------------------------------------------
    mov eax, 1
    cpuid
    bt ecx, 24
    jc .deadline
    PRINT "tsc-deadline: not supported", 10
    jmp .finish
.deadline:
    PRINT "tsc-deadline: supported", 10
    mov qword [COUNT], 0
    mov dword [LAPIC + APIC_LVTT], LVT_TSCDEADLINE | VEC_TIMER
    mov dword [LAPIC + APIC_TMICT], 0x10000     ; ignored in this mode
    STI_WAIT MS(2)
    mov eax, [LAPIC + APIC_TMCCT]
    or rax, [COUNT]
    RESULT_ZF "tsc-deadline: initial count ignored, current count 0"

    mov rax, [TSC_HZ]
    xor edx, edx
    mov ecx, 50
    div rcx
    mov r12, rax                        ; 20 ms of TSC
    call ref_now
    mov r13, rax
    rdtsc
    shl rdx, 32
    or rax, rdx
    add rax, r12
    mov r14, rax
    mov rdx, rax
    shr rdx, 32
    mov ecx, MSR_TSC_DEADLINE
    wrmsr
    rdmsr
    shl rdx, 32
    or rax, rdx
    cmp rax, r14
    RESULT_ZF "tsc-deadline: IA32_TSC_DEADLINE reads back"
    HLT_UNTIL_SET [COUNT]
    call ref_now
    sub rax, r13
    RANGE "tsc-deadline: woke from hlt after 20 ms +- 30%", rax, MS(14), MS(26)
    STI_WAIT MS(20)
    mov ecx, MSR_TSC_DEADLINE
    rdmsr
    or eax, edx
    mov rbx, [COUNT]
    dec rbx
    or rax, rbx
    RESULT_ZF "tsc-deadline: one interrupt, then the MSR reads 0"

    mov qword [COUNT], 0
    call arm_deadline_10ms
    mov ecx, MSR_TSC_DEADLINE
    xor eax, eax
    xor edx, edx
    wrmsr
    STI_WAIT MS(30)
    cmp qword [COUNT], 0
    RESULT_ZF "tsc-deadline: writing 0 disarms"

    mov ecx, MSR_TSC_DEADLINE
    mov eax, 1                          ; long past
    xor edx, edx
    wrmsr
    HLT_UNTIL_SET [COUNT]
    PRINT "tsc-deadline: a deadline in the past fires at once", 10

    mov qword [COUNT], 0
    call arm_deadline_10ms
    mov dword [LAPIC + APIC_LVTT], VEC_TIMER            ; back to one-shot (TMICT 0: idle)
    STI_WAIT MS(30)
    cmp qword [COUNT], 0
    RESULT_ZF "tsc-deadline: leaving the mode disarms"

.finish:
    call stray_report
    PRINT "lapic_timer: done", 10
    HALT

; arm_deadline_10ms: IA32_TSC_DEADLINE = TSC + 10 ms.
arm_deadline_10ms:
    mov rax, [TSC_HZ]
    xor edx, edx
    mov ecx, 100
    div rcx
    mov rbx, rax
    rdtsc
    shl rdx, 32
    or rax, rdx
    add rax, rbx
    mov rdx, rax
    shr rdx, 32
    mov ecx, MSR_TSC_DEADLINE
    wrmsr
    ret

; sample_clocks: R8 = reference clock, R9 = the APIC timer's current count, R10 = TSC, read
; together: retried until the two reference readings around them are less than 250 us apart
; (a vCPU preempted in between would skew the calibration). R8 is their midpoint.
sample_clocks:
    push rax
    push rcx
    push rdx
    push rbx
    mov ebx, 100                        ; tries
.again:
    call ref_now
    mov r8, rax
    mov r9d, [LAPIC + APIC_TMCCT]
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov r10, rax
    call ref_now
    mov rcx, rax
    sub rcx, r8
    dec ebx
    jz .take
    cmp rcx, MS(1) / 4
    ja .again
.take:
    shr rcx, 1
    add r8, rcx
    pop rbx
    pop rdx
    pop rcx
    pop rax
    ret

; check_cpuid_15: ZF set when CPUID leaf 0x15 either reports no crystal, or its crystal (ECX)
; is the measured timer clock within 6% and, with a ratio (EBX/EAX), the TSC it implies is the
; measured TSC within 6%. (SDM 10.5.4: with leaf 0x15 the timer counts the core crystal.)
check_cpuid_15:
    xor eax, eax
    cpuid
    cmp eax, 0x15
    jb .yes
    mov eax, 0x15
    xor ecx, ecx
    cpuid
    test ecx, ecx
    jz .yes
    mov r8d, eax                        ; denominator
    mov r9d, ebx                        ; numerator
    mov r10d, ecx                       ; crystal Hz
    mov rax, r10
    mov rbx, [APIC_HZ]
    call within_6pct
    jnz .done
    test r8d, r8d
    jz .yes
    test r9d, r9d
    jz .yes
    mov rax, r10
    mul r9
    div r8                              ; TSC Hz = crystal * EBX / EAX
    mov rbx, [TSC_HZ]
    call within_6pct
    ret
.yes:
    cmp eax, eax
.done:
    ret

; within_6pct: ZF set when |RAX - RBX| <= RBX / 16. Clobbers RAX, RCX.
within_6pct:
    sub rax, rbx
    jae .pos
    neg rax
.pos:
    mov rcx, rbx
    shr rcx, 4
    cmp rax, rcx
    ja .no
    cmp eax, eax
    ret
.no:
    or ecx, 1                           ; ZF clear
    ret

timer_handler:
    push rax
    inc qword [COUNT]
    mov dword [LAPIC + APIC_EOI], 0
    pop rax
    iretq

spurious_handler:                       ; no EOI for the spurious vector
    inc qword [SPURIOUS]
    iretq

    APIC_GUEST_END
