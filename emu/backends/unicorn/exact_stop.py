"""Exact stops of a running Unicorn requested from other threads.

`uc_emu_stop` from another thread can land after a store inside an instruction and make Unicorn
run that instruction again on resume (see docs/architecture/backends.md, "Unicorn hazards"). Instead a
flag in the native cell is turned into a stop by kick.c's block hook, at the start of the next
translation block, before any of it has run.
"""

from __future__ import annotations

from emu.backends.unicorn.native import NativeHooks


class ExactStop:
    """A stop request that takes effect at the start of the next translation block."""

    def __init__(self, native: NativeHooks) -> None:
        self._cell = native.cell

    def request(self) -> None:
        """From any thread, never blocks. A request made while no guest code runs stays armed
        until the next block starts (or `cancel`)."""
        self._cell.requested = 1

    def cancel(self) -> None:
        self._cell.requested = 0

    @property
    def taken(self) -> int:
        """How many stops the hook has issued."""
        return int(self._cell.taken)
