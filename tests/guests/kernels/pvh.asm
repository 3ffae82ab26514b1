; pvh - an x86-64 ELF64 with a XEN_ELFNOTE_PHYS32_ENTRY note (owner "Xen", type 18, an 8-byte
; descriptor as Linux writes it). The loader must enter it at the note's address in 32-bit
; protected mode with EBX = hvm_start_info; e_entry points at 64-bit code that only complains.
%include "lib.inc"
%include "kreport.inc"
%include "elf.inc"
%define PHYS 0x100000

    bits 32
    org PHYS
ehdr:
    ELF64_EHDR wrong_entry, 2
    ELF64_PHDR PT_LOAD, 0, PHYS, PHYS, file_end - ehdr, file_end - ehdr
    ELF64_PHDR PT_NOTE, note - ehdr, note, note, note_end - note, note_end - note
note:
    dd 4, 8, 18                     ; namesz, descsz, XEN_ELFNOTE_PHYS32_ENTRY
    db "Xen", 0
    dq pvh_start
note_end:

pvh_start:
    SAVE32
    SERIAL_INIT
    PRINT "pvh: 32-bit entry", 10
    call kpm32regs
    mov ebx, [s_ebx]
    PRINT "start_info magic="
    HEX [ebx], 8
    PRINT " version="
    HEX [ebx + 4], 8
    PRINT " flags="
    HEX [ebx + 8], 8
    PRINT " nr_modules="
    HEX [ebx + 12], 8
    PRINT " modlist="
    HEX [ebx + 16], 8
    PRINT " cmdline="
    HEX [ebx + 24], 8
    PRINT " rsdp="
    HEX [ebx + 32], 8
    PRINT " memmap="
    HEX [ebx + 40], 8
    PRINT " memmap_entries="
    HEX [ebx + 48], 8
    PUTC 10
    PRINT "cmdline="
    mov esi, [ebx + 24]
    call kquoted32
    PUTC 10
    mov ecx, [ebx + 12]
    mov edi, [ebx + 16]
.module:
    test ecx, ecx
    jz .memmap
    PRINT "module "
    mov eax, [edi]
    push ecx
    mov ecx, [edi + 8]
    call kfile32
    pop ecx
    PRINT "module cmdline="
    mov esi, [edi + 16]
    call kquoted32
    PUTC 10
    add edi, 32
    dec ecx
    jmp .module
.memmap:
    PRINT "e820 entries="
    HEX [ebx + 48], 2
    PUTC 10
    mov esi, [ebx + 40]
    mov ecx, [ebx + 48]
.e820:
    test ecx, ecx
    jz .mptable
    call kmemmap32
    add esi, 24
    dec ecx
    jmp .e820
.mptable:
    call kmptable32
    DONE

    LIB_ROUTINES
    KLIB_ROUTINES
    KDATA

    bits 64
wrong_entry:
    SERIAL_INIT
    PRINT "pvh: entered at e_entry in 64-bit mode", 10
    DONE
    LIB_ROUTINES
file_end:
