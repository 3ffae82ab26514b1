"""The PCI BIOS (int 1Ah AH=B1h, emu/firmware/bios/pci_bios.py) against emu's PciHost on a bus, with no
guest: return codes, CF, the registers each function returns, and CONFIG_ADDRESS left alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from emu import layout
from emu.bus import Bus
from emu.devices.diskimage import DiskImage
from emu.devices.pci.host import PciHost
from emu.devices.pci.intx import INTA, IntxPin
from emu.devices.virtio.blk import VirtioBlk
from emu.devices.virtio.transport.pci import VirtioPci
from emu.devices.virtio.transport.pci_state import PciMode
from emu.devices.virtio.wiring import Wiring
from emu.firmware.bios.pci_bios import PCI_SIGNATURE, PciBios, PciBiosStatus
from emu.firmware.bios.regs import FLAG_CF, FLAG_IF, Regs
from emu.memory import GuestMemory

BLK = 1 << 3  # devfn 00:01.0: the first slot after the host bridge


@pytest.fixture
def pci(tmp_path: Path) -> Iterator[tuple[PciBios, Bus]]:
    bus = Bus()
    mem = GuestMemory(16 << 20)
    host = PciHost(bus, lambda irq: lambda level: None)
    host.register()
    path = tmp_path / "d.img"
    path.write_bytes(bytes(8 * 512))
    disk = DiskImage(path)
    slot = host.free_slot(INTA)
    pin = IntxPin(INTA, slot.line)
    host.plug(slot, VirtioPci(VirtioBlk(mem, Wiring(pin.drive), disk), PciMode.TRANSITIONAL, pin))
    host.assign()
    try:
        yield PciBios(bus), bus
    finally:
        disk.close()
        mem.close()


def call(bios: PciBios, al: int, **regs: int) -> Regs:
    r = Regs(eax=0xB100 | al, flags=FLAG_IF | FLAG_CF, **regs)
    bios.service(r)
    return r


def failed(r: Regs, status: PciBiosStatus) -> bool:
    return r.ah == status and r.cf


def test_installation_check(pci: tuple[PciBios, Bus]) -> None:
    r = call(pci[0], 0x01, edi=0x1234)
    assert (r.ah, r.cf, r.edx, r.al, r.bx, r.cl, r.edi) == (0, False, PCI_SIGNATURE, 0x01, 0x0210, 0, 0)
    assert r.edx.to_bytes(4, "little") == b"PCI "
    assert r.flags & FLAG_IF  # only CF is touched


def test_no_pci_bus_means_not_installed() -> None:
    r = call(PciBios(Bus()), 0x01)  # nothing on 0xCF8/0xCFC: all-ones
    assert failed(r, PciBiosStatus.FUNC_NOT_SUPPORTED)
    assert r.edx == 0


@pytest.mark.parametrize(
    ("vendor", "device", "index", "found"),
    [(0x1AF4, 0x1001, 0, BLK), (0x8086, 0x1237, 0, 0), (0x1AF4, 0x1001, 1, None), (0x1AF4, 0x1042, 0, None)],
)
def test_find_device(pci: tuple[PciBios, Bus], vendor: int, device: int, index: int, found: int | None) -> None:
    r = call(pci[0], 0x02, ecx=device, edx=vendor, esi=index, ebx=0xEEEE)
    if found is None:
        assert failed(r, PciBiosStatus.DEVICE_NOT_FOUND) and r.bx == 0xEEEE
    else:
        assert (r.ah, r.cf, r.bh, r.bl) == (0, False, 0, found)


def test_find_device_bad_vendor(pci: tuple[PciBios, Bus]) -> None:
    assert failed(call(pci[0], 0x02, ecx=0x1001, edx=0xFFFF), PciBiosStatus.BAD_VENDOR_ID)


@pytest.mark.parametrize(
    ("ecx", "index", "found"),
    [(0x010000, 0, BLK), (0xFF060000, 0, 0), (0x060000, 1, None), (0x010000, 1, None), (0x0C0300, 0, None)],
)
def test_find_class_code(pci: tuple[PciBios, Bus], ecx: int, index: int, found: int | None) -> None:
    r = call(pci[0], 0x03, ecx=ecx, esi=index)
    if found is None:
        assert failed(r, PciBiosStatus.DEVICE_NOT_FOUND)
    else:
        assert (r.ah, r.cf, r.bh, r.bl) == (0, False, 0, found)


@pytest.mark.parametrize("al", [0x04, 0x05, 0x06, 0x07, 0x0E, 0x0F, 0x80, 0xFF])
def test_unsupported_functions(pci: tuple[PciBios, Bus], al: int) -> None:
    assert failed(call(pci[0], al), PciBiosStatus.FUNC_NOT_SUPPORTED)


def test_reads(pci: tuple[PciBios, Bus]) -> None:
    bios = pci[0]
    assert call(bios, 0x0A, ebx=BLK, edi=0x00).ecx == 0x1001_1AF4
    r = call(bios, 0x09, ebx=BLK, edi=0x02, ecx=0xAAAA_5555)
    assert (r.ah, r.cf, r.ecx) == (0, False, 0xAAAA_1001)  # a word read leaves ECX's top half
    r = call(bios, 0x08, ebx=BLK, edi=0x3C, ecx=0xAAAA_5555)
    assert r.ecx == 0xAAAA_550E  # interrupt line: IRQ 14, as emu routed slot 1's INTA
    assert call(bios, 0x0A, ebx=BLK, edi=0x08).ecx >> 8 == 0x010000
    assert call(bios, 0x0A, ebx=5 << 3, edi=0).ecx == 0xFFFF_FFFF  # an empty slot reads all-ones


@pytest.mark.parametrize(("al", "reg"), [(0x08, 0x100), (0x09, 0x01), (0x09, 0x100), (0x0A, 0x02), (0x0A, 0xFE),
                                         (0x0B, 0x1000), (0x0C, 0x3D), (0x0D, 0x3E)])  # fmt: skip
def test_bad_register_numbers(pci: tuple[PciBios, Bus], al: int, reg: int) -> None:
    before = call(pci[0], 0x0A, ebx=BLK, edi=reg & 0xFC).ecx
    assert failed(call(pci[0], al, ebx=BLK, edi=reg, ecx=0), PciBiosStatus.BAD_REGISTER_NUMBER)
    assert call(pci[0], 0x0A, ebx=BLK, edi=reg & 0xFC).ecx == before  # nothing was written


def test_writes_reach_the_device(pci: tuple[PciBios, Bus]) -> None:
    bios, bus = pci
    assert not call(bios, 0x0B, ebx=BLK, edi=0x3C, ecx=0xFFFF_FF0B).cf
    assert call(bios, 0x08, ebx=BLK, edi=0x3C).cl == 0x0B
    # Through mechanism #1 directly: the same PciHost answers.
    bus.pio_write(layout.PORT_PCI_CONFIG_ADDRESS, 4, 0x8000_083C)
    assert bus.pio_read(layout.PORT_PCI_CONFIG_DATA, 1) == 0x0B
    # BAR sizing through the BIOS: all-ones reads back the size mask (128-byte I/O BAR).
    bar0 = call(bios, 0x0A, ebx=BLK, edi=0x10).ecx
    call(bios, 0x0D, ebx=BLK, edi=0x10, ecx=0xFFFF_FFFF)
    assert call(bios, 0x0A, ebx=BLK, edi=0x10).ecx == 0xFFFF_FF81
    call(bios, 0x0D, ebx=BLK, edi=0x10, ecx=bar0)
    assert call(bios, 0x0A, ebx=BLK, edi=0x10).ecx == bar0
    call(bios, 0x0C, ebx=BLK, edi=0x04, ecx=0)
    assert call(bios, 0x09, ebx=BLK, edi=0x04).cx == 0


def test_config_address_is_preserved(pci: tuple[PciBios, Bus]) -> None:
    bios, bus = pci
    bus.pio_write(layout.PORT_PCI_CONFIG_ADDRESS, 4, 0x8000_0810)
    for al, regs in ((0x01, {}), (0x02, {"ecx": 0x1001, "edx": 0x1AF4}), (0x0A, {"ebx": 0, "edi": 0}),
                     (0x0B, {"ebx": BLK, "edi": 0x3C, "ecx": 0x0E})):  # fmt: skip
        call(bios, al, **regs)
        assert bus.pio_read(layout.PORT_PCI_CONFIG_ADDRESS, 4) == 0x8000_0810


class MultiFunction:
    """A bare mechanism #1 with one multi-function device at 00:03 (functions 0 and 2)."""

    IDS = {(3, 0): 0x1111_8086, (3, 2): 0x2222_8086}

    def __init__(self, bus: Bus) -> None:
        self.address = 0
        bus.register_pio(layout.PORT_PCI_CONFIG_ADDRESS, 4, self, "address")
        bus.register_pio(layout.PORT_PCI_CONFIG_DATA, 4, _Data(self), "data")

    def io_read(self, offset: int, size: int) -> int:
        return self.address

    def io_write(self, offset: int, size: int, value: int) -> None:
        self.address = value

    def dword(self) -> int:
        device, function, reg = (self.address >> 11) & 0x1F, (self.address >> 8) & 7, self.address & 0xFC
        ids = self.IDS.get((device, function))
        if ids is None:
            return 0xFFFF_FFFF
        return {0x00: ids, 0x0C: 0x0080_0000 if function == 0 else 0}.get(reg, 0)


class _Data:
    def __init__(self, cfg: MultiFunction) -> None:
        self.cfg = cfg

    def io_read(self, offset: int, size: int) -> int:
        return (self.cfg.dword() >> (8 * offset)) & ((1 << (8 * size)) - 1)

    def io_write(self, offset: int, size: int, value: int) -> None:
        pass


def test_multi_function_devices_are_scanned() -> None:
    bus = Bus()
    MultiFunction(bus)
    bios = PciBios(bus)
    assert list(bios.functions()) == [(0, 3 << 3), (0, 3 << 3 | 2)]
    r = call(bios, 0x02, ecx=0x2222, edx=0x8086)
    assert (r.ah, r.bl) == (0, 3 << 3 | 2)
