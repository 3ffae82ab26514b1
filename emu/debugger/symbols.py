"""Symbols of a --kernel ELF (pyelftools), for breakpoints by name and `<symbol+off>` in listings."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Symbols:
    by_name: dict[str, int] = field(default_factory=dict)
    _addrs: list[int] = field(default_factory=list)
    _names: list[str] = field(default_factory=list)

    @classmethod
    def empty(cls) -> Symbols:
        return cls()

    @classmethod
    def from_elf(cls, path: Path) -> Symbols:
        """Function and object symbols of an ELF; a bzImage or a stripped file gives none."""
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile
        from elftools.elf.sections import SymbolTableSection

        table: dict[str, int] = {}
        try:
            with open(path, "rb") as f:
                if f.read(4) != b"\x7fELF":
                    return cls()
                f.seek(0)
                elf = ELFFile(f)
                for section in elf.iter_sections():
                    if not isinstance(section, SymbolTableSection):
                        continue
                    for sym in section.iter_symbols():
                        kind = sym["st_info"]["type"]
                        if sym.name and sym["st_value"] and kind in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE"):
                            table.setdefault(sym.name, sym["st_value"])
        except (OSError, ELFError):
            return cls()
        pairs = sorted((a, n) for n, a in table.items())
        return cls(table, [a for a, _ in pairs], [n for _, n in pairs])

    def __len__(self) -> int:
        return len(self.by_name)

    def address(self, name: str) -> int | None:
        return self.by_name.get(name)

    def describe(self, address: int, max_offset: int = 0x10000) -> str | None:
        """`name` or `name+0x12` for the nearest symbol at or below `address`."""
        i = bisect.bisect_right(self._addrs, address) - 1
        if i < 0 or address - self._addrs[i] > max_offset:
            return None
        off = address - self._addrs[i]
        return self._names[i] + (f"+{off:#x}" if off else "")
