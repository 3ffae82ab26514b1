"""Intel MultiProcessor Specification 1.4 tables, laid out as Firecracker writes them (arch/x86_64/mptable.rs).

A kernel without ACPI tables finds its CPUs, the IOAPIC and the ISA interrupt wiring here.
"""

from __future__ import annotations

import struct

from emu import layout
from emu.errors import EmuError
from emu.memory import GuestMemory

FLOATING_SIGNATURE = b"_MP_"
TABLE_SIGNATURE = b"PCMP"
SPEC_REV = 4  # MP spec 1.4
OEM_ID = b"EMU     "
PRODUCT_ID = b"000000000000"
APIC_VERSION = 0x14
CPU_SIGNATURE = 0x600  # family 6, as the CPUs report after reset
CPU_FEATURES = 0x201  # CPUID.1:EDX FPU | APIC
ISA_IRQS = 24  # one I/O interrupt entry per IOAPIC pin

# Entry types (in the order the spec requires them to appear) and their fields.
PROCESSOR, BUS, IOAPIC, IO_INTERRUPT, LOCAL_INTERRUPT = range(5)
CPU_ENABLED, CPU_BSP = 1, 2
IOAPIC_USABLE = 1
INT_VECTORED, INT_NMI, INT_EXTINT = 0, 1, 3
POLARITY_TRIGGER_CONFORMS = 0  # "conforms to the bus": ISA is edge-triggered, active high
ALL_LOCAL_APICS = 0xFF

FLOATING_SIZE = 16
HEADER_SIZE = 44


def _checksum(data: bytes) -> int:
    """The byte that makes `data` (with that byte counted as zero) sum to 0 mod 256."""
    return -sum(data) & 0xFF


def build(base: int, cpus: int = 1) -> bytes:
    """The floating pointer at `base` followed by the configuration table it points to.

    ISA IRQ n is wired to IOAPIC pin n for all 24 pins, as Firecracker does and as KVM's default
    GSI routing delivers them (QEMU instead sends IRQ0 to pin 2 and says so with an override); the
    8259 is reachable through LINT0 (ExtINT) and NMI arrives on LINT1 of every local APIC.
    """
    if not 1 <= cpus <= 254:
        raise EmuError(f"the MP table describes 1 to 254 CPUs, not {cpus}")
    ioapic_id = cpus + 1
    entries = bytearray()
    for cpu in range(cpus):
        flags = CPU_ENABLED | (CPU_BSP if cpu == 0 else 0)
        entries += struct.pack("<BBBBII8x", PROCESSOR, cpu, APIC_VERSION, flags, CPU_SIGNATURE, CPU_FEATURES)
    entries += struct.pack("<BB6s", BUS, 0, b"ISA   ")
    entries += struct.pack("<BBBBI", IOAPIC, ioapic_id, APIC_VERSION, IOAPIC_USABLE, layout.IOAPIC_BASE)
    interrupt = struct.Struct("<BBHBBBB")  # type, kind, flags, source bus, source IRQ, APIC id, pin
    for irq in range(ISA_IRQS):
        entries += interrupt.pack(IO_INTERRUPT, INT_VECTORED, POLARITY_TRIGGER_CONFORMS, 0, irq, ioapic_id, irq)
    entries += interrupt.pack(LOCAL_INTERRUPT, INT_EXTINT, POLARITY_TRIGGER_CONFORMS, 0, 0, 0, 0)
    entries += interrupt.pack(LOCAL_INTERRUPT, INT_NMI, POLARITY_TRIGGER_CONFORMS, 0, 0, ALL_LOCAL_APICS, 1)
    count = cpus + 2 + ISA_IRQS + 2  # processors, bus, IOAPIC, I/O and local interrupts

    table_addr = base + FLOATING_SIZE
    fields = (TABLE_SIGNATURE, HEADER_SIZE + len(entries), SPEC_REV, 0, OEM_ID, PRODUCT_ID)
    fields += (0, 0, count, layout.LAPIC_BASE, 0)  # no OEM table; entry count; local APIC address
    header = bytearray(struct.pack("<4sHBB8s12sIHHII", *fields))
    header[7] = _checksum(bytes(header) + bytes(entries))
    # Feature bytes all zero: a configuration table is present, and no IMCR (virtual wire mode).
    floating = bytearray(struct.pack("<4sIBBB5x", FLOATING_SIGNATURE, table_addr, 1, SPEC_REV, 0))
    floating[10] = _checksum(bytes(floating))
    return bytes(floating + header + entries)


def write_mptable(memory: GuestMemory, cpus: int = 1) -> int:
    """Write the MP table first-fit in the reserved EBDA area and return its address."""
    base = layout.MPTABLE_AREA_START
    blob = build(base, cpus)
    if base + len(blob) > layout.MPTABLE_AREA_END or not memory.contains(base, len(blob)):
        raise EmuError(f"the MP table for {cpus} CPUs ({len(blob)} bytes) does not fit at {base:#x}")
    memory.write(base, blob)
    return base
