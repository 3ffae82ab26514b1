; long_mode: real mode straight into 64-bit long mode (SDM 10.8.5 allows setting PE and PG in
; one write, skipping legacy protected mode): identity-map the first 2 MiB with one 2 MiB page,
; CR4.PAE, CR3, EFER.LME, CR0.PE|PG, then a far jump to a 64-bit code segment. There we use
; 64-bit registers (a 64x64->128 multiply, r8-r15) and print the results.
%include "lib.inc"
%define PML4 0x1000
%define PDPT 0x2000
%define PD   0x3000
%define PTE_P   0x01                ; present
%define PTE_RW  0x02                ; writable
%define PTE_PS  0x80                ; in a PD entry: maps a 2 MiB page directly
    SNIPPET_START
    PRINT "long_mode: building page tables", 10

    ; Three zeroed tables, then one entry in each: PML4[0] -> PDPT, PDPT[0] -> PD,
    ; PD[0] = 2 MiB page at physical 0. That covers this code, its data and the stack.
    mov di, PML4
    xor eax, eax
    mov cx, 3 * 4096 / 4
    rep stosd
    mov dword [PML4], PDPT | PTE_P | PTE_RW
    mov dword [PDPT], PD | PTE_P | PTE_RW
    mov dword [PD], 0 | PTE_P | PTE_RW | PTE_PS

    mov eax, cr4
    or eax, CR4_PAE                 ; long mode paging is PAE-format paging
    mov cr4, eax
    mov eax, PML4
    mov cr3, eax
    mov ecx, MSR_EFER
    rdmsr
    or eax, EFER_LME                ; arm long mode: it becomes active (LMA) when paging is on
    wrmsr
    o32 lgdt [gdtr]
    mov eax, cr0
    or eax, CR0_PE | CR0_PG         ; now in compatibility mode, still running 16-bit code
    mov cr0, eax
    jmp SEL_CODE64:long64           ; CS.L=1: 64-bit mode

bits 64
long64:
    mov ax, SEL_DATA                ; real data descriptors (not null) so every backend reports
    mov ds, ax                      ; the same segment caches
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax
    mov rsp, STACK_TOP

    mov ecx, MSR_EFER
    rdmsr
    mov r12d, eax                   ; LME | LMA = 0x500
    PRINT "long mode: efer="
    PUTHEX r12, 8
    PUTC 10

    mov rax, 0x0123456789ABCDEF
    mov rbx, 0x0000000100000001
    mul rbx                         ; RDX:RAX = 0x0123456789abcdef * (2^32 + 1)
    mov r8, rdx
    mov r15, rax
    mov r9, 0xFEDCBA9876543210
    add r9, r15                     ; a 64-bit add that carries out of bit 63
    setc r10b
    movzx r10d, r10b
    PRINT "mul: rdx="
    PUTHEX r8, 16
    PRINT " rax="
    PUTHEX r15, 16
    PUTC 10
    PRINT "add: r9="
    PUTHEX r9, 16
    PRINT " carry="
    PUTHEX r10, 1
    PUTC 10
    PRINT "long_mode: done", 10
    HALT

bits 16
    LIB_ROUTINES
bits 64
    LIB_ROUTINES
    STD_GDT
