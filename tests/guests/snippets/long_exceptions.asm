; long_exceptions: 64-bit exception and interrupt delivery, checked against hardware (KVM).
; An IDT with #UD, #GP, #PF handlers and two DPL-3 gates, a 64-bit TSS with RSP0 and IST1, user
; segments and user-accessible pages. Ring 0 takes #UD (no error code), #GP(0) from a
; non-canonical load and #PF from an unmapped page (error code and CR2); then ring 3 executes
; ud2 (CPL3 -> CPL0 on TSS.RSP0, back with iretq) and cli with IOPL 0 (#GP, whose gate uses
; IST1). Handlers print the frame they got. (Exceptions rather than `int n` from ring 3: this
; host's nested KVM turns a ring-3 `int n` into #UD.)
%include "lib.inc"
%define PML4     0x1000
%define PDPT     0x2000
%define PD       0x3000
%define USTACK   0x4800             ; ring-3 stack top
%define IDT      0x5000             ; 32 gates of 16 bytes
%define IST1_TOP 0x6000
%define RSP0_TOP 0x6800
%define TSS      0x0800
%define SEL_UDATA 0x23              ; 0x20 | RPL 3
%define SEL_UCODE 0x2B              ; 0x28 | RPL 3
%define SEL_TSS   0x30

; SET_GATE vector, handler, attributes (P/DPL/type byte), ist
%macro SET_GATE 4
    mov rax, %2
    mov rdi, IDT + %1 * 16
    mov [rdi], ax
    mov word [rdi + 2], SEL_CODE64
    mov byte [rdi + 4], %4
    mov byte [rdi + 5], %3
    shr rax, 16
    mov [rdi + 6], ax
    shr rax, 16
    mov [rdi + 8], eax
    mov dword [rdi + 12], 0
%endmacro

    SNIPPET_START
    PRINT "long_exceptions: setting up", 10
    mov di, PML4
    xor eax, eax
    mov cx, 3 * 4096 / 4
    rep stosd
    mov dword [PML4], PDPT | 7          ; present, writable, user
    mov dword [PDPT], PD | 7
    mov dword [PD], 0x87                ; 2 MiB page at 0, user-accessible
    mov eax, cr4
    or eax, CR4_PAE
    mov cr4, eax
    mov eax, PML4
    mov cr3, eax
    mov ecx, MSR_EFER
    rdmsr
    or eax, EFER_LME
    wrmsr
    o32 lgdt [xgdtr]
    mov eax, cr0
    and eax, ~(3 << 29)                 ; caches on, as firmware leaves them
    or eax, CR0_PE | CR0_PG
    mov cr0, eax
    jmp SEL_CODE64:long64

bits 64
long64:
    mov ax, SEL_DATA
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov rsp, STACK_TOP
    ; The 64-bit TSS: RSP0 and IST1.
    mov rdi, TSS
    xor eax, eax
    mov ecx, 104 / 4
    rep stosd
    mov qword [TSS + 4], RSP0_TOP
    mov qword [TSS + 0x24], IST1_TOP
    mov ax, SEL_TSS
    ltr ax
    SET_GATE 6, ud_handler, 0x8E, 0
    SET_GATE 13, gp_handler, 0x8E, 1
    SET_GATE 14, pf_handler, 0x8E, 0
    lidt [idtr]

    ud2
    PRINT "back from #UD", 10
    mov rbx, 0x8000000000000000
    mov rax, [rbx]                      ; non-canonical: #GP(0); 3 bytes long
    PRINT "back from #GP", 10
    mov rbx, 0x40000123
    mov rax, [rbx]                      ; PDPT[1] not present: #PF, error code 0; 3 bytes
    PRINT "back from #PF", 10

    ; To ring 3 with iretq (interrupts stay off).
    push SEL_UDATA
    push USTACK
    push 0x2
    push SEL_UCODE
    push user
    iretq

user:
    mov r14, 0x1234                     ; ring 3 cannot print (IOPL 0): handlers report for it
    ud2
    inc r14
    cli                                 ; IOPL 0 at CPL 3: #GP(0), delivered on IST1
    jmp $                               ; not reached: the #GP handler halts

ud_handler:                             ; frame: rip, cs, rflags, rsp, ss
    mov rbx, [rsp]
    mov rcx, [rsp + 8]
    mov rdx, rsp
    PRINT "#UD rip="
    PUTHEX rbx, 8
    PRINT " cs="
    PUTHEX rcx, 4
    PRINT " rsp="
    PUTHEX rdx, 8
    PUTC 10
    add qword [rsp], 2
    iretq

gp_handler:                             ; frame: error code, rip, cs, rflags, rsp, ss (on IST1)
    mov rbx, [rsp]
    mov rcx, [rsp + 16]
    mov rdx, rsp
    PRINT "#GP err="
    PUTHEX rbx, 4
    PRINT " cs="
    PUTHEX rcx, 4
    PRINT " rsp="
    PUTHEX rdx, 8
    mov rdx, [rsp + 40]
    PRINT " ss="
    PUTHEX rdx, 4
    PUTC 10
    cmp rcx, SEL_UCODE
    je .from_user
    add qword [rsp + 8], 3
    add rsp, 8
    iretq
.from_user:
    ; iretq to ring 3 nulled DS and ES (their DPL 0 < CPL 3), as the SDM requires; this host's
    ; nested KVM does not, so reload them for a final state both backends can agree on.
    mov ax, SEL_DATA
    mov ds, ax
    mov es, ax
    PRINT "r14="
    PUTHEX r14, 4
    PUTC 10
    PRINT "long_exceptions: done", 10
    HALT

pf_handler:
    mov rbx, [rsp]
    mov rdx, cr2
    PRINT "#PF err="
    PUTHEX rbx, 4
    PRINT " cr2="
    PUTHEX rdx, 8
    PUTC 10
    add qword [rsp + 8], 3
    add rsp, 8
    iretq

    LIB_ROUTINES

bits 16
    LIB_ROUTINES

    align 8
xgdt:
    dq 0
    dq 0x00CF9B000000FFFF               ; 0x08 code32
    dq 0x00CF93000000FFFF               ; 0x10 data
    dq 0x00AF9B000000FFFF               ; 0x18 code64
    dq 0x00CFF3000000FFFF               ; 0x20 user data (DPL 3)
    dq 0x00AFFB000000FFFF               ; 0x28 user code64 (DPL 3)
    dq 0x0000890008000067               ; 0x30 64-bit TSS at 0x800, limit 0x67 (low half)
    dq 0                                ;      (high half: base bits 63:32)
xgdt_end:
xgdtr:
    dw xgdt_end - xgdt - 1
    dd xgdt
idtr:
    dw 0x20 * 16 - 1
    dq IDT
