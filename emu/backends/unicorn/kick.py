"""Exact stops of a running Unicorn from other threads (the native block hook in kick.c).

`uc_emu_stop` from another thread can land after a store inside an instruction and make Unicorn
run that instruction again on resume; see kick.c and docs/architecture.md ("Unicorn hazards")."""

from __future__ import annotations

import ctypes

import unicorn
from unicorn.unicorn_py3.unicorn import uc_hook_h, uclib

from emu.backends.base import BackendUnavailable

try:
    from emu.backends.unicorn._kick import ffi, lib
except ImportError:  # a checkout used without `scripts/setup` (pip builds the module)
    ffi = lib = None


class BlockKick:
    """A stop request that takes effect at the start of the next translation block."""

    def __init__(self, uc: unicorn.Uc) -> None:
        if ffi is None:
            raise BackendUnavailable(
                "emu's native Unicorn hook (emu/backends/unicorn/kick.c) is not built: run scripts/setup"
            )
        self._cell = ffi.new("struct emu_kick *")
        stop = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value
        self._cell.stop = ffi.cast("int (*)(void *)", stop)
        hook = ffi.cast("uintptr_t", ffi.addressof(lib, "emu_kick_block_hook"))
        cell = ffi.cast("uintptr_t", self._cell)
        self._handle = uc_hook_h()
        err = uclib.uc_hook_add(
            uc._uch, ctypes.byref(self._handle), unicorn.UC_HOOK_BLOCK,
            ctypes.c_void_p(int(hook)), ctypes.c_void_p(int(cell)), 1, 0,
        )  # fmt: skip
        if err != unicorn.UC_ERR_OK:
            raise unicorn.UcError(err)

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
