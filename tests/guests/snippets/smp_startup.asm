; smp_startup: the BSP, in long mode, starts the other CPUs with INIT-SIPI-SIPI (smp.inc). Each
; AP reads its APIC ID from its local APIC's ID register, checks it against CPUID leaf 1's
; initial APIC ID (EBX[31:24]) and, where leaf 0xB reports levels, its x2APIC ID (EDX), records
; it in a table and its stack pointer beside it, counts itself with a locked increment and parks
; in cli; hlt. The BSP waits (2 s at most) for three
; APs, then prints their IDs in order, the count, and whether the IDs agree and every AP had a
; stack of its own. Run with 4 CPUs.
%include "lib.inc"
%include "apic.inc"
%include "smp.inc"
%define SEEN        SVARS + 0x00        ; 16 bytes: 1 for each APIC ID that checked in
%define COUNT       SVARS + 0x10        ; dword: APs checked in
%define CPUID_BAD   SVARS + 0x14        ; dword: APs whose CPUID APIC IDs differed
%define STACK_OF    SVARS + 0x18        ; 16 qwords: each AP's RSP on entry, by APIC ID
%define APS         3

    SNIPPET_START
    PRINT "smp_startup: long mode, INIT-SIPI-SIPI to all but self", 10
    ENTER_LONG_APIC
    mov eax, [LAPIC + APIC_ID]
    shr eax, 24
    PRINT "BSP apic id "
    PUTHEX rax, 1
    PUTC 10
    call start_aps
    WAIT_AT_LEAST COUNT, APS, MS(2000)

    PRINT "smp_startup: APs"
    xor ebx, ebx
.ids:
    cmp byte [SEEN + rbx], 0
    je .next
    PUTC ' '
    PUTHEX rbx, 1
.next:
    inc ebx
    cmp ebx, 16
    jb .ids
    mov eax, [COUNT]
    PRINT " checked in ("
    PUTHEX rax, 1
    PRINT ")", 10

    cmp dword [CPUID_BAD], 0
    RESULT_ZF "each AP's CPUID APIC IDs are its local APIC ID"

    ; Each recorded RSP is the top of a stack slot; no slot may be taken twice.
    xor ebx, ebx                        ; slots seen (a bit each)
    xor edx, edx                        ; 1: a problem
    xor esi, esi
.stacks:
    cmp byte [SEEN + rsi], 0
    je .stack_next
    mov rax, [STACK_OF + rsi * 8]
    sub rax, AP_STACKS + 0x100
    cmp rax, 15 * 0x100
    jae .stack_bad                      ; (also below the first slot: wrapped around)
    test eax, 0xFF
    jnz .stack_bad
    shr eax, 8
    bts ebx, eax
    jnc .stack_next
.stack_bad:
    mov edx, 1
.stack_next:
    inc esi
    cmp esi, 16
    jb .stacks
    test edx, edx
    RESULT_ZF "each AP ran on a stack of its own"

    call stray_report
    PRINT "smp_startup: done", 10
    CLEAR_GPRS
    HALT

ap_main:
    mov eax, [LAPIC + APIC_ID]
    shr eax, 24
    and eax, 15
    push rax                            ; (on this AP's own stack)
    mov eax, 1
    cpuid
    shr ebx, 24
    mov rax, [rsp]
    cmp eax, ebx
    jne .cpuid_bad
    xor eax, eax
    cpuid
    cmp eax, 0xB
    jb .cpuid_ok
    mov eax, 0xB
    xor ecx, ecx
    cpuid
    test bx, bx                         ; no logical processors at level 0: the leaf reports nothing
    jz .cpuid_ok
    cmp edx, [rsp]
    je .cpuid_ok
.cpuid_bad:
    lock inc dword [CPUID_BAD]
.cpuid_ok:
    pop rax
    mov [STACK_OF + rax * 8], rsp
    mov byte [SEEN + rax], 1
    lock inc dword [COUNT]              ; last: the BSP reads the table once the count is there
    HALT

    SMP_GUEST_END
