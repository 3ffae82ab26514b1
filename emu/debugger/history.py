"""The execution history ring (Unicorn): the CPU context before each recent instruction and the
guest-RAM bytes each one overwrote, so the session can step back through it."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from emu.backends.unicorn import rawstate as R
from emu.cpu.state import GPR_NAMES

DEFAULT_SIZE = 4096


@dataclass
class HistoryEntry:
    address: int  # linear address of the instruction
    raw: R.RawContext  # the whole CPU context before it ran
    writes: list[tuple[int, bytes]] = field(default_factory=list)  # (physical address, old bytes)

    def registers(self) -> dict[str, int]:
        regs = {name: self.raw.u64(R.OFF_REGS + 8 * i) for i, name in enumerate(R.RAW_GPRS)}
        regs["rip"] = self.raw.u64(R.OFF_EIP)
        return {n: regs[n] for n in (*GPR_NAMES, "rip")}


@dataclass(frozen=True)
class HistoryView:
    """One executed instruction for display: where, and the registers it changed."""

    address: int
    changes: dict[str, tuple[int, int]]  # register -> (before, after)
    writes: list[tuple[int, int]]  # (physical address, size) of the RAM it wrote


class History:
    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.entries: deque[HistoryEntry] = deque(maxlen=size)

    @property
    def size(self) -> int:
        return self.entries.maxlen or 0

    def record(self, address: int, raw: R.RawContext) -> HistoryEntry:
        entry = HistoryEntry(address, raw)
        self.entries.append(entry)
        return entry

    def clear(self) -> None:
        self.entries.clear()

    def __len__(self) -> int:
        return len(self.entries)

    def pop(self) -> HistoryEntry | None:
        return self.entries.pop() if self.entries else None

    def views(self, now: dict[str, Any], count: int) -> list[HistoryView]:
        """The last `count` instructions, oldest first; `now` is the registers after the last."""
        items = list(self.entries)[-count:] if count else []
        out = []
        for i, e in enumerate(items):
            before = e.registers()
            after = items[i + 1].registers() if i + 1 < len(items) else now
            changes = {k: (v, after[k]) for k, v in before.items() if after.get(k, v) != v and k != "rip"}
            out.append(HistoryView(e.address, changes, [(a, len(b)) for a, b in e.writes]))
        return out
