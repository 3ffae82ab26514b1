"""emu's native Unicorn hooks (kick.c, built by pip through cffi): one C cell shared by a block
hook and an rdtsc hook, and how emu finds Unicorn's CPU state so the hooks can read it.

What uses the cell: exact cross-thread stops (exact_stop.py), the ring of recently started blocks
(block_trace.py), guest time from executed code (virtual_time.py)."""

from __future__ import annotations

import ctypes
import logging
import os
import struct

import unicorn
from unicorn.unicorn_py3.unicorn import uc_hook_h, uclib

from emu.backends.base import BackendUnavailable
from emu.backends.unicorn import rawstate as R

try:
    from emu.backends.unicorn._kick import ffi, lib
except ImportError:  # a checkout used without `scripts/setup` (pip builds the module)
    ffi = lib = None

log = logging.getLogger("emu.unicorn")


class NativeHooks:
    """kick.c's shared cell and its block hook, added to one engine. The stop flag, the trace
    ring and virtual time read and write this cell (exact_stop.py, block_trace.py, virtual_time.py)."""

    def __init__(self, uc: unicorn.Uc) -> None:
        if ffi is None:
            raise BackendUnavailable(
                "emu's native Unicorn hook (emu/backends/unicorn/kick.c) is not built: run scripts/setup"
            )
        self.cell = ffi.new("struct emu_kick *")
        stop = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value
        self.cell.stop = ffi.cast("int (*)(void *)", stop)
        self.cell.stop_at_bytes = NEVER
        self._uc = uc
        self.add_hook(unicorn.UC_HOOK_BLOCK, "emu_kick_block_hook")
        #: Where the engine keeps its CPUX86State (None: not found; no hflags, no virtual rdtsc).
        self.env = find_env_address(uc)
        if self.env is not None:
            self.cell.hflags = ffi.cast("const uint32_t *", self.env + R.OFF_HFLAGS)
            self.cell.regs = ffi.cast("uint64_t *", self.env + R.OFF_REGS)

    def add_hook(self, kind: int, func: str, *extra: object) -> None:
        """Add one of kick.c's functions as a hook over every address, with the cell as its
        user data (Unicorn's Python binding only takes Python callables)."""
        hook = ffi.cast("uintptr_t", ffi.addressof(lib, func))
        cell = ffi.cast("uintptr_t", self.cell)
        err = uclib.uc_hook_add(
            self._uc._uch, ctypes.byref(uc_hook_h()), kind,
            ctypes.c_void_p(int(hook)), ctypes.c_void_p(int(cell)), 1, 0, *extra,
        )  # fmt: skip
        if err != unicorn.UC_ERR_OK:
            raise unicorn.UcError(err)

    @property
    def trace_length(self) -> int:
        return int(lib.EMU_TRACE_LEN)


def host_rdtsc() -> int:
    """The host's TSC (what Unicorn's rdtsc returns outside virtual time)."""
    return int(lib.emu_host_rdtsc())


def find_env_address(uc: unicorn.Uc) -> int | None:
    """Where the engine keeps its CPUX86State (uc->cpu->env_ptr), so the block hook can read the
    live hflags with one load. Unicorn has no API for it: scan the uc_struct for a pointer to a
    CPUState whose env pointer leads to bytes equal to a just-saved context. Memory is read through
    /proc/self/mem, so a word that is not a pointer gives an error instead of a crash."""
    marks = [0x454D_5554_5241_4345 + i for i in range(8)]  # distinctive R8-R15 for the match
    saved = [uc.reg_read(reg) for reg in _R8_R15]
    for reg, v in zip(_R8_R15, marks, strict=True):
        uc.reg_write(reg, v)
    try:
        raw = R.RawContext.save(uc)
        want = bytes(raw.buf[R.CONTEXT_HEADER : R.CONTEXT_HEADER + _MATCH_LEN])
        uch = uc._uch
        if uch is None:
            return None
        handle = ctypes.cast(uch, ctypes.c_void_p).value
        if handle is None:
            return None
        fd = os.open("/proc/self/mem", os.O_RDONLY)
        try:
            return _scan(fd, handle, want)
        finally:
            os.close(fd)
    except OSError as e:
        log.debug("no hflags in the block trace: %s", e)
        return None
    finally:
        for reg, v in zip(_R8_R15, saved, strict=True):
            uc.reg_write(reg, v)


NEVER = 2**64 - 1  # stop_at_bytes when no deadline is set
BYTES_PER_NS = lib.EMU_BYTES_PER_NS if lib is not None else 4

_R8_R15 = tuple(getattr(unicorn.x86_const, f"UC_X86_REG_R{i}") for i in range(8, 16))
_MATCH_LEN = 0x100  # GPRs, RIP, RFLAGS, ...: unique once R8-R15 hold the marks
_UC_STRUCT_SCAN = 0x1000  # bytes of uc_struct searched for the `cpu` pointer
_CPU_STATE_SCAN = 0x400  # bytes of CPUState searched for `env_ptr`
_ENV_MAX_DISTANCE = 0x40000  # env sits inside X86CPU, after CPUState (tens of KiB)


def _read(fd: int, addr: int, size: int) -> bytes | None:
    try:
        return os.pread(fd, size, addr)
    except (OSError, OverflowError):
        return None


def _words(data: bytes) -> list[int]:
    return list(struct.unpack_from(f"<{len(data) // 8}Q", data))


def _scan(fd: int, handle: int, want: bytes) -> int | None:
    uc_struct = _read(fd, handle, _UC_STRUCT_SCAN)
    if uc_struct is None:
        return None
    for cpu in set(_words(uc_struct)):
        if cpu < 0x10000 or cpu & 7:
            continue
        cpu_state = _read(fd, cpu, _CPU_STATE_SCAN)
        if cpu_state is None:
            continue
        for env in _words(cpu_state):
            if 0 < env - cpu < _ENV_MAX_DISTANCE and _read(fd, env, len(want)) == want:
                return env
    return None
