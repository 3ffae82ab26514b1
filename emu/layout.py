"""Every fixed guest-physical address of the emu PC, in one place."""

from __future__ import annotations

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

# Low memory (real-mode world).
IVT_START = 0x0
BDA_START = 0x400
REAL_MODE_END = 0xA0000  # end of conventional memory (640 KiB)
EBDA_START = 0x9FC00  # last KiB of conventional memory, reserved in the e820 map
VGA_START = 0xA0000
VGA_TEXT = 0xB8000
BIOS_AREA_START = 0xE0000  # legacy BIOS area: the tail of the firmware ROM is copied here
BIOS_AREA_END = 0x100000
HIGH_MEMORY = 0x100000  # 1 MiB

# The MMIO hole below 4 GiB: RAM stops at MMIO_HOLE_START and resumes at 4 GiB.
MMIO_HOLE_START = 0xC000_0000
MMIO_HOLE_END = 0x1_0000_0000
FIRMWARE_TOP = 0x1_0000_0000  # the firmware ROM ends here (reset vector at FFFF_FFF0)
FIRMWARE_MAX_SIZE = 16 * MiB
RESET_VECTOR = 0xFFFF_FFF0

# KVM's private pages, needed on Intel VMX without unrestricted guest (real mode and unpaged
# protected mode are run through them): a one-page identity-mapped page table and a 3-page TSS.
# Same place as QEMU, just below the largest firmware ROM; the firmware's e820 must reserve them.
KVM_IDENTITY_MAP_ADDR = 0xFEFF_C000
KVM_TSS_ADDR = 0xFEFF_D000
KVM_PRIVATE_END = 0xFF00_0000

# Physical address space a backend maps (RAM plus an all-ones MMIO catch-all); beyond it, faults.
PHYS_ADDR_LIMIT = 1 << 36

IOAPIC_BASE = 0xFEC0_0000
LAPIC_BASE = 0xFEE0_0000

# Smallest guest we accept: real-mode area plus the 1 MiB of firmware and boot structures.
MIN_MEMORY = 2 * MiB
MAX_MEMORY = 64 * GiB

# Fixed I/O ports.
PORT_POST = 0x80
PORT_DEBUGCON = 0xE9
PORT_DEBUG_EXIT = 0xF4
PORT_COM1 = 0x3F8
PORT_I8042_DATA = 0x60
PORT_I8042_CMD = 0x64
PORT_SYSCTL_A = 0x92
IRQ_COM1 = 4
IRQ_I8042 = 1
IRQ_I8042_AUX = 12  # PS/2 mouse channel (no mouse is emulated)

# -- Direct kernel boot (emu/firmware/boot/, emu/firmware/tables/) -------------------------------

# -- BIOS (roms/bios.asm, emu/firmware/bios/) ----------------------------------------------------

# -- Interrupt controllers and timers (emu/devices/pic.py, pit.py, cmos.py) ----------------------
