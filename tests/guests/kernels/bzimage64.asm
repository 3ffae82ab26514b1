; bzimage64 - a bzImage with boot protocol 2.15 and XLF_KERNEL_64: the loader must enter it in
; long mode at load address + 0x200. Its 32-bit entry (at the load address) only complains.
; initrd_addr_max is 64 MiB - 1, so with more RAM the initrd must still end below 64 MiB.
%include "lib.inc"
%include "kreport.inc"
%include "linux64.inc"
%include "bzimage.inc"

    BZIMAGE_SETUP 0x020F, 0x0001, 0x03FFFFFF, 2047

    bits 32
startup_32:
    mov esp, kstack_top
    SERIAL_INIT
    PRINT "bzimage64: entered at the 32-bit entry", 10
    DONE
    LIB_ROUTINES

    times 0x200 - ($ - pm_start) db 0
    bits 64
startup_64:
    SAVE64
    SERIAL_INIT
    PRINT "bzimage64: 64-bit entry", 10
    LINUX64_REPORT
    DONE

    LIB_ROUTINES
    KLIB_ROUTINES
    KDATA
    align 16
pm_end:
