"""The real-Linux guest assets: our LZ4 decoder and bzImage extractor, the cpio writer, the cache.

LZ4 output is checked byte for byte against the host's `lz4` tool; the extractor against the
Debian cloud kernel (fetched by emu.tools.guests, skipped with the reason when the host cannot
fetch it); the initramfs against the host's `cpio` and by booting it under QEMU, the reference.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import random
import shutil
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emu.tools import cpio, debcache, guests
from emu.tools.extract_vmlinux import (
    LZ4_LEGACY_MAGIC,
    LZ4Error,
    VmlinuxError,
    extract_vmlinux,
    lz4_legacy_decompress,
    parse_header,
)
from emu.tools.guests import GuestUnavailable, LinuxGuest, build_initramfs, ensure_linux_guest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.linux_qemu import qemu_command, time_boot  # noqa: E402

LZ4 = shutil.which("lz4")
needs_lz4 = pytest.mark.skipif(LZ4 is None, reason="the host has no lz4 tool (apt-get install lz4)")


def lz4_legacy(data: bytes, level: int = 1) -> bytes:
    assert LZ4 is not None
    p = subprocess.run([LZ4, "-l", f"-{level}", "-c"], input=data, capture_output=True, check=True)
    return p.stdout


# ---------------------------------------------------------------------------------------------
# LZ4


def _inputs() -> dict[str, bytes]:
    rng = random.Random(1234)
    mixed = bytearray()
    while len(mixed) < 300_000:
        choice = rng.randrange(5)
        if choice == 0:
            mixed += rng.randbytes(rng.randrange(1, 300))
        elif choice == 1:  # one byte repeated: matches with offset 1, far longer than the offset
            mixed += bytes([rng.randrange(256)]) * rng.randrange(5, 2000)
        elif choice == 2:  # short periods: overlapping matches with offsets 2..7
            mixed += rng.randbytes(rng.randrange(2, 8)) * rng.randrange(3, 500)
        elif choice == 3 and len(mixed) > 70_000:  # far back copies, near the 64 KiB offset limit
            at = len(mixed) - rng.randrange(60_000, 65_535)
            mixed += mixed[at : at + rng.randrange(4, 5000)]
        else:
            mixed += b"emu lz4 test %d\n" % rng.randrange(1000)
    return {
        "empty": b"",
        "one byte": b"x",
        "short literals": b"abcdefghijkl",
        "repetitive": b"abcabcabd" * 50_000,
        "zeros": bytes(100_000),
        "random": rng.randbytes(200_000),
        "mixed": bytes(mixed),
        "text": (REPO / "emu" / "tools" / "extract_vmlinux.py").read_bytes() * 20,
        # more than one 8 MiB legacy block
        "multi-block": (rng.randbytes(1000) + bytes(range(256)) * 300) * 110,
    }


@needs_lz4
@pytest.mark.parametrize("level", [1, 9])
@pytest.mark.parametrize("name", list(_inputs()))
def test_lz4_matches_host_tool(name: str, level: int) -> None:
    data = _inputs()[name]
    frame = lz4_legacy(data, level)
    assert frame[:4] == struct.pack("<I", LZ4_LEGACY_MAGIC)
    assert lz4_legacy_decompress(frame) == data
    # the kernel's build appends the uncompressed size; that trailer must be accepted too
    assert lz4_legacy_decompress(frame + struct.pack("<I", len(data))) == data


@needs_lz4
def test_lz4_concatenated_frames() -> None:
    assert lz4_legacy_decompress(lz4_legacy(b"first " * 100) + lz4_legacy(b"second " * 100)) == (
        b"first " * 100 + b"second " * 100
    )


def _frame(*blocks: bytes) -> bytes:
    return struct.pack("<I", LZ4_LEGACY_MAGIC) + b"".join(struct.pack("<I", len(b)) + b for b in blocks)


def test_lz4_handmade_overlapping_match() -> None:
    # literals "ab", then a match at offset 2 of length 4 + 3 = 7 ("abababa"), then literal "!"
    block = bytes([0x23]) + b"ab" + b"\x02\x00" + bytes([0x10]) + b"!"
    assert lz4_legacy_decompress(_frame(block)) == b"ab" + b"abababa" + b"!"


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        (b"\x00\x00\x00\x00" + b"junk", "bad magic"),
        (b"\x02\x21", "bad magic"),
        (_frame(b"\x10a")[:-1], "claims"),  # block shorter than its size field
        (_frame(b"\x10a") + b"\x05\x00", "truncated block size"),
        (_frame(bytes([0x10]) + b"a\x01"), "truncated match offset"),
        (_frame(bytes([0x20]) + b"a"), "literals run past"),
        (_frame(bytes([0xF0])), "truncated literal length"),
        (_frame(bytes([0xF0, 0xFF, 0xFF])), "truncated literal length"),
        (_frame(bytes([0x1F]) + b"a\x01\x00" + b"\xff" * 50), "truncated match length"),
        (_frame(bytes([0x10]) + b"a\x05\x00" + b"\x00"), "before the output start"),  # offset 5 after 1 byte
        (_frame(bytes([0x10]) + b"a\x00\x00" + b"\x00"), "before the output start"),  # offset 0
        (_frame(bytes([0x00]) + b"\x01\x00" + b"\x00"), "before the output start"),  # match before any output
        (_frame(bytes([0x10]) + b"a\x01\x00"), "last sequence must be literals"),
        (_frame(bytes([0x1F]) + b"a\x01\x00" + b"\xff" * 40_000 + b"\x00" + b"\x00"), "exceeds"),
    ],
)
def test_lz4_malformed_input_raises(frame: bytes, words: str) -> None:
    with pytest.raises(LZ4Error, match=words):
        lz4_legacy_decompress(frame)


@needs_lz4
def test_lz4_truncated_real_frames_raise() -> None:
    frame = lz4_legacy(bytes(range(256)) * 400 + os.urandom(5000))
    for cut in (1, 2, 3, 7, 100, len(frame) - 8):
        with pytest.raises(LZ4Error):
            lz4_legacy_decompress(frame[:-cut])


# ---------------------------------------------------------------------------------------------
# bzImage extraction


FAKE_ELF = b"\x7fELF\x02\x01\x01" + bytes(9) + b"payload " * 4000


def _bzimage(payload: bytes, version: int = 0x020F, setup_sects: int = 1) -> bytes:
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    struct.pack_into("<II", setup, 0x248, 0x100, len(payload))
    return bytes(setup) + bytes(0x100) + payload + bytes(64)


@pytest.mark.parametrize(
    "compress",
    [
        gzip.compress,
        lambda d: lzma.compress(d, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32),
        lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE),
        bz2.compress,
    ],
    ids=["gzip", "xz", "lzma", "bzip2"],
)
def test_extract_stdlib_formats(compress) -> None:  # type: ignore[no-untyped-def]
    payload = compress(FAKE_ELF) + struct.pack("<I", len(FAKE_ELF))  # the kernel's size trailer
    assert extract_vmlinux(_bzimage(payload)) == FAKE_ELF


@needs_lz4
def test_extract_lz4() -> None:
    payload = lz4_legacy(FAKE_ELF, 9) + struct.pack("<I", len(FAKE_ELF))
    assert extract_vmlinux(_bzimage(payload, setup_sects=30)) == FAKE_ELF


@pytest.mark.parametrize(
    ("image", "words"),
    [
        (b"\0" * 100, "only 100 bytes"),
        (bytes(0x1000), "HdrS"),
        (_bzimage(gzip.compress(FAKE_ELF), version=0x0207), "needs >= 2.08"),
        (_bzimage(b"\x28\xb5\x2f\xfd" + bytes(40)), "zstd-compressed kernels are not supported"),
        (_bzimage(b"\x89LZO" + bytes(40)), "lzo-compressed kernels are not supported"),
        (_bzimage(b"what is this"), "unknown payload compression"),
        (_bzimage(gzip.compress(b"not an elf")), "did not decompress to an ELF"),
        (_bzimage(gzip.compress(FAKE_ELF)[:-30]), "corrupt gzip"),
        (_bzimage(gzip.compress(FAKE_ELF))[:-200], "outside the file"),
    ],
)
def test_extract_rejects(image: bytes, words: str) -> None:
    with pytest.raises(VmlinuxError, match=words):
        extract_vmlinux(image)


def _elf_facts(elf: bytes) -> tuple[int, list[tuple[int, int]], int | None]:
    """(e_machine, PT_LOAD (paddr, memsz) list, Xen PHYS32_ENTRY or None) of an ELF64 LE file."""
    assert elf[:4] == b"\x7fELF" and elf[4] == 2 and elf[5] == 1, "ELF64 little-endian"
    e_machine = struct.unpack_from("<H", elf, 18)[0]
    e_phoff, e_phentsize, e_phnum = (struct.unpack_from("<Q", elf, 32)[0], *struct.unpack_from("<HH", elf, 54))
    loads: list[tuple[int, int]] = []
    entry = None
    for k in range(e_phnum):
        p_type, _, p_offset, _, p_paddr, p_filesz, p_memsz, _ = struct.unpack_from(
            "<IIQQQQQQ", elf, e_phoff + k * e_phentsize
        )
        if p_type == 1:  # PT_LOAD
            loads.append((p_paddr, p_memsz))
        elif p_type == 4:  # PT_NOTE: namesz, descsz, type, name, desc (each 4-aligned)
            pos, end = p_offset, p_offset + p_filesz
            while pos + 12 <= end:
                namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
                name = elf[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
                desc_at = pos + 12 + (namesz + 3) // 4 * 4
                if name == b"Xen" and ntype == 18:  # XEN_ELFNOTE_PHYS32_ENTRY
                    entry = int.from_bytes(elf[desc_at : desc_at + min(descsz, 8)], "little")
                pos = desc_at + (descsz + 3) // 4 * 4
    return e_machine, loads, entry


def test_extract_debian_kernel(guest: LinuxGuest) -> None:
    bzimage = guest.bzimage.read_bytes()
    hdr = parse_header(bzimage)
    assert hdr.protocol >= (2, 12)
    t = time.perf_counter()
    elf = extract_vmlinux(bzimage)
    seconds = time.perf_counter() - t
    print(f"\n{guest.version}: {len(bzimage)} byte bzImage -> {len(elf)} byte vmlinux in {seconds:.2f} s")
    assert elf == guest.vmlinux.read_bytes()
    machine, loads, entry = _elf_facts(elf)
    assert machine == 62, "x86-64"
    assert loads and all(paddr >= 1 << 20 for paddr, _ in loads)
    assert entry is not None, "no Xen PVH note (PHYS32_ENTRY)"
    print(f"PVH entry {entry:#x}; PT_LOAD {[f'{a:#x}+{n:#x}' for a, n in loads]}")
    assert any(paddr <= entry < paddr + memsz for paddr, memsz in loads), f"PVH entry {entry:#x} outside PT_LOADs"


@needs_lz4
def test_extract_debian_kernel_matches_host_lz4(guest: LinuxGuest) -> None:
    bzimage = guest.bzimage.read_bytes()
    hdr = parse_header(bzimage)
    start = hdr.pm_offset + hdr.payload_offset
    payload = bzimage[start : start + hdr.payload_length]
    if not payload.startswith(struct.pack("<I", LZ4_LEGACY_MAGIC)):
        pytest.skip("this kernel's payload is not LZ4")
    # the host tool complains about the size trailer (status 1) but writes the whole output first
    ref = subprocess.run([LZ4, "-d", "-c"], input=payload, capture_output=True).stdout  # type: ignore[list-item]
    assert ref == guest.vmlinux.read_bytes()


# ---------------------------------------------------------------------------------------------
# cpio and the initramfs


def test_cpio_roundtrip() -> None:
    entries = [
        cpio.directory("dev"),
        cpio.chardev("dev/console", 5, 1),
        cpio.file("init", b"#!/bin/sh\n", 0o755),
        cpio.file("odd", b"123"),
        cpio.symlink("sh", "busybox"),
    ]
    data = cpio.write_newc(entries)
    assert len(data) % 4 == 0
    assert cpio.read_newc(data) == entries
    with pytest.raises(cpio.CpioError):
        cpio.read_newc(data[:-200])
    with pytest.raises(cpio.CpioError):
        cpio.write_newc([cpio.Entry("x", stat.S_IFREG | 0o644, rdev=(1, 1))])


def _host_cpio_listing(archive: bytes) -> list[str]:
    tool = shutil.which("cpio")
    if tool is None:
        pytest.skip("the host has no cpio tool (apt-get install cpio)")
    p = subprocess.run([tool, "-itv", "--quiet"], input=archive, capture_output=True, check=True)
    return p.stdout.decode().splitlines()


def test_initramfs_accepted_by_host_cpio() -> None:
    archive = build_initramfs(b"\x7fELF fake busybox")
    listing = _host_cpio_listing(archive)
    names = {line.split()[-1] if "->" not in line else line.split()[-3]: line for line in listing}
    assert {"init", "bin/busybox", "dev/console", "proc", "sys", "bin/sh"} <= names.keys()
    assert names["dev/console"].startswith("crw") and "5,   1" in names["dev/console"]
    assert names["init"].startswith("-rwxr-xr-x")
    assert names["bin/sh"].startswith("l") and names["bin/sh"].endswith("-> busybox")


def test_real_initramfs(guest: LinuxGuest) -> None:
    entries = {e.name: e for e in cpio.read_newc(guest.initramfs.read_bytes())}
    assert entries["bin/busybox"].data.startswith(b"\x7fELF")
    assert entries["init"].data.decode() == guests.INIT_SCRIPT
    assert stat.S_ISCHR(entries["dev/console"].mode) and entries["dev/console"].rdev == (5, 1)
    for applet in guests.APPLETS:
        assert entries[f"bin/{applet}"].data == b"busybox"
    assert len(_host_cpio_listing(guest.initramfs.read_bytes())) == len(entries)


# ---------------------------------------------------------------------------------------------
# The cache


def test_second_call_is_cached(guest: LinuxGuest, monkeypatch: pytest.MonkeyPatch) -> None:
    mtimes = {p: p.stat().st_mtime_ns for p in (guest.bzimage, guest.vmlinux, guest.initramfs)}

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached call must not run apt, dpkg-deb or the extractor")

    monkeypatch.setattr(debcache, "run", forbidden)
    monkeypatch.setattr(guests, "extract_vmlinux", forbidden)
    t = time.perf_counter()
    again = ensure_linux_guest()
    assert time.perf_counter() - t < 0.5
    assert again == guest
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_initramfs_rebuilt_after_interrupt(tmp_path: Path, guest: LinuxGuest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing stamp or a half-written file rebuilds from the kept busybox, with no download."""
    shutil.copy(guests.CACHE_DIR / "busybox", tmp_path / "busybox")
    monkeypatch.setattr(debcache, "download", lambda *a: pytest.fail("downloaded although busybox is kept"))
    guests._ensure_initramfs(tmp_path, verbose=False)
    good = (tmp_path / "initramfs.cpio").read_bytes()
    assert good == guest.initramfs.read_bytes()
    (tmp_path / "initramfs.cpio").write_bytes(good[:1000])  # as if interrupted mid-write
    guests._ensure_initramfs(tmp_path, verbose=False)
    assert (tmp_path / "initramfs.cpio").read_bytes() == good


def test_unavailable_without_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debcache.shutil, "which", lambda name: None)
    with pytest.raises(GuestUnavailable, match="apt-get is not available"):
        ensure_linux_guest(tmp_path)


@pytest.mark.parametrize("root", [True, False])
def test_unavailable_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root: bool) -> None:
    calls: list[str] = []

    def fake_run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        calls.append(cmd[1])
        if cmd[1] == "show":
            return subprocess.CompletedProcess(cmd, 0, f"Package: {cmd[-1]}\n", "")
        if cmd[1] == "depends":
            return subprocess.CompletedProcess(cmd, 0, "x\n  Depends: linux-image-6.1.0-99-cloud-amd64\n", "")
        return subprocess.CompletedProcess(cmd, 100, "", f"E: Failed to fetch {cmd[1]}: Temporary failure resolving")

    monkeypatch.setattr(debcache, "run", fake_run)
    monkeypatch.setattr(debcache.os, "geteuid", lambda: 0 if root else 1000)
    words = "apt-get update failed" if root else "apt-get download linux-image-6.1.0-99-cloud-amd64 failed"
    with pytest.raises(GuestUnavailable, match=words) as info:
        ensure_linux_guest(tmp_path)
    assert "Temporary failure resolving" in info.value.reason
    assert ("update" in calls) == root
    assert not (tmp_path / "linux" / "stamp.json").exists()


# ---------------------------------------------------------------------------------------------
# The reference: the assets boot under QEMU


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU (the reference) is not installed")
@pytest.mark.parametrize("pvh", [False, True], ids=["bzImage", "vmlinux-pvh"])
def test_boots_under_qemu(guest: LinuxGuest, pvh: bool) -> None:
    marks = time_boot(qemu_command(guest, pvh=pvh), timeout=120)
    print(f"\nQEMU {'PVH vmlinux' if pvh else 'bzImage'}: {marks}")
    assert guests.MARKER_START in marks and guests.MARKER_DONE in marks, marks
    assert marks["status"] == 0
    assert 0.9 <= marks["sleep"] <= 3.0
