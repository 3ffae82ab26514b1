"""Guest time from the code the guest executes (--deterministic), kept by kick.c's hooks.

Every block started adds its size to a byte count: BYTES_PER_NS bytes of code are a nanosecond
of guest time, plus the time skipped while the CPU waits in hlt. rdtsc returns that time at a
fixed rate (the host TSC would leak host time). Runs end when guest time reaches the earliest of
the machine's next timer and the interrupt-window poll.
"""

from __future__ import annotations

import ctypes

import unicorn

from emu.backends.base import BackendUnavailable
from emu.backends.unicorn.native import BYTES_PER_NS, NEVER, NativeHooks

#: A fixed 2 GHz TSC: CPUID leaf 0x15 must not carry the host's rate.
VIRTUAL_TSC_KHZ = 2_000_000


class UnicornVirtualTime:
    """The VirtualTime interface (emu/backends/base.py) over the native cell."""

    tsc_khz = VIRTUAL_TSC_KHZ
    code_bytes_per_ns = BYTES_PER_NS

    def __init__(self, native: NativeHooks) -> None:
        if native.env is None:
            raise BackendUnavailable("--deterministic: emu cannot find Unicorn's CPU state to virtualise rdtsc")
        self._cell = native.cell
        self._cell.tsc_khz = self.tsc_khz
        native.add_hook(unicorn.UC_HOOK_INSN, "emu_rdtsc_hook", ctypes.c_int(unicorn.x86_const.UC_X86_INS_RDTSC))
        self._deadline_ns: int | None = None
        self._window_ns: int | None = None
        self._slice_end_ns: int | None = None

    def now_ns(self) -> int:
        return int(self._cell.code_bytes) // BYTES_PER_NS + int(self._cell.idle_ns)

    def tsc(self) -> int:
        """The guest's TSC now: what kick.c's rdtsc hook returns."""
        return self.now_ns() * self.tsc_khz // 1_000_000

    def skip_to(self, ns: int) -> None:
        now = self.now_ns()
        if ns > now:
            self._cell.idle_ns += ns - now
            self._apply()  # the run's end is counted in executed code: it moved

    def set_deadline(self, ns: int | None) -> None:
        self._deadline_ns = ns
        self._apply()

    def set_window_poll(self, ns: int | None) -> None:
        """Also end the run at `ns`, to retry an interrupt the guest did not accept yet."""
        self._window_ns = ns
        self._apply()

    def set_slice(self, ns: int | None) -> None:
        """Also end the run `ns` from now: the running vCPU's time slice (--smp); None: no slice."""
        self._slice_end_ns = None if ns is None else self.now_ns() + ns
        self._apply()

    def slice_over(self) -> bool:
        return self._slice_end_ns is not None and self.now_ns() >= self._slice_end_ns

    def _apply(self) -> None:
        budget = [t for t in (self._deadline_ns, self._window_ns, self._slice_end_ns) if t is not None]
        if not budget:
            self._cell.stop_at_bytes = NEVER
            return
        executed_ns = max(0, min(budget) - int(self._cell.idle_ns))
        self._cell.stop_at_bytes = executed_ns * BYTES_PER_NS
