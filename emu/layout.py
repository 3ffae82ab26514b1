"""Every fixed guest-physical address of the emu PC, in one place."""

from __future__ import annotations

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

# Low memory (real-mode world).
BDA_START = 0x400
REAL_MODE_END = 0xA0000  # end of conventional memory (640 KiB)
EBDA_START = 0x9FC00  # last KiB of conventional memory, reserved in the e820 map
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
# Unicorn's MSR intercept tables (emu/backends/unicorn/msr_intercept.py), served from Python just
# above the guest's physical address space: no page table of the guest can reach them.
UNICORN_VMCB_ADDR = PHYS_ADDR_LIMIT
UNICORN_MSRPM_ADDR = PHYS_ADDR_LIMIT + 0x2000
UNICORN_INTERCEPT_SIZE = 0x4000

IOAPIC_BASE = 0xFEC0_0000
IOAPIC_SIZE = 0x1000  # one page decoded: IOREGSEL at +0x00, IOWIN at +0x10, the rest reads 0
HPET_BASE = 0xFED0_0000  # the address PC chipsets and QEMU use (ACPI HPET table, HPET number 0)
HPET_SIZE = 0x400  # one event timer block: 1 KiB of registers (IA-PC HPET spec 2.3)
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
# Low-memory boot structures, at Firecracker's addresses (arch/x86_64/layout.rs and regs.rs) so
# a kernel sees the same state under emu as under Firecracker. Everything below 1 MiB belongs to
# these structures and the legacy areas; a kernel must load at or above KERNEL_MIN_ADDR.
BOOT_GDT_ADDR = 0x500  # 4 descriptors (null, code, data, TSS)
BOOT_IDT_ADDR = 0x520  # one zero descriptor, IDTR limit 7: any exception before the kernel's IDT shuts down
BOOT_INFO_ADDR = 0x6000  # PVH hvm_start_info or the multiboot information structure
PVH_MODLIST_ADDR = 0x6040  # hvm_modlist_entry[] (initrd first, then each --module)
MULTIBOOT_MODS_ADDR = 0x6200  # multiboot module list (16-byte entries)
MULTIBOOT_MMAP_ADDR = 0x6C00  # multiboot memory map (24-byte size-prefixed entries)
BOOT_INFO_END = 0x7000
ZERO_PAGE_ADDR = 0x7000  # Linux struct boot_params (4 KiB)
PVH_MEMMAP_ADDR = 0x7000  # hvm_memmap_table_entry[] (PVH has no zero page)
BOOT_STACK_TOP = 0x8FF0  # RSP/RBP at entry
BOOT_PML4_ADDR = 0x9000  # long-mode entry page tables: the first GiB identity-mapped, 2 MiB pages
BOOT_PDPT_ADDR = 0xA000
BOOT_PD_ADDR = 0xB000
BOOT_IDENTITY_MAP_END = 1 * GiB
CMDLINE_ADDR = 0x20000
CMDLINE_MAX = 2048  # bytes including the NUL (Linux's COMMAND_LINE_SIZE on x86)
BOOT_STRINGS_ADDR = 0x20800  # module command lines and the multiboot boot loader name
BOOT_STRINGS_END = 0x30000
KERNEL_MIN_ADDR = HIGH_MEMORY
# The MP table goes first-fit into the last KiB of conventional memory (reserved in the e820 map),
# where Linux scans for it (as Firecracker places it).
MPTABLE_AREA_START = EBDA_START
MPTABLE_AREA_END = REAL_MODE_END
# ACPI tables (`--acpi on`, emu/firmware/tables/acpi.py): the RSDP at the start, 16-byte aligned
# in the 0xE0000-0xFFFFF range Linux scans, inside the e820-reserved BIOS area (no firmware runs
# on a direct boot, so nothing else is there).
ACPI_AREA_START = BIOS_AREA_START
ACPI_AREA_END = BIOS_AREA_START + 0x8000
# The ACPI PM1a event (+0, 4 bytes) and control (+4, 2) blocks and the PM timer (+8, 4): the
# port QEMU's PIIX4 uses. The SCI goes on IRQ 3, the one ISA line nothing else of emu uses (COM2's
# line; emu has no COM2).
PORT_ACPI_PM_BASE = 0x600
# Its register blocks, relative to the base (the same split as QEMU's PIIX4).
ACPI_PM1_EVT_OFF, ACPI_PM1_EVT_LEN = 0, 4  # PM1_STS (2 bytes) then PM1_EN (2 bytes)
ACPI_PM1_CNT_OFF, ACPI_PM1_CNT_LEN = 4, 2
ACPI_PM_TMR_OFF, ACPI_PM_TMR_LEN = 8, 4
ACPI_PM_BLOCK_SIZE = 12
IRQ_ACPI_SCI = 3
ACPI_SLP_TYP_S5 = 5  # PM1_CNT.SLP_TYP that the DSDT's \_S5 names: with SLP_EN, the machine powers off

# -- BIOS (roms/bios.asm, emu/firmware/bios/) ----------------------------------------------------
# The ROM's service stubs save the caller's registers to BIOS_REGS and write the vector number to
# PORT_BIOS_CALL; Python does the service and the stub reloads the registers. roms/bios.asm holds
# the same numbers (tests/test_bios.py checks they agree).
PORT_BIOS_CALL = 0x0500  # no ISA device decodes it on a PC
BIOS_REGS = 0xEFF00  # register block, in the reserved legacy BIOS area, off every code page
BIOS_REGS_SIZE = 0x40
BIOS_BOOT_SP = 0x7C00  # SS:SP = 0000:7C00 when the boot sector is entered
BOOT_SECTOR = 0x7C00

# -- Interrupt controllers and timers (emu/devices/pic.py, pit.py, cmos.py) ----------------------
# Two cascaded 8259A PICs (slave on master IR2) with the PIIX/ICH edge/level control registers.
PORT_PIC_MASTER = 0x20  # command (A0=0), data (A0=1) at +1
PORT_PIC_SLAVE = 0xA0
PORT_ELCR = 0x4D0  # 0x4D0 master (IRQ 0-7), 0x4D1 slave (IRQ 8-15)
PIC_CASCADE_IRQ = 2
# 8254 PIT at 0x40-0x43 (channel 0 on IRQ 0, channel 2 gated by and read back through port 0x61).
PORT_PIT = 0x40
PORT_SYSCTL_B = 0x61  # "NMI status and control": gate 2, speaker, refresh toggle, OUT2
PIT_HZ = 1_193_182
IRQ_PIT = 0
# The IOAPIC pin ISA IRQ 0 (the PIT, HPET timer 0 in legacy replacement mode) arrives on, as the MP
# table and the MADT say. 0: KVM's default GSI routing (GSI n -> pin n, what emu's KVM backend
# uses); 2 would be the MP spec's default PC wiring and QEMU's, announced by an override.
IOAPIC_IRQ0_PIN = 0
# IOAPIC pins an HPET timer may be routed to outside legacy replacement mode (Tn_INT_ROUTE_CAP):
# above the ISA range, where no emulated device and no 8259 input sits.
HPET_IRQ_PINS = (20, 21, 22, 23)
# MC146818 RTC and CMOS RAM: index port (bit 7 masks NMI), data port; periodic/alarm/update on IRQ 8.
PORT_CMOS_INDEX = 0x70
PORT_CMOS_DATA = 0x71
IRQ_RTC = 8
CMOS_FLOPPY_TYPES = 0x10  # drive 0 in bits 7:4, drive 1 in bits 3:0
CMOS_EQUIPMENT = 0x14
CMOS_BASE_MEM_KIB = 0x15  # 0x15/0x16: conventional memory in KiB (640)
CMOS_EXT_MEM_KIB = 0x17  # 0x17/0x18: KiB above 1 MiB, capped at 0xFFFF
CMOS_CHECKSUM = 0x2E  # 0x2E high byte, 0x2F low byte: sum of 0x10-0x2D
CMOS_EXT_MEM_KIB2 = 0x30  # 0x30/0x31: copy of 0x17/0x18
CMOS_CENTURY = 0x32
CMOS_MEM_ABOVE_16M = 0x34  # 0x34/0x35: 64 KiB blocks from 16 MiB to the top of low RAM
CMOS_MEM_ABOVE_4G = 0x5B  # 0x5B-0x5D: 64 KiB blocks above 4 GiB

# -- virtio-mmio (emu/devices/virtio/transport/mmio.py) --------------------------------------------
# 4 KiB register windows from Firecracker's first slot address (the hole's first 256 MiB stay
# free for PCI BARs), one interrupt line each. The IRQs are ISA lines a PC leaves free (no LPT, no floppy controller;
# PCI uses PCI_INTX_IRQS), usable the same way under emu's 8259s and KVM's in-kernel PIC/IOAPIC (MP table pins
# 0-23 are identity-mapped); Linux announces nothing else on them.
VIRTIO_MMIO_BASE = 0xD000_0000
VIRTIO_MMIO_SLOT_SIZE = 0x1000
VIRTIO_MMIO_IRQS = (5, 6, 7, 10, 11)  # slot n interrupts on VIRTIO_MMIO_IRQS[n]

# -- PCI (emu/devices/pci/) ------------------------------------------------------------------------
# Configuration mechanism #1. emu assigns BARs itself when it builds the machine (as firmware
# would): memory BARs from the start of the MMIO hole up to the virtio-mmio slots, I/O BARs in
# the window PC chipsets leave to PCI. Nothing else lives there (IOAPIC, LAPIC, KVM's pages and
# the firmware ROM are all above 0xFEC00000).
PORT_PCI_CONFIG_ADDRESS = 0xCF8
PORT_PCI_CONFIG_DATA = 0xCFC
PCI_MMIO_BASE = MMIO_HOLE_START
# Firecracker's boot timer (--boot-timer only): the first page of its 32-bit MMIO window, which is
# where emu's PCI window starts, and the port older Firecracker releases used.
FIRECRACKER_BOOT_TIMER_BASE = 0xC000_0000
FIRECRACKER_BOOT_TIMER_SIZE = 0x1000
PORT_FIRECRACKER_BOOT_TIMER = 0x3F0
PCI_MMIO_END = VIRTIO_MMIO_BASE
PCI_IO_BASE = 0xC000
PCI_IO_END = 0x1_0000
PCI_FIRST_SLOT = 1  # device numbers of emu's PCI devices on bus 0 (the host bridge is 00:00.0)
PCI_SLOTS = 8  # devices 1-8
# INTA-D of slot d are wired to PCI_INTX_IRQS[(d + pin) % 3] (the usual swizzle), level-triggered
# and shared. ISA lines no emulated device uses and distinct from the virtio-mmio lines: 9 (ACPI's
# SCI on a PC; emu's is IRQ_ACPI_SCI) and 14/15 (the IDE channels, not emulated).
PCI_INTX_IRQS = (9, 14, 15)


def ioapic_id(cpus: int) -> int:
    """The IOAPIC's APIC ID: after the CPUs', as Firecracker numbers it (MP table, MADT, the chip)."""
    return cpus + 1
