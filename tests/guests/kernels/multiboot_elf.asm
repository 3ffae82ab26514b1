; multiboot_elf - an i386 ELF32 with a multiboot v1 header (page-aligned modules, memory info) in
; its first 8 KiB: loaded by its PT_LOAD, entered at e_entry with EAX = 0x2BADB002.
%include "lib.inc"
%include "kreport.inc"
%include "elf.inc"
%include "multiboot.inc"
%define PHYS 0x100000
%define FLAGS (MB_PAGE_ALIGN | MB_MEMORY_INFO)

    bits 32
    org PHYS
ehdr:
    ELF32_EHDR mb_entry, 1
    ELF32_PHDR PT_LOAD, 0, PHYS, PHYS, file_end - ehdr, file_end - ehdr + 0x1000
    align 4
    dd MB_MAGIC, FLAGS, -(MB_MAGIC + FLAGS)

mb_entry:
    SAVE32
    SERIAL_INIT
    PRINT "multiboot_elf: entry", 10
    MULTIBOOT_REPORT
    DONE

    LIB_ROUTINES
    KLIB_ROUTINES
    KDATA
file_end:
