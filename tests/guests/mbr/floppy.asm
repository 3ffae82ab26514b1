; floppy: booting from a 1.44 MB floppy image (drive 00h): geometry, CHS reads, the 64 KiB DMA
; boundary. tests/test_bios.py fills the image from sector 16 on with sectors that start with
; their own LBA.
%include "mbr.inc"
%define BUF 0x1000
    MBR_START 3

%macro FDCALL 1
    mov ax, %1
    mov dl, 0x00
    BIOS 0x13
%endmacro

main:
    PRINT "floppy: dl="
    HEX [ENTRY_DX], 2
    PRINT " equip="
    HEX [0x410], 4
    PRINT 10
    xor di, di
    FDCALL 0x0800
    PRINT "08h:"
    AH_CF
    PRINT " bx="
    HEX ebx, 4
    PRINT " cx="
    HEX ecx, 4
    PRINT " dx="
    HEX edx, 4
    PRINT " es:di="
    HEX es, 4
    CHAR ':'
    HEX edi, 4
    PRINT " spt="
    HEX [es:di + 4], 2
    xor ax, ax
    mov es, ax
    PRINT 10
    FDCALL 0x1500
    PRINT "15h:"
    AH_CF
    mov bx, 0x55AA
    FDCALL 0x4100
    PRINT " 41h:"
    AH_CF
    PRINT 10
    ; cylinder 1, head 1, sector 5 -> LBA (1 * 2 + 1) * 18 + 4 = 58
    mov bx, BUF
    mov cx, 0x0105
    mov dh, 1
    FDCALL 0x0202
    PRINT "02h c1h1s5 x2:"
    AH_CF
    PRINT " al="
    HEX eax, 2
    PRINT " lba="
    HEX [BUF], 8
    CHAR ','
    HEX [BUF + 512], 8
    PRINT 10
    mov bx, 0xFF00                  ; two sectors from 0xFF00 cross 0x10000
    mov cx, 0x0101
    mov dh, 0
    FDCALL 0x0202
    PRINT "02h across 64K:"
    AH_CF
    PRINT " al="
    HEX eax, 2
    PRINT " bda441="
    HEX [0x441], 2
    PRINT 10
    mov bx, BUF
    mov cx, 0x0113                  ; sector 19 on an 18-sector track
    mov dh, 0
    FDCALL 0x0201
    PRINT "02h sector 19:"
    AH_CF
    PRINT 10
    PRINT "floppy: done", 10
    EXIT 0

    MBR_ROUTINES
    times 4 * 512 - ($ - $$) db 0
