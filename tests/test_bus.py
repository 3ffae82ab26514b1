"""Bus: dispatch, overlap detection and all-ones for unclaimed ports and MMIO."""

import pytest

from emu.bus import Bus
from emu.errors import EmuError


class Recorder:
    def __init__(self) -> None:
        self.log: list[tuple[str, int, int, int]] = []

    def io_read(self, offset: int, size: int) -> int:
        self.log.append(("r", offset, size, 0))
        return 0x1234_5678_9ABC_DEF0

    def io_write(self, offset: int, size: int, value: int) -> None:
        self.log.append(("w", offset, size, value))

    mmio_read = io_read
    mmio_write = io_write


def test_port_dispatch_passes_offsets_and_masks_to_size() -> None:
    bus, dev = Bus(), Recorder()
    bus.register_pio(0x3F8, 8, dev, "uart")
    assert bus.pio_read(0x3FD, 1) == 0xF0
    bus.pio_write(0x3F8, 2, 0x1FFFF)
    assert dev.log == [("r", 5, 1, 0), ("w", 0, 2, 0xFFFF)]


def test_unclaimed_reads_all_ones() -> None:
    bus = Bus()
    assert bus.pio_read(0x2F0, 1) == 0xFF
    assert bus.pio_read(0x2F0, 4) == 0xFFFF_FFFF
    assert bus.mmio_read(0xD000_0000, 8) == 0xFFFF_FFFF_FFFF_FFFF
    bus.pio_write(0x2F0, 1, 0)  # ignored, no error


def test_overlaps_are_refused() -> None:
    bus = Bus()
    bus.register_pio(0x60, 1, Recorder(), "kbd")
    with pytest.raises(EmuError, match="overlap"):
        bus.register_pio(0x5E, 4, Recorder(), "other")
    bus.register_mmio(0xD000_0000, 0x1000, Recorder(), "a")
    with pytest.raises(EmuError, match="overlap"):
        bus.register_mmio(0xD000_0FFF, 0x10, Recorder(), "b")
    bus.register_mmio(0xD000_1000, 0x1000, Recorder(), "c")  # adjacent is fine


def test_mmio_lookup_among_many_ranges() -> None:
    bus = Bus()
    devs = [Recorder() for _ in range(5)]
    for i, d in enumerate(devs):
        bus.register_mmio(0xE000_0000 + i * 0x2000, 0x1000, d, f"d{i}")
    bus.mmio_write(0xE000_4010, 4, 7)
    assert devs[2].log == [("w", 0x10, 4, 7)]
    assert bus.mmio_read(0xE000_5000, 4) == 0xFFFF_FFFF  # the gap between ranges
    bus.unregister_mmio(0xE000_4000)
    assert bus.mmio_read(0xE000_4010, 4) == 0xFFFF_FFFF
