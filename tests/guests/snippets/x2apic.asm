; x2apic: the local APIC's x2APIC mode (SDM vol. 3A 10.12) in 64-bit long mode. In xAPIC mode the
; x2APIC MSRs raise #GP. With CPUID.1:ECX[21], IA32_APIC_BASE EN|EXTD switches to x2APIC mode,
; keeping the registers' state; the ID (MSR 0x802), the logical ID the hardware derives from it
; (LDR, MSR 0x80D: cluster = ID[19:4] in bits 31:16, 1 << ID[3:0] below), the version (0x803)
; read back; self-IPIs through the SELF IPI MSR (0x83F) and through the ICR (0x830: shorthand
; self, the own ID as physical destination, all including self) are pending in IRR while IF=0
; and each reaches its handler, which EOIs through MSR 0x80B; the ICR reads back as 64 bits and
; the ESR stays 0. Accesses the mode forbids raise #GP(0), recorded by a handler that skips the
; 2-byte instruction (checking the pushed RIP and error code): reading MSR 0x831, a non-zero ESR
; write, a write to the read-only ID, x2APIC -> xAPIC directly (EXTD cleared, EN kept), and EXTD
; without EN. Then the legal way back: disabled, then xAPIC. (Not checked: #GP on a non-zero
; write to the EOI MSR, which the SDM asks for and this host's KVM does not raise.)
%include "lib.inc"
%include "apic.inc"
%define GP_COUNT    VARS + 0x00
%define GP_RIP      VARS + 0x08
%define GP_ERR      VARS + 0x10
%define COUNTS      VARS + 0x20         ; one qword per vector 0x41..0x44
%define X2_ID       0x802
%define X2_VER      0x803
%define X2_EOI      0x80B
%define X2_LDR      0x80D
%define X2_SVR      0x80F
%define X2_IRR2     0x822               ; IRR bits 64-95
%define X2_ESR      0x828
%define X2_ICR      0x830
%define X2_SELF_IPI 0x83F
%define ICR_ASSERT  (1 << 14)
%define ICR_SELF    (1 << 18)
%define ICR_ALL     (2 << 18)

; WRMSR64 msr, value - EDX:EAX = value, ECX = msr, wrmsr.
%macro WRMSR64 2
    mov ecx, %1
    mov rax, %2
    mov rdx, rax
    shr rdx, 32
    wrmsr
%endmacro

; RDMSR64 msr - RAX = the MSR.
%macro RDMSR64 1
    mov ecx, %1
    rdmsr
    shl rdx, 32
    or rax, rdx
%endmacro

; TAKE vector - when `vector` (0x40-0x5F) is pending in IRR, sti; hlt; cli: a pending interrupt
; ends the hlt at once, after its handler ran. (A busy wait with IF=1 would do on hardware; this
; host's PVM KVM sometimes leaves an IRR vector undelivered through one, but a hlt takes it.)
; When it is not pending, nothing: the caller's count check reports the loss without a hang.
%macro TAKE 1
    RDMSR64 X2_IRR2
    bt eax, (%1) - 0x40
    jnc %%skip
    sti
    hlt
    cli
%%skip:
%endmacro

; GP_CHECK label - ZF set when exactly one #GP arrived since GP_COUNT was cleared, with RIP at
; `label` and error code 0.
%macro GP_CHECK 1
    mov rax, [GP_COUNT]
    dec rax
    mov rdx, [GP_RIP]
    sub rdx, %1
    or rax, rdx
    or rax, [GP_ERR]
%endmacro

    SNIPPET_START
    PRINT "x2apic: long mode, 8259s masked", 10
    ENTER_LONG_APIC
    SET_GATE 13, gp_handler
    SET_GATE 0x41, ipi_41
    SET_GATE 0x42, ipi_42
    SET_GATE 0x43, ipi_43
    SET_GATE 0x44, ipi_44
    call lapic_enable
    mov eax, 1
    cpuid
    bt ecx, 21
    jc .supported
    PRINT "x2apic: not supported", 10
    jmp .finish
.supported:
    PRINT "x2apic: supported", 10

    mov qword [GP_COUNT], 0
    mov ecx, X2_ID
.rdmsr_xapic:
    rdmsr
    GP_CHECK .rdmsr_xapic
    RESULT_ZF "xAPIC mode: rdmsr of the x2APIC ID raises #GP(0)"

    ; -- into x2APIC mode ------------------------------------------------------------------------
    mov ecx, MSR_APIC_BASE
    rdmsr
    or eax, APIC_BASE_EN | APIC_BASE_EXTD
    wrmsr
    rdmsr
    mov ebx, eax
    PRINT "IA32_APIC_BASE: "
    PUTHEX rbx, 8
    PUTC 10
    RDMSR64 X2_ID
    mov r12, rax
    PRINT "x2apic id "
    PUTHEX r12, 8
    RDMSR64 X2_LDR
    mov rbx, rax
    PRINT ", ldr "
    PUTHEX rbx, 8
    PUTC 10
    mov ecx, r12d
    and ecx, 0xF
    mov eax, 1
    shl eax, cl                         ; 1 << ID[3:0]
    mov rdx, r12
    shr edx, 4
    shl edx, 16
    or eax, edx
    cmp eax, ebx
    RESULT_ZF "ldr derived from the id"
    RDMSR64 X2_VER
    mov rbx, rax
    PRINT "version "
    PUTHEX rbx, 2
    PUTC 10
    shr ebx, 16
    and ebx, 0xFF
    RANGE "max lvt entry >= 5", rbx, 5, 0xFF
    RDMSR64 X2_SVR
    mov rbx, rax
    PRINT "svr kept from xAPIC mode: "
    PUTHEX rbx, 8
    PUTC 10

    ; -- self-IPIs -------------------------------------------------------------------------------
    WRMSR64 X2_SELF_IPI, 0x41
    RDMSR64 X2_IRR2
    mov rbx, rax
    and ebx, 2                          ; vector 0x41
    cmp ebx, 2
    RESULT_ZF "SELF IPI 0x41: pending in IRR while IF=0"
    TAKE 0x41
    mov rax, [COUNTS]
    dec rax
    mov rbx, rax
    RDMSR64 X2_IRR2
    and eax, 2
    or rax, rbx
    RESULT_ZF "SELF IPI 0x41: handled once after sti; hlt, IRR clear"

    WRMSR64 X2_ICR, ICR_SELF | ICR_ASSERT | 0x42
    TAKE 0x42
    cmp qword [COUNTS + 8], 1
    RESULT_ZF "ICR shorthand self, vector 0x42: handled once"

    mov rax, r12
    shl rax, 32                         ; destination: our own x2APIC ID, physical
    or rax, ICR_ASSERT | 0x43
    WRMSR64 X2_ICR, rax
    TAKE 0x43
    cmp qword [COUNTS + 16], 1
    RESULT_ZF "ICR to our own ID, vector 0x43: handled once"

    WRMSR64 X2_ICR, ICR_ALL | ICR_ASSERT | 0x44
    TAKE 0x44
    cmp qword [COUNTS + 24], 1
    RESULT_ZF "ICR shorthand all including self, vector 0x44: handled once"

    RDMSR64 X2_ICR
    cmp rax, ICR_ALL | ICR_ASSERT | 0x44
    RESULT_ZF "ICR reads back the last command (64 bits, no delivery status)"
    WRMSR64 X2_ESR, 0                   ; latch the errors, then read them
    RDMSR64 X2_ESR
    test rax, rax
    RESULT_ZF "ESR reads 0"

    ; -- accesses the mode forbids ---------------------------------------------------------------
    mov qword [GP_COUNT], 0
    mov ecx, X2_ICR + 1                 ; xAPIC's ICR high half has no MSR
.rdmsr_831:
    rdmsr
    GP_CHECK .rdmsr_831
    RESULT_ZF "rdmsr of 0x831 (no such register) raises #GP(0)"

    mov qword [GP_COUNT], 0
    mov ecx, X2_ESR
    mov eax, 1
    xor edx, edx
.wrmsr_esr:
    wrmsr
    GP_CHECK .wrmsr_esr
    RESULT_ZF "wrmsr of a non-zero value to the ESR raises #GP(0)"

    mov qword [GP_COUNT], 0
    mov ecx, X2_ID
    mov eax, 5
    xor edx, edx
.wrmsr_id:
    wrmsr
    GP_CHECK .wrmsr_id
    mov rbx, rax
    RDMSR64 X2_ID
    cmp rax, r12
    jne .id_bad
    mov rax, rbx
    test rax, rax
.id_bad:
    RESULT_ZF "wrmsr to the read-only x2APIC ID raises #GP(0), ID kept"

    mov qword [GP_COUNT], 0
    mov ecx, MSR_APIC_BASE
    rdmsr
    mov r13d, eax                       ; EN | EXTD (| BSP)
    and eax, ~APIC_BASE_EXTD
.to_xapic:
    wrmsr
    GP_CHECK .to_xapic
    mov rbx, rax
    mov ecx, MSR_APIC_BASE
    rdmsr
    cmp eax, r13d
    jne .to_xapic_bad
    mov rax, rbx
    test rax, rax
.to_xapic_bad:
    RESULT_ZF "x2APIC -> xAPIC directly (EXTD cleared, EN set) raises #GP(0), mode kept"

    mov qword [GP_COUNT], 0
    mov ecx, MSR_APIC_BASE
    mov eax, r13d
    and eax, ~APIC_BASE_EN
    xor edx, edx
.extd_only:
    wrmsr
    GP_CHECK .extd_only
    mov rbx, rax
    mov ecx, MSR_APIC_BASE
    rdmsr
    cmp eax, r13d
    jne .extd_only_bad
    mov rax, rbx
    test rax, rax
.extd_only_bad:
    RESULT_ZF "EXTD without EN (invalid) raises #GP(0), mode kept"

    ; -- the legal way back: disabled, then xAPIC -----------------------------------------------
    mov qword [GP_COUNT], 0
    mov ecx, MSR_APIC_BASE
    mov eax, r13d
    and eax, ~(APIC_BASE_EN | APIC_BASE_EXTD)
    xor edx, edx
    wrmsr
    or eax, APIC_BASE_EN
    wrmsr
    rdmsr
    mov ebx, eax
    mov eax, [LAPIC + APIC_VER]
    and eax, 0xFF
    PRINT "x2APIC -> disabled -> xAPIC: IA32_APIC_BASE "
    PUTHEX rbx, 8
    PRINT ", version via MMIO "
    PUTHEX rax, 2
    PUTC 10
    cmp qword [GP_COUNT], 0
    RESULT_ZF "no #GP on the way"

.finish:
    call stray_report
    PRINT "x2apic: done", 10
    HALT

gp_handler:                             ; frame: error code, RIP, CS, RFLAGS, RSP, SS
    push rax
    inc qword [GP_COUNT]
    mov rax, [rsp + 8]
    mov [GP_ERR], rax
    mov rax, [rsp + 16]
    mov [GP_RIP], rax
    add qword [rsp + 16], 2             ; skip the rdmsr/wrmsr
    pop rax
    add rsp, 8
    iretq

; ipi_N: count in COUNTS[N - 0x41], EOI through the x2APIC EOI MSR (value 0).
%macro IPI_HANDLER 1
ipi_%1:
    push rax
    push rcx
    push rdx
    inc qword [COUNTS + (0x%1 - 0x41) * 8]
    mov ecx, X2_EOI
    xor eax, eax
    xor edx, edx
    wrmsr
    pop rdx
    pop rcx
    pop rax
    iretq
%endmacro
    IPI_HANDLER 41
    IPI_HANDLER 42
    IPI_HANDLER 43
    IPI_HANDLER 44

    APIC_GUEST_END
