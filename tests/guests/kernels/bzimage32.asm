; bzimage32 - a bzImage with boot protocol 2.15 but no XLF_KERNEL_64 (a 32-bit kernel): the loader
; must use the 32-bit boot protocol: flat protected mode at the load address, __BOOT_CS = 0x10,
; __BOOT_DS = 0x18, ESI = boot_params, EBX = EBP = EDI = 0, interrupts off. cmdline_size is 255.
%include "lib.inc"
%include "kreport.inc"
%include "bzimage.inc"

    BZIMAGE_SETUP 0x020F, 0x0000, 0x7FFFFFFF, 255

    bits 32
startup_32:
    SAVE32
    SERIAL_INIT
    PRINT "bzimage32: 32-bit entry", 10
    call kpm32regs
    mov ebx, [s_esi]
    call kzeropage32
    call kmptable32
    DONE

    LIB_ROUTINES
    KLIB_ROUTINES
    KDATA
    align 16
pm_end:
