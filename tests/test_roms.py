"""The committed firmware images in roms/: each is what its source builds, and the demo boots."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from guests.backends import BACKEND_PARAMS, require

from emu.config import BackendName, MachineConfig
from emu.cpu.state import Mode
from emu.errors import ExitStatus
from emu.machine import Machine
from emu.tools.asm import assemble_file

ROMS = Path(__file__).resolve().parents[1] / "roms"
SOURCES = sorted(ROMS.glob("*.asm"))
DEMO = ROMS / "demo.bin"


def test_roms_exist() -> None:
    assert SOURCES, f"no *.asm in {ROMS}"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_committed_image_is_what_the_source_builds(source: Path) -> None:
    image = source.with_suffix(".bin")
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


def test_demo_has_a_reset_vector() -> None:
    data = DEMO.read_bytes()
    assert len(data) == 64 << 10, "the demo firmware is exactly 64 KiB"
    # The last 16 bytes start with `jmp far F000:xxxx` (opcode EA, then offset and segment).
    assert data[0xFFF0] == 0xEA, f"no far jump at the reset vector: {data[0xFFF0:0xFFF5].hex()}"
    offset, segment = struct.unpack_from("<HH", data, 0xFFF1)
    assert segment == 0xF000 and offset < 0xFFF0, f"reset vector jumps to {segment:04x}:{offset:04x}"


def test_bios_has_a_reset_vector() -> None:
    data = (ROMS / "bios.bin").read_bytes()
    assert len(data) == 64 << 10, "the BIOS is exactly 64 KiB"
    assert data[0xFFF0] == 0xEA, f"no far jump at the reset vector: {data[0xFFF0:0xFFF5].hex()}"
    offset, segment = struct.unpack_from("<HH", data, 0xFFF1)
    assert segment == 0xF000 and offset < 0xE000, f"reset vector jumps to {segment:04x}:{offset:04x}"


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_demo_boots_to_long_mode(backend: BackendName) -> None:
    require(backend)
    with Machine(MachineConfig(backend=backend, mem=32 << 20, bios=DEMO, timeout=20.0)) as m:
        r = m.run()
    serial = r.serial.decode("latin-1")
    context = f"status {r.status}, reason {r.reason!r}; serial output:\n{serial}"
    assert r.status == ExitStatus.OK, context
    lines = serial.split("\r\n")
    assert lines[:3] == [
        "emu demo guest: hello from real mode",
        "emu demo guest: 32-bit protected mode",
        "emu demo guest: 64-bit long mode (first GiB identity-mapped, 2 MiB pages)",
    ], context
    assert lines[3].startswith("emu demo guest: cpu "), context  # the vendor string varies by host
    assert lines[4:] == ["emu demo guest: done, halting", ""], context
    assert r.state is not None and r.state.mode is Mode.LONG, context
