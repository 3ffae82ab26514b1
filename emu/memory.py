"""Guest RAM: host mmaps shared, without copies, by the CPU backend and every device."""

from __future__ import annotations

import ctypes
import mmap
import struct
from dataclasses import dataclass, field

from emu import layout
from emu.errors import EmuError, GuestMemoryError


@dataclass
class RamRegion:
    """One contiguous run of guest-physical RAM backed by one anonymous host mmap."""

    gpa: int
    size: int
    name: str
    readonly: bool = False  # ROM: the guest cannot write it (enforced by the backends)
    mm: mmap.mmap = field(init=False, repr=False)
    view: memoryview = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.mm = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.view = memoryview(self.mm)

    @property
    def end(self) -> int:
        return self.gpa + self.size

    @property
    def host_address(self) -> int:
        """Host virtual address of the mapping, for mem_map_ptr / KVM memory slots."""
        return ctypes.addressof(ctypes.c_char.from_buffer(self.mm))

    def close(self) -> None:
        try:
            self.view.release()
            self.mm.close()
        except BufferError:
            pass  # a slice is still referenced somewhere; the mapping goes when it does


def format_size(n: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n} bytes"


def parse_size(text: str, default_unit: int = 1) -> int:
    """Parse a size like 512M, 2G, 64K (binary units); a bare number counts `default_unit`s
    (QEMU's -m: mebibytes)."""
    units = {"K": layout.KiB, "M": layout.MiB, "G": layout.GiB, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = default_unit
    if t and t[-1] in units:
        mult = units[t[-1]]
        t = t[:-1]
    try:
        value = float(t) if "." in t else int(t, 0)
    except ValueError:
        raise EmuError(f"invalid size {text!r} (examples: 512M, 2G)") from None
    if value < 0:
        raise EmuError(f"invalid size {text!r}: negative")
    return int(value * mult)


class GuestMemory:
    """RAM below the MMIO hole, RAM above 4 GiB for the rest, and an optional firmware ROM.

    All accessors are bounds-checked: an access that is not entirely inside one RAM region
    raises GuestMemoryError and never reaches host memory outside the mappings.
    """

    def __init__(self, size: int, firmware_size: int = 0) -> None:
        if size < layout.MIN_MEMORY:
            raise EmuError(
                f"--mem {format_size(size)} is too little: emu needs at least {format_size(layout.MIN_MEMORY)}"
            )
        if size > layout.MAX_MEMORY:
            raise EmuError(f"--mem {format_size(size)} is more than emu supports ({format_size(layout.MAX_MEMORY)})")
        if size % 4096:
            raise EmuError(f"--mem {format_size(size)} is not a multiple of 4 KiB")
        self.size = size
        self.regions: list[RamRegion] = []
        low = min(size, layout.MMIO_HOLE_START)
        self.regions.append(RamRegion(0, low, "ram-low"))
        if size > low:
            self.regions.append(RamRegion(layout.MMIO_HOLE_END, size - low, "ram-high"))
        self.rom: RamRegion | None = None
        if firmware_size:
            self.rom = RamRegion(layout.FIRMWARE_TOP - firmware_size, firmware_size, "firmware", True)
            self.regions.append(self.rom)
        self._bounds = [(r.gpa, r.end, r) for r in self.regions]

    @property
    def ram_regions(self) -> list[RamRegion]:
        return [r for r in self.regions if not r.readonly]

    @property
    def low_ram_end(self) -> int:
        return self.regions[0].end

    def close(self) -> None:
        for r in self.regions:
            r.close()

    # -- lookup ---------------------------------------------------------------------------
    def region_of(self, gpa: int, size: int = 1) -> RamRegion | None:
        for start, end, r in self._bounds:
            if start <= gpa and gpa + size <= end:
                return r
        return None

    def contains(self, gpa: int, size: int = 1) -> bool:
        return size >= 0 and gpa >= 0 and self.region_of(gpa, max(size, 1)) is not None

    def view(self, gpa: int, size: int) -> memoryview:
        """A zero-copy window on guest RAM (writable: callers are trusted emu code)."""
        for start, end, r in self._bounds:
            if start <= gpa and gpa + size <= end and size >= 0:
                off = gpa - start
                return r.view[off : off + size]
        raise GuestMemoryError(gpa, size)

    # -- accessors --------------------------------------------------------------------------
    def read(self, gpa: int, size: int) -> bytes:
        return bytes(self.view(gpa, size))

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self.view(gpa, len(data))[:] = data

    def fill(self, gpa: int, size: int, value: int = 0) -> None:
        self.view(gpa, size)[:] = bytes([value]) * size

    def read_u8(self, gpa: int) -> int:
        return self.view(gpa, 1)[0]

    def read_u16(self, gpa: int) -> int:
        return struct.unpack("<H", self.view(gpa, 2))[0]

    def read_u32(self, gpa: int) -> int:
        return struct.unpack("<I", self.view(gpa, 4))[0]

    def read_u64(self, gpa: int) -> int:
        return struct.unpack("<Q", self.view(gpa, 8))[0]

    def write_u8(self, gpa: int, v: int) -> None:
        self.view(gpa, 1)[0] = v & 0xFF

    def write_u16(self, gpa: int, v: int) -> None:
        struct.pack_into("<H", self.view(gpa, 2), 0, v & 0xFFFF)

    def write_u32(self, gpa: int, v: int) -> None:
        struct.pack_into("<I", self.view(gpa, 4), 0, v & 0xFFFF_FFFF)

    def write_u64(self, gpa: int, v: int) -> None:
        struct.pack_into("<Q", self.view(gpa, 8), 0, v & 0xFFFF_FFFF_FFFF_FFFF)
