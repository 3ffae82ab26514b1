; smp_lock: locked read-modify-write across CPUs. The BSP starts the APs (smp.inc) and waits until
; three are ready, then lets all four go at once: each does `lock inc dword` on one shared counter
; and `lock xadd` of 3 on another, 10000 times, then counts itself done with a locked increment.
; The BSP waits for all four (10 s at most) and prints both totals: exact only if every update was
; atomic. Run with 4 CPUs.
%include "lib.inc"
%include "apic.inc"
%include "smp.inc"
%define READY       SVARS + 0x00        ; dword: APs waiting for GO
%define GO          SVARS + 0x04        ; dword: 1 = start
%define INCS        SVARS + 0x08        ; dword: the lock inc counter
%define ADDS        SVARS + 0x0C        ; dword: the lock xadd sum
%define DONE        SVARS + 0x10        ; dword: CPUs finished
%define XADD_BAD    SVARS + 0x14        ; dword: xadd results that were not multiples of 3
%define N           10000
%define CPUS        4

    SNIPPET_START
    PRINT "smp_lock: long mode, starting the APs", 10
    ENTER_LONG_APIC
    call start_aps
    WAIT_AT_LEAST READY, CPUS - 1, MS(2000)
    mov eax, [READY]
    PRINT "APs ready: "
    PUTHEX rax, 1
    PUTC 10
    mov dword [GO], 1
    call hammer
    WAIT_AT_LEAST DONE, CPUS, MS(10000)
    mov eax, [DONE]
    mov ebx, [INCS]
    mov ecx, [ADDS]
    PRINT "CPUs done: "
    PUTHEX rax, 1
    PUTC 10
    PRINT "smp_lock: lock inc total "
    PUTDEC rbx
    PRINT ", lock xadd total "
    PUTDEC rcx
    PUTC 10
    cmp dword [XADD_BAD], 0
    RESULT_ZF "every lock xadd returned a multiple of 3"
    call stray_report
    PRINT "smp_lock: done", 10
    CLEAR_GPRS
    HALT

ap_main:
    lock inc dword [READY]
.wait:
    pause
    cmp dword [GO], 0
    je .wait
    call hammer
    HALT

; hammer: the shared work of every CPU, then DONE + 1.
hammer:
    mov ecx, N
.again:
    lock inc dword [INCS]
    mov eax, 3
    lock xadd [ADDS], eax               ; EAX = the sum before ours: always a multiple of 3
    mov edx, eax
    imul edx, edx, 0xAAAAAAAB           ; x * (1/3 mod 2^32) stays <= 0x55555555 only for multiples of 3
    cmp edx, 0x55555555
    jbe .ok
    lock inc dword [XADD_BAD]
.ok:
    dec ecx
    jnz .again
    lock inc dword [DONE]
    ret

    SMP_GUEST_END
