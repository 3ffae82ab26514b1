"""Time for devices: a clock and a queue of deadlines, both run on the vCPU thread.

Devices never start threads of their own. They put deadlines in the machine's TimerQueue; the
machine runs what is due between guest runs (and wakes a running or halted vCPU when the next
deadline arrives). The clock is injectable so a run can use virtual time (--deterministic).
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int: ...


def wall_ns_at_zero(clock: Clock, epoch: float | None) -> int:
    """The wall-clock time (Unix ns) at `clock` time 0: `epoch` (Unix seconds) when a run fixes
    it (--deterministic), else the host's time now less the clock's reading."""
    if epoch is None:
        return time.time_ns() - clock.now_ns()
    whole = math.floor(epoch)
    return whole * 1_000_000_000 + round((epoch - whole) * 1_000_000_000)


@dataclass(frozen=True)
class ProcessStart:
    """When this process started: host monotonic and process CPU time (ns). Firecracker's boot
    timer and the boot profile count from it."""

    wall_ns: int
    cpu_ns: int

    @classmethod
    def now(cls) -> ProcessStart:
        return cls(time.monotonic_ns(), time.process_time_ns())


class HostClock:
    """Monotonic host time: guests see real seconds."""

    def now_ns(self) -> int:
        return time.monotonic_ns()


class PausableClock:
    """Host time that stands still while paused, as QEMU stops its virtual clock when the VM
    stops (the debugger holds the guest): otherwise every pause longer than a PIT period leaves
    a timer interrupt pending, and each `continue` from a breakpoint with IF=1 would run the
    handler and stop at the same breakpoint again. Starts paused."""

    def __init__(self) -> None:
        self._offset = 0  # host time spent paused
        self._paused_at: int | None = time.monotonic_ns()

    def now_ns(self) -> int:
        at = self._paused_at
        return (time.monotonic_ns() if at is None else at) - self._offset

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = time.monotonic_ns()

    def resume(self) -> None:
        if self._paused_at is not None:
            self._offset += time.monotonic_ns() - self._paused_at
            self._paused_at = None


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
    """Deadlines in clock time; callbacks get the clock time at which they run.

    Timers are added and run on the vCPU thread; another thread (the machine's timer thread)
    may ask for the next deadline, hence the lock.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._heap: list[Timer] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` (outside the lock) whenever the earliest deadline moves earlier."""
        self._listeners.append(listener)

    def add(self, deadline_ns: int, callback: Callable[[int], None]) -> Timer:
        t = Timer(deadline_ns, next(self._seq), callback)
        with self._lock:
            earlier = not self._heap or deadline_ns < self._heap[0].deadline_ns
            heapq.heappush(self._heap, t)
        if earlier:
            for listener in self._listeners:
                listener()
        return t

    def next_deadline(self) -> int | None:
        with self._lock:
            while self._heap and self._heap[0].cancelled:
                heapq.heappop(self._heap)
            return self._heap[0].deadline_ns if self._heap else None

    def run_due(self) -> int:
        """Run every timer whose deadline has passed; returns how many ran."""
        ran = 0
        now = self.clock.now_ns()
        while True:
            with self._lock:
                if not self._heap or self._heap[0].deadline_ns > now:
                    return ran
                t = heapq.heappop(self._heap)
            if not t.cancelled:
                t.callback(now)  # may add timers: outside the lock
                ran += 1

    def clear(self) -> None:
        with self._lock:
            self._heap.clear()


class TimerThread:
    """Kicks the vCPU when the earliest deadline passes; the vCPU thread then runs what is due.

    Devices stay single-threaded: this thread only reads the next deadline and calls `kick`.
    """

    def __init__(self, timers: TimerQueue, kick: Callable[[], None]) -> None:
        self._timers = timers
        self._kick = kick
        self._cv = threading.Condition()
        self._stopped = False
        self._kicked_for: int | None = None
        self._thread: threading.Thread | None = None
        timers.subscribe(self.notify)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="timers", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(2)
            self._thread = None

    def notify(self) -> None:
        """The deadlines changed (a timer was added or the vCPU ran the due ones)."""
        with self._cv:
            self._cv.notify()

    def _loop(self) -> None:
        clock = self._timers.clock
        while True:
            with self._cv:
                if self._stopped:
                    return
                deadline = self._timers.next_deadline()
                if deadline is None:
                    self._cv.wait()
                    continue
                delay = deadline - clock.now_ns()
                if delay > 0:
                    self._cv.wait(delay / 1e9)
                    continue
                if deadline == self._kicked_for:
                    # Already kicked for it: wait for the vCPU to run it (it notifies us).
                    self._cv.wait(0.005)
                    continue
                self._kicked_for = deadline
            self._kick()
