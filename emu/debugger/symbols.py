"""Symbols for breakpoints by name and `<symbol+off>` in listings: a --kernel ELF's own symbol
table (pyelftools), or `--symbols FILE[@OFFSET]`: an ELF with a symbol table, a System.map or a
kallsyms file (`ADDRESS TYPE NAME` lines), each moved by OFFSET (a KASLR slide, a relocation)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path

from emu.errors import EmuError

# System.map / kallsyms types that name code or data (not absolute values, not undefined ones).
_MAP_TYPES = frozenset("TtDdBbRrWwVv")


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
        return cls.from_table(table)

    @classmethod
    def from_map(cls, path: Path) -> Symbols:
        """A System.map or /proc/kallsyms copy: `ADDRESS TYPE NAME [module]` a line."""
        table: dict[str, int] = {}
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError as e:
            raise EmuError(f"--symbols {path}: {e.strerror}") from None
        for line in lines:
            parts = line.split()
            if len(parts) < 3 or parts[1] not in _MAP_TYPES:
                continue
            try:
                addr = int(parts[0], 16)
            except ValueError:
                continue
            if addr:
                table.setdefault(parts[2], addr)
        return cls.from_table(table)

    @classmethod
    def from_table(cls, table: dict[str, int]) -> Symbols:
        pairs = sorted((a, n) for n, a in table.items())
        return cls(dict(table), [a for a, _ in pairs], [n for _, n in pairs])

    @classmethod
    def load(cls, spec: str) -> Symbols:
        """`FILE[@OFFSET]` (--symbols): an ELF's symbol table or a System.map/kallsyms file, every
        address plus OFFSET. A file with no symbols is an error: the user asked for them."""
        text, _, offset_text = spec.rpartition("@") if "@" in spec else (spec, "", "")
        try:
            offset = int(offset_text, 0) if offset_text else 0
        except ValueError:
            raise EmuError(f"--symbols {spec}: {offset_text!r} is not an offset (e.g. @0x1a000000)") from None
        path = Path(text)
        if not path.is_file():
            raise EmuError(f"--symbols {path}: no such file")
        with open(path, "rb") as f:
            elf = f.read(4) == b"\x7fELF"
        found = cls.from_elf(path) if elf else cls.from_map(path)
        if not found:
            what = "an ELF without a symbol table" if elf else "no `ADDRESS TYPE NAME` lines"
            raise EmuError(f"--symbols {path}: {what}")
        return cls.from_table({n: a + offset for n, a in found.by_name.items()})

    def merged(self, other: Symbols) -> Symbols:
        """These symbols and `other`'s (a name given twice keeps the first address)."""
        return Symbols.from_table({**other.by_name, **self.by_name})

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
