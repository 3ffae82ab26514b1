; vmlinux - shaped like Linux's vmlinux: an x86-64 ELF64 whose PT_LOAD has a high virtual address
; (0xffffffff80100000) and its physical load address (1 MiB) in p_paddr, with a physical e_entry
; and some bss (p_memsz > p_filesz). Entered in long mode, it reports what it was given.
%include "lib.inc"
%include "kreport.inc"
%include "elf.inc"
%include "linux64.inc"
%define PHYS 0x100000
%define KERNEL_MAP 0xFFFFFFFF80000000

    bits 64
    org PHYS
ehdr:
    ELF64_EHDR start64, 1
    ELF64_PHDR PT_LOAD, 0, KERNEL_MAP + PHYS, PHYS, file_end - ehdr, file_end - ehdr + 0x2000

start64:
    SAVE64
    SERIAL_INIT
    PRINT "vmlinux: 64-bit entry", 10
    LINUX64_REPORT
    DONE

    LIB_ROUTINES
    KLIB_ROUTINES
    KDATA
file_end:
