; hpet: the High Precision Event Timer at 0xFED00000 (IA-PC HPET specification 1.0a) in 64-bit
; long mode, with the 8259s masked and interrupts through the IOAPIC. Prints the general
; capabilities' revision, number of timers, count size and legacy replacement capability, and
; the counter period in fs (checked to be 100 fs .. 100 ns, the spec's limit). The counter is
; halted at reset (ENABLE_CNF clear); enabled, it counts up at the advertised rate +- 30% of PIT
; channel 1's reference clock over 20 ms. Then timer 0:
;   one-shot: routed to the first IOAPIC pin of its Tn_INT_ROUTE_CAP (the pin is printed; the
;     route reads back), edge, vector 0x45, comparator = counter + 20 ms of ticks (reads back):
;     exactly one interrupt, waking the CPU from hlt after 20 ms +- 30%;
;   periodic (Tn_VAL_SET_CNF, the first match 10 ms ahead, then the period written alone, as
;     Linux does): 5 interrupts take 50 ms +- 30%, and the comparator has stepped by whole
;     periods; clearing Tn_INT_ENB_CNF stops the interrupts;
; and ENABLE_CNF cleared halts the counter again. Only pass/fail of the range checks is
; printed, never a measured time.
;
; The HPET page needs no mapping of its own: apic.inc's 2 MiB alias of the IOAPIC (physical
; 0xFEC00000 at virtual 0x200000, uncached) covers physical 0xFEC00000-0xFEDFFFFF, so the HPET
; is at virtual 0x300000.
%include "lib.inc"
%include "apic.inc"
%define HPET_PHYS   0xFED00000
%define HPET        (IOAPIC + HPET_PHYS - IOAPIC_PHYS)

; Registers (all 64 bits wide) and bits.
%define HPET_CAP        0x000
%define HPET_CONFIG     0x010
%define HPET_STATUS     0x020
%define HPET_COUNTER    0x0F0
%define HPET_TN_CONFIG(n)   (0x100 + 0x20 * (n))
%define HPET_TN_CMP(n)      (0x108 + 0x20 * (n))
%define ENABLE_CNF      (1 << 0)
%define TN_INT_ENB      (1 << 2)
%define TN_PERIODIC     (1 << 3)
%define TN_PER_INT_CAP  (1 << 4)
%define TN_VAL_SET      (1 << 6)
%define TN_ROUTE_SHIFT  9

%define FS_PER_MS   1000000000000
%define VEC_HPET    0x45
%define COUNT       VARS + 0x00         ; timer 0 interrupts
%define PERIOD      VARS + 0x08         ; COUNTER_CLK_PERIOD, fs
%define PIN         VARS + 0x10         ; the IOAPIC pin timer 0 is routed to
%define TICKS_10MS  VARS + 0x18         ; counter ticks in 10 ms
%define TICKS_20MS  VARS + 0x20

; PUTDEC value - print a 64-bit value in decimal.
%macro PUTDEC 1
    push rax
    mov rax, %1
    call putdec
    pop rax
%endmacro

    SNIPPET_START
    PRINT "hpet: long mode, 8259s masked", 10
    ENTER_LONG_APIC
    SET_GATE VEC_HPET, hpet_handler
    call lapic_enable

    ; -- general capabilities --------------------------------------------------------------------
    mov rbx, [HPET + HPET_CAP]
    mov eax, ebx
    and eax, 0xFF                       ; REV_ID
    mov ecx, ebx
    shr ecx, 8
    and ecx, 0x1F                       ; NUM_TIM_CAP: the last timer's number
    PRINT "capabilities: REV_ID "
    PUTHEX rax, 2
    PRINT ", NUM_TIM_CAP "
    PUTHEX rcx, 2
    PRINT " ("
    inc ecx
    PUTDEC rcx
    PRINT " timers), COUNT_SIZE_CAP "
    bt ebx, 13
    setc al
    movzx eax, al
    PUTDEC rax
    PRINT ", LEG_RT_CAP "
    bt ebx, 15
    setc al
    movzx eax, al
    PUTDEC rax
    PUTC 10
    shr rbx, 32
    mov [PERIOD], rbx
    PRINT "COUNTER_CLK_PERIOD: "
    PUTDEC rbx
    PRINT " fs", 10
    RANGE "period is 100 fs .. 100 ns", rbx, 100, 100000000
    mov rax, 10 * FS_PER_MS
    xor edx, edx
    div rbx
    mov [TICKS_10MS], rax
    mov rax, 20 * FS_PER_MS
    xor edx, edx
    div rbx
    mov [TICKS_20MS], rax

    ; -- the main counter ------------------------------------------------------------------------
    mov rax, [HPET + HPET_CONFIG]
    and eax, ENABLE_CNF
    mov r12, [HPET + HPET_COUNTER]
    mov rcx, MS(1)
    call ref_wait
    sub r12, [HPET + HPET_COUNTER]
    or rax, r12
    RESULT_ZF "at reset: ENABLE_CNF clear, counter halted"

    mov qword [HPET + HPET_CONFIG], ENABLE_CNF          ; no legacy replacement
    mov r12, [HPET + HPET_COUNTER]
    mov rcx, MS(1)
    call ref_wait
    mov rax, [HPET + HPET_COUNTER]
    sub rax, r12
    mov r8, 0x7FFFFFFFFFFFFFFF
    RANGE "enabled: the counter counts up", rax, 1, r8

    call ref_now                        ; 20 ms of the reference clock
    mov r12, rax
    mov r13, [HPET + HPET_COUNTER]
    mov rcx, MS(20)
    call ref_wait
    call ref_now
    mov r14, [HPET + HPET_COUNTER]
    sub rax, r12
    mov r8, rax                         ; reference ticks
    sub r14, r13                        ; counter ticks
    mov rax, r14
    mov rcx, PIT_CLOCK
    mul rcx
    div r8
    mov r9, rax                         ; the counter's rate, Hz
    mov rax, 1000 * FS_PER_MS
    xor edx, edx
    div qword [PERIOD]                  ; the advertised rate
    mov rcx, 7
    mul rcx
    mov rcx, 10
    div rcx
    mov r10, rax                        ; 70%
    mov rax, 1000 * FS_PER_MS
    xor edx, edx
    div qword [PERIOD]
    mov rcx, 13
    mul rcx
    mov rcx, 10
    div rcx
    mov r11, rax                        ; 130%
    RANGE "counter rate against the PIT is the period's +- 30%", r9, r10, r11

    ; -- timer 0: route ----------------------------------------------------------------------------
    mov rbx, [HPET + HPET_TN_CONFIG(0)]
    PRINT "timer 0 config and capabilities at reset: "
    PUTHEX rbx, 16
    PUTC 10
    mov rax, rbx
    shr rax, 32                         ; Tn_INT_ROUTE_CAP
    bsf rax, rax
    jnz .have_pin
    PRINT "timer 0: no IOAPIC pin in its route capability", 10
    HALT
.have_pin:
    mov [PIN], rax
    PRINT "timer 0: IOAPIC pin "
    PUTDEC rax
    PUTC 10
    mov ecx, IOAPIC_REG_VER
    call ioapic_read
    shr eax, 16
    and eax, 0xFF
    mov r8, rax                         ; the highest redirection entry
    RANGE "the IOAPIC has that pin", [PIN], 0, r8

    ; The IOAPIC entry: destination APIC ID 0, fixed, physical, edge, active high, unmasked.
    mov ecx, [PIN]
    lea ecx, [IOAPIC_RTE(0) + 2 * ecx + 1]
    xor eax, eax
    call ioapic_write
    dec ecx
    mov eax, VEC_HPET
    call ioapic_write

    ; -- timer 0: one-shot, 20 ms --------------------------------------------------------------------
    mov rbx, [PIN]
    shl rbx, TN_ROUTE_SHIFT             ; one-shot, edge, 64-bit, interrupt disabled
    mov [HPET + HPET_TN_CONFIG(0)], rbx
    mov rax, [HPET + HPET_TN_CONFIG(0)]
    shr eax, TN_ROUTE_SHIFT
    and eax, 0x1F
    cmp rax, [PIN]
    RESULT_ZF "timer 0: route reads back"
    mov qword [COUNT], 0
    call ref_now
    mov r13, rax
    mov r12, [HPET + HPET_COUNTER]
    add r12, [TICKS_20MS]
    mov [HPET + HPET_TN_CMP(0)], r12
    or rbx, TN_INT_ENB
    mov [HPET + HPET_TN_CONFIG(0)], rbx
    cmp r12, [HPET + HPET_TN_CMP(0)]
    RESULT_ZF "one-shot: comparator reads back"
    HLT_UNTIL_SET [COUNT]
    call ref_now
    sub rax, r13
    RANGE "one-shot: woke from hlt after 20 ms +- 30%", rax, MS(14), MS(26)
    STI_WAIT MS(20)
    mov edi, VEC_HPET
    call take_if_pending
    cmp qword [COUNT], 1
    RESULT_ZF "one-shot: exactly one interrupt"

    ; -- timer 0: periodic, 10 ms ----------------------------------------------------------------------
    mov rax, [HPET + HPET_TN_CONFIG(0)]
    test eax, TN_PER_INT_CAP
    jnz .periodic
    PRINT "timer 0: not periodic capable", 10
    jmp .finish
.periodic:
    mov rbx, [PIN]
    shl rbx, TN_ROUTE_SHIFT
    or rbx, TN_PERIODIC
    mov rax, rbx
    or rax, TN_VAL_SET                  ; the next write sets the comparator itself
    mov [HPET + HPET_TN_CONFIG(0)], rax
    mov qword [COUNT], 0
    call ref_now
    mov r13, rax
    mov r12, [HPET + HPET_COUNTER]
    add r12, [TICKS_10MS]
    mov [HPET + HPET_TN_CMP(0)], r12    ; the first match
    mov rax, [TICKS_10MS]
    mov [HPET + HPET_TN_CMP(0)], rax    ; the period
    or rbx, TN_INT_ENB
    mov [HPET + HPET_TN_CONFIG(0)], rbx
.periodic_wait:
    sti
    hlt
    cli
    call ref_now                        ; (also keeps the reference clock read every 10 ms)
    cmp qword [COUNT], 5
    jb .periodic_wait
    mov r14, [HPET + HPET_TN_CMP(0)]
    sub rax, r13
    RANGE "periodic: 5 interrupts in 50 ms +- 30%", rax, MS(35), MS(65)
    sub r14, r12                        ; whole periods past the first match: 5 (6 if late)
    mov rax, r14
    xor edx, edx
    div qword [TICKS_10MS]
    test rdx, rdx
    jz .whole
    mov eax, -1
.whole:
    RANGE "periodic: the comparator steps by the period", rax, 5, 6

    and rbx, ~TN_INT_ENB
    mov [HPET + HPET_TN_CONFIG(0)], rbx
    mov edi, VEC_HPET                   ; a match just before may still be pending
    call take_if_pending
    mov rbx, [COUNT]
    STI_WAIT MS(30)
    sub rbx, [COUNT]
    mov eax, [LAPIC + APIC_IRR + 0x20]
    and eax, 1 << (VEC_HPET - 0x40)
    or rax, rbx
    RESULT_ZF "periodic: Tn_INT_ENB_CNF cleared, no more interrupts in 30 ms"

.finish:
    mov qword [HPET + HPET_TN_CONFIG(0)], 0
    mov qword [HPET + HPET_CONFIG], 0
    mov r12, [HPET + HPET_COUNTER]
    mov rcx, MS(1)
    call ref_wait
    sub r12, [HPET + HPET_COUNTER]
    RESULT_ZF "ENABLE_CNF cleared: counter halted"

    call stray_report
    PRINT "hpet: done", 10
    HALT

hpet_handler:
    inc qword [COUNT]
    mov dword [LAPIC + APIC_EOI], 0
    iretq

; putdec: RAX in decimal. Preserves every register but RFLAGS.
putdec:
    push rax
    push rcx
    push rdx
    push rbx
    mov ebx, 10
    xor ecx, ecx
.digit:
    xor edx, edx
    div rbx
    push rdx
    inc ecx
    test rax, rax
    jnz .digit
.emit:
    pop rax
    add al, '0'
    call putc64
    loop .emit
    pop rbx
    pop rdx
    pop rcx
    pop rax
    ret

    APIC_GUEST_END
