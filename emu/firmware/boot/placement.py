"""Where a direct-boot loader puts things in guest RAM: nothing outside RAM, nothing overlapping."""

from __future__ import annotations

from dataclasses import dataclass

from emu import layout
from emu.errors import EmuError
from emu.memory import GuestMemory, format_size

PAGE = 4096
LIMIT_4G = 1 << 32  # what a 32-bit entry protocol (PVH, multiboot) can address


def align_down(value: int, align: int) -> int:
    return value & ~(align - 1)


def align_up(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1)


@dataclass(frozen=True)
class Extent:
    what: str
    start: int
    end: int  # exclusive

    def describe(self) -> str:
        return f"{self.what} ({self.start:#x}-{self.end:#x})"


class LoadPlan:
    """The extents a loader has claimed in guest RAM.

    Every claim is checked against RAM and against earlier claims, so a kernel file can never make
    the loader write outside guest RAM or over the boot structures (everything below 1 MiB).
    """

    def __init__(self, memory: GuestMemory) -> None:
        self.memory = memory
        self.extents: list[Extent] = [Extent("the boot structures below 1 MiB", 0, layout.KERNEL_MIN_ADDR)]

    def ram_summary(self) -> str:
        return f"guest RAM is {format_size(self.memory.size)}, ending at {self.memory.low_ram_end:#x} below 4 GiB"

    def claim(self, what: str, start: int, size: int) -> Extent:
        end = start + size
        if start < 0 or size < 0:
            raise EmuError(f"{what} has an impossible address range {start:#x}+{size:#x}")
        for other in self.extents:
            if start < other.end and other.start < end:
                raise EmuError(f"{what} ({start:#x}-{end:#x}) would overlap {other.describe()}")
        if not self.memory.contains(start, size):
            raise EmuError(f"{what} ({start:#x}-{end:#x}) does not fit in guest RAM ({self.ram_summary()})")
        extent = Extent(what, start, end)
        self.extents.append(extent)
        return extent

    def place_high(self, what: str, size: int, limit: int) -> int:
        """Claim `size` bytes page-aligned as high as possible below min(end of low RAM, limit).

        Walks down past whatever is in the way (the kernel), so the result is the highest free
        page-aligned hole; raises EmuError when there is none above 1 MiB.
        """
        top = min(self.memory.low_ram_end, limit)
        addr = align_down(top - size, PAGE)
        while addr >= layout.KERNEL_MIN_ADDR:
            clash = [e for e in self.extents if addr < e.end and e.start < addr + size]
            if not clash:
                self.claim(what, addr, size)
                return addr
            addr = align_down(min(e.start for e in clash) - size, PAGE)
        taken = ", ".join(e.describe() for e in self.extents[1:]) or "nothing"
        raise EmuError(
            f"{what} ({format_size(size)}) does not fit in guest RAM below {top:#x} next to {taken} "
            f"({self.ram_summary()}; raise --mem)"
        )
