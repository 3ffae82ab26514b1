; apic_priority: the local APIC's in-service and priority rules (SDM vol. 3A 10.8.3-10.8.5) with
; self-IPIs through the xAPIC ICR (shorthand self), in 64-bit long mode with the 8259s masked.
; Vector 0x51's handler sees its vector in ISR and PPR = 0x50; there it sends 0x52 (same priority
; class) and 0x61 (higher) and lets them in: 0x61 preempts (nested, ISR holding both, PPR 0x60)
; while 0x52 waits in IRR until 0x51's EOI; an EOI retires the highest vector in service only.
; Then TPR = 0x70 holds a pending 0x61 back until TPR drops to 0. Handlers log their vectors in
; order. Every wait for an interrupt known to be pending is `sti; hlt` (see take_if_pending).
%include "lib.inc"
%include "apic.inc"
%define LOG_LEN     VARS + 0x00         ; qword: entries in LOG
%define LOG         VARS + 0x08         ; up to 8 vectors, a byte each
%define A_ISR       VARS + 0x10         ; in 0x51's handler: ISR 0x40-0x5F, 0x60-0x7F, PPR
%define A_ISR6      VARS + 0x14
%define A_PPR       VARS + 0x18
%define B_ISR       VARS + 0x1C         ; in 0x61's handler, nested in 0x51's
%define B_ISR6      VARS + 0x20
%define B_PPR       VARS + 0x24
%define A_IRR_AFTER VARS + 0x28         ; in 0x51's handler after 0x61's: IRR 0x40-0x5F
%define A_ISR_AFTER VARS + 0x2C         ; and ISR 0x40-0x5F | 0x60-0x7F (two dwords)
%define A_ISR6_AFTER VARS + 0x30
%define ICR_SELF_FIXED 0x44000          ; shorthand self, level assert, fixed, physical

    SNIPPET_START
    PRINT "apic_priority: long mode, 8259s masked", 10
    ENTER_LONG_APIC
    SET_GATE 0x51, handler_51
    SET_GATE 0x52, handler_52
    SET_GATE 0x61, handler_61
    call lapic_enable
    mov dword [LAPIC + APIC_TPR], 0

    mov edi, 0x51
    call self_ipi
    call take_if_pending                ; 0x51, and inside it 0x61
    mov edi, 0x52
    call take_if_pending                ; 0x52, let in by 0x51's EOI

    mov eax, [A_ISR]
    mov ebx, [A_ISR6]
    mov ecx, [A_PPR]
    PRINT "in 0x51: ISR "
    PUTHEX rbx, 8
    PUTC ':'
    PUTHEX rax, 8
    PRINT " PPR "
    PUTHEX rcx, 2
    PUTC 10
    mov eax, [B_ISR]
    mov ebx, [B_ISR6]
    mov ecx, [B_PPR]
    PRINT "in 0x61 nested in 0x51: ISR "
    PUTHEX rbx, 8
    PUTC ':'
    PUTHEX rax, 8
    PRINT " PPR "
    PUTHEX rcx, 2
    PUTC 10
    mov eax, [A_ISR_AFTER]
    mov ebx, [A_ISR6_AFTER]
    mov ecx, [A_IRR_AFTER]
    PRINT "back in 0x51 after 0x61's EOI: ISR "
    PUTHEX rbx, 8
    PUTC ':'
    PUTHEX rax, 8
    PRINT " IRR "
    PUTHEX rcx, 8
    PUTC 10
    PRINT "handlers in order:"
    xor ebx, ebx
.log:
    cmp rbx, [LOG_LEN]
    jae .log_done
    movzx eax, byte [LOG + rbx]
    PUTC ' '
    PUTHEX rax, 2
    inc ebx
    jmp .log
.log_done:
    PUTC 10
    mov eax, [LAPIC + APIC_ISR + 0x20]
    or eax, [LAPIC + APIC_ISR + 0x30]
    or eax, [LAPIC + APIC_IRR + 0x20]
    or eax, [LAPIC + APIC_IRR + 0x30]
    RESULT_ZF "afterwards: nothing in service or pending"

    ; TPR 0x70 holds back class 6.
    mov qword [LOG_LEN], 0
    mov dword [LAPIC + APIC_TPR], 0x70
    mov edi, 0x61
    call self_ipi
    STI_WAIT MS(2)
    mov eax, [LAPIC + APIC_PPR]             ; PPR = TPR
    mov ebx, [LAPIC + APIC_IRR + 0x30]
    and ebx, 2
    PRINT "TPR 70: PPR "
    PUTHEX rax, 2
    PUTC 10
    mov rax, [LOG_LEN]
    xor ebx, 2                          ; 0x61 pending: bit 1 of IRR 0x60-0x7F
    or rax, rbx
    RESULT_ZF "TPR 70: 0x61 stays pending"
    mov dword [LAPIC + APIC_TPR], 0
    mov edi, 0x61
    call take_if_pending
    cmp qword [LOG_LEN], 1
    RESULT_ZF "TPR 0: 0x61 delivered"

    call stray_report
    PRINT "apic_priority: done", 10
    HALT

; self_ipi: fixed IPI with vector EDI to ourselves (ICR shorthand self); waits for the ICR's
; delivery status to go idle as software must before the next command.
self_ipi:
    push rax
    mov eax, edi
    or eax, ICR_SELF_FIXED
    mov [LAPIC + APIC_ICR_LO], eax
.busy:
    test dword [LAPIC + APIC_ICR_LO], 1 << 12
    jnz .busy
    pop rax
    ret

; log_vector: append AL to LOG.
log_vector:
    push rbx
    mov rbx, [LOG_LEN]
    mov [LOG + rbx], al
    inc qword [LOG_LEN]
    pop rbx
    ret

handler_51:
    push rax
    push rdi
    mov al, 0x51
    call log_vector
    mov eax, [LAPIC + APIC_ISR + 0x20]
    mov [A_ISR], eax
    mov eax, [LAPIC + APIC_ISR + 0x30]
    mov [A_ISR6], eax
    mov eax, [LAPIC + APIC_PPR]
    mov [A_PPR], eax
    mov edi, 0x52
    call self_ipi
    mov edi, 0x61
    call self_ipi
    call take_if_pending                ; 0x61 preempts us
    mov eax, [LAPIC + APIC_IRR + 0x20]
    mov [A_IRR_AFTER], eax
    mov eax, [LAPIC + APIC_ISR + 0x20]
    mov [A_ISR_AFTER], eax
    mov eax, [LAPIC + APIC_ISR + 0x30]
    mov [A_ISR6_AFTER], eax
    mov dword [LAPIC + APIC_EOI], 0
    pop rdi
    pop rax
    iretq

handler_61:
    push rax
    mov al, 0x61
    call log_vector
    mov eax, [LAPIC + APIC_ISR + 0x20]
    mov [B_ISR], eax
    mov eax, [LAPIC + APIC_ISR + 0x30]
    mov [B_ISR6], eax
    mov eax, [LAPIC + APIC_PPR]
    mov [B_PPR], eax
    mov dword [LAPIC + APIC_EOI], 0
    pop rax
    iretq

handler_52:
    push rax
    mov al, 0x52
    call log_vector
    mov dword [LAPIC + APIC_EOI], 0
    pop rax
    iretq

    APIC_GUEST_END
