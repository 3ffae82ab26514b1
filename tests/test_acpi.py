"""ACPI tables for direct kernel boot (emu/firmware/tables/acpi.py, aml.py) and the PM registers
behind the FADT (emu/devices/acpi_pm.py): encodings, checksums and pointers checked by hand,
every table disassembled by ACPICA's `iasl -d`, the RSDP handed over by each boot protocol.
Linux itself reading the tables is tests/test_virtio_mmio_linux.py.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from guests import kernels
from guests.backends import BACKEND_PARAMS, require

from emu import layout
from emu.config import BackendName, BootKind, DiskSpec, MachineConfig, VirtioTransport
from emu.devices.acpi_pm import PM_TIMER_HZ, SCI_EN, AcpiPm
from emu.devices.pci.host import IntxRoute
from emu.errors import EmuError
from emu.firmware.boot import pvh, zeropage
from emu.firmware.boot.kernel import load_kernel, read_inputs
from emu.firmware.tables import acpi, aml
from emu.machine import Machine, run_machine
from emu.memory import GuestMemory
from emu.timers import ManualClock

MiB = 1 << 20
DEVICES = (acpi.MmioDevice(0xD000_0000, 0x1000, 5), acpi.MmioDevice(0xD000_1000, 0x1000, 6))
INTX = (IntxRoute(1, 1, 15), IntxRoute(2, 1, 9))


def _tables(lapic: bool, cpus: int = 1, hpet: bool = False, irq0_pin: int = 0) -> dict[bytes, tuple[int, bytes]]:
    """{signature: (address, bytes)} of one build (the RSDP under b"RSD ")."""
    cfg = acpi.AcpiConfig(cpus=cpus, lapic=lapic, hpet=hpet, irq0_pin=irq0_pin, mmio_devices=DEVICES, pci_intx=INTX)
    built = acpi.build(cfg)
    return {data[:4]: (addr, data) for addr, data in built.items()}


def _madt_entries(madt: bytes) -> list[bytes]:
    entries, pos = [], 44
    while pos < len(madt):
        entries.append(madt[pos : pos + madt[pos + 1]])
        pos += madt[pos + 1]
    assert pos == len(madt)
    return entries


# -- AML encoder ----------------------------------------------------------------------------------


def test_pkg_length_grows_with_the_body_and_counts_itself() -> None:
    assert aml.pkg_length(0) == b"\x01"
    assert aml.pkg_length(62) == b"\x3f"  # 62 + 1 = 63: the largest one-byte length
    assert aml.pkg_length(63) == bytes([0x40 | 1, 4])  # 63 + 2 = 65 = 0x41
    assert aml.pkg_length(0xFFD) == bytes([0x40 | 0xF, 0xFF])  # 0xFFF: the largest two-byte length
    assert aml.pkg_length(0xFFE) == bytes([0x80 | 1, 0x00, 0x01])  # 0xFFE + 3 = 0x1001
    with pytest.raises(EmuError):
        aml.pkg_length(1 << 28)


def test_integers_names_and_resources() -> None:
    assert [aml.integer(v) for v in (0, 1, 2, 0x100, 0x10000, 1 << 32)] == [
        b"\x00", b"\x01", b"\x0a\x02", b"\x0b\x00\x01", b"\x0c\x00\x00\x01\x00",
        b"\x0e" + (1 << 32).to_bytes(8, "little"),
    ]  # fmt: skip
    assert aml.name_string("\\_SB") == b"\\_SB_"
    assert aml.name_string("\\_SB.PCI0") == b"\\\x2e_SB_PCI0"
    assert aml.string("LNRO0005") == b"\x0dLNRO0005\x00"
    assert aml.memory32_fixed(0xD0000000, 0x1000) == bytes.fromhex("86 0900 01 000000d0 00100000")
    assert aml.ExtendedInterrupt((5,)).encode() == bytes.fromhex("89 0600 03 01 05000000")
    assert aml.eisa_id("PNP0A03") == b"\x0c" + (0x030AD041).to_bytes(4, "little")
    io = aml.address_window(aml.Space.IO, 0xC000, 0xFFFF)
    assert io == bytes.fromhex("88 0d00 01 0c 03 0000 00c0 ffff 0000 0040")
    assert len(aml.address_window(aml.Space.MEMORY, 0xC0000000, 0xCFFFFFFF, dword=True)) == 26
    with pytest.raises(EmuError):
        aml.address_window(aml.Space.IO, 0, 0x10000)
    for bad in ("TOOLONG", "1ABC", "a"):
        with pytest.raises(EmuError):
            aml.name_seg(bad)


# -- the tables -------------------------------------------------------------------------------------


@pytest.mark.parametrize("lapic", [False, True], ids=["pic-only", "apic"])
def test_checksums_pointers_and_fadt_fields(lapic: bool) -> None:
    t = _tables(lapic)
    rsdp_addr, rsdp = t[b"RSD "]
    assert rsdp_addr == layout.ACPI_AREA_START and rsdp_addr % 16 == 0 and rsdp[:8] == b"RSD PTR "
    assert sum(rsdp[:20]) & 0xFF == 0 and sum(rsdp) & 0xFF == 0 and rsdp[15] == 2  # revision 2
    rsdt, length, xsdt = struct.unpack_from("<IIQ", rsdp, 16)
    assert length == 36 and t[b"RSDT"][0] == rsdt and t[b"XSDT"][0] == xsdt
    for sig, (addr, data) in t.items():
        assert addr >= layout.ACPI_AREA_START and addr + len(data) <= layout.ACPI_AREA_END
        if sig not in (b"RSD ", b"FACS"):
            assert struct.unpack_from("<I", data, 4)[0] == len(data), sig
            assert sum(data) & 0xFF == 0, f"{sig!r} checksum"
    x = t[b"XSDT"][1]
    listed = {struct.unpack_from("<Q", x, off)[0] for off in range(36, len(x), 8)}
    assert listed == {t[b"FACP"][0]} | ({t[b"APIC"][0]} if lapic else set())
    assert (b"APIC" in t) == lapic  # no MADT for a machine without a local APIC

    f = t[b"FACP"][1]
    assert len(f) == acpi.FADT_SIZE and f[8] == acpi.FADT_REVISION
    facs_addr, dsdt_addr = struct.unpack_from("<II", f, 36)
    assert facs_addr == t[b"FACS"][0] and facs_addr % 64 == 0 and dsdt_addr == t[b"DSDT"][0]
    assert struct.unpack_from("<Q", f, 140)[0] == dsdt_addr
    sci, smi_cmd = struct.unpack_from("<HI", f, 46)
    assert sci == layout.IRQ_ACPI_SCI and smi_cmd == 0  # no SMM: ACPI mode from the start
    assert sci not in layout.VIRTIO_MMIO_IRQS + layout.PCI_INTX_IRQS
    pm = layout.PORT_ACPI_PM_BASE
    assert struct.unpack_from("<IIIIII", f, 56) == (pm, 0, pm + 4, 0, 0, pm + 8)
    assert tuple(f[88:92]) == (4, 2, 0, 4)
    flags = struct.unpack_from("<I", f, 112)[0]
    assert not flags & (1 << 20), "hardware-reduced ACPI makes Linux drop the 8259 and the PIT"
    assert struct.unpack_from("<H", f, 109)[0] & 3 == 3  # legacy devices and an i8042
    assert struct.unpack_from("<BBBBQ", f, 208) == (1, 32, 0, 0, pm + 8)  # X_PM_TMR_BLK in I/O space


@pytest.mark.parametrize("cpus", [1, 4])
def test_madt_lists_every_cpu_the_ioapic_and_the_overrides(cpus: int) -> None:
    madt = _tables(lapic=True, cpus=cpus)[b"APIC"][1]
    assert madt[8] == acpi.MADT_REVISION and sum(madt) & 0xFF == 0
    assert struct.unpack_from("<II", madt, 36) == (layout.LAPIC_BASE, 1)  # PCAT_COMPAT: 8259s present
    entries = _madt_entries(madt)
    lapics = [struct.unpack("<BBBBI", e) for e in entries if e[0] == 0]
    assert lapics == [(0, 8, cpu, cpu, 1) for cpu in range(cpus)]  # UID, APIC ID, enabled
    (io,) = [struct.unpack("<BBBBII", e) for e in entries if e[0] == 1]
    assert io == (1, 12, cpus + 1, 0, layout.IOAPIC_BASE, 0)  # the MP table's IOAPIC id, GSI base 0
    isos = [struct.unpack("<BBBBIH", e) for e in entries if e[0] == 2]
    assert isos == [(2, 10, 0, 3, 3, 0xD)]  # the SCI: level, active high; IRQ 0 stays on pin 0
    nmis = [struct.unpack("<BBBHB", e) for e in entries if e[0] == 4]
    assert nmis == [(4, 6, 0xFF, 0, 1)]  # LINT1 of every processor
    assert [e[0] for e in entries] == [0] * cpus + [1, 2, 4]


def test_madt_irq0_override_to_gsi_2() -> None:
    madt = _tables(lapic=True, irq0_pin=2)[b"APIC"][1]
    isos = [struct.unpack("<BBBBIH", e) for e in _madt_entries(madt) if e[0] == 2]
    assert isos == [(2, 10, 0, 0, 2, 0), (2, 10, 0, 3, 3, 0xD)]  # ISA IRQ 0 -> GSI 2, conforming
    with pytest.raises(EmuError, match="cannot share GSI 9"):
        acpi.build(acpi.AcpiConfig(lapic=True, irq0_pin=9, pci_intx=INTX))


def test_hpet_table() -> None:
    t = _tables(lapic=True, hpet=True)
    addr, table = t[b"HPET"]
    assert len(table) == 56 and table[8] == 1 and sum(table) & 0xFF == 0
    block_id, gas, number, min_tick, protection = struct.unpack_from("<I12sBHB", table, 36)
    assert block_id == 0x8086_A201  # vendor 8086, LEG_RT_CAP, 64-bit counter, 3 comparators, rev 1
    assert struct.unpack("<BBBBQ", gas) == (0, 64, 0, 0, layout.HPET_BASE)  # system memory
    assert (number, min_tick, protection) == (0, 1000, 0)
    x = t[b"XSDT"][1]
    assert addr in {struct.unpack_from("<Q", x, off)[0] for off in range(36, len(x), 8)}
    r = t[b"RSDT"][1]
    assert addr in {struct.unpack_from("<I", r, off)[0] for off in range(36, len(r), 4)}
    assert b"HPET" not in _tables(lapic=True)


def test_table_area_overflow_is_one_error() -> None:
    many = tuple(acpi.MmioDevice(0xD000_0000 + i * 0x1000, 0x1000, 5) for i in range(1000))
    with pytest.raises(EmuError, match="ACPI area holds"):
        acpi.build(acpi.AcpiConfig(mmio_devices=many))


def _iasl() -> str:
    """iasl on PATH, installing Debian's acpica-tools first when possible; else skip."""
    if shutil.which("iasl") is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "acpica-tools"], capture_output=True, timeout=600)
    path = shutil.which("iasl")
    if path is None:
        pytest.skip("iasl (acpica-tools) is not installed and cannot be installed here (needs root and apt-get)")
    return path


def test_iasl_disassembles_every_table(tmp_path: Path) -> None:
    iasl = _iasl()
    t = _tables(lapic=True, hpet=True, cpus=4, irq0_pin=2)
    text = {}
    for sig in (b"DSDT", b"FACP", b"APIC", b"HPET", b"XSDT", b"RSDT", b"FACS"):
        dat = tmp_path / f"{sig.decode().lower()}.dat"
        dat.write_bytes(t[sig][1])
        p = subprocess.run([iasl, "-d", str(dat)], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
        text[sig] = dat.with_suffix(".dsl").read_text()
        assert "**** " not in text[sig] and "Invalid" not in text[sig], text[sig]
    dsdt = text[b"DSDT"]
    assert dsdt.count('Name (_HID, "LNRO0005")') == 2 and 'EisaId ("PNP0A03")' in dsdt
    assert "0xC0000000,         // Range Minimum" in dsdt and "0xC000,             // Range Minimum" in dsdt
    prt = re.search(r"Name \(_PRT, Package \(0x02\)(.*?)\}\)", dsdt, re.S)
    assert prt and re.findall(r"0x000([12])FFFF, \s*Zero, \s*Zero, \s*(0x0F|0x09)", prt.group(1)) == [
        ("1", "0x0F"),
        ("2", "0x09"),
    ]
    assert "0xD0001000,         // Address Base" in dsdt and "0x00001000,         // Address Length" in dsdt
    assert "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )" in dsdt and "0x00000006," in dsdt
    assert "SCI Interrupt : 0003" in text[b"FACP"] and "PM Timer Block Address : 00000608" in text[b"FACP"]
    assert "Hardware Reduced (V5) : 0" in text[b"FACP"]
    assert "PC-AT Compatibility : 1" in text[b"APIC"] and "Address : FEC00000" in text[b"APIC"]
    assert "Trigger Mode : 3" in text[b"APIC"]  # the SCI override: level
    assert text[b"APIC"].count("[Processor Local APIC]") == 4 and "Interrupt : 00000002" in text[b"APIC"]
    assert "Hardware Block ID : 8086A201" in text[b"HPET"] and "Address : 00000000FED00000" in text[b"HPET"]
    assert "Minimum Clock Ticks : 03E8" in text[b"HPET"]


# -- PM registers ----------------------------------------------------------------------------------


def test_pm_timer_counts_at_3_58_mhz_and_wraps_at_24_bits() -> None:
    clock = ManualClock()
    pm = AcpiPm(layout.PORT_ACPI_PM_BASE, clock, on_power_off=lambda: None)
    assert pm.io_read(8, 4) == 0
    clock.advance(1_000_000_000)
    assert pm.io_read(8, 4) == PM_TIMER_HZ
    clock.advance(4_000_000_000)
    assert pm.io_read(8, 4) == (5 * PM_TIMER_HZ) & 0xFF_FFFF
    assert pm.io_read(4, 2) & SCI_EN  # ACPI mode from the start
    pm.io_write(4, 2, 0)
    assert pm.io_read(4, 2) & SCI_EN  # and it stays on
    pm.io_write(0, 4, 0x0001_0000)  # dword write: PM1_STS 0, PM1_EN = TMR_EN
    assert pm.io_read(0, 4) == 0x0001_0000 and pm.io_read(2, 2) == 1
    pm.io_write(8, 4, 0)
    assert pm.io_read(8, 4) == (5 * PM_TIMER_HZ) & 0xFF_FFFF  # read-only


def test_s5_powers_off_and_other_sleep_states_do_not() -> None:
    """The DSDT's \\_S5 names SLP_TYP 5: SLP_EN with it is the guest's `poweroff`."""
    offs: list[bool] = []
    pm = AcpiPm(layout.PORT_ACPI_PM_BASE, ManualClock(), on_power_off=lambda: offs.append(True))
    pm.io_write(4, 2, 3 << 10 | 1 << 13)  # S3: not declared
    pm.io_write(4, 2, layout.ACPI_SLP_TYP_S5 << 10)  # SLP_TYP alone does nothing
    assert offs == []
    pm.io_write(4, 2, layout.ACPI_SLP_TYP_S5 << 10 | 1 << 13)
    assert offs == [True]
    dsdt = acpi.dsdt(acpi.AcpiConfig())
    s5 = aml.name("\\_S5_", aml.package(*(aml.integer(v) for v in (layout.ACPI_SLP_TYP_S5,) * 2 + (0, 0))))
    assert s5 in dsdt


# -- the RSDP through each boot protocol ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "boot", "field"),
    [
        ("vmlinux", BootKind.ELF, layout.ZERO_PAGE_ADDR + zeropage.ACPI_RSDP_ADDR),
        ("bzimage64", BootKind.BZIMAGE, layout.ZERO_PAGE_ADDR + zeropage.ACPI_RSDP_ADDR),
        ("pvh", BootKind.PVH, layout.BOOT_INFO_ADDR + pvh.START_INFO_RSDP),
    ],
)
def test_boot_protocols_carry_the_rsdp(tmp_path: Path, name: str, boot: BootKind, field: int) -> None:
    path = tmp_path / name
    path.write_bytes(kernels.build(name))
    for rsdp in (0, layout.ACPI_AREA_START):
        memory = GuestMemory(64 * MiB)
        try:
            load_kernel(memory, read_inputs(path, None, [], ""), boot, rsdp)
            assert struct.unpack("<Q", memory.read(field, 8))[0] == rsdp
        finally:
            memory.close()


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_pvh_kernel_sees_the_rsdp_and_tables_in_memory(tmp_path: Path, backend: BackendName) -> None:
    """The project's PVH test kernel reports start_info.rsdp_paddr; the machine wrote the tables
    there (a MADT and an HPET table on both backends: each has a local APIC and an IOAPIC now) and
    announced no virtio-mmio device on the command line."""
    require(backend)
    path = tmp_path / "pvh"
    path.write_bytes(kernels.build("pvh"))
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(4096))
    cfg = MachineConfig(backend=backend, mem=96 * MiB, kernel=path, cmdline="x", acpi=True, timeout=30,
                        disks=[DiskSpec(disk, transport=VirtioTransport.MMIO)])  # fmt: skip
    m = Machine(cfg)
    try:
        assert m.cfg.cmdline == "x"
        t = acpi.build(m._acpi_config())
        assert {b"APIC", b"HPET"} <= {d[:4] for d in t.values()}
    finally:
        m.close()
    result = run_machine(cfg)
    assert f"rsdp={layout.ACPI_AREA_START:08x}" in result.serial.decode(), result.serial.decode()[-2000:]


def test_cli_refuses_acpi_without_a_kernel() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "emu.cli", "run", "--acpi", "on", "--timeout", "5"],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "emu: error: --acpi on only applies with --kernel (the BIOS path has no ACPI tables)"
    ], p.stderr
