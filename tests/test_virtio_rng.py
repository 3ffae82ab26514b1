"""virtio-rng as a driver sees it: writable buffers come back full of the source's bytes, and a
malformed queue puts the device into NEEDS_RESET without raising."""

from __future__ import annotations

import pytest
from guests.virtio.driver import BUF, DRIVER_OK, NEEDS_RESET, MmioDriver, start_multi

from emu import layout
from emu.bus import Bus
from emu.devices.virtio.rng import MAX_REQUEST, VirtioRng, seeded_source
from emu.devices.virtio.transport.mmio import VirtioMmio
from emu.devices.virtio.wiring import Wiring
from emu.memory import GuestMemory

MEM = 16 << 20


@pytest.fixture
def rng() -> tuple[VirtioRng, MmioDriver, list[bool]]:
    mem, bus = GuestMemory(MEM), Bus()
    irq: list[bool] = []
    dev = VirtioRng(mem, Wiring(irq.append), seeded_source(7))
    VirtioMmio(dev, layout.VIRTIO_MMIO_BASE, 5).register(bus)
    return dev, MmioDriver(bus, mem, layout.VIRTIO_MMIO_BASE), irq


def test_rng_fills_writable_buffers_from_its_source(rng: tuple[VirtioRng, MmioDriver, list[bool]]) -> None:
    dev, drv, irq = rng
    (q,) = start_multi(drv, queues=1)
    drv.mem.fill(BUF, 96, 0)
    head = q.post([(BUF, 32, True), (BUF + 32, 64, True)])
    assert q.completed() == [(head, 96)]
    assert drv.mem.read(BUF, 96) == seeded_source(7)(96)
    assert irq[-1] is True and dev.bytes_served == 96


def test_rng_serves_huge_requests_in_pieces_and_ignores_readable_buffers(
    rng: tuple[VirtioRng, MmioDriver, list[bool]],
) -> None:
    _, drv, _ = rng
    (q,) = start_multi(drv, queues=1)
    head = q.post([(BUF, MAX_REQUEST * 2, True)])
    assert q.completed() == [(head, MAX_REQUEST)]
    head = q.post([(BUF, 16, False)])
    assert q.completed() == [(head, 0)]
    assert not drv.status & NEEDS_RESET


def test_rng_buffer_outside_ram_needs_reset(rng: tuple[VirtioRng, MmioDriver, list[bool]]) -> None:
    dev, drv, _ = rng
    (q,) = start_multi(drv, queues=1)
    q.post([(MEM - 8, 64, True)])
    assert drv.status & NEEDS_RESET and dev.errors == 1
    assert dev.bytes_served == 0
    drv.w(0x070, 0)  # reset: the device works again
    (q,) = start_multi(drv, queues=1)
    assert drv.status & DRIVER_OK and not drv.status & NEEDS_RESET


def test_seeded_source_repeats() -> None:
    assert seeded_source()(64) == seeded_source()(64) != seeded_source(1)(64)
