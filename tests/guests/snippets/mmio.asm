; mmio: memory-mapped I/O from 32-bit protected mode. The test registers a scratch device with
; four 32-bit registers at MMIO_BASE (in the MMIO hole, out of real mode's reach); we write and
; read back 8-, 16- and 32-bit values and read an unclaimed address, which must float to
; all-ones. Only plain `mov` loads and stores: each must reach the device as exactly one access
; of its width, in program order (the test checks the device's log).
%include "lib.inc"
%ifndef MMIO_BASE
  %define MMIO_BASE 0xD0000000
%endif
%ifndef MMIO_UNCLAIMED
  %define MMIO_UNCLAIMED 0xD0100000
%endif
    SNIPPET_START
    PRINT "mmio: entering protected mode", 10
    ENTER_PM32

    mov byte [MMIO_BASE + 0], 0x11
    movzx ebx, byte [MMIO_BASE + 0]
    mov word [MMIO_BASE + 4], 0x2233
    movzx ecx, word [MMIO_BASE + 4]
    mov dword [MMIO_BASE + 8], 0x44556677
    mov edx, [MMIO_BASE + 8]
    mov dword [MMIO_BASE + 12], 0x8899AABB
    mov esi, [MMIO_BASE + 12]
    mov edi, [MMIO_UNCLAIMED]

    PRINT "mmio: b="
    PUTHEX ebx, 2
    PRINT " w="
    PUTHEX ecx, 4
    PRINT " d="
    PUTHEX edx, 8
    PRINT " d="
    PUTHEX esi, 8
    PRINT " unclaimed="
    PUTHEX edi, 8
    PUTC 10
    HALT

bits 16
    LIB_ROUTINES
bits 32
    LIB_ROUTINES
    STD_GDT
