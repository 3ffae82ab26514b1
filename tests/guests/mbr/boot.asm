; boot: what the BIOS hands a boot sector (registers, BIOS data area, EBDA) and int 11h/12h.
%include "mbr.inc"
    MBR_START 2
main:
    PRINT "entry: ax="
    HEX [ENTRY_AX], 4
    PRINT " dl="
    HEX [ENTRY_DX], 2
    PRINT " sp="
    HEX [ENTRY_SP], 4
    PRINT " ds="
    HEX [ENTRY_DS], 4
    PRINT " es="
    HEX [ENTRY_ES], 4
    PRINT " ss="
    HEX [ENTRY_SS], 4
    mov ax, [ENTRY_FLAGS]
    and ax, 0x0200
    PRINT " if="
    HEX eax, 4
    PRINT 10, "bda: com1="
    HEX [0x400], 4
    PRINT " equip="
    HEX [0x410], 4
    PRINT " basemem="
    HEX [0x413], 4
    PRINT " ebda="
    HEX [0x40E], 4
    PRINT " hd="
    HEX [0x475], 2
    PRINT " ebda[0]="
    push es
    push word [0x40E]
    pop es
    HEX [es:0], 2
    pop es
    int 0x12
    PRINT 10, "int12="
    HEX eax, 4
    int 0x11
    PRINT " int11="
    HEX eax, 4
    PRINT " ivt13="
    HEX [0x13 * 4 + 2], 4
    PRINT 10
    EXIT 0

    MBR_ROUTINES
    times 1536 - ($ - $$) db 0
