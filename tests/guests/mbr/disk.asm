; disk: int 13h on hard disk 80h - EDD check and parameters, CHS and LBA transfers, writes, and
; the error cases. tests/test_bios.py builds the image: this code, then from sector 16 on a
; pattern whose sectors start with their own LBA as a dword.
%include "mbr.inc"
%define BUF     0x1000
%define DAP     0x0600
%define PARAMS  0x0680
    MBR_START 7

; DISKCALL ah_al - int 13h with AX set and DL = 80h.
%macro DISKCALL 1
    mov ax, %1
    mov dl, 0x80
    BIOS 0x13
%endmacro

; DAP_SET count, segment, offset, lba - fill the disk address packet at DAP (16 bytes).
%macro DAP_SET 4
    mov byte [DAP], 16
    mov byte [DAP + 1], 0
    mov word [DAP + 2], %1
    mov word [DAP + 4], %3
    mov word [DAP + 6], %2
    mov dword [DAP + 8], %4
    mov dword [DAP + 12], 0
%endmacro

main:
    mov bx, 0x55AA
    DISKCALL 0x4100
    PRINT "41h:"
    AH_CF
    PRINT " bx="
    HEX ebx, 4
    PRINT " cx="
    HEX ecx, 4
    PRINT 10

    DISKCALL 0x0800
    PRINT "08h:"
    AH_CF
    PRINT " cx="
    HEX ecx, 4
    PRINT " dx="
    HEX edx, 4
    PRINT 10

    DISKCALL 0x1500
    PRINT "15h:"
    AH_CF
    PRINT " cx:dx="
    HEX ecx, 4
    HEX edx, 4
    PRINT 10

    mov word [PARAMS], 0x42
    mov si, PARAMS
    DISKCALL 0x4800
    PRINT "48h:"
    AH_CF
    PRINT " size="
    HEX [PARAMS], 4
    PRINT " flags="
    HEX [PARAMS + 2], 4
    PRINT " chs="
    HEX [PARAMS + 4], 4
    CHAR '/'
    HEX [PARAMS + 8], 2
    CHAR '/'
    HEX [PARAMS + 12], 2
    PRINT " sectors="
    HEX [PARAMS + 16], 8
    PRINT " bps="
    HEX [PARAMS + 24], 4
    PRINT " dpte="
    HEX [PARAMS + 26], 8
    PRINT " key="
    HEX [PARAMS + 30], 4
    PRINT " bus="
    mov eax, [PARAMS + 36]
    mov [SCRATCH + 0x20], eax
    mov byte [SCRATCH + 0x24], 0
    mov si, SCRATCH + 0x20
    call puts
    PRINT "sum="
    xor ax, ax
    mov si, PARAMS + 0x1E
    mov cx, 0x42 - 0x1E
.sum:
    add al, [si]
    inc si
    loop .sum
    HEX eax, 2
    PRINT 10

    ; CHS read: cylinder 1, head 2, sector 3 -> LBA (1 * 16 + 2) * 63 + 2 = 1136.
    mov bx, BUF
    mov cx, 0x0103
    mov dh, 2
    DISKCALL 0x0202
    PRINT "02h c1h2s3 x2:"
    AH_CF
    PRINT " al="
    HEX eax, 2
    PRINT " lba="
    HEX [BUF], 8
    CHAR ','
    HEX [BUF + 512], 8
    PRINT 10

    DAP_SET 3, 0x0000, BUF, 5000
    mov si, DAP
    DISKCALL 0x4200
    PRINT "42h lba 5000 x3:"
    AH_CF
    PRINT " count="
    HEX [DAP + 2], 4
    PRINT " lba="
    HEX [BUF], 8
    CHAR ','
    HEX [BUF + 512], 8
    CHAR ','
    HEX [BUF + 1024], 8
    PRINT 10

    ; 64-bit flat buffer address (packet of 24 bytes, buffer FFFF:FFFF): 2 MiB, checked by the test.
    DAP_SET 2, 0xFFFF, 0xFFFF, 300
    mov byte [DAP], 24
    mov dword [DAP + 16], 0x200000
    mov dword [DAP + 20], 0
    mov si, DAP
    DISKCALL 0x4200
    PRINT "42h flat 2M:"
    AH_CF
    PRINT " count="
    HEX [DAP + 2], 4
    PRINT 10

    ; Write with 43h, then read it back with 42h.
    mov di, BUF
    mov cx, 512
    mov al, 'W'
    rep stosb
    DAP_SET 1, 0x0000, BUF, 200
    mov si, DAP
    DISKCALL 0x4300
    PRINT "43h lba 200:"
    AH_CF
    mov dword [BUF], 0
    DAP_SET 1, 0x0000, BUF, 200
    mov si, DAP
    DISKCALL 0x4200
    PRINT " readback="
    HEX [BUF], 8
    PRINT 10

    ; Write with 03h at CHS 0/1/1 (LBA 63).
    mov di, BUF
    mov cx, 512
    mov al, 'C'
    rep stosb
    mov bx, BUF
    mov cx, 0x0001
    mov dh, 1
    DISKCALL 0x0301
    PRINT "03h c0h1s1:"
    AH_CF
    PRINT " al="
    HEX eax, 2
    PRINT 10

    ; Functions that only report success.
    PRINT "00h"
    DISKCALL 0x0000
    AH_CF
    PRINT " 0ch"
    mov cx, 5
    DISKCALL 0x0C00
    AH_CF
    PRINT " 0dh"
    DISKCALL 0x0D00
    AH_CF
    PRINT " 10h"
    DISKCALL 0x1000
    AH_CF
    PRINT 10
    PRINT "04h"
    mov cx, 0x0001
    mov dh, 0
    DISKCALL 0x0404
    AH_CF
    PRINT " al="
    HEX eax, 2
    DAP_SET 8, 0, BUF, 10
    mov si, DAP
    PRINT " 44h"
    DISKCALL 0x4400
    AH_CF
    DAP_SET 0, 0, BUF, 10
    mov si, DAP
    PRINT " 47h"
    DISKCALL 0x4700
    AH_CF
    PRINT 10

    ; Errors.
    mov bx, BUF
    mov cx, 0x0001
    mov dh, 0
    DISKCALL 0x0200
    PRINT "02h count 0:"
    AH_CF
    PRINT " al="
    HEX eax, 2
    PRINT 10
    mov cx, 0x0000
    DISKCALL 0x0201
    PRINT "02h sector 0:"
    AH_CF
    PRINT 10
    mov cx, 0x2001                  ; cylinder 32: beyond the 16 cylinders
    DISKCALL 0x0201
    PRINT "02h cylinder 32:"
    AH_CF
    PRINT " bda474="
    HEX [0x474], 2
    DISKCALL 0x0100
    PRINT " 01h:"
    AH_CF
    PRINT 10
    DAP_SET 1, 0, BUF, 16384
    mov si, DAP
    DISKCALL 0x4200
    PRINT "42h lba end:"
    AH_CF
    PRINT " count="
    HEX [DAP + 2], 4
    PRINT 10
    DAP_SET 4, 0, BUF, 16382
    mov si, DAP
    DISKCALL 0x4200
    PRINT "42h across end:"
    AH_CF
    PRINT " count="
    HEX [DAP + 2], 4
    PRINT " lba="
    HEX [BUF + 512], 8
    PRINT 10
    DAP_SET 1, 0xFFFF, 0xFFFF, 20
    mov byte [DAP], 24
    mov dword [DAP + 16], 0xD0000000
    mov dword [DAP + 20], 0
    mov si, DAP
    DISKCALL 0x4200
    PRINT "42h buffer in mmio:"
    AH_CF
    PRINT " count="
    HEX [DAP + 2], 4
    PRINT 10
    DAP_SET 1, 0, BUF, 0
    mov byte [DAP], 8
    mov si, DAP
    DISKCALL 0x4200
    PRINT "42h packet size 8:"
    AH_CF
    PRINT 10
    DISKCALL 0x9900
    PRINT "99h:"
    AH_CF
    mov ax, 0x0201
    mov cx, 0x0001
    mov dx, 0x0081
    mov bx, BUF
    BIOS 0x13
    PRINT " drive 81h:"
    AH_CF
    mov bx, 0x1234
    DISKCALL 0x4100
    PRINT " 41h bad bx:"
    AH_CF
    PRINT 10

    ; A read across a 64 KiB boundary and past the segment end: allowed on a hard disk.
    mov ax, 0x0FF0
    mov es, ax
    mov bx, 0xFF00                  ; linear 0x1FE00: the second sector lands at 0x20000
    mov cx, 0x0011                  ; sector 17: LBA 16
    mov dh, 0
    DISKCALL 0x0202
    PRINT "02h across 64K:"
    AH_CF
    PRINT " lba="
    mov ax, 0x2000
    mov es, ax
    HEX [es:0], 8
    xor ax, ax
    mov es, ax
    PRINT 10
    PRINT "disk: done", 10
    EXIT 0

    MBR_ROUTINES
    times 8 * 512 - ($ - $$) db 0
