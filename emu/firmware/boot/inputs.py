"""What a direct kernel boot is given: the files' contents, the command line, and where strings go."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from emu import layout
from emu.errors import EmuError
from emu.firmware.boot.placement import LoadPlan
from emu.memory import GuestMemory


@dataclass(frozen=True)
class BootFile:
    path: Path
    data: bytes


@dataclass(frozen=True)
class PlacedFile:
    file: BootFile
    addr: int

    @property
    def size(self) -> int:
        return len(self.file.data)


@dataclass
class KernelInputs:
    kernel: BootFile
    initrd: BootFile | None = None
    modules: list[BootFile] = field(default_factory=list)
    cmdline: str = ""

    @property
    def what(self) -> str:
        return f"kernel {self.kernel.path}"

    def cmdline_bytes(self, text: str, max_chars: int, why: str) -> bytes:
        """`text` NUL-terminated, refused when it has more than `max_chars` bytes before the NUL."""
        raw = text.encode()
        if b"\0" in raw:
            raise EmuError("--cmdline contains a NUL character")
        if len(raw) > max_chars:
            raise EmuError(f"--cmdline is {len(raw)} bytes; {why} allows at most {max_chars}")
        return raw + b"\0"

    def place_modules(self, plan: LoadPlan, limit: int, include_modules: bool) -> list[PlacedFile]:
        """Initrd first, then each --module, page-aligned from the top of low RAM downwards."""
        files = ([self.initrd] if self.initrd is not None else []) + (self.modules if include_modules else [])
        placed = []
        for f in files:
            what = "initrd" if f is self.initrd else f"module {f.path}"
            addr = plan.place_high(what, len(f.data), limit)
            plan.memory.write(addr, f.data)
            placed.append(PlacedFile(f, addr))
        return placed


def write_cmdline(memory: GuestMemory, data: bytes) -> int:
    assert len(data) <= layout.CMDLINE_MAX
    memory.write(layout.CMDLINE_ADDR, data)
    return layout.CMDLINE_ADDR


class StringArea:
    """NUL-terminated strings packed into the boot strings area (module names, loader name)."""

    def __init__(self, memory: GuestMemory) -> None:
        self.memory = memory
        self.next = layout.BOOT_STRINGS_ADDR

    def add(self, text: str) -> int:
        data = text.encode() + b"\0"
        if self.next + len(data) > layout.BOOT_STRINGS_END:
            raise EmuError(
                f"module names are too long: the boot strings area holds "
                f"{layout.BOOT_STRINGS_END - layout.BOOT_STRINGS_ADDR} bytes"
            )
        addr = self.next
        self.memory.write(addr, data)
        self.next += len(data)
        return addr
