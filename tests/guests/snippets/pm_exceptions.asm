; pm_exceptions: exceptions in 32-bit protected mode through a 32-bit IDT, with and without
; error codes, and a CPL3 -> CPL0 transition through the 32-bit TSS and back with iretd.
; Real mode first takes #DE through the IVT. Then, in protected mode with 32-bit paging
; (PAE, identity-mapped first 4 MiB, one 4 KiB page left not present): #DE (no error code),
; #GP(0x60) from loading DS with a selector beyond the GDT limit, #PF from a write to the
; unmapped page (error code 2, CR2), and from ring 3 a ud2 (#UD on TSS.ESP0) and then cli
; with IOPL 0 (#GP(0) from CPL 3), whose handler ends the snippet. pm_exceptions_nopaging.asm
; is the same without paging and #PF: this host's PVM KVM cannot page outside long mode.
%include "lib.inc"
%define PDPT     0x1000
%define PGDIR    0x2000
%define PGTAB    0x3000                 ; two tables: 0x3000, 0x4000
%define IDT      0x5000                 ; 32 gates of 8 bytes
%define TSS      0x5400
%define ESP0_TOP 0x6800
%define USTACK   0x5C00
%define HOLE     0x00300000             ; the page left unmapped
%define SEL_UCODE 0x1B                  ; 0x18 | RPL 3
%define SEL_UDATA 0x23                  ; 0x20 | RPL 3
%define SEL_TSS   0x28

; SET_GATE32 vector, handler: a DPL-0 32-bit interrupt gate
%macro SET_GATE32 2
    mov eax, %2
    mov edi, IDT + %1 * 8
    mov [edi], ax
    mov word [edi + 2], SEL_CODE32
    mov word [edi + 4], 0x8E00
    shr eax, 16
    mov [edi + 6], ax
%endmacro

    SNIPPET_START
    PRINT "pm_exceptions: real-mode #DE", 10
    mov word [0], rm_de
    mov word [2], 0
    xor dx, dx
    mov ax, 1
    xor cx, cx
    div cx                              ; #DE: a fault, IP points at the div (2 bytes)
    PRINT "back from real-mode #DE", 10

    o32 lgdt [pgdtr]
    mov eax, cr0
    or eax, CR0_PE
    mov cr0, eax
    jmp SEL_CODE32:pm32

rm_de:
    PRINT "real-mode #DE at "
    mov bx, sp
    mov ax, [bx]
    movzx eax, ax
    PUTHEX eax, 4
    PUTC 10
    add word [bx], 2
    iret

bits 32
pm32:
    mov ax, SEL_DATA
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, STACK_TOP
%ifndef NO_PAGING
    ; PAE paging (this host's PVM KVM runs no legacy 2-level paging): PDPT -> one page
    ; directory -> two page tables identity-mapping 4 MiB, user-accessible, minus HOLE.
    mov edi, PDPT
    xor eax, eax
    mov ecx, 4 * 4096 / 4
    rep stosd
    mov dword [PDPT], PGDIR | 1         ; PDPTEs have no RW/US bits
    mov dword [PGDIR], PGTAB | 7
    mov dword [PGDIR + 8], PGTAB + 0x1000 | 7
    mov edi, PGTAB
    mov eax, 7
    mov ecx, 1024
.fill:
    mov [edi], eax
    add edi, 8
    add eax, 4096
    loop .fill
    mov dword [PGTAB + (HOLE >> 12) * 8], 0
    mov eax, cr4
    or eax, CR4_PAE
    mov cr4, eax
    mov eax, PDPT
    mov cr3, eax
    mov eax, cr0
    and eax, ~(3 << 29)                 ; caches on, as firmware leaves them
    or eax, CR0_PG
    mov cr0, eax
%endif
    ; TSS: ESP0/SS0 for ring-3 -> ring-0 transitions.
    mov edi, TSS
    xor eax, eax
    mov ecx, 104 / 4
    rep stosd
    mov dword [TSS + 4], ESP0_TOP
    mov dword [TSS + 8], SEL_DATA
    mov word [TSS + 102], 104           ; no I/O bitmap
    mov ax, SEL_TSS
    ltr ax
    SET_GATE32 0, de_handler
    SET_GATE32 6, ud_handler
    SET_GATE32 13, gp_handler
    SET_GATE32 14, pf_handler
    lidt [pidtr]
%ifdef NO_PAGING
    PRINT "pm_exceptions: protected mode", 10
%else
    PRINT "pm_exceptions: protected mode with paging", 10
%endif

    xor edx, edx
    mov eax, 1
    xor ecx, ecx
    div ecx                             ; #DE: 2 bytes
    PRINT "back from #DE", 10
    mov ax, 0x63
    mov ds, ax                          ; index 12 > GDT limit: #GP(0x60); 2 bytes
    PRINT "back from #GP", 10
%ifndef NO_PAGING
    mov dword [HOLE + 0x10], 1          ; write to a not-present page: #PF(2); 10 bytes
    PRINT "back from #PF", 10
%endif

    push SEL_UDATA
    push USTACK
    push 0x2
    push SEL_UCODE
    push user
    iretd

user:
    mov esi, 0x1234
    ud2
    inc esi
    cli                                 ; IOPL 0 at CPL 3: #GP(0)
    jmp $

de_handler:                             ; frame: eip, cs, eflags
    mov ebx, [esp]
    PRINT "#DE eip="
    PUTHEX ebx, 8
    PUTC 10
    add dword [esp], 2
    iretd

ud_handler:                             ; frame (from ring 3): eip, cs, eflags, esp, ss
    mov ebx, [esp]
    mov ecx, [esp + 4]
    mov edx, esp
    PRINT "#UD eip="
    PUTHEX ebx, 8
    PRINT " cs="
    PUTHEX ecx, 4
    PRINT " esp="
    PUTHEX edx, 8
    mov ebx, [esp + 16]
    PRINT " ss="
    PUTHEX ebx, 4
    PUTC 10
    add dword [esp], 2
    iretd

gp_handler:                             ; frame: error code, eip, cs, eflags (, esp, ss)
    mov ebx, [esp]
    mov ecx, [esp + 8]
    mov edx, esp
    mov ax, SEL_DATA                    ; DS is whatever the fault left
    mov ds, ax
    PRINT "#GP err="
    PUTHEX ebx, 4
    PRINT " cs="
    PUTHEX ecx, 4
    PRINT " esp="
    PUTHEX edx, 8
    PUTC 10
    cmp ecx, SEL_UCODE
    je .from_user
    add dword [esp + 4], 2
    add esp, 4
    iretd
.from_user:
    mov ax, SEL_DATA                    ; iretd to ring 3 may have nulled ES (see syscall.asm)
    mov es, ax
    mov fs, ax
    mov gs, ax
    PRINT "esi="
    PUTHEX esi, 4
    PUTC 10
    PRINT "pm_exceptions: done", 10
    HALT

pf_handler:                             ; frame: error code, eip, cs, eflags
    mov ebx, [esp]
    mov ecx, cr2
    PRINT "#PF err="
    PUTHEX ebx, 4
    PRINT " cr2="
    PUTHEX ecx, 8
    PUTC 10
    add dword [esp + 4], 10
    add esp, 4
    iretd

    LIB_ROUTINES
bits 16
    LIB_ROUTINES

align 8
pgdt_table:
    dq 0
    dq 0x00CF9B000000FFFF               ; 0x08 code32
    dq 0x00CF93000000FFFF               ; 0x10 data
    dq 0x00CFFB000000FFFF               ; 0x18 user code32
    dq 0x00CFF3000000FFFF               ; 0x20 user data
    dw 103, TSS, 0x8900, 0              ; 0x28 32-bit TSS (available)
pgdtr:
    dw $ - pgdt_table - 1
    dd pgdt_table
pidtr:
    dw 32 * 8 - 1
    dd IDT
