"""The ring of translation blocks the guest started most recently (kick.c's block hook keeps it),
read for a fault report's "last instructions executed"."""

from __future__ import annotations

from emu.backends.base import TraceEntry
from emu.backends.unicorn.native import NativeHooks


def block_trace(native: NativeHooks) -> list[TraceEntry]:
    """The blocks started most recently, oldest first (at most the ring's length). Read it while
    the engine is stopped."""
    cell = native.cell
    count, length = int(cell.trace_count), native.trace_length
    out = []
    for i in range(max(0, count - length), count):
        e = cell.trace[i % length]
        hflags = int(e.hflags) if native.env is not None else None
        out.append(TraceEntry(int(e.address), int(e.size), int(e.repeat), hflags))
    return out
