"""virtio-console as a driver sees it: transmitted bytes reach the host sink; host input waits
until the driver posts receive buffers and is split across them as a byte stream."""

from __future__ import annotations

import pytest
from guests.virtio.driver import BUF, NEEDS_RESET, MmioDriver, start_multi

from emu import layout
from emu.bus import Bus
from emu.devices.virtio.console import INPUT_LIMIT, RX, TX, VirtioConsole
from emu.devices.virtio.transport.mmio import VirtioMmio
from emu.devices.virtio.wiring import Wiring
from emu.memory import GuestMemory

MEM = 16 << 20


class Setup:
    def __init__(self) -> None:
        self.mem, bus = GuestMemory(MEM), Bus()
        self.out: list[bytes] = []
        self.irq: list[bool] = []
        self.dev = VirtioConsole(self.mem, Wiring(self.irq.append), self.out.append)
        VirtioMmio(self.dev, layout.VIRTIO_MMIO_BASE, 5).register(bus)
        self.drv = MmioDriver(bus, self.mem, layout.VIRTIO_MMIO_BASE)


@pytest.fixture
def con() -> Setup:
    return Setup()


def test_console_transmit_reaches_the_sink(con: Setup) -> None:
    rings = start_multi(con.drv)
    con.mem.write(BUF, b"hello, hvc0\n")
    head = rings[TX].post([(BUF, 7, False), (BUF + 7, 5, False)])
    assert con.out == [b"hello, hvc0\n"]
    assert rings[TX].completed() == [(head, 0)] and con.irq[-1] is True


def test_console_input_waits_for_buffers_and_streams_across_them(con: Setup) -> None:
    con.dev.feed(b"abcdef")  # before the driver: kept
    rings = start_multi(con.drv)
    assert rings[RX].completed() == []
    rings[RX].post([(BUF, 4, True)])
    rings[RX].post([(BUF + 0x100, 4, True)])
    assert [n for _, n in rings[RX].completed()] == [4, 2]
    assert con.mem.read(BUF, 4) == b"abcd" and con.mem.read(BUF + 0x100, 2) == b"ef"
    rings[RX].post([(BUF + 0x200, 16, True)], notify=True)
    con.dev.feed(b"xyz")  # a buffer is posted: delivered at once (the Defer runs it)
    assert rings[RX].completed() == [(2, 3)] and con.mem.read(BUF + 0x200, 3) == b"xyz"
    assert con.dev.bytes_in == 9


def test_console_drops_input_beyond_its_limit(con: Setup) -> None:
    for _ in range(INPUT_LIMIT + 5):
        con.dev.feed(b"x")
    assert len(con.dev.inbox) == INPUT_LIMIT


def test_console_garbage_needs_reset_and_input_still_does_not_raise(con: Setup) -> None:
    rings = start_multi(con.drv)
    rings[RX].post([(MEM + 0x1000, 16, True)])
    con.dev.feed(b"late")
    assert con.drv.status & NEEDS_RESET and con.dev.errors >= 1
    assert len(con.dev.inbox) == 1  # kept: the device ignores its queues until a reset
    rings = start_multi(con.drv)
    rings[RX].post([(BUF, 16, True)])
    assert rings[RX].completed() == [(0, 4)] and con.mem.read(BUF, 4) == b"late"


def test_console_sink_errors_do_not_stop_the_guest(con: Setup) -> None:
    def broken(_data: bytes) -> None:
        raise OSError(28, "No space left on device")

    con.dev.output = broken
    rings = start_multi(con.drv)
    con.mem.write(BUF, b"x")
    rings[TX].post([(BUF, 1, False)])
    assert rings[TX].completed() == [(0, 0)] and not con.drv.status & NEEDS_RESET
