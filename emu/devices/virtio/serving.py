"""How a device's queues are served and how its interrupt reaches the wired line: a strategy
chosen once per device, before the device is built (attach.py picks it from what the backend
offers).

- `Inline` (Unicorn, and KVM without eventfds): queues are served on the vCPU thread inside the
  notify write, the interrupt drives the wired line directly.
- device_thread.EventfdServing (KVM): notifies go to a device thread fed by eventfds, the
  interrupt rides an irqfd.
"""

from __future__ import annotations

from typing import Protocol

from emu.devices.virtio.device import VirtioDevice
from emu.devices.virtio.wiring import NotifyAddrs, QueueDispatch, ServeNow
from emu.platform import IrqLine


class Worker(Protocol):
    """A running device thread: `sync()` after a change of where notifies land (a PCI BAR moved),
    `close()` before the VM goes."""

    def sync(self) -> None: ...
    def close(self) -> None: ...


class Serving(QueueDispatch, Protocol):
    """How one device's queues are served and how its interrupt reaches the wired line."""

    @property
    def line(self) -> IrqLine:
        """What the device's interrupt drives (after the transport's own masking, if any)."""

    def start(self, device: VirtioDevice, addrs: NotifyAddrs) -> Worker | None:
        """Once the device and its transport exist: the thread that serves it, if any."""


class Inline(ServeNow):
    """Queues served inside the notify and the interrupt on the wired line itself."""

    def __init__(self, wired: IrqLine) -> None:
        self._wired = wired

    @property
    def line(self) -> IrqLine:
        return self._wired

    def start(self, device: VirtioDevice, addrs: NotifyAddrs) -> Worker | None:
        return None
