"""The PCI host bridge as a guest sees it through ports 0xCF8/0xCFC: enumeration, byte/word/dword
accesses, BAR sizing and the addresses emu assigned, decode enable, INTx routing and sharing,
and the MP table entries that describe the slots."""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from emu import layout
from emu.bus import Bus
from emu.devices.diskimage import DiskImage
from emu.devices.pci.function import Command
from emu.devices.pci.host import PciHost, intx_irq
from emu.devices.pci.intx import INTA, IntxPin
from emu.devices.pic import PicPair
from emu.devices.virtio.blk import VirtioBlk
from emu.devices.virtio.transport.pci import VirtioPci
from emu.devices.virtio.transport.pci_state import PciMode
from emu.devices.virtio.wiring import Wiring
from emu.firmware.tables import mptable
from emu.memory import GuestMemory

CF8, CFC = 0xCF8, 0xCFC


class Board:
    def __init__(self, tmp: Path, modes: list[PciMode]) -> None:
        self.bus = Bus()
        self.mem = GuestMemory(16 << 20)
        self.pic = PicPair()
        self.pic.register(self.bus)
        self.lines: dict[int, bool] = {}
        self.host = PciHost(self.bus, lambda irq: functools.partial(self.lines.__setitem__, irq))
        self.host.register()
        self.disks = []
        self.devs = []
        for i, mode in enumerate(modes):
            path = tmp / f"d{i}.img"
            path.write_bytes(bytes(8 * 512))
            disk = DiskImage(path)
            self.disks.append(disk)
            slot = self.host.free_slot(INTA)
            pin = IntxPin(INTA, slot.line)
            dev = VirtioPci(VirtioBlk(self.mem, Wiring(pin.drive), disk), mode, pin)
            self.host.plug(slot, dev)
            self.devs.append(dev)
        self.host.assign()

    def addr(self, dev: int, reg: int, fn: int = 0, bus: int = 0, enable: bool = True) -> None:
        self.bus.pio_write(CF8, 4, (1 << 31 if enable else 0) | bus << 16 | dev << 11 | fn << 8 | reg)

    def read(self, dev: int, reg: int, size: int = 4) -> int:
        self.addr(dev, reg & ~3)
        return self.bus.pio_read(CFC + (reg & 3), size)

    def write(self, dev: int, reg: int, value: int, size: int = 4) -> None:
        self.addr(dev, reg & ~3)
        self.bus.pio_write(CFC + (reg & 3), size, value)

    def close(self) -> None:
        for d in self.disks:
            d.close()
        self.mem.close()


@pytest.fixture
def board(tmp_path: Path) -> Iterator[Board]:
    b = Board(tmp_path, [PciMode.TRANSITIONAL, PciMode.MODERN, PciMode.LEGACY, PciMode.TRANSITIONAL])
    yield b
    b.close()


def test_enumeration_finds_the_host_bridge_and_the_devices(board: Board) -> None:
    found = {}
    for dev in range(32):
        ids = board.read(dev, 0)
        if ids != 0xFFFF_FFFF:
            found[dev] = (ids, board.read(dev, 8) >> 8, board.read(dev, 0x2C) >> 16)
    assert found == {
        0: (0x1237_8086, 0x060000, 0),  # 440FX host bridge
        1: (0x1001_1AF4, 0x010000, 2),  # transitional virtio-blk: subsystem id = device type
        2: (0x1042_1AF4, 0x010000, 0x40),  # modern-only: 0x1040 + type
        3: (0x1001_1AF4, 0x010000, 2),
        4: (0x1001_1AF4, 0x010000, 2),
    }
    assert board.read(2, 8) & 0xFF == 1 and board.read(1, 8) & 0xFF == 0  # revision: modern-only is 1


def test_absent_functions_and_disabled_cycles_read_all_ones(board: Board) -> None:
    assert board.read(9, 0) == 0xFFFF_FFFF
    board.addr(1, 0, fn=1)
    assert board.bus.pio_read(CFC, 4) == 0xFFFF_FFFF
    board.addr(0, 0, bus=1)
    assert board.bus.pio_read(CFC, 2) == 0xFFFF
    board.addr(0, 0, enable=False)
    assert board.bus.pio_read(CFC, 4) == 0xFFFF_FFFF
    board.bus.pio_write(CFC, 4, 0)  # ignored: no cycle
    assert board.read(0, 0) == 0x1237_8086


def test_byte_and_word_accesses_at_cfc_to_cff(board: Board) -> None:
    board.addr(0, 0)
    assert [board.bus.pio_read(CFC + i, 1) for i in range(4)] == [0x86, 0x80, 0x37, 0x12]
    assert (board.bus.pio_read(CFC, 2), board.bus.pio_read(CFC + 2, 2)) == (0x8086, 0x1237)
    board.write(1, 0x3C, 0x0B, size=1)  # interrupt line: writable byte
    assert board.read(1, 0x3C) & 0xFFFF == 0x010B  # pin INTA stays
    board.write(1, 0x3D, 0x04, size=1)  # interrupt pin: read-only
    assert board.read(1, 0x3D, 1) == 1
    board.write(0, 0, 0xFFFF_FFFF)  # IDs are read-only
    assert board.read(0, 0) == 0x1237_8086


def test_address_register_takes_only_dword_writes(board: Board) -> None:
    board.addr(1, 0x10)
    assert board.bus.pio_read(CF8, 4) == 0x8000_0810
    board.bus.pio_write(CF8 + 3, 1, 0x01)  # Linux's mechanism #1 probe: outb(0x01, 0xCFB)
    assert board.bus.pio_read(CF8, 4) == 0x8000_0810
    board.bus.pio_write(CF8, 4, 0x8000_0813)  # the low two bits are not part of the address
    assert board.bus.pio_read(CF8, 4) == 0x8000_0810


def test_bar_sizing_reads_back_the_mask(board: Board) -> None:
    io_bar = board.read(1, 0x10)
    board.write(1, 0x10, 0xFFFF_FFFF)
    assert board.read(1, 0x10) == 0xFFFF_FF81  # 128-byte I/O BAR (legacy registers + blk config)
    board.write(1, 0x10, io_bar)
    assert board.read(1, 0x10) == io_bar
    low, high = board.read(1, 0x20), board.read(1, 0x24)
    board.write(1, 0x20, 0xFFFF_FFFF)
    board.write(1, 0x24, 0xFFFF_FFFF)
    assert (board.read(1, 0x20), board.read(1, 0x24)) == (0xFFFF_C004, 0xFFFF_FFFF)  # 16 KiB, 64-bit
    board.write(1, 0x20, low)
    board.write(1, 0x24, high)
    for reg in (0x14, 0x18, 0x1C, 0x30):  # unimplemented BARs and the ROM BAR read 0 and stay 0
        board.write(1, reg, 0xFFFF_FFFF)
        assert board.read(1, reg) == 0


def test_emu_assigned_bars_inside_its_windows_with_decode_on(board: Board) -> None:
    seen: list[tuple[int, int]] = []
    for dev in (1, 2, 3, 4):
        assert board.read(dev, 4) & 0x7 == 0x7  # I/O, memory, bus master enabled
        line, pin = board.read(dev, 0x3C, 1), board.read(dev, 0x3D, 1)
        assert pin == 1 and line == intx_irq(dev, 1) and line in layout.PCI_INTX_IRQS
        for index, bar in board.devs[dev - 1].bars.items():
            base = board.devs[dev - 1].bar_address(index)
            assert base % bar.size == 0
            if bar.kind.value == "io":
                assert base >= layout.PCI_IO_BASE and base + bar.size <= layout.PCI_IO_END
            else:
                assert base >= layout.PCI_MMIO_BASE and base + bar.size <= layout.PCI_MMIO_END
            assert all(base + bar.size <= b or b + s <= base for b, s in seen)
            seen.append((base, bar.size))
    legacy = board.devs[0].bar_address(0)
    assert board.bus.pio_read(legacy + 0x0C, 2) == 256  # queue size through the legacy block


def test_decode_enable_and_moving_a_bar(board: Board) -> None:
    dev = board.devs[0]
    io, mem = dev.bar_address(0), dev.bar_address(4)
    assert board.bus.pio_read(io + 0x0C, 2) == 256 and board.bus.mmio_read(mem + 0x12, 2) == 1  # num_queues
    board.write(1, 4, 0, size=2)  # decode off
    assert board.bus.pio_read(io + 0x0C, 2) == 0xFFFF and board.bus.mmio_read(mem + 0x12, 2) == 0xFFFF
    board.write(1, 4, Command.IO, size=2)
    assert board.bus.pio_read(io + 0x0C, 2) == 256 and board.bus.mmio_read(mem + 0x12, 2) == 0xFFFF
    board.write(1, 0x10, 0xE000)
    assert board.bus.pio_read(io + 0x0C, 2) == 0xFFFF and board.bus.pio_read(0xE00C, 2) == 256
    board.write(1, 4, Command.IO | Command.MEMORY, size=2)
    assert board.bus.mmio_read(mem + 0x12, 2) == 1


def test_a_bar_moved_over_another_device_is_not_mapped(board: Board) -> None:
    other = board.devs[1].bar_address(4)
    board.write(1, 0x20, other & 0xFFFF_FFFF)  # device 1's modern BAR onto device 2's
    assert board.bus.mmio_read(other + 0x12, 2) == 1  # device 2 still answers
    board.write(1, 0x20, 0xC800_0000)
    assert board.bus.mmio_read(0xC800_0012, 2) == 1


def test_intx_is_routed_level_shared_and_maskable(board: Board) -> None:
    # Devices 1 and 4 share a line under the swizzle over three IRQs.
    a, d = board.devs[0], board.devs[3]
    irq = intx_irq(1, 1)
    assert intx_irq(4, 1) == irq
    a.device.raise_isr(1)
    assert board.lines[irq] is True and board.read(1, 6, 2) & 0x8  # status: interrupt pending
    d.device.raise_isr(1)
    a.device.read_isr_and_clear()
    assert board.lines[irq] is True  # device 4 still holds the shared line
    d.device.read_isr_and_clear()
    assert board.lines[irq] is False and not board.read(1, 6, 2) & 0x8
    a.device.raise_isr(1)
    board.write(1, 4, 0x0407, size=2)  # INTx disable
    assert board.lines[irq] is False and board.read(1, 6, 2) & 0x8  # pending, not signalled
    board.write(1, 4, 0x0007, size=2)
    assert board.lines[irq] is True


def test_pci_lines_are_level_triggered_in_the_elcr(board: Board) -> None:
    elcr = board.bus.pio_read(layout.PORT_ELCR, 1) | board.bus.pio_read(layout.PORT_ELCR + 1, 1) << 8
    assert elcr == sum(1 << irq for irq in layout.PCI_INTX_IRQS)
    board.pic.reset()
    board.host.reset()  # a machine reset: the PIC forgets, the host programs it again
    assert board.bus.pio_read(layout.PORT_ELCR + 1, 1) << 8 | board.bus.pio_read(layout.PORT_ELCR, 1) == elcr


def test_reset_restores_the_assigned_configuration(board: Board) -> None:
    before = [board.read(1, r) for r in range(0, 0x40, 4)]
    board.write(1, 0x10, 0xE000)
    board.write(1, 4, 0, size=2)
    board.host.reset()
    assert [board.read(1, r) for r in range(0, 0x40, 4)] == before


def test_modern_capabilities_chain(board: Board) -> None:
    assert board.read(2, 6, 2) & 0x10  # capability list
    pos, caps = board.read(2, 0x34, 1), []
    while pos:
        cap_id, nxt, length, cfg_type, bar = (board.read(2, pos + i, 1) for i in range(5))
        offset, size = board.read(2, pos + 8), board.read(2, pos + 12)
        caps.append((cap_id, length, cfg_type, bar, offset, size))
        pos = nxt
    assert caps == [
        (9, 16, 1, 4, 0x0000, 0x38),  # common configuration
        (9, 16, 3, 4, 0x1000, 1),  # ISR
        (9, 16, 4, 4, 0x2000, 0x1000),  # device configuration
        (9, 20, 2, 4, 0x3000, 4),  # notifications (+ multiplier)
        (9, 20, 5, 4, 0, 0),  # PCI configuration access
    ]
    assert board.read(3, 6, 2) & 0x10 == 0 and board.read(3, 0x34, 1) == 0  # legacy-only: none


def test_pci_cfg_capability_reaches_the_bar(board: Board) -> None:
    cap = 0x40 + 16 + 16 + 16 + 20  # the fifth capability
    board.write(2, cap + 4, 4, size=1)  # BAR 4
    board.write(2, cap + 8, 0x12)  # num_queues
    board.write(2, cap + 12, 2)
    assert board.read(2, cap + 16, 2) == 1
    board.write(2, cap + 8, 0x16)  # queue_select, written through the window
    board.write(2, cap + 16, 5, size=2)
    assert board.devs[1].queue_sel == 5


def test_mptable_describes_the_pci_slots(board: Board) -> None:
    routes = board.host.routes()
    assert [(r.device, r.pin) for r in routes] == [(1, 1), (2, 1), (3, 1), (4, 1)]
    blob = mptable.build(0x9FC00, 1, routes)
    table = blob[16:]
    length, count = struct.unpack_from("<H", table, 4)[0], struct.unpack_from("<H", table, 34)[0]
    assert sum(table) % 256 == 0 and length == len(table)
    entries, pos = [], 44
    while pos < length:
        size = 20 if table[pos] == 0 else 8
        entries.append(table[pos : pos + size])
        pos += size
    assert len(entries) == count
    buses = [(e[1], e[2:8]) for e in entries if e[0] == 1]
    assert buses == [(0, b"PCI   "), (1, b"ISA   ")]
    ints = [(struct.unpack_from("<H", e, 2)[0], e[4], e[5], e[7]) for e in entries if e[0] == 3]
    pci = [i for i in ints if i[1] == 0]
    assert pci == [(0x0D, 0, d << 2, intx_irq(d, 1)) for d in (1, 2, 3, 4)]  # level, active high
    isa = [i for i in ints if i[1] == 1]
    assert [i[3] for i in isa] == [n for n in range(24) if n not in layout.PCI_INTX_IRQS]
    assert len(mptable.build(0x9FC00)) + 8 + 8 * len(pci) - 8 * len(layout.PCI_INTX_IRQS) == len(blob)


# -- virtio-pci registers and guest mistakes ----------------------------------------------------
def test_transitional_device_follows_the_interface_the_driver_uses(board: Board) -> None:
    dev = board.devs[0]
    io, mem = dev.bar_address(0), dev.bar_address(4)
    board.bus.pio_write(io + 0x12, 1, 0)  # reset through the legacy block
    assert board.bus.pio_read(io + 0x00, 4) == dev.device.offered_features() & 0xFFFF_FFFF
    assert dev.device.legacy
    board.bus.pio_write(io + 0x12, 1, 0)
    board.bus.mmio_write(mem + 0x14, 1, 0)  # reset through the common configuration
    board.bus.mmio_write(mem + 0x00, 4, 1)
    assert board.bus.mmio_read(mem + 0x04, 4) == 1  # VERSION_1 offered on the modern interface
    assert not dev.device.legacy
    board.bus.mmio_write(mem + 0x14, 1, 1)  # ACKNOWLEDGE: the choice holds until the next reset
    board.bus.pio_read(io + 0x12, 1)
    assert not dev.device.legacy


MISTAKES = {  # register writes (offset, size, value) into the modern BAR after ACKNOWLEDGE | DRIVER
    "notify-before-driver-ok": [(0x3000, 2, 0)],
    "queue-size-not-power-of-two": [(0x18, 2, 6), (0x1C, 2, 1)],
    "ring-outside-ram": [(0x20, 8, 0xFFFF_0000_0000), (0x1C, 2, 1)],
    "enable-missing-queue": [(0x16, 2, 9), (0x1C, 2, 1)],
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_modern_garbage_sets_needs_reset(board: Board, mistake: str) -> None:
    dev = board.devs[1]
    mem = dev.bar_address(4)
    for status in (0, 1, 3):
        board.bus.mmio_write(mem + 0x14, 1, status)
    for offset, size, value in MISTAKES[mistake]:
        board.bus.mmio_write(mem + offset, size, value)
    assert board.bus.mmio_read(mem + 0x14, 1) & 0x40
    board.bus.mmio_write(mem + 0x14, 1, 0)
    assert board.bus.mmio_read(mem + 0x14, 1) == 0


def test_legacy_pfn_outside_ram_and_odd_accesses(board: Board) -> None:
    dev = board.devs[2]
    io = dev.bar_address(0)
    for status in (0, 1, 3):
        board.bus.pio_write(io + 0x12, 1, status)
    board.bus.pio_write(io + 0x08, 2, 0x10)  # a 2-byte access to a 4-byte register: ignored
    assert board.bus.pio_read(io + 0x08, 4) == 0 and not dev.device.broken
    board.bus.pio_write(io + 0x08, 4, 0xFFFF_F)  # 4 GiB - 4 KiB: the MMIO hole, not RAM
    assert board.bus.pio_read(io + 0x12, 1) & 0x40
    assert board.bus.mmio_read(board.devs[1].bar_address(4) + 0x13, 1) == 0  # a field's middle: 0
