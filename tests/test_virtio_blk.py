"""virtio-blk requests as a driver sends them: data moves between guest RAM and the image file,
and every malformed or impossible request completes with IOERR/UNSUPP instead of raising."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from guests.virtio.driver import BUF, NEXT, WRITE, Desc, MmioDriver, patterned_image, sector_bytes

from emu import layout
from emu.bus import Bus
from emu.devices.diskimage import DiskImage
from emu.devices.virtio.blk import F_RO, VirtioBlk
from emu.devices.virtio.transport.mmio import VirtioMmio
from emu.devices.virtio.wiring import Wiring
from emu.memory import GuestMemory

MEM = 16 << 20
SECTORS = 64
T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13
OK, IOERR, UNSUPP = 0, 1, 2


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return patterned_image(tmp_path / "disk.img", SECTORS)


class Blk:
    def __init__(self, image: Path, readonly: bool = False, snapshot: bool = False) -> None:
        self.mem = GuestMemory(MEM)
        self.bus = Bus()
        self.disk = DiskImage(image, readonly, snapshot)
        self.dev = VirtioBlk(self.mem, Wiring(lambda level: None), self.disk)
        VirtioMmio(self.dev, layout.VIRTIO_MMIO_BASE, 5).register(self.bus)
        self.drv = MmioDriver(self.bus, self.mem, layout.VIRTIO_MMIO_BASE)
        self.drv.start()

    def close(self) -> None:
        self.disk.close()
        self.mem.close()


@pytest.fixture
def blk(image: Path) -> Iterator[Blk]:
    b = Blk(image)
    yield b
    b.close()


def test_write_reaches_the_file_and_reads_back(blk: Blk, image: Path) -> None:
    data = bytes(range(256)) * 4
    assert blk.drv.blk(T_OUT, 10, data=data)[0] == OK
    assert blk.drv.blk(T_FLUSH, 0)[0] == OK
    assert image.read_bytes()[10 * 512 : 12 * 512] == data
    assert blk.drv.blk(T_IN, 10, read_len=1024) == (OK, data)


def test_request_split_over_many_descriptors(blk: Blk) -> None:
    """The header, data and status may be cut anywhere (VIRTIO_F_ANY_LAYOUT, always on in 1.x)."""
    m, hdr = blk.mem, BUF
    m.write(hdr, struct.pack("<IIQ", T_IN, 0, 5))
    parts = [Desc(hdr, 10, NEXT, 1), Desc(hdr + 10, 6, NEXT, 2)]
    parts += [Desc(BUF + 0x1000 + 100 * i, 100, NEXT | WRITE, 3 + i) for i in range(5)]
    parts += [Desc(BUF + 0x2000, 13, WRITE, 0)]  # 12 data bytes, then the status
    blk.drv.put_descs(parts)
    blk.drv.kick()
    got = b"".join(m.read(BUF + 0x1000 + 100 * i, 100) for i in range(5)) + m.read(BUF + 0x2000, 12)
    assert got == sector_bytes(5)
    assert m.read_u8(BUF + 0x2000 + 12) == OK
    assert blk.drv.last_used() == (0, 513)


@pytest.mark.parametrize(
    "rtype,sector,data,read_len",
    [
        pytest.param(T_IN, SECTORS, b"", 512, id="read-past-end"),
        pytest.param(T_IN, SECTORS - 1, b"", 1024, id="read-crossing-end"),
        pytest.param(T_IN, 1 << 63, b"", 512, id="read-huge-sector"),
        pytest.param(T_IN, 0, b"", 100, id="read-partial-sector"),
        pytest.param(T_OUT, SECTORS, bytes(512), 0, id="write-past-end"),
        pytest.param(T_OUT, 0, bytes(100), 0, id="write-partial-sector"),
    ],
)
def test_bad_requests_get_ioerr(blk: Blk, image: Path, rtype: int, sector: int, data: bytes, read_len: int) -> None:
    before = image.read_bytes()
    assert blk.drv.blk(rtype, sector, data=data, read_len=read_len)[0] == IOERR
    assert image.read_bytes() == before
    assert blk.drv.blk(T_IN, 2, read_len=512) == (OK, sector_bytes(2))  # still serving


def test_unknown_request_type_is_unsupp(blk: Blk) -> None:
    assert blk.drv.blk(99, 0)[0] == UNSUPP


def test_short_header_is_ioerr(blk: Blk) -> None:
    blk.drv.put_descs([Desc(BUF, 8, NEXT, 1), Desc(BUF + 0x100, 1, WRITE)])
    blk.mem.write_u8(BUF + 0x100, 0xFF)
    blk.drv.kick()
    assert blk.mem.read_u8(BUF + 0x100) == IOERR


def test_request_without_status_byte_completes_with_nothing_written(blk: Blk) -> None:
    blk.drv.put_descs([Desc(BUF, 16)])
    blk.drv.kick()
    assert blk.drv.last_used() == (0, 0)
    assert not blk.drv.status & 0x40


def test_get_id(blk: Blk) -> None:
    status, ident = blk.drv.blk(T_GET_ID, 0, read_len=20)
    assert status == OK
    assert ident == b"emu-disk.img".ljust(20, b"\0")


@pytest.mark.parametrize("rtype", [T_DISCARD, T_WRITE_ZEROES])
def test_discard_and_write_zeroes_zero_the_range(blk: Blk, image: Path, rtype: int) -> None:
    seg = struct.pack("<QII", 4, 3, 0)
    assert blk.drv.blk(rtype, 0, data=seg)[0] == OK
    data = image.read_bytes()
    assert data[4 * 512 : 7 * 512] == bytes(3 * 512)
    assert data[3 * 512 : 4 * 512] == sector_bytes(3) and data[7 * 512 : 8 * 512] == sector_bytes(7)
    assert blk.drv.blk(rtype, 0, data=struct.pack("<QII", SECTORS - 1, 2, 0))[0] == IOERR


def test_read_only_disk(image: Path) -> None:
    b = Blk(image, readonly=True)
    try:
        assert b.drv.offered() & F_RO
        before = image.read_bytes()
        assert b.drv.blk(T_OUT, 1, data=bytes(512))[0] == IOERR
        assert b.drv.blk(T_WRITE_ZEROES, 0, data=struct.pack("<QII", 1, 1, 0))[0] == UNSUPP
        assert b.drv.blk(T_FLUSH, 0)[0] == OK
        assert image.read_bytes() == before
    finally:
        b.close()


def test_snapshot_keeps_the_file_untouched(image: Path) -> None:
    before = image.read_bytes()
    b = Blk(image, snapshot=True)
    try:
        assert b.drv.blk(T_OUT, 1, data=b"\xab" * 512)[0] == OK
        assert b.drv.blk(T_IN, 0, read_len=1536) == (OK, sector_bytes(0) + b"\xab" * 512 + sector_bytes(2))
        assert b.drv.blk(T_FLUSH, 0)[0] == OK
    finally:
        b.close()
    assert image.read_bytes() == before
