"""GuestMemory: layout around the MMIO hole, zero-copy sharing and bounds checks."""

import pytest

from emu import layout
from emu.errors import EmuError, GuestMemoryError
from emu.memory import GuestMemory, parse_size


def test_small_guest_is_one_low_region() -> None:
    m = GuestMemory(64 * layout.MiB)
    assert [(r.gpa, r.size) for r in m.regions] == [(0, 64 * layout.MiB)]


def test_large_guest_splits_around_the_hole() -> None:
    m = GuestMemory(4 * layout.GiB)
    low, high = m.regions
    assert (low.gpa, low.end) == (0, layout.MMIO_HOLE_START)
    assert high.gpa == layout.MMIO_HOLE_END
    assert low.size + high.size == 4 * layout.GiB
    assert not m.contains(layout.MMIO_HOLE_START, 1)
    m.write_u32(layout.MMIO_HOLE_END, 0xCAFEBABE)
    assert m.read_u32(layout.MMIO_HOLE_END) == 0xCAFEBABE


def test_view_is_shared_with_the_mapping() -> None:
    m = GuestMemory(4 * layout.MiB)
    v = m.view(0x1000, 4)
    v[:] = b"abcd"
    assert m.regions[0].mm[0x1000:0x1004] == b"abcd"
    assert m.read(0x1000, 4) == b"abcd"


@pytest.mark.parametrize(
    ("addr", "size"),
    [(4 * layout.MiB - 2, 4), (4 * layout.MiB, 1), (-1, 1), (layout.MMIO_HOLE_START, 4), (1 << 40, 8)],
)
def test_accesses_outside_ram_are_refused(addr: int, size: int) -> None:
    m = GuestMemory(4 * layout.MiB)
    with pytest.raises(GuestMemoryError):
        m.read(addr, size)
    with pytest.raises(GuestMemoryError):
        m.write(addr, b"\0" * size)


def test_rom_sits_below_4g() -> None:
    m = GuestMemory(4 * layout.MiB, firmware_size=128 * layout.KiB)
    assert m.rom is not None
    assert m.rom.end == layout.FIRMWARE_TOP
    assert m.contains(layout.RESET_VECTOR, 16)


@pytest.mark.parametrize("size", [0, layout.MiB, 4 * layout.MiB + 1])
def test_bad_sizes_are_user_errors(size: int) -> None:
    with pytest.raises(EmuError):
        GuestMemory(size)


@pytest.mark.parametrize(
    ("text", "value"), [("64M", 64 << 20), ("2G", 2 << 30), ("512k", 512 << 10), ("0x100000", 1 << 20)]
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


def test_parse_size_default_unit() -> None:
    assert parse_size("256", default_unit=1 << 20) == 256 << 20
    assert parse_size("4k", default_unit=1 << 20) == 4 << 10


@pytest.mark.parametrize("text", ["", "lots", "-5M", "1Q"])
def test_parse_size_rejects_garbage(text: str) -> None:
    with pytest.raises(EmuError):
        parse_size(text)
