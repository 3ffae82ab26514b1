; protected_mode: real mode -> flat 32-bit protected mode -> back to real mode, printing from
; each. The way back follows the SDM (9.9.2): a 16-bit code segment first, 64 KiB data segments
; so the caches real mode keeps are sane, clear CR0.PE, then a far jump to reload CS.
%include "lib.inc"
    SNIPPET_START
    PRINT "protected_mode: real mode, entering protected mode", 10

    ENTER_PM32
    ; A 32-bit flat data segment reaches beyond the first MiB (real mode cannot: A20 aside,
    ; it stops at 0x10FFEF), so store and load at 2 MiB to prove it.
    mov dword [0x200000], 0xCAFEBABE
    mov ebx, [0x200000]
    mov ax, cs
    movzx ecx, ax
    mov ax, ds
    movzx edx, ax
    mov eax, cr0
    and eax, CR0_PE
    PRINT "pm32: cs="
    PUTHEX ecx, 4
    PRINT " ds="
    PUTHEX edx, 4
    PRINT " cr0.pe="
    PUTHEX eax, 1
    PRINT " [0x200000]="
    PUTHEX ebx, 8
    PUTC 10

    ; Back to real mode. The CPU has to be executing 16-bit code when PE is cleared.
    jmp SEL_CODE16:pm16
bits 16
pm16:
    mov ax, SEL_DATA16              ; 64 KiB, byte-granular limits for every data segment
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax
    mov eax, cr0
    and eax, ~CR0_PE
    mov cr0, eax
    jmp 0x0000:real_again           ; reload CS: real-mode segment semantics from here on
real_again:
    xor ax, ax                      ; real-mode segment values (base = selector << 4)
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax
    mov sp, STACK_TOP
    mov ax, cs
    movzx ecx, ax
    mov eax, cr0
    and eax, CR0_PE
    PRINT "real mode again: cs="
    PUTHEX ecx, 4
    PRINT " cr0.pe="
    PUTHEX eax, 1
    PUTC 10
    HALT

    LIB_ROUTINES                    ; puts16 & co. (this is still `bits 16`)
bits 32
    LIB_ROUTINES                    ; puts32 & co. for the protected-mode part
    STD_GDT
