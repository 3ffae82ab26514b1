"""qcow2 disk images against QEMU's own tools: emu reads what qemu-img/qemu-io wrote, and what emu
writes passes `qemu-img check` (no errors, no leaks) and `qemu-img compare` with the raw image
the same writes give. Also the snapshot overlay, read-only opening, a write path through the
virtio-blk device model, and damaged images (one EmuError line each)."""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from guests.virtio.driver import BUF, NEXT, WRITE, Desc, MmioDriver

from emu import layout
from emu.bus import Bus
from emu.config import DiskFormat, DiskSpec
from emu.devices.diskimage import SECTOR, DiskImage, ReadOnlyDisk
from emu.devices.qcow2 import COPIED, OFFSET_MASK, CorruptImage
from emu.devices.virtio.blk import VirtioBlk
from emu.devices.virtio.transport.mmio import VirtioMmio
from emu.devices.virtio.wiring import Wiring
from emu.errors import EmuError
from emu.firmware.bios.disk import Disk
from emu.memory import GuestMemory
from emu.options import add_machine_options

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
    reason="qemu-img/qemu-io not installed (Debian: qemu-utils)",
)

MiB = 1 << 20
SIZE = 4 * MiB


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)


def tool(*args: str | Path) -> str:
    r = run(*args)
    assert r.returncode == 0, f"{args}: {r.stderr}"
    return r.stdout


def create(path: Path, opts: str = "", size: int = SIZE, backing: Path | None = None, fmt: str = "raw") -> Path:
    extra: list[str | Path] = ["-o", opts] if opts else []
    if backing is not None:
        extra += ["-b", backing.name if backing.parent == path.parent else backing, "-F", fmt]
    tool("qemu-img", "create", "-f", "qcow2", *extra, path, str(size))
    return path


def qemu_io(path: Path, *commands: str) -> None:
    tool("qemu-io", "-f", "qcow2", *(a for c in commands for a in ("-c", c)), path)


def as_raw(path: Path) -> bytes:
    """The guest's view of an image, as QEMU computes it."""
    out = path.with_suffix(".qemu.raw")
    tool("qemu-img", "convert", "-O", "raw", path, out)
    return out.read_bytes()


def assert_clean(path: Path, expected: bytes) -> None:
    """qemu-img check: no corruption and no leaked cluster; qemu-img compare: the same contents."""
    check = run("qemu-img", "check", path)
    assert check.returncode == 0, check.stdout + check.stderr
    raw = path.with_suffix(".expected.raw")
    raw.write_bytes(expected)
    compare = run("qemu-img", "compare", "-f", "qcow2", "-F", "raw", path, raw)
    assert compare.returncode == 0, compare.stdout + compare.stderr


def read_all(path: Path, readonly: bool = False, snapshot: bool = False) -> bytes:
    disk = DiskImage(path, readonly, snapshot)
    try:
        return disk.read(0, disk.sectors)
    finally:
        disk.close()


def header_field(path: Path, fmt: str, offset: int) -> int:
    with path.open("rb") as f:
        f.seek(offset)
        return int(struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0])


def patch(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


# -- reading what QEMU wrote ---------------------------------------------------------------------
LAYOUTS = [
    pytest.param("compat=0.10,cluster_size=65536", id="v2-64k"),
    pytest.param("compat=0.10,cluster_size=512", id="v2-512"),
    pytest.param("cluster_size=65536", id="v3-64k"),
    pytest.param("cluster_size=4096", id="v3-4k"),
    pytest.param("cluster_size=2M", id="v3-2M"),
]


@pytest.mark.parametrize("opts", LAYOUTS)
def test_reads_patterns_and_zero_clusters_qemu_wrote(tmp_path: Path, opts: str) -> None:
    img = create(tmp_path / "a.qcow2", opts)
    qemu_io(
        img,
        "write -P 0xab 0 64k",
        "write -P 0x11 100k 300k",  # across clusters (and L2 tables with 512-byte clusters)
        "write -z 200k 128k",  # v3: zero clusters over data; v2: zeros written as data
        "write -P 0x22 3M 5k",
        "write -P 0x33 4193792 512",  # the last sector
    )
    data = read_all(img)
    assert len(data) == SIZE
    assert data[:65536] == b"\xab" * 65536
    assert data[100 * 1024 : 200 * 1024] == b"\x11" * 100 * 1024
    assert data[200 * 1024 : 328 * 1024] == bytes(128 * 1024)
    assert data[-512:] == b"\x33" * 512
    assert data == as_raw(img)


def test_reads_compressed_clusters(tmp_path: Path) -> None:
    rnd = random.Random(7)
    src = bytearray(SIZE)
    for _ in range(30):
        at, n = rnd.randrange(SIZE - 100_000), rnd.randrange(1, 100_000)
        src[at : at + n] = bytes([rnd.randrange(1, 4)]) * n
    (tmp_path / "src.raw").write_bytes(src)
    img = tmp_path / "c.qcow2"
    tool("qemu-img", "convert", "-c", "-O", "qcow2", "-o", "cluster_size=4096", tmp_path / "src.raw", img)
    qemu_io(img, "write -c -P 0x5a 1M 64k")  # compressed clusters written by qemu-io itself
    src[MiB : MiB + 65536] = b"\x5a" * 65536
    assert read_all(img) == src


def test_reads_a_backing_chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """raw base (half the disk, in a subdirectory) <- qcow2 v2 <- qcow2 v3, names relative to
    each image's directory, not to the working directory."""
    (tmp_path / "lower").mkdir()
    base = tmp_path / "lower" / "base.raw"
    base.write_bytes(random.Random(1).randbytes(SIZE // 2))
    mid = tmp_path / "lower" / "mid.qcow2"
    create(mid, "compat=0.10", backing=base, fmt="raw")
    qemu_io(mid, "write -P 0x44 64k 64k", "write -P 0x45 3M 4k")
    top = create(tmp_path / "top.qcow2", "cluster_size=4096", backing=mid, fmt="qcow2")
    qemu_io(top, "write -P 0x66 70k 10k", "write -z 1M 64k", "write -z 3M 4k")
    monkeypatch.chdir("/")
    data = read_all(top)
    assert data[1 * MiB : 1 * MiB + 65536] == bytes(65536)  # zero clusters hide the backing data
    assert data[SIZE // 2 + 4096 : 3 * MiB] == bytes(3 * MiB - SIZE // 2 - 4096)  # beyond the base
    assert data == as_raw(top)


# -- writing -------------------------------------------------------------------------------------
def random_writes(disk: DiskImage, expected: bytearray, seed: int, count: int = 200) -> None:
    rnd = random.Random(seed)
    for i in range(count):
        lba = rnd.randrange(disk.sectors)
        n = rnd.randrange(1, min(300, disk.sectors - lba) + 1)
        if rnd.random() < 0.15:
            disk.write_zeroes(lba, n)
            expected[lba * SECTOR : (lba + n) * SECTOR] = bytes(n * SECTOR)
        else:
            data = rnd.randbytes(n * SECTOR)
            disk.write(lba, data)
            expected[lba * SECTOR : (lba + n) * SECTOR] = data
        if i % 40 == 0:
            lba = rnd.randrange(disk.sectors)
            n = min(600, disk.sectors - lba)
            assert disk.read(lba, n) == expected[lba * SECTOR : (lba + n) * SECTOR]


@pytest.mark.parametrize(
    "opts",
    [
        pytest.param("compat=0.10", id="v2-64k"),
        pytest.param("cluster_size=65536", id="v3-64k"),
        pytest.param("cluster_size=4096,refcount_bits=1", id="v3-4k-rc1"),
        pytest.param("cluster_size=16384,refcount_bits=8", id="v3-16k-rc8"),
        pytest.param("cluster_size=2M", id="v3-2M"),
    ],
)
def test_random_writes_keep_the_image_consistent(tmp_path: Path, opts: str) -> None:
    img = create(tmp_path / "w.qcow2", opts)
    qemu_io(img, "write -P 0x77 0 256k")
    expected = bytearray(as_raw(img))
    disk = DiskImage(img)
    random_writes(disk, expected, seed=len(opts))
    # A write across the 2 MiB line, where 4 KiB clusters change L2 tables.
    disk.write(2 * MiB // SECTOR - 3, b"\xc3" * 6 * SECTOR)
    expected[2 * MiB - 3 * SECTOR : 2 * MiB + 3 * SECTOR] = b"\xc3" * 6 * SECTOR
    disk.flush()
    assert disk.read(0, disk.sectors) == expected
    disk.close()
    assert_clean(img, bytes(expected))


def test_writes_grow_the_refcount_table(tmp_path: Path) -> None:
    """512-byte clusters with 64-bit refcounts: one refcount block covers 32 KiB and the first
    table 2 MiB of file, so filling 6 MiB needs new blocks and a larger table."""
    img = create(tmp_path / "g.qcow2", "cluster_size=512,refcount_bits=64", size=8 * MiB)
    before = header_field(img, ">I", 56)
    disk = DiskImage(img)
    expected = bytearray(8 * MiB)
    data = random.Random(3).randbytes(6 * MiB)
    disk.write(1024, data)
    expected[1024 * SECTOR : 1024 * SECTOR + len(data)] = data
    disk.close()
    assert header_field(img, ">I", 56) > before
    assert_clean(img, bytes(expected))


@pytest.mark.parametrize("base_fmt", ["raw", "qcow2"])
def test_writes_over_a_backing_file(tmp_path: Path, base_fmt: str) -> None:
    base_raw = tmp_path / "base.raw"
    base_raw.write_bytes(random.Random(5).randbytes(3 * MiB))  # smaller than the overlay
    base = base_raw
    if base_fmt == "qcow2":
        base = tmp_path / "base.qcow2"
        tool("qemu-img", "convert", "-O", "qcow2", "-o", "cluster_size=16384", base_raw, base)
    img = create(tmp_path / "top.qcow2", "cluster_size=4096", backing=base, fmt=base_fmt)
    base_sum = hashlib.sha256(base.read_bytes()).digest()
    expected = bytearray(as_raw(img))
    disk = DiskImage(img)
    disk.write(1, b"\x01" * SECTOR)  # a partial cluster: copy-on-write of the rest from the base
    expected[SECTOR : 2 * SECTOR] = b"\x01" * SECTOR
    random_writes(disk, expected, seed=11)
    disk.close()
    assert hashlib.sha256(base.read_bytes()).digest() == base_sum
    assert_clean(img, bytes(expected))


def test_writes_into_compressed_clusters(tmp_path: Path) -> None:
    src = bytearray(b"".join(bytes([i % 7 + 1]) * 8192 for i in range(SIZE // 8192)))
    (tmp_path / "src.raw").write_bytes(src)
    img = tmp_path / "c.qcow2"
    tool("qemu-img", "convert", "-c", "-O", "qcow2", "-o", "cluster_size=65536", tmp_path / "src.raw", img)
    disk = DiskImage(img)
    disk.write(3, b"\xee" * SECTOR)  # partial: inflate, apply, write to a new cluster
    src[3 * SECTOR : 4 * SECTOR] = b"\xee" * SECTOR
    disk.write_zeroes(256, 256)  # a whole cluster: the zero flag, the compressed data freed
    src[256 * SECTOR : 512 * SECTOR] = bytes(256 * SECTOR)
    random_writes(disk, src, seed=2, count=60)
    disk.close()
    assert_clean(img, bytes(src))


# -- through virtio-blk --------------------------------------------------------------------------
T_IN, T_OUT, T_FLUSH, T_WRITE_ZEROES = 0, 1, 4, 13
DATA = 0x100000  # request data buffers in guest RAM


def blk_request(drv: MmioDriver, rtype: int, sector: int, data: bytes = b"", read_len: int = 0) -> tuple[int, bytes]:
    hdr, status = BUF, BUF + 0x800
    drv.mem.write(hdr, struct.pack("<IIQ", rtype, 0, sector))
    drv.mem.write_u8(status, 0xFF)
    descs = [Desc(hdr, 16, NEXT, 1)]
    if data:
        drv.mem.write(DATA, data)
        descs.append(Desc(DATA, len(data), NEXT, 2))
    if read_len:
        descs.append(Desc(DATA, read_len, NEXT | WRITE, 2))
    descs.append(Desc(status, 1, WRITE, 0))
    drv.put_descs([Desc(d.addr, d.length, d.flags, i + 1 if d.flags & NEXT else 0) for i, d in enumerate(descs)])
    drv.kick()
    return drv.mem.read_u8(status), drv.mem.read(DATA, read_len)


def test_virtio_blk_writes_a_qcow2_with_a_backing_file(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(random.Random(9).randbytes(SIZE))
    img = create(tmp_path / "vm.qcow2", "cluster_size=8192", backing=base, fmt="raw")
    expected = bytearray(base.read_bytes())
    mem = GuestMemory(16 * MiB)
    bus = Bus()
    disk = DiskImage(img)
    VirtioMmio(VirtioBlk(mem, Wiring(lambda level: None), disk), layout.VIRTIO_MMIO_BASE, 5).register(bus)
    drv = MmioDriver(bus, mem, layout.VIRTIO_MMIO_BASE)
    drv.start()
    try:
        rnd = random.Random(4)
        for sector, count in [(0, 1), (7, 9), (15, 2), (1000, 300), (8191 - 20, 21), (4000, 1)]:
            data = rnd.randbytes(count * SECTOR)
            assert blk_request(drv, T_OUT, sector, data)[0] == 0
            expected[sector * SECTOR : (sector + count) * SECTOR] = data
        segment = struct.pack("<QII", 2048, 64, 0)
        assert blk_request(drv, T_WRITE_ZEROES, 0, segment)[0] == 0
        expected[2048 * SECTOR : 2112 * SECTOR] = bytes(64 * SECTOR)
        assert blk_request(drv, T_FLUSH, 0)[0] == 0
        assert blk_request(drv, T_IN, 990, read_len=320 * SECTOR) == (0, expected[990 * SECTOR : 1310 * SECTOR])
    finally:
        disk.close()
        mem.close()
    assert_clean(img, bytes(expected))


# -- snapshot, read-only, format choice ------------------------------------------------------------
def test_snapshot_leaves_the_files_byte_identical(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(bytes(range(256)) * (SIZE // 256))
    img = create(tmp_path / "s.qcow2", backing=base, fmt="raw")
    qemu_io(img, "write -P 0x12 0 64k")
    before = {p: p.read_bytes() for p in (base, img)}
    disk = DiskImage(img, snapshot=True)
    disk.write(5, b"\x99" * 3 * SECTOR)
    disk.write_zeroes(300, 50)
    disk.flush()
    assert disk.read(5, 3) == b"\x99" * 3 * SECTOR
    assert disk.read(300, 1) == bytes(SECTOR)
    disk.close()
    assert {p: p.read_bytes() for p in (base, img)} == before


def test_readonly_reads_and_refuses_writes(tmp_path: Path) -> None:
    img = create(tmp_path / "r.qcow2")
    qemu_io(img, "write -P 0x21 0 4k")
    before = img.read_bytes()
    disk = DiskImage(img, readonly=True)
    assert disk.read(0, 8) == b"\x21" * 4096 and disk.sectors == SIZE // SECTOR
    with pytest.raises(ReadOnlyDisk):
        disk.write(0, bytes(SECTOR))
    disk.close()
    assert img.read_bytes() == before


def test_format_detection_and_override(tmp_path: Path) -> None:
    img = create(tmp_path / "f.qcow2", size=3 * MiB)
    auto = DiskImage(img)
    assert auto.format is DiskFormat.QCOW2 and auto.size == 3 * MiB
    auto.close()
    raw = DiskImage(img, format=DiskFormat.RAW)  # the container's bytes, magic and all
    assert raw.format is DiskFormat.RAW and raw.size == img.stat().st_size
    assert raw.read(0, 1)[:4] == b"QFI\xfb"
    raw.close()
    bios = Disk(DiskSpec(img, format=DiskFormat.QCOW2), 0x80, snapshot=False)
    assert bios.sectors == 3 * MiB // SECTOR
    bios.close()
    parser = argparse.ArgumentParser()
    add_machine_options(parser)
    assert parser.parse_args(["--disk", "x.img,ro,format=qcow2"]).disk[0].format is DiskFormat.QCOW2
    with pytest.raises(SystemExit):
        parser.parse_args(["--disk", "x.img,format=vmdk"])


# -- damaged and unsupported images --------------------------------------------------------------
def l2_entry_offset(img: Path) -> int:
    """Where the L2 entry of guest cluster 0 lives in the file."""
    l1 = header_field(img, ">Q", 40)
    return header_field(img, ">Q", l1) & OFFSET_MASK


Damage = Callable[[Path], Path]


def _truncated(d: Path) -> Path:
    (d / "t.qcow2").write_bytes(b"QFI\xfb\0\0\0\3" + bytes(30))
    return d / "t.qcow2"


def _not_qcow2(d: Path) -> Path:
    (d / "n.img").write_bytes(bytes(8192))
    return d / "n.img"


def _l1_beyond(d: Path) -> Path:
    img = create(d / "l1.qcow2")
    patch(img, 40, struct.pack(">Q", 1 << 40))
    return img


def _l2_beyond(d: Path) -> Path:
    img = create(d / "l2.qcow2")
    l1 = header_field(img, ">Q", 40)
    patch(img, l1, struct.pack(">Q", (1 << 30) | COPIED))
    return img


def _missing_backing(d: Path) -> Path:
    (d / "gone.raw").write_bytes(bytes(SIZE))
    img = create(d / "o.qcow2", backing=d / "gone.raw")
    (d / "gone.raw").unlink()
    return img


def _encrypted(d: Path) -> Path:
    img = create(d / "e.qcow2")
    patch(img, 32, struct.pack(">I", 1))
    return img


def _unknown_feature(d: Path) -> Path:
    img = create(d / "u.qcow2")
    patch(img, 72, struct.pack(">Q", 1 << 5))
    return img


def _extended_l2(d: Path) -> Path:
    return create(d / "x.qcow2", "extended_l2=on")


def _version4(d: Path) -> Path:
    img = create(d / "v.qcow2")
    patch(img, 4, struct.pack(">I", 4))
    return img


def _refcount_table_beyond(d: Path) -> Path:
    img = create(d / "rt.qcow2")
    patch(img, 48, struct.pack(">Q", 1 << 40))
    return img


def _snapshots(d: Path) -> Path:
    img = create(d / "snap.qcow2")
    tool("qemu-img", "snapshot", "-c", "s1", img)
    return img


@pytest.mark.parametrize(
    "damage,message",
    [
        (_truncated, "truncated qcow2 header"),
        (_not_qcow2, "not a qcow2 image (bad magic)"),
        (_l1_beyond, "L1 table at 0x10000000000 is beyond the file"),
        (_l2_beyond, "L1 entry 0: L2 table at 0x40000000 is beyond the file"),
        (_missing_backing, "gone.raw: no such file"),
        (_encrypted, "encrypted qcow2 images are not supported"),
        (_unknown_feature, "unsupported qcow2 incompatible features: bit 5"),
        (_extended_l2, "unsupported qcow2 incompatible features: extended L2 entries"),
        (_version4, "qcow2 version 4 is not supported"),
        (_refcount_table_beyond, "refcount table at 0x10000000000 is beyond the file"),
        (_snapshots, "writing to a qcow2 image with internal snapshots is not supported"),
    ],
)
def test_bad_images_are_one_line_errors(tmp_path: Path, damage: Damage, message: str) -> None:
    path = damage(tmp_path)
    with pytest.raises(EmuError) as e:
        DiskImage(path, format=DiskFormat.QCOW2)
    text = str(e.value)
    assert text.startswith(f"disk {path}: ") and message in text and "\n" not in text


def test_snapshotted_image_opens_read_only(tmp_path: Path) -> None:
    img = _snapshots(tmp_path)
    assert read_all(img, readonly=True) == bytes(SIZE)
    assert read_all(img, snapshot=True) == bytes(SIZE)


def test_data_cluster_beyond_the_file(tmp_path: Path) -> None:
    """A bad L2 entry is found when it is used: the read fails (an EmuError, and an OSError so
    virtio-blk answers IOERR) without reading or writing anywhere."""
    img = create(tmp_path / "d.qcow2")
    qemu_io(img, "write -P 0x31 0 64k")
    patch(img, l2_entry_offset(img), struct.pack(">Q", (1 << 30) | COPIED))
    before = img.read_bytes()
    disk = DiskImage(img)
    for attempt in (lambda: disk.read(0, 1), lambda: disk.write(0, bytes(SECTOR))):
        with pytest.raises(CorruptImage, match=r"^disk .*d\.qcow2: guest cluster 0: data cluster at 0x40000000"):
            attempt()
    assert disk.read(128, 1) == bytes(SECTOR)  # other clusters still work
    disk.close()
    assert img.read_bytes() == before
