"""What a virtio device is connected to, decided before it is built and never re-pointed.

- `Wiring` is what the device core gets at construction: the name it logs under, the interrupt
  line it drives and where a queue notify that arrives by an exit goes (`QueueDispatch`; the
  strategy behind it is serving.py's).
- `NotifyAddr` is where a guest's write notifies a queue: transports say it, device threads
  register it as an ioeventfd.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from emu.platform import IrqLine

Serve = Callable[[], None]  # process one notified queue now (the caller holds the device lock)


class QueueDispatch(Protocol):
    def notified(self, index: int, serve: Serve) -> None:
        """The driver notified live queue `index` by an exit (a register write on the vCPU
        thread, device lock held): serve it now, or hand it to whoever serves the queues."""


class ServeNow:
    """Queues are served on the thread that notifies them (the vCPU, inside the register write)."""

    def notified(self, index: int, serve: Serve) -> None:
        serve()


SERVE_NOW = ServeNow()


@dataclass(frozen=True)
class Wiring:
    """A device's connections. `label` names the device and where it sits in log lines (the
    device's own name when empty)."""

    irq: IrqLine
    label: str = ""
    queues: QueueDispatch = SERVE_NOW


@dataclass(frozen=True)
class NotifyAddr:
    """One guest write that notifies a queue: `length` bytes at `addr` (port I/O when `pio`),
    of the value `datamatch` (None: any value)."""

    addr: int
    length: int
    pio: bool
    datamatch: int | None


NotifyAddrs = Callable[[int], tuple[NotifyAddr, ...]]  # queue index -> where the guest notifies it now
