"""Time for devices: a clock and a queue of deadlines, both run on the vCPU thread.

Devices never start threads of their own. They put deadlines in the machine's TimerQueue; the
machine runs what is due between guest runs (and wakes a running or halted vCPU when the next
deadline arrives). The clock is injectable so a run can use virtual time (--deterministic).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int: ...


class HostClock:
    """Monotonic host time: guests see real seconds."""

    def now_ns(self) -> int:
        return time.monotonic_ns()


class ManualClock:
    """A clock that moves only when told to (tests, virtual time)."""

    def __init__(self, start_ns: int = 0) -> None:
        self.t = start_ns

    def now_ns(self) -> int:
        return self.t

    def advance(self, ns: int) -> None:
        self.t += ns


@dataclass(order=True)
class Timer:
    deadline_ns: int
    seq: int
    callback: Callable[[int], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class TimerQueue:
    """Deadlines in clock time; callbacks get the clock time at which they run."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._heap: list[Timer] = []
        self._seq = itertools.count()
        #: Called (from whatever thread added the timer) when the earliest deadline moved earlier.
        self.on_change: Callable[[], None] | None = None

    def add(self, deadline_ns: int, callback: Callable[[int], None]) -> Timer:
        t = Timer(deadline_ns, next(self._seq), callback)
        earlier = not self._heap or deadline_ns < self._heap[0].deadline_ns
        heapq.heappush(self._heap, t)
        if earlier and self.on_change is not None:
            self.on_change()
        return t

    def next_deadline(self) -> int | None:
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0].deadline_ns if self._heap else None

    def run_due(self) -> int:
        """Run every timer whose deadline has passed; returns how many ran."""
        ran = 0
        now = self.clock.now_ns()
        while self._heap and self._heap[0].deadline_ns <= now:
            t = heapq.heappop(self._heap)
            if not t.cancelled:
                t.callback(now)
                ran += 1
        return ran

    def clear(self) -> None:
        self._heap.clear()
