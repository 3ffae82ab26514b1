; pci: the PCI BIOS (int 1Ah AX=B101h-B10Dh) with a transitional virtio-blk disk at 00:01.0
; (tests/test_bios.py attaches it with transport=pci next to this boot disk). Each call's AH and
; CF are printed with the registers it returns; config writes are read back through the BIOS and
; through mechanism #1 itself, then undone.
%include "mbr.inc"
%define CF8 0xCF8
%define CFC 0xCFC
%define BLK 0x08                    ; devfn of 00:01.0
    MBR_START 7

; CALL_PCI function, bx, di, ecx - int 1Ah with AX = function and the given registers.
%macro CALL_PCI 4
    mov ax, %1
    mov bx, %2
    mov di, %3
    mov ecx, %4
    BIOS 0x1A
%endmacro

main:
    ; A guest's own config cycle in progress: the BIOS must leave CONFIG_ADDRESS as it was.
    mov dx, CF8
    mov eax, 0x8000_0810
    out dx, eax

    ; -- B101 installation check --------------------------------------------------------
    mov ax, 0xB101
    xor edx, edx
    mov edi, 0x1234_5678
    BIOS 0x1A
    PRINT "b101:"
    AH_CF
    PRINT " edx="
    HEX edx, 8
    PRINT " al="
    HEX eax, 2
    PRINT " bx="
    HEX ebx, 4
    PRINT " cl="
    HEX ecx, 2
    PRINT " edi="
    HEX edi, 8
    PRINT 10

    ; -- B102 find device, B103 find class code ---------------------------------------------
    mov si, 0
    mov dx, 0x1AF4
    mov cx, 0x1001
    call find_device
    mov si, 1
    mov dx, 0x1AF4
    mov cx, 0x1001
    call find_device
    mov si, 0
    mov dx, 0x8086
    mov cx, 0x1237
    call find_device
    mov si, 0
    mov dx, 0xFFFF
    mov cx, 0x1001
    call find_device

    mov si, 0
    mov ecx, 0x010000               ; mass storage, SCSI: virtio-blk
    call find_class
    mov si, 0
    mov ecx, 0xAB060000             ; host bridge (the top byte of ECX is ignored)
    call find_class
    mov si, 1
    mov ecx, 0x060000
    call find_class
    mov si, 0
    mov ecx, 0x0C0300               ; a USB UHCI controller: none
    call find_class

    mov dx, CF8
    in eax, dx
    PRINT "cf8 kept: "
    HEX eax, 8
    PRINT 10

    ; -- B106 special cycle: not supported ----------------------------------------------
    mov ax, 0xB106
    xor bx, bx
    xor edx, edx
    BIOS 0x1A
    PRINT "b106:"
    AH_CF
    PRINT 10

    ; -- reads --------------------------------------------------------------------------
    PRINT "reads:"
    CALL_PCI 0xB109, BLK, 0x00, 0
    call show_cx
    CALL_PCI 0xB109, BLK, 0x02, 0
    call show_cx
    CALL_PCI 0xB10A, BLK, 0x08, 0
    call show_ecx
    CALL_PCI 0xB108, BLK, 0x3D, 0xFFFF_FF00
    call show_ecx                   ; only CL changes: the pin
    CALL_PCI 0xB108, 0x0000, 0x0E, 0
    call show_cl                    ; the host bridge's header type
    CALL_PCI 0xB10A, 0x0028, 0x00, 0
    call show_ecx                   ; 00:05.0: nothing there, all-ones
    PRINT 10

    ; -- bad register numbers and an unknown function ------------------------------------
    PRINT "bad:"
    CALL_PCI 0xB109, BLK, 0x01, 0
    AH_CF
    CALL_PCI 0xB10A, BLK, 0x02, 0
    AH_CF
    CALL_PCI 0xB108, BLK, 0x100, 0
    AH_CF
    CALL_PCI 0xB10D, BLK, 0x3E, 0
    AH_CF
    CALL_PCI 0xB1FF, BLK, 0, 0
    AH_CF
    PRINT 10

    ; -- writes, read back through the BIOS and through the ports ---------------------------
    PRINT "b10b line=0b:"
    CALL_PCI 0xB10B, BLK, 0x3C, 0x0B
    AH_CF
    CALL_PCI 0xB108, BLK, 0x3C, 0
    call show_cl
    mov eax, 0x8000_083C
    call port_read
    CALL_PCI 0xB10B, BLK, 0x3C, 0x0E ; back to the IRQ emu assigned
    PRINT 10

    PRINT "b10d bar0 sizing:"
    CALL_PCI 0xB10A, BLK, 0x10, 0
    mov [SCRATCH + 0x20], ecx
    call show_ecx
    CALL_PCI 0xB10D, BLK, 0x10, 0xFFFF_FFFF
    AH_CF
    CALL_PCI 0xB10A, BLK, 0x10, 0
    call show_ecx
    CALL_PCI 0xB10D, BLK, 0x10, [SCRATCH + 0x20]
    CALL_PCI 0xB10A, BLK, 0x10, 0
    call show_ecx
    PRINT 10

    PRINT "b10c command=0000:"
    CALL_PCI 0xB109, BLK, 0x04, 0
    mov [SCRATCH + 0x20], cx
    call show_cx
    CALL_PCI 0xB10C, BLK, 0x04, 0
    AH_CF
    mov eax, 0x8000_0804
    call port_read
    CALL_PCI 0xB10C, BLK, 0x04, [SCRATCH + 0x20]
    CALL_PCI 0xB109, BLK, 0x04, 0
    call show_cx
    PRINT 10

    PRINT "pci: done", 10
    EXIT 0

; SI = index, DX = vendor, CX = device: print "b102 VVVV:DDDD #i: ah cf bx".
find_device:
    PRINT "b102 "
    HEX edx, 4
    CHAR ':'
    HEX ecx, 4
    PRINT " #"
    HEX esi, 1
    mov ax, 0xB102
    mov bx, 0xEEEE
    BIOS 0x1A
    CHAR ':'
    AH_CF
    PRINT " bx="                    ; left alone on failure
    HEX ebx, 4
    PRINT 10
    ret

; SI = index, ECX = class code.
find_class:
    PRINT "b103 "
    HEX ecx, 8
    PRINT " #"
    HEX esi, 1
    mov ax, 0xB103
    mov bx, 0xEEEE
    BIOS 0x1A
    CHAR ':'
    AH_CF
    PRINT " bx="                    ; left alone on failure
    HEX ebx, 4
    PRINT 10
    ret

show_cl:
    AH_CF
    PRINT " cl="
    HEX ecx, 2
    ret

show_cx:
    AH_CF
    PRINT " cx="
    HEX ecx, 4
    ret

show_ecx:
    AH_CF
    PRINT " ecx="
    HEX ecx, 8
    ret

; EAX = a CONFIG_ADDRESS: print " port=XXXXXXXX", the dword there read through 0xCF8/0xCFC.
port_read:
    mov dx, CF8
    out dx, eax
    mov dx, CFC
    in eax, dx
    PRINT " port="
    HEX eax, 8
    ret

    MBR_ROUTINES
    times 8 * 512 - ($ - $$) db 0
