"""Exact stops of a running Unicorn from other threads (the native block hook in kick.c), and
the hook's ring of recently started blocks (for fault reports).

`uc_emu_stop` from another thread can land after a store inside an instruction and make Unicorn
run that instruction again on resume; see kick.c and docs/architecture.md ("Unicorn hazards")."""

from __future__ import annotations

import ctypes
import logging
import os
import struct
from dataclasses import dataclass

import unicorn
from unicorn.unicorn_py3.unicorn import uc_hook_h, uclib

from emu.backends.base import BackendUnavailable
from emu.backends.unicorn import rawstate as R

try:
    from emu.backends.unicorn._kick import ffi, lib
except ImportError:  # a checkout used without `scripts/setup` (pip builds the module)
    ffi = lib = None

log = logging.getLogger("emu.unicorn")


@dataclass(frozen=True)
class TraceEntry:
    """One translation block the guest started (oldest first in `BlockKick.trace()`)."""

    address: int  # linear address of its first instruction
    size: int  # bytes of code
    repeat: int  # times it ran back to back
    hflags: int | None  # QEMU hflags at its start (None: not recorded on this build)


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
        self._cell.stop_at_bytes = _NEVER
        self._uc = uc
        self._add_hook(unicorn.UC_HOOK_BLOCK, "emu_kick_block_hook")
        self._env = find_env_address(uc)
        if self._env is not None:
            self._cell.hflags = ffi.cast("const uint32_t *", self._env + R.OFF_HFLAGS)
            self._cell.regs = ffi.cast("uint64_t *", self._env + R.OFF_REGS)

    def _add_hook(self, kind: int, func: str, *extra: object) -> None:
        """Add one of kick.c's functions as a hook over every address, with the cell as its
        user data (Unicorn's Python binding only takes Python callables)."""
        hook = ffi.cast("uintptr_t", ffi.addressof(lib, func))
        cell = ffi.cast("uintptr_t", self._cell)
        err = uclib.uc_hook_add(
            self._uc._uch, ctypes.byref(uc_hook_h()), kind,
            ctypes.c_void_p(int(hook)), ctypes.c_void_p(int(cell)), 1, 0, *extra,
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

    def trace(self) -> list[TraceEntry]:
        """The blocks started most recently, oldest first (at most the ring's length). Read it
        while the engine is stopped."""
        cell = self._cell
        count, length = int(cell.trace_count), int(lib.EMU_TRACE_LEN)
        out = []
        for i in range(max(0, count - length), count):
            e = cell.trace[i % length]
            hflags = int(e.hflags) if self._env is not None else None
            out.append(TraceEntry(int(e.address), int(e.size), int(e.repeat), hflags))
        return out

    # -- virtual time (--deterministic) ---------------------------------------------------------
    def enable_virtual_tsc(self, tsc_khz: int) -> None:
        """Make rdtsc return virtual time at `tsc_khz` (the host TSC would leak host time)."""
        if self._env is None:
            raise BackendUnavailable("--deterministic: emu cannot find Unicorn's CPU state to virtualise rdtsc")
        self._cell.tsc_khz = tsc_khz
        self._add_hook(unicorn.UC_HOOK_INSN, "emu_rdtsc_hook", ctypes.c_int(unicorn.x86_const.UC_X86_INS_RDTSC))

    @property
    def virtual_ns(self) -> int:
        """Guest time: the code executed (BYTES_PER_NS bytes a nanosecond) plus time skipped."""
        return int(self._cell.code_bytes) // BYTES_PER_NS + int(self._cell.idle_ns)

    def skip_to(self, ns: int) -> None:
        """Advance guest time to `ns` without running code (a halted CPU waiting for a timer)."""
        now = self.virtual_ns
        if ns > now:
            self._cell.idle_ns += ns - now

    def stop_at(self, ns: int | None) -> None:
        """Stop the run before the first block that starts at or after guest time `ns`."""
        if ns is None:
            self._cell.stop_at_bytes = _NEVER
            return
        executed_ns = max(0, ns - int(self._cell.idle_ns))
        self._cell.stop_at_bytes = executed_ns * BYTES_PER_NS


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
        handle = ctypes.cast(uc._uch, ctypes.c_void_p).value
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


_NEVER = 2**64 - 1
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
