"""The local APIC timer (SDM vol. 3A 10.5.4): one-shot, periodic and TSC-deadline modes.

Nothing ticks in software, as in emu/devices/pit.py. The timer's input clock (`hz`, CPUID leaf
0x15's crystal) is a function of the machine clock: input tick i falls at ceil(i * 1e9 / hz) ns.
The counter was loaded with the initial count at input tick `start` and decrements once every
`divide` input ticks, so the current count is worked out from the clock when read, and expiry k
(k = 1, 2, ...) falls at input tick start + k * initial * divide: periodic expiries are exact
multiples of the period from the start, with no drift however late the queue runs them.

A TimerQueue timer exists only while the timer is armed and its LVT entry unmasked. A masked
timer still counts (the current count goes on decreasing, a one-shot still expires, a TSC
deadline still passes and clears IA32_TSC_DEADLINE) but interrupts nobody. Before any register
change, an expiry whose deadline has passed but which the queue has not run yet is handled first
(`_catch_up`), so a change the guest makes after the deadline never loses that interrupt.

Runs under the owning LocalApic's lock (given at construction); `interrupt` is called with it
held.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from enum import IntEnum
from typing import Any

from emu.platform import GuestTsc
from emu.timers import Timer, TimerQueue

NS = 1_000_000_000


class TimerMode(IntEnum):
    """LVT timer bits 18:17."""

    ONE_SHOT = 0
    PERIODIC = 1
    TSC_DEADLINE = 2


def divisor(dcr: int) -> int:
    """The divide configuration register's bits 3 and 1:0 (SDM Figure 10-10): 000 divides by 2,
    001 by 4, ... 110 by 128, and 111 by 1."""
    code = (dcr >> 1 & 4) | (dcr & 3)
    return 1 if code == 7 else 2 << code


class ApicTimer:
    """The timer of one local APIC. `interrupt()` asks the APIC to deliver the LVT timer vector."""

    def __init__(
        self,
        timers: TimerQueue,
        hz: int,
        lock: threading.RLock,
        interrupt: Callable[[], None],
        tsc: GuestTsc | None = None,
    ) -> None:
        if hz <= 0:
            raise ValueError(f"APIC timer frequency {hz} Hz is not positive")
        self._timers = timers
        self._hz = hz
        self._lock = lock
        self._interrupt = interrupt
        self._tsc = tsc
        self._timer: Timer | None = None
        self._generation = 0  # tells a cancelled queue callback from the current one
        #: Expiries delivered, and periodic expiries skipped because the queue ran late.
        self.fired = 0
        self.missed = 0
        self.reset()

    def reset(self) -> None:
        """Power-on and INIT: one-shot, masked, divide by 2, counters 0, deadline disarmed."""
        self._cancel()
        self.mode = TimerMode.ONE_SHOT
        self.masked = True
        self.dcr = 0
        self.divide = 2
        self.initial = 0
        self.deadline = 0  # IA32_TSC_DEADLINE; 0 = disarmed
        self._start: int | None = None  # input tick at which the count was loaded; None = stopped
        self._next = 1  # the expiry (counted from _start) the queue timer stands for

    # -- clock arithmetic -----------------------------------------------------------------------
    def _now(self) -> int:
        return self._timers.clock.now_ns()

    def _tick(self, t_ns: int) -> int:
        """The last input tick at or before clock time `t_ns`."""
        return t_ns * self._hz // NS

    def _tick_time(self, tick: int) -> int:
        return -(-tick * NS // self._hz)

    def _expiry_time(self, k: int) -> int:
        assert self._start is not None
        return self._tick_time(self._start + k * self.initial * self.divide)

    def _count(self, now: int) -> int:
        if self.mode is TimerMode.TSC_DEADLINE or self._start is None or self.initial == 0:
            return 0
        decrements = (self._tick(now) - self._start) // self.divide
        if self.mode is TimerMode.PERIODIC:
            return self.initial - decrements % self.initial  # reloads on reaching 0
        return max(self.initial - decrements, 0)

    # -- registers ------------------------------------------------------------------------------
    def current(self) -> int:
        """The current-count register."""
        return self._count(self._now())

    def configure(self, mode: TimerMode, masked: bool) -> None:
        """An LVT timer write (or a forced mask when the APIC is software-disabled)."""
        now = self._now()
        self._catch_up(now)
        if (mode is TimerMode.TSC_DEADLINE) != (self.mode is TimerMode.TSC_DEADLINE):
            # SDM 10.5.4.1: a transition to or from TSC-deadline mode disarms the timer.
            self.initial, self._start, self.deadline = 0, None, 0
        elif mode is not self.mode:
            self._rebase(now)  # one-shot <-> periodic: the count goes on from where it is
        unmasking = self.masked and not masked
        self.mode, self.masked = mode, masked
        if unmasking and mode is TimerMode.TSC_DEADLINE:
            self._expire_masked_deadline()
        if unmasking and mode is not TimerMode.TSC_DEADLINE and self._start is not None:
            # Expiries that passed while masked are gone; the next one is still to come.
            elapsed = (self._tick(now) - self._start) // (self.initial * self.divide)
            if self.mode is TimerMode.PERIODIC:
                self._next = elapsed + 1
            elif elapsed >= 1:
                self._start = None  # a one-shot that expired while masked: nothing left to fire
        self._schedule()

    def write_initial(self, count: int) -> None:
        """The initial-count register: loading starts the count; 0 stops the timer. Ignored in
        TSC-deadline mode (SDM 10.5.4.1)."""
        now = self._now()
        self._catch_up(now)
        if self.mode is TimerMode.TSC_DEADLINE:
            return
        self.initial = count
        self._start = self._tick(now) if count else None
        self._next = 1
        self._schedule()

    def write_divide(self, dcr: int) -> None:
        """The divide configuration register. The SDM leaves a change while counting open: emu
        keeps the current count and goes on decrementing it at the new rate."""
        now = self._now()
        self._catch_up(now)
        self.dcr = dcr & 0xB
        self._rebase(now, divisor(self.dcr))
        self._schedule()

    def read_deadline(self) -> int:
        """IA32_TSC_DEADLINE: 0 outside TSC-deadline mode and once the deadline has passed."""
        self._catch_up(self._now())
        if self.mode is not TimerMode.TSC_DEADLINE:
            return 0
        if self.masked:
            self._expire_masked_deadline()
        return self.deadline

    def write_deadline(self, value: int) -> None:
        """Arm (or with 0 disarm) the TSC deadline; ignored outside TSC-deadline mode. A deadline
        already passed fires at once (at the next run of the queue)."""
        self._catch_up(self._now())
        if self.mode is not TimerMode.TSC_DEADLINE:
            return
        self.deadline = value
        self._schedule()

    # -- internals ------------------------------------------------------------------------------
    def _rebase(self, now: int, divide: int | None = None) -> None:
        """Restart counting at the current count, at `divide` (default: unchanged)."""
        count = self._count(now)
        if divide is not None:
            self.divide = divide
        if self._start is None or count == 0:
            self._start = None  # stopped or expired (one-shot): stays so
            return
        self._start = self._tick(now) - (self.initial - count) * self.divide
        self._next = 1

    def _expire_masked_deadline(self) -> None:
        assert self._tsc is not None or self.deadline == 0
        if self.deadline and self._tsc is not None and self._tsc.read() >= self.deadline:
            self.deadline = 0  # expired while masked: disarmed, no interrupt

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._generation += 1

    def _schedule(self) -> None:
        """Put the next expiry in the queue (replacing any earlier one) when it can interrupt."""
        self._cancel()
        if self.masked:
            return
        if self.mode is TimerMode.TSC_DEADLINE:
            if not self.deadline or self._tsc is None:
                return
            delta = self.deadline - self._tsc.read()
            at = self._now() + max(0, -(-delta * NS // (self._tsc.khz * 1000)))
        elif self._start is not None and self.initial:
            at = self._expiry_time(self._next)
        else:
            return
        self._timer = self._timers.add(at, functools.partial(self._on_deadline, self._generation))

    def _on_deadline(self, generation: int, now: int) -> None:
        """The TimerQueue callback (vCPU thread)."""
        with self._lock:
            if generation == self._generation:
                self._due(now)

    def _catch_up(self, now: int) -> None:
        if self._timer is not None and self._timer.deadline_ns <= now:
            self._due(now)

    def _due(self, now: int) -> None:
        """The scheduled expiry has passed (lock held)."""
        self._cancel()
        if self.mode is TimerMode.TSC_DEADLINE:
            if self._tsc is not None and self._tsc.read() < self.deadline:
                self._schedule()  # the TSC runs a little behind the clock: not yet
                return
            self.deadline = 0
        elif self.mode is TimerMode.PERIODIC:
            assert self._start is not None
            elapsed = (self._tick(now) - self._start) // (self.initial * self.divide)
            self.missed += max(elapsed - self._next, 0)
            self._next = max(self._next + 1, elapsed + 1)
        else:
            self._start = None  # a one-shot stops at 0
        self.fired += 1
        self._interrupt()
        if self.mode is TimerMode.PERIODIC:
            self._schedule()

    def describe(self) -> dict[str, Any]:
        timer = self._timer
        return {
            "mode": self.mode.name.lower().replace("_", "-"),
            "masked": self.masked,
            "divide": self.divide,
            "initial_count": self.initial,
            "current_count": self.current(),
            "tsc_deadline": self.deadline,
            "hz": self._hz,
            "next_expiry_ns": timer.deadline_ns if timer is not None else None,
            "fired": self.fired,
            "missed": self.missed,
        }
