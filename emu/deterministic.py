"""--deterministic: guest time from the code the guest executes, never the host's clock.

Under Unicorn every source of host time is replaced: device timers (PIT, RTC) run on a clock that
advances with the code executed (emu/backends/unicorn/virtual_time.py) and jumps ahead while the
CPU waits in hlt; runs end exactly at timer deadlines instead of when a host thread kicks them;
rdtsc counts that time at a fixed rate; the RTC starts at a fixed date; console input is not read.
The same guest then runs the same instruction stream, takes its interrupts at the same
instructions and faults with byte-identical reports.
"""

from __future__ import annotations

from emu.backends.base import VirtualTime
from emu.timers import TimerQueue

#: The RTC's date at power-on in a deterministic run: 2024-01-01 00:00:00 UTC.
FIXED_EPOCH = 1_704_067_200


class VirtualClock:
    """The machine's clock in a deterministic run: the backend's guest time."""

    def __init__(self, time: VirtualTime) -> None:
        self._time = time

    def now_ns(self) -> int:
        return self._time.now_ns()

    def follow(self, timers: TimerQueue) -> None:
        """Runs end when guest time reaches the next timer deadline, also one added while the
        guest runs (a PIT programmed by an `out`)."""
        timers.subscribe(lambda: self._time.set_deadline(timers.next_deadline()))

    def set_deadline(self, next_deadline: int | None) -> None:
        self._time.set_deadline(next_deadline)

    def skip_to(self, ns: int) -> None:
        """The CPU is halted until a timer: guest time jumps to it."""
        self._time.skip_to(ns)
