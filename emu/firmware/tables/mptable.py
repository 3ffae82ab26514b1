"""Intel MultiProcessor Specification 1.4 tables, laid out as Firecracker writes them (arch/x86_64/mptable.rs).

A kernel without ACPI tables finds its CPUs, the IOAPIC and the ISA interrupt wiring here.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Protocol

from emu import layout
from emu.devices import ioapic as ioapic_chip
from emu.errors import EmuError
from emu.firmware.tables.checksum import checksum
from emu.memory import GuestMemory

FLOATING_SIGNATURE = b"_MP_"
TABLE_SIGNATURE = b"PCMP"
SPEC_REV = 4  # MP spec 1.4
OEM_ID = b"EMU     "
PRODUCT_ID = b"000000000000"
APIC_VERSION = 0x14  # the local APICs' (KVM's and emu's)
CPU_SIGNATURE = 0x600  # family 6, as the CPUs report after reset
CPU_FEATURES = 0x201  # CPUID.1:EDX FPU | APIC
ISA_IRQS = ioapic_chip.PINS  # one I/O interrupt entry per IOAPIC pin

# Entry types (in the order the spec requires them to appear) and their fields.
PROCESSOR, BUS, IOAPIC, IO_INTERRUPT, LOCAL_INTERRUPT = range(5)
CPU_ENABLED, CPU_BSP = 1, 2
IOAPIC_USABLE = 1
INT_VECTORED, INT_NMI, INT_EXTINT = 0, 1, 3
POLARITY_TRIGGER_CONFORMS = 0  # "conforms to the bus": ISA is edge-triggered, active high
# PCI INTx as emu drives them (Machine.set_irq: 1 = asserted): level-triggered, active high, said
# explicitly rather than PCI's "conforms" (active low), since no inverter sits in front of the IOAPIC.
POLARITY_HIGH_LEVEL = 0x1 | (0x3 << 2)
ALL_LOCAL_APICS = 0xFF

FLOATING_SIZE = 16
HEADER_SIZE = 44


class PciRoute(Protocol):
    """One PCI slot's interrupt pin (1-4 = INTA-D) and the ISA line/IOAPIC pin it is wired to."""

    @property
    def device(self) -> int: ...
    @property
    def pin(self) -> int: ...
    @property
    def irq(self) -> int: ...


def build(base: int, cpus: int = 1, pci: Sequence[PciRoute] = (), irq0_pin: int = layout.IOAPIC_IRQ0_PIN) -> bytes:
    """The floating pointer at `base` followed by the configuration table it points to.

    One processor entry per CPU (APIC IDs 0..cpus-1, CPU 0 the BSP), then the IOAPIC (ID
    `layout.ioapic_id(cpus)`). ISA IRQ n is wired to IOAPIC pin n for all 24 pins, as Firecracker does
    and as KVM's default GSI routing delivers them; with `irq0_pin` = 2, IRQ 0 is on pin 2 instead
    (the MP spec's default PC configuration, and QEMU's), and ISA IRQ 2, the 8259 cascade that
    never interrupts, has no entry. The 8259 is reachable through LINT0 (ExtINT) and NMI arrives
    on LINT1 of every local APIC.

    With `pci` routes the table also has PCI bus 0 (the ISA bus becomes bus 1, as SeaBIOS numbers
    them: Linux matches a PCI entry's source bus against the PCI bus number) and one entry per
    slot pin, source IRQ = device << 2 | (pin - 1); the ISA entries for the lines PCI uses are left
    out so nothing tells the kernel to program those pins edge-triggered.
    """
    if not 1 <= cpus <= 254:
        raise EmuError(f"the MP table describes 1 to 254 CPUs, not {cpus}")
    pci_lines = {r.irq for r in pci}
    if not 0 <= irq0_pin < ISA_IRQS or irq0_pin in pci_lines:
        raise EmuError(f"ISA IRQ 0 cannot be on IOAPIC pin {irq0_pin}")
    ioapic = layout.ioapic_id(cpus)
    entries = bytearray()
    for cpu in range(cpus):
        flags = CPU_ENABLED | (CPU_BSP if cpu == 0 else 0)
        entries += struct.pack("<BBBBII8x", PROCESSOR, cpu, APIC_VERSION, flags, CPU_SIGNATURE, CPU_FEATURES)
    pci_bus, isa_bus = (0, 1) if pci else (None, 0)
    count = cpus
    if pci_bus is not None:
        entries += struct.pack("<BB6s", BUS, pci_bus, b"PCI   ")
        count += 1
    entries += struct.pack("<BB6s", BUS, isa_bus, b"ISA   ")
    entries += struct.pack("<BBBBI", IOAPIC, ioapic, ioapic_chip.VERSION, IOAPIC_USABLE, layout.IOAPIC_BASE)
    count += 2
    interrupt = struct.Struct("<BBHBBBB")  # type, kind, flags, source bus, source IRQ, APIC id, pin
    for irq in range(ISA_IRQS):
        if irq in pci_lines or (irq == irq0_pin and irq != 0):
            continue
        pin = irq0_pin if irq == 0 else irq
        entries += interrupt.pack(IO_INTERRUPT, INT_VECTORED, POLARITY_TRIGGER_CONFORMS, isa_bus, irq, ioapic, pin)
        count += 1
    for r in pci:
        source = r.device << 2 | (r.pin - 1)
        entries += interrupt.pack(IO_INTERRUPT, INT_VECTORED, POLARITY_HIGH_LEVEL, pci_bus, source, ioapic, r.irq)
        count += 1
    entries += interrupt.pack(LOCAL_INTERRUPT, INT_EXTINT, POLARITY_TRIGGER_CONFORMS, isa_bus, 0, 0, 0)
    entries += interrupt.pack(LOCAL_INTERRUPT, INT_NMI, POLARITY_TRIGGER_CONFORMS, isa_bus, 0, ALL_LOCAL_APICS, 1)
    count += 2

    table_addr = base + FLOATING_SIZE
    # No OEM table; the entry count; the local APIC address.
    fields = (TABLE_SIGNATURE, HEADER_SIZE + len(entries), SPEC_REV, 0, OEM_ID, PRODUCT_ID, 0, 0, count,
              layout.LAPIC_BASE, 0)  # fmt: skip
    header = bytearray(struct.pack("<4sHBB8s12sIHHII", *fields))
    header[7] = checksum(bytes(header) + bytes(entries))
    # Feature bytes all zero: a configuration table is present, and no IMCR (virtual wire mode).
    floating = bytearray(struct.pack("<4sIBBB5x", FLOATING_SIGNATURE, table_addr, 1, SPEC_REV, 0))
    floating[10] = checksum(bytes(floating))
    return bytes(floating + header + entries)


def write_mptable(memory: GuestMemory, cpus: int = 1, pci: Sequence[PciRoute] = (),
                  irq0_pin: int = layout.IOAPIC_IRQ0_PIN) -> int:  # fmt: skip
    """Write the MP table first-fit in the reserved EBDA area and return its address."""
    base = layout.MPTABLE_AREA_START
    blob = build(base, cpus, pci, irq0_pin)
    if base + len(blob) > layout.MPTABLE_AREA_END or not memory.contains(base, len(blob)):
        raise EmuError(f"the MP table for {cpus} CPUs ({len(blob)} bytes) does not fit at {base:#x}")
    memory.write(base, blob)
    return base
