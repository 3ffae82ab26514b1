; syscall: the SYSCALL/SYSRET round trip between ring 3 and ring 0 in 64-bit mode. STAR gives
; the kernel CS 0x18 (SS 0x20) and the user base 0x28 (SYSRET: SS 0x30|3, CS 0x38|3), LSTAR the
; handler, SFMASK clears DF and TF. Ring 3 (entered with iretq, DF set) makes two calls: the
; first returns with sysretq, the second ends the snippet. The handler prints what SYSCALL
; gave it: RCX (the return RIP), R11 (the user RFLAGS), CS, SS and its own RFLAGS.
%include "lib.inc"
%define PML4     0x1000
%define PDPT     0x2000
%define PD       0x3000
%define USTACK   0x4800
%define SEL_KCODE 0x18
%define SEL_KDATA 0x20
%define SEL_UBASE 0x28
%define SEL_UDATA 0x33                  ; 0x30 | RPL 3
%define SEL_UCODE 0x3B                  ; 0x38 | RPL 3
%define MSR_STAR   0xC0000081
%define MSR_LSTAR  0xC0000082
%define MSR_SFMASK 0xC0000084
%define EFER_SCE   0x00000001

    SNIPPET_START
    PRINT "syscall: setting up", 10
    mov di, PML4
    xor eax, eax
    mov cx, 3 * 4096 / 4
    rep stosd
    mov dword [PML4], PDPT | 7
    mov dword [PDPT], PD | 7
    mov dword [PD], 0x87                ; 2 MiB user page at 0
    mov eax, cr4
    or eax, CR4_PAE
    mov cr4, eax
    mov eax, PML4
    mov cr3, eax
    mov ecx, MSR_EFER
    rdmsr
    or eax, EFER_LME | EFER_SCE
    wrmsr
    o32 lgdt [sgdtr]
    mov eax, cr0
    and eax, ~(3 << 29)
    or eax, CR0_PE | CR0_PG
    mov cr0, eax
    jmp SEL_KCODE:long64

bits 64
long64:
    mov ax, SEL_KDATA
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov rsp, STACK_TOP
    mov ecx, MSR_STAR
    xor eax, eax
    mov edx, (SEL_UBASE << 16) | SEL_KCODE
    wrmsr
    mov ecx, MSR_LSTAR
    mov rax, handler
    xor edx, edx
    wrmsr
    mov ecx, MSR_SFMASK
    mov eax, 0x500                      ; DF | TF
    xor edx, edx
    wrmsr
    PRINT "syscall: to ring 3", 10
    push SEL_UDATA
    push USTACK
    push 0x402                          ; DF set: SYSCALL must clear it, SYSRET restore it
    push SEL_UCODE
    push user
    iretq

user:
    mov eax, 1
    syscall
after_first:
    pushfq                              ; back in ring 3 with the user's flags
    pop r12
    mov r13, cs
    mov r14, ss
    mov eax, 2
    syscall
    jmp $

handler:
    mov rbx, rcx
    mov rbp, r11
    mov r8, cs
    mov r9, ss
    pushfq
    pop r10
    mov r15, rax
    PRINT "syscall "
    PUTHEX r15, 2
    PRINT ": rcx="
    PUTHEX rbx, 8
    PRINT " r11="
    PUTHEX rbp, 4
    PRINT " cs="
    PUTHEX r8, 4
    PRINT " ss="
    PUTHEX r9, 4
    PRINT " rflags="
    PUTHEX r10, 4
    PUTC 10
    cmp r15, 1
    jne .second
    mov rcx, rbx
    mov r11, rbp
    o64 sysret
.second:
    PRINT "after sysret: rflags="
    PUTHEX r12, 4
    PRINT " cs="
    PUTHEX r13, 4
    PRINT " ss="
    PUTHEX r14, 4
    PUTC 10
    ; iretq to ring 3 nulled DS/ES/FS/GS (DPL 0 < CPL 3); this host's nested KVM does not:
    ; reload them all for a final state both backends can agree on.
    mov ax, SEL_KDATA
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax
    PRINT "syscall: done", 10
    HALT

    LIB_ROUTINES
bits 16
    LIB_ROUTINES

align 8
sgdt_table:
    dq 0
    dq 0x00CF9B000000FFFF               ; 0x08 code32
    dq 0x00CF93000000FFFF               ; 0x10 data
    dq 0x00AF9B000000FFFF               ; 0x18 kernel code64
    dq 0x00CF93000000FFFF               ; 0x20 kernel data
    dq 0x00CFFB000000FFFF               ; 0x28 user code32 (unused: SYSRET to 32-bit code)
    dq 0x00CFF3000000FFFF               ; 0x30 user data
    dq 0x00AFFB000000FFFF               ; 0x38 user code64
sgdtr:
    dw $ - sgdt_table - 1
    dd sgdt_table
