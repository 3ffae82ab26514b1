"""Boot sources that need no firmware services: a ROM at the reset vector, a flat real-mode image."""

from __future__ import annotations

from pathlib import Path

from emu import layout
from emu.cpu.state import CpuState, Segment
from emu.errors import EmuError
from emu.memory import GuestMemory

# The firmware's tail is also visible below 1 MiB (legacy BIOS area), as PC chipsets alias it.
LEGACY_ALIAS_SIZE = layout.BIOS_AREA_END - layout.BIOS_AREA_START


def read_image(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise EmuError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise EmuError(f"{what} {path}: is a directory") from None
    except OSError as e:
        raise EmuError(f"{what} {path}: {e.strerror}") from None
    if not data:
        raise EmuError(f"{what} {path}: file is empty")
    return data


def firmware_rom_size(image_size: int) -> int:
    """ROM region size for a firmware image: whole 64 KiB units, at least 128 KiB."""
    if image_size > layout.FIRMWARE_MAX_SIZE:
        raise EmuError(
            f"firmware image is {image_size} bytes; at most {layout.FIRMWARE_MAX_SIZE >> 20} MiB fits below 4 GiB"
        )
    return max(LEGACY_ALIAS_SIZE, (image_size + 0xFFFF) & ~0xFFFF)


def load_firmware(mem: GuestMemory, data: bytes) -> CpuState:
    """Place the image so it ends at 4 GiB and alias its last 128 KiB at 0xE0000-0xFFFFF."""
    rom = mem.rom
    if rom is None or rom.size < len(data):
        raise EmuError("internal: firmware ROM region missing or too small")
    rom.view[rom.size - len(data) :] = data
    rom_tail = bytes(rom.view[rom.size - LEGACY_ALIAS_SIZE :])
    if mem.contains(layout.BIOS_AREA_START, LEGACY_ALIAS_SIZE):
        mem.write(layout.BIOS_AREA_START, rom_tail)
    return CpuState()  # the architectural reset state: CS=F000 base FFFF0000, IP=FFF0


def load_flat(mem: GuestMemory, data: bytes, load_addr: int) -> CpuState:
    """Load a flat real-mode program and return a state that starts it in real mode."""
    if load_addr < 0 or load_addr >= layout.HIGH_MEMORY:
        raise EmuError(f"--load-addr {load_addr:#x}: a real-mode image must start below 1 MiB")
    if load_addr + len(data) > mem.low_ram_end:
        raise EmuError(
            f"image is {len(data)} bytes and does not fit in guest RAM at {load_addr:#x} "
            f"(RAM ends at {mem.low_ram_end:#x}; raise --mem or use a smaller image)"
        )
    mem.write(load_addr, data)
    if load_addr < 0x10000:
        cs, ip = 0, load_addr
    else:
        cs, ip = load_addr >> 4, load_addr & 0xF
    s = CpuState()
    s.cs = Segment.real(cs, code=True)
    for name in ("ds", "es", "fs", "gs", "ss"):
        setattr(s, name, Segment.real(0))
    s.rip = ip
    s.rdx = 0
    return s
