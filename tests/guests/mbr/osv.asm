; osv: an OSv-style loader (boot16.S). It reads a payload of many megabytes to 1 MiB and above
; in 32 KiB chunks with int 13h 42h into a buffer below 1 MiB, entering protected mode after
; every read to copy the chunk up and returning to real mode for the next BIOS call. Then it
; prints a checksum of what landed (rol 1 / xor over the dwords, which depends on the order).
;
; Disk layout (tests/test_bios.py): this code, the payload length in sectors as a dword at the
; start of sector 15, the payload from sector 16 on.
%include "mbr.inc"
%define HEADER_LBA   15
%define PAYLOAD_LBA  16
%define CHUNK        64             ; sectors: 32 KiB
%define BOUNCE_SEG   0x1000         ; buffer at 0x10000
%define DEST         0x100000
%define DAP          0x0600
%define HEADER       0x0800
%define STACK        0x7C00

%define V_LEFT       SCRATCH + 0x20 ; sectors still to read
%define V_LBA        SCRATCH + 0x24
%define V_DEST       SCRATCH + 0x28
%define V_BYTES      SCRATCH + 0x2C ; size of the current chunk
%define V_SUM        SCRATCH + 0x30
%define V_CHUNKS     SCRATCH + 0x34
; TO_PM32 - from real mode into 32-bit protected mode, flat data segments, interrupts off.
%macro TO_PM32 0
    cli
    lgdt [gdtr]
    mov eax, cr0
    or al, 1
    mov cr0, eax
    jmp 0x08:%%pm
bits 32
%%pm:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
%endmacro

; TO_REAL - from 32-bit protected mode back to real mode (segments 0, SP = STACK, interrupts on).
%macro TO_REAL 0
    jmp 0x18:%%pm16
bits 16
%%pm16:
    mov ax, 0x20
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov eax, cr0
    and al, ~1
    mov cr0, eax
    jmp 0x0000:%%real
%%real:
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, STACK
    sti
%endmacro

    MBR_START 3

main:
    mov byte [DAP], 16
    mov byte [DAP + 1], 0
    mov word [DAP + 2], 1
    mov word [DAP + 4], HEADER
    mov word [DAP + 6], 0
    mov dword [DAP + 8], HEADER_LBA
    mov dword [DAP + 12], 0
    mov si, DAP
    mov ah, 0x42
    mov dl, [BOOT_DRIVE]
    BIOS 0x13
    jc fail
    mov eax, [HEADER]
    mov [V_LEFT], eax
    mov dword [V_LBA], PAYLOAD_LBA
    mov dword [V_DEST], DEST
    mov dword [V_CHUNKS], 0
    PRINT "osv: loading "
    HEX [V_LEFT], 8
    PRINT " sectors to 1 MiB", 10

.chunk:
    mov eax, [V_LEFT]
    test eax, eax
    jz .loaded
    cmp eax, CHUNK
    jbe .size
    mov eax, CHUNK
.size:
    mov [DAP + 2], ax
    shl eax, 9
    mov [V_BYTES], eax
    mov word [DAP + 4], 0
    mov word [DAP + 6], BOUNCE_SEG
    mov eax, [V_LBA]
    mov [DAP + 8], eax
    mov si, DAP
    mov ah, 0x42
    mov dl, [BOOT_DRIVE]
    BIOS 0x13
    jc fail
    movzx eax, word [DAP + 2]
    sub [V_LEFT], eax
    add [V_LBA], eax

    ; Protected mode, copy the chunk up, and back.
    TO_PM32
    mov esi, BOUNCE_SEG << 4
    mov edi, [V_DEST]
    mov ecx, [V_BYTES]
    add [V_DEST], ecx
    shr ecx, 2
    ; A plain loop, not `rep movsd`: Unicorn 2.1.4 re-executes the instructions before a
    ; `rep movs` when another thread's emu_stop lands inside it (see the BIOS report).
.copy:
    mov eax, [esi]
    mov [edi], eax
    add esi, 4
    add edi, 4
    dec ecx
    jnz .copy
    TO_REAL
    inc dword [V_CHUNKS]
    jmp .chunk

.loaded:
    ; Checksum in protected mode (the payload is above 1 MiB), result back in real mode.
    TO_PM32
    mov esi, DEST
    mov ecx, [V_DEST]
    sub ecx, esi
    shr ecx, 2
    xor edx, edx
.sum:
    rol edx, 1
    xor edx, [esi]
    add esi, 4
    dec ecx
    jnz .sum
    mov [V_SUM], edx
    TO_REAL
    PRINT "osv: chunks="
    HEX [V_CHUNKS], 8
    PRINT " end="
    HEX [V_DEST], 8
    PRINT " checksum="
    HEX [V_SUM], 8
    PRINT 10
    EXIT 0

fail:
    PRINT "osv: int 13h failed:"
    AH_CF
    PRINT 10
    EXIT 0x7E

    align 8
gdt:
    dq 0
    dq 0x00CF9B000000FFFF           ; 0x08: 32-bit code, flat
    dq 0x00CF93000000FFFF           ; 0x10: 32-bit data, flat
    dq 0x00009B000000FFFF           ; 0x18: 16-bit code, base 0, 64 KiB
    dq 0x000093000000FFFF           ; 0x20: 16-bit data, base 0, 64 KiB
gdt_end:
gdtr:
    dw gdt_end - gdt - 1
    dd gdt

    MBR_ROUTINES
    times 4 * 512 - ($ - $$) db 0
