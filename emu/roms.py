"""Where the firmware images built from roms/ live."""

from __future__ import annotations

from pathlib import Path

from emu.errors import HostError

ROMS_DIR = Path(__file__).resolve().parent.parent / "roms"


def rom_path(name: str) -> Path:
    path = ROMS_DIR / name
    if not path.is_file():
        raise HostError(f"bundled ROM {path} is missing (is emu installed from a full checkout?)")
    return path


DEFAULT_GUEST = "demo.img"  # `emu run` with no boot source: a disk the BIOS boots (roms/demo_disk.asm)
