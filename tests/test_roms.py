"""The committed images in roms/: each is what its source builds, and the demo disk boots."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from guests.backends import BACKEND_PARAMS, require

from emu.config import BackendName, DiskSpec, MachineConfig
from emu.cpu.state import Mode
from emu.errors import ExitStatus
from emu.machine import Machine
from emu.roms import DEFAULT_GUEST
from emu.tools.asm import assemble_file

ROMS = Path(__file__).resolve().parents[1] / "roms"
SOURCES = sorted(ROMS.glob("*.asm"))
DEMO = ROMS / "demo.img"
SECTOR = 512


def image_of(source: Path) -> Path:
    """scripts/build-roms' naming: NAME_disk.asm builds the disk image NAME.img, NAME.asm NAME.bin."""
    if source.stem.endswith("_disk"):
        return source.with_name(source.stem.removesuffix("_disk") + ".img")
    return source.with_suffix(".bin")


def test_roms_exist() -> None:
    assert SOURCES, f"no *.asm in {ROMS}"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_committed_image_is_what_the_source_builds(source: Path) -> None:
    image = image_of(source)
    assert image.exists(), f"roms/{image.name} is missing: run scripts/build-roms and commit it"
    built = assemble_file(source)
    committed = image.read_bytes()
    if built != committed:
        first = next((i for i, (a, b) in enumerate(zip(built, committed, strict=False)) if a != b), None)
        where = f"first difference at offset {first:#x}" if first is not None else "one is a prefix of the other"
        pytest.fail(
            f"roms/{image.name} is stale: {len(committed)} bytes committed, {len(built)} built from "
            f"roms/{source.name}, {where}. Run scripts/build-roms and commit the result."
        )


def test_default_guest_is_the_demo_disk() -> None:
    assert ROMS / DEFAULT_GUEST == DEMO
    assert image_of(ROMS / "demo_disk.asm") == DEMO


def test_demo_disk_is_a_boot_disk() -> None:
    data = DEMO.read_bytes()
    assert len(data) % SECTOR == 0 and len(data) <= 64 << 10, len(data)
    assert data[510:512] == b"\x55\xaa", "sector 0 lacks the boot signature"


def test_bios_has_a_reset_vector() -> None:
    data = (ROMS / "bios.bin").read_bytes()
    assert len(data) == 64 << 10, "the BIOS is exactly 64 KiB"
    assert data[0xFFF0] == 0xEA, f"no far jump at the reset vector: {data[0xFFF0:0xFFF5].hex()}"
    offset, segment = struct.unpack_from("<HH", data, 0xFFF1)
    assert segment == 0xF000 and offset < 0xE000, f"reset vector jumps to {segment:04x}:{offset:04x}"


def demo_lines(kib_usable: int, e820: list[str]) -> list[str]:
    return [
        "emu demo guest: hello from real mode",
        f"emu demo guest: loaded {len(DEMO.read_bytes()) // SECTOR - 1} sectors from drive 80h with int 13h AH=42h",
        "emu demo guest: int 15h E820 memory map:",
        *e820,
        f"emu demo guest: {kib_usable} KiB usable",
        "emu demo guest: A20 on (int 15h AX=2401h)",
        "emu demo guest: 32-bit protected mode",
        "emu demo guest: 64-bit long mode (first GiB identity-mapped, 2 MiB pages)",
    ]


E820_32M = [
    "  0000000000000000-000000000009fbff usable",
    "  000000000009fc00-000000000009ffff reserved",
    "  00000000000e0000-00000000000fffff reserved",
    "  0000000000100000-0000000001ffffff usable",
    "  00000000feffc000-00000000feffffff reserved",
    "  00000000fffe0000-00000000ffffffff reserved",
]


def check_demo_output(serial: str, kib_usable: int, e820: list[str]) -> None:
    lines = serial.split("\r\n")
    head = demo_lines(kib_usable, e820)
    assert lines[: len(head)] == head, serial
    assert lines[len(head)].startswith("emu demo guest: cpu "), serial  # the vendor varies by host
    assert lines[len(head) + 1 :] == ["emu demo guest: done, halting", ""], serial


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_demo_disk_boots_to_long_mode(backend: BackendName) -> None:
    require(backend)
    before = DEMO.read_bytes()
    cfg = MachineConfig(backend=backend, mem=32 << 20, disks=[DiskSpec(DEMO, readonly=True)], timeout=20.0)
    with Machine(cfg) as m:
        r = m.run()
    serial = r.serial.decode("latin-1")
    assert r.status == ExitStatus.OK, f"status {r.status}, reason {r.reason!r}; serial output:\n{serial}"
    check_demo_output(serial, 639 + 31 * 1024, E820_32M)
    assert r.state is not None and r.state.mode is Mode.LONG
    assert DEMO.read_bytes() == before


def test_emu_run_with_no_arguments_boots_the_demo_disk() -> None:
    """The README's first command (with --mem for a known memory map)."""
    p = subprocess.run(
        [sys.executable, "-m", "emu.cli", "run", "--mem", "32M", "--timeout", "30"],
        cwd=ROMS.parent, stdin=subprocess.DEVNULL, capture_output=True, timeout=90,
    )  # fmt: skip
    assert p.returncode == ExitStatus.OK, p.stderr.decode()
    check_demo_output(p.stdout.decode("latin-1"), 639 + 31 * 1024, E820_32M)
    assert p.stderr.decode().endswith("guest halted with interrupts disabled (exit status 0)\n"), p.stderr


def test_demo_disk_reports_a_failed_load(tmp_path: Path) -> None:
    """Only sector 0 of the demo: int 13h 42h fails past the end and the MBR ends the run with
    debug-exit status 3 after saying why."""
    mbr = tmp_path / "mbr-only.img"
    mbr.write_bytes(DEMO.read_bytes()[:SECTOR])
    with Machine(MachineConfig(mem=32 << 20, disks=[DiskSpec(mbr, readonly=True)], timeout=20.0)) as m:
        r = m.run()
    assert r.status == 3, r.reason
    assert r.serial == b"emu demo guest: hello from real mode\r\nemu demo guest: int 13h AH=42h failed\r\n"
