"""ACPI tables for direct kernel boot (`--acpi on`): RSDP, RSDT/XSDT, FADT + FACS, DSDT, a MADT
when the machine has local APICs, and an HPET table when it has an HPET.

Why each choice (Linux 6.1, arch/x86/kernel/acpi/boot.c and drivers/acpi):
- The FADT is a full (not hardware-reduced) one: HW_REDUCED_ACPI makes x86 Linux replace the
  8259 with `null_legacy_pic` and drop the PIT, which under Unicorn are the only interrupt
  controller and timer. A full FADT needs PM1a event/control blocks and a PM timer; they are
  emu/devices/acpi_pm.py. SMI_CMD = 0 means "already in ACPI mode" (ACPICA's acpi_hw_get_mode),
  and PM1a_CNT reads back with SCI_EN set.
- The MADT exists only with local APICs (`lapic`): without one Linux keeps PIC mode ("ACPI wants
  UP PIC mode"). It lists one enabled local APIC per CPU (APIC IDs and processor UIDs 0..n-1),
  the IOAPIC with the MP table's ID (layout.ioapic_id), ISA IRQ n on pin n as the MP table
  says (with `irq0_pin` 2, an override sends IRQ 0 to GSI 2), an override giving the SCI
  level/active-high (ACPI's default for an SCI is active-low, which would read as asserted on an
  idle line), and NMI on LINT1 of every local APIC.
- The HPET table (IA-PC HPET spec 3.2.4) gives the block's ID (its capabilities register's low
  dword), its base, HPET number 0 and the minimum periodic tick; no page protection.
- The DSDT lists each virtio-mmio device as LNRO0005 (the ACPI ID Linux's virtio_mmio driver
  matches, as Firecracker does) with its 4 KiB window and its edge-triggered ISA interrupt.
  PCI0 (PNP0A03) is there too: with ACPI, x86 Linux scans PCI only below such a host bridge.

Everything sits in ACPI_AREA (emu/layout.py), inside the e820-reserved legacy BIOS area, with the
RSDP at its start: 16-byte aligned in the 0xE0000-0xFFFFF area Linux scans when no boot protocol
field gives the address.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from emu import layout
from emu.devices import hpet
from emu.errors import EmuError
from emu.firmware.boot.placement import align_up
from emu.firmware.tables import aml
from emu.firmware.tables.checksum import checksum
from emu.firmware.tables.mptable import POLARITY_HIGH_LEVEL, PciRoute
from emu.memory import GuestMemory

OEM_ID = b"EMU   "
OEM_TABLE_ID = b"EMUPC   "
OEM_REVISION = 1
CREATOR_ID = b"EMU "
CREATOR_REVISION = 1
HEADER = struct.Struct("<4sIBB6s8sI4sI")  # signature length revision checksum oem ids, creator
RSDP = struct.Struct("<8sB6sBIIQB3x")
GAS = struct.Struct("<BBBBQ")  # space id, bit width, bit offset, access size, address
SPACE_SYSTEM_MEMORY, SPACE_SYSTEM_IO = 0, 1

FADT_SIZE = 276  # ACPI 6.x layout (through the hypervisor vendor identity)
FADT_REVISION, FADT_MINOR = 6, 3
DSDT_REVISION = 2  # 64-bit integers
MADT_REVISION = 5
HPET_REVISION = 1
FACS_SIZE = 64
FACS_ALIGN = 64


class FadtFlag:
    WBINVD = 1 << 0
    PROC_C1 = 1 << 2
    PWR_BUTTON = 1 << 4  # set: no fixed-feature power button
    SLP_BUTTON = 1 << 5  # set: no fixed-feature sleep button
    FIX_RTC = 1 << 6  # set: RTC wake status is not in the fixed register space


class BootArch:
    LEGACY_DEVICES = 1 << 0  # ISA devices (COM1, the RTC) are present
    I8042 = 1 << 1  # the keyboard controller is present (else Linux skips probing it)


C2_DISABLED, C3_DISABLED = 101, 1001  # latencies above 100 / 1000 us mean "not supported"


@dataclass(frozen=True)
class MmioDevice:
    base: int
    size: int
    irq: int


@dataclass(frozen=True)
class AcpiConfig:
    cpus: int = 1
    lapic: bool = False  # a MADT with a local APIC per CPU and the IOAPIC
    hpet: bool = False  # an HPET table for the HPET at layout.HPET_BASE
    irq0_pin: int = layout.IOAPIC_IRQ0_PIN  # the IOAPIC pin (GSI) ISA IRQ 0 arrives on
    mmio_devices: Sequence[MmioDevice] = field(default_factory=tuple)
    pci_intx: Sequence[PciRoute] = field(default_factory=tuple)
    sci_irq: int = layout.IRQ_ACPI_SCI
    pm_base: int = layout.PORT_ACPI_PM_BASE


def _table(signature: bytes, revision: int, body: bytes) -> bytes:
    raw = bytearray(HEADER.pack(signature, HEADER.size + len(body), revision, 0, OEM_ID, OEM_TABLE_ID,
                                OEM_REVISION, CREATOR_ID, CREATOR_REVISION) + body)  # fmt: skip
    raw[9] = checksum(bytes(raw))
    return bytes(raw)


def _gas_io(port: int, length: int) -> bytes:
    return GAS.pack(SPACE_SYSTEM_IO, length * 8, 0, 0, port)


def dsdt(cfg: AcpiConfig) -> bytes:
    devices = [
        aml.device(
            f"V{i:03X}",
            aml.name("_HID", aml.string("LNRO0005")),
            aml.name("_UID", aml.integer(i)),
            aml.name("_CRS", aml.resource_template(
                aml.memory32_fixed(d.base, d.size),
                aml.ExtendedInterrupt((d.irq,)).encode(),
            )),
        )
        for i, d in enumerate(cfg.mmio_devices)
    ]  # fmt: skip
    # The one sleep state: S5 (soft off), so `poweroff` ends the machine (emu/devices/acpi_pm.py).
    slp_typ = layout.ACPI_SLP_TYP_S5
    s5 = aml.name("\\_S5_", aml.package(*(aml.integer(v) for v in (slp_typ, slp_typ, 0, 0))))
    return _table(b"DSDT", DSDT_REVISION, s5 + aml.scope("\\_SB", pci_root(cfg), *devices))


def pci_root(cfg: AcpiConfig) -> bytes:
    """PCI0: bus 0 behind configuration mechanism #1, the windows emu assigns BARs from, and a
    _PRT with each populated slot pin's ISA line as a fixed GSI (level, active low by definition;
    under the 8259s Linux only sets the line level-triggered in the ELCR)."""
    windows = aml.resource_template(
        aml.address_window(aml.Space.BUS, 0, 0),
        aml.address_window(aml.Space.IO, layout.PCI_IO_BASE, layout.PCI_IO_END - 1),
        aml.address_window(aml.Space.MEMORY, layout.PCI_MMIO_BASE, layout.PCI_MMIO_END - 1, dword=True),
    )
    # _PRT entry: Package(){address (device << 16 | 0xFFFF: any function), pin 0-3, source 0, GSI}.
    routes = [aml.package(aml.integer(r.device << 16 | 0xFFFF), aml.integer(r.pin - 1), aml.integer(0),
                          aml.integer(r.irq)) for r in cfg.pci_intx]  # fmt: skip
    return aml.device(
        "PCI0",
        aml.name("_HID", aml.eisa_id("PNP0A03")),
        aml.name("_UID", aml.integer(0)),
        aml.name("_BBN", aml.integer(0)),
        aml.name("_CRS", windows),
        aml.name("_PRT", aml.package(*routes)),
    )


def facs() -> bytes:
    # Signature, length, hardware signature, waking vector, global lock, flags, X waking vector,
    # version 2; the rest reserved. No checksum (the FACS has none).
    return struct.pack("<4sIIIII Q B 31x", b"FACS", FACS_SIZE, 0, 0, 0, 0, 0, 2)


def fadt(cfg: AcpiConfig, dsdt_addr: int, facs_addr: int) -> bytes:
    pm1_evt = cfg.pm_base + layout.ACPI_PM1_EVT_OFF
    pm1_cnt = cfg.pm_base + layout.ACPI_PM1_CNT_OFF
    pm_tmr = cfg.pm_base + layout.ACPI_PM_TMR_OFF
    body = bytearray(FADT_SIZE - HEADER.size)

    def put(offset: int, fmt: str, *values: int) -> None:
        struct.pack_into(fmt, body, offset - HEADER.size, *values)

    put(36, "<II", facs_addr, dsdt_addr)
    put(46, "<HI", cfg.sci_irq, 0)  # SCI_INT; SMI_CMD 0: no SMM, the OS finds ACPI already enabled
    put(56, "<I", pm1_evt)
    put(64, "<I", pm1_cnt)
    put(76, "<I", pm_tmr)
    put(88, "<BBBB", layout.ACPI_PM1_EVT_LEN, layout.ACPI_PM1_CNT_LEN, 0, layout.ACPI_PM_TMR_LEN)
    put(96, "<HH", C2_DISABLED, C3_DISABLED)
    put(108, "<BH", layout.CMOS_CENTURY, BootArch.LEGACY_DEVICES | BootArch.I8042)
    put(112, "<I", FadtFlag.WBINVD | FadtFlag.PROC_C1 | FadtFlag.PWR_BUTTON | FadtFlag.SLP_BUTTON | FadtFlag.FIX_RTC)
    put(131, "<B", FADT_MINOR)
    put(140, "<Q", dsdt_addr)  # X_DSDT; X_FIRMWARE_CTRL stays 0 (Linux would list the FACS twice)
    body[148 - HEADER.size : 160 - HEADER.size] = _gas_io(pm1_evt, layout.ACPI_PM1_EVT_LEN)
    body[172 - HEADER.size : 184 - HEADER.size] = _gas_io(pm1_cnt, layout.ACPI_PM1_CNT_LEN)
    body[208 - HEADER.size : 220 - HEADER.size] = _gas_io(pm_tmr, layout.ACPI_PM_TMR_LEN)
    return _table(b"FACP", FADT_REVISION, bytes(body))


# MADT entries (ACPI 6.5 section 5.2.12).
MADT_LAPIC, MADT_IOAPIC, MADT_ISO, MADT_LAPIC_NMI = 0, 1, 2, 4
MADT_PCAT_COMPAT = 1  # dual 8259s are present
LAPIC_ENABLED = 1
ALL_PROCESSORS = 0xFF
INTI_CONFORMS = 0  # MPS INTI flags: polarity and trigger as the bus says (ISA: edge, high)
ISA_BUS = 0


def _override(irq: int, gsi: int, flags: int) -> bytes:
    return struct.pack("<BBBBIH", MADT_ISO, 10, ISA_BUS, irq, gsi, flags)


def madt(cfg: AcpiConfig) -> bytes:
    body = struct.pack("<II", layout.LAPIC_BASE, MADT_PCAT_COMPAT)
    for cpu in range(cfg.cpus):
        body += struct.pack("<BBBBI", MADT_LAPIC, 8, cpu, cpu, LAPIC_ENABLED)
    body += struct.pack("<BBBBII", MADT_IOAPIC, 12, layout.ioapic_id(cfg.cpus), 0, layout.IOAPIC_BASE, 0)
    if cfg.irq0_pin != 0:
        body += _override(0, cfg.irq0_pin, INTI_CONFORMS)
    body += _override(cfg.sci_irq, cfg.sci_irq, POLARITY_HIGH_LEVEL)
    body += struct.pack("<BBBHB", MADT_LAPIC_NMI, 6, ALL_PROCESSORS, INTI_CONFORMS, 1)  # NMI on LINT1
    return _table(b"APIC", MADT_REVISION, body)


def hpet_table() -> bytes:
    """Event timer block ID, base address (memory space, 64-bit registers), HPET number 0, the
    minimum periodic tick in counter ticks, and page protection 0 (none; no OEM attributes)."""
    body = struct.pack("<I", hpet.BLOCK_ID) + GAS.pack(SPACE_SYSTEM_MEMORY, 64, 0, 0, layout.HPET_BASE)
    body += struct.pack("<BHB", 0, hpet.MIN_TICK, 0)
    return _table(b"HPET", HPET_REVISION, body)


def build(cfg: AcpiConfig, base: int = layout.ACPI_AREA_START) -> dict[int, bytes]:
    """Every table at its address: {address: bytes}. The RSDP is at `base`."""
    if not 1 <= cfg.cpus <= 254:
        raise EmuError(f"the MADT describes 1 to 254 CPUs, not {cfg.cpus}")
    if cfg.irq0_pin in (cfg.sci_irq, *(r.irq for r in cfg.pci_intx)):
        raise EmuError(f"ISA IRQ 0 cannot share GSI {cfg.irq0_pin} with the SCI or PCI")
    out: dict[int, bytes] = {}
    cursor = align_up(base + RSDP.size, FACS_ALIGN)

    def place(data: bytes, align: int = 16) -> int:
        nonlocal cursor
        addr = align_up(cursor, align)
        out[addr] = data
        cursor = addr + len(data)
        return addr

    facs_addr = place(facs(), FACS_ALIGN)
    dsdt_addr = place(dsdt(cfg))
    tables = [place(fadt(cfg, dsdt_addr, facs_addr))]
    if cfg.lapic:
        tables.append(place(madt(cfg)))
    if cfg.hpet:
        tables.append(place(hpet_table()))
    rsdt_addr = place(_table(b"RSDT", 1, b"".join(struct.pack("<I", t) for t in tables)))
    xsdt_addr = place(_table(b"XSDT", 1, b"".join(struct.pack("<Q", t) for t in tables)))
    rsdp = bytearray(RSDP.pack(b"RSD PTR ", 0, OEM_ID, 2, rsdt_addr, RSDP.size, xsdt_addr, 0))
    rsdp[8] = checksum(bytes(rsdp[:20]))  # ACPI 1.0 checksum: the first 20 bytes
    rsdp[32] = checksum(bytes(rsdp))  # extended checksum: all 36
    out[base] = bytes(rsdp)
    if cursor > layout.ACPI_AREA_END:
        raise EmuError(f"the ACPI tables need {cursor - base} bytes; emu's ACPI area holds "
                       f"{layout.ACPI_AREA_END - layout.ACPI_AREA_START}")  # fmt: skip
    return out


def write_acpi(memory: GuestMemory, cfg: AcpiConfig) -> int:
    """Write the tables into guest RAM; returns the RSDP's address."""
    tables = build(cfg)
    for addr, data in tables.items():
        if not memory.contains(addr, len(data)):
            raise EmuError(f"the ACPI tables at {addr:#x} are outside guest RAM")
        memory.write(addr, data)
    return layout.ACPI_AREA_START
