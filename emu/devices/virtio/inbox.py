"""Host data on its way into a device's receive queue (virtio-net frames, virtio-console input).

Host threads (the tap reader, the stdin reader) never touch guest memory or a virtqueue: they put
items here, and the first item after a delivery asks for one more delivery on the vCPU thread
(`Defer`, the machine's timer queue), so the device models stay single-threaded as every other
device in emu. The bound gives the tap reader back-pressure: it waits while the guest has no
buffers posted instead of queueing without limit.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

Defer = Callable[[Callable[[], None]], object]  # run a function on the vCPU thread soon (result ignored)


def run_now(work: Callable[[], None]) -> None:
    """A Defer for machines without a vCPU thread of their own (unit tests)."""
    work()


class Inbox:
    """A bounded FIFO of byte strings filled by host threads and drained by the vCPU thread."""

    def __init__(self, limit: int, defer: Defer, deliver: Callable[[], None]) -> None:
        self.limit = limit
        self._defer = defer
        self._deliver = deliver
        self._items: deque[bytes] = deque()
        self._cv = threading.Condition()
        self._scheduled = False
        self.closed = False

    def put(self, item: bytes, wait: float = 0.0) -> bool:
        """Queue `item` (any thread). Waits up to `wait` seconds for room; False if dropped."""
        with self._cv:
            if len(self._items) >= self.limit and wait > 0:
                self._cv.wait_for(lambda: len(self._items) < self.limit or self.closed, wait)
            if len(self._items) >= self.limit or self.closed:
                return False
            self._items.append(item)
            schedule = not self._scheduled
            self._scheduled = True
        if schedule:
            self._defer(self._run)
        return True

    def _run(self) -> None:
        with self._cv:
            self._scheduled = False  # items put from now on ask for another delivery
        self._deliver()

    # -- the vCPU thread's side -------------------------------------------------------------------
    def pop(self) -> bytes | None:
        with self._cv:
            item = self._items.popleft() if self._items else None
            self._cv.notify_all()
            return item

    def unpop(self, rest: bytes) -> None:
        """Give back the part of an item the guest had no room for (a byte stream's tail)."""
        with self._cv:
            self._items.appendleft(rest)

    def __len__(self) -> int:
        with self._cv:
            return len(self._items)

    def rearm(self) -> None:
        """After a reset: a machine reset empties the timer queue, so a scheduled delivery may be
        gone; the next item schedules a new one."""
        with self._cv:
            self._scheduled = False

    def clear(self) -> None:
        with self._cv:
            self._items.clear()
            self._scheduled = False
            self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self.closed = True
            self._items.clear()
            self._cv.notify_all()
