; multiboot_aout - a flat binary whose multiboot header carries the load addresses (flag 16, the
; "a.out kludge"). The file goes to 1 MiB up to load_end_addr; the bytes after that in the file
; ("JUNK") must not be loaded, and bss up to bss_end_addr must be zero, which the kernel checks.
%include "lib.inc"
%include "kreport.inc"
%include "multiboot.inc"
%define FLAGS (MB_PAGE_ALIGN | MB_MEMORY_INFO | MB_AOUT_KLUDGE)

    bits 32
    org 0x100000
load_start:
    jmp mb_entry
    align 4
mb_header:
    dd MB_MAGIC, FLAGS, -(MB_MAGIC + FLAGS)
    dd mb_header                    ; header_addr
    dd load_start                   ; load_addr
    dd load_end                     ; load_end_addr
    dd load_end + 0x1000            ; bss_end_addr
    dd mb_entry                     ; entry_addr

mb_entry:
    SAVE32
    SERIAL_INIT
    PRINT "multiboot_aout: entry", 10
    PRINT "bss first="
    HEX [load_end], 8
    PRINT " last="
    HEX [load_end + 0x1000 - 4], 8
    PUTC 10
    MULTIBOOT_REPORT
    DONE

    LIB_ROUTINES
    KLIB_ROUTINES
    KDATA
    align 16
load_end:
    times 64 db "JUNK"              ; in the file, past load_end_addr: must not reach memory
