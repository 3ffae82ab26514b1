"""A virtio device's interrupt line that a resampling irqfd can carry (KVM).

While the irqfd is registered (the driver has the device running), asserting the line signals the
irqfd; KVM holds the GSI until the guest's EOI, then de-asserts it and signals the resample fd,
and `resampled()` asserts again if the device still wants the line. Level-triggered on purpose:
virtio-mmio lines and PCI INTx are level, and edge-style re-assertion would lose interrupts (an
edge while the IOAPIC's remote IRR is set is dropped). The line going down does nothing while the
irqfd is registered: the EOI does it. Without the irqfd the level goes to the wired line
(KVM_IRQ_LINE through the machine, or the PCI host's shared line).

It exists before the device (the device is built with `line` as its interrupt); the device
thread registers it (`route`) and forwards resample signals to it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

from emu.platform import EventFds, IrqLine

log = logging.getLogger("emu.virtio")

EFD_FLAGS = os.EFD_NONBLOCK | os.EFD_CLOEXEC


class IrqfdLine:
    def __init__(self, host: EventFds, gsi: int, wired: IrqLine, label: str) -> None:
        self._host = host
        self._gsi = gsi
        self._wired = wired
        self._label = label
        self._fd = os.eventfd(0, EFD_FLAGS)
        self.resample_fd = os.eventfd(0, EFD_FLAGS)
        # line() runs on the vCPU thread, resampled() on the device thread, route() on either.
        self._lock = threading.Lock()
        self._level = False  # the device's line as it last set it
        self.routed: int | None = None  # the irqfd's GSI while it is registered
        self.signals = self.resamples = 0  # for tests and debug output

    def line(self, level: bool) -> None:
        """The device's interrupt (an IrqLine)."""
        with self._lock:
            self._level = level
            if self.routed is None:
                self._wired(level)
            elif level:
                self._signal()  # de-assertion happens at the guest's EOI (resample)

    def _signal(self) -> None:
        self.signals += 1
        os.eventfd_write(self._fd, 1)

    def resampled(self) -> None:
        """The guest EOI'd the line and KVM de-asserted it: assert again if still pending."""
        with self._lock:
            self.resamples += 1
            if self.routed is not None and self._level:
                self._signal()

    def route(self, on: bool) -> None:
        """Register the irqfd (`on`) or remove it; a failed registration leaves the wired line."""
        with self._lock:
            if on == (self.routed is not None):
                return
            if on:
                self._register()
            else:
                self._unregister()

    def _register(self) -> None:
        try:
            self._host.add_irqfd(self._fd, self._gsi, self.resample_fd)
        except OSError as e:
            log.debug("%s: interrupts stay on the wired line: %s", self._label, e)
            self._wired(self._level)
            return
        self._wired(False)  # the irqfd's source holds the line from now on (KVM ORs the two)
        self.routed = self._gsi
        if self._level:
            self._signal()

    def _unregister(self) -> None:
        try:
            self._host.remove_irqfd(self._fd, self._gsi)  # KVM de-asserts the line
        except OSError as e:
            log.debug("%s: removing the irqfd: %s", self._label, e)
        self.routed = None
        with contextlib.suppress(BlockingIOError):  # unconsumed, it would fire at re-registration
            os.eventfd_read(self._fd)
        self._wired(self._level)

    def close(self) -> None:
        """After the irqfd was removed: release the fds (the line keeps working, wired)."""
        os.close(self._fd)
        os.close(self.resample_fd)
