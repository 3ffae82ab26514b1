"""A virtio device's queues and interrupt off the vCPU thread (KVM: ioeventfd, irqfd).

While the driver has the device running (DRIVER_OK), each ready queue's notify address is an
ioeventfd: the guest's write signals an eventfd inside KVM and the vCPU goes on running; this
device's thread wakes up and serves the queue. The interrupt line is a resampling irqfd: the
thread signals it when the device asserts the line, KVM holds the line until the guest EOIs,
then signals the resample fd and the thread re-asserts if the ISR is still set (level-triggered
INTx and virtio-mmio lines must not lose an interrupt, which edge-triggered re-assertion could:
an edge while the IOAPIC's remote IRR is still set is dropped).

The registrations follow the device's state (`sync()`, after every register write, a reset and
a PCI decode change): a reset, a stopped queue, a BAR moved or decode turned off removes them,
and accesses go back to the ordinary exit path. A notify that still arrives by an exit is handed
to the thread (`kicks`), so only it processes the queues.

One thread per device, not one for all: a blocking host read (a slow disk, a FIFO) then stalls
only that device's queues, never another device's. The GIL serializes the Python parts anyway.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from emu.devices.virtio.constants import Status
from emu.devices.virtio.device import IrqLine, VirtioDevice

log = logging.getLogger("emu.virtio")

_EFD_FLAGS = os.EFD_NONBLOCK | os.EFD_CLOEXEC


class EventfdHost(Protocol):
    """What a backend offers (emu/backends/kvm/eventfds.py)."""

    def add_ioeventfd(self, fd: int, addr: int, length: int, *, pio: bool, datamatch: int | None) -> None: ...
    def remove_ioeventfd(self, fd: int, addr: int, length: int, *, pio: bool, datamatch: int | None) -> None: ...
    def add_irqfd(self, fd: int, gsi: int, resample_fd: int) -> None: ...
    def remove_irqfd(self, fd: int, gsi: int) -> None: ...


@dataclass(frozen=True)
class NotifyAddr:
    """One guest write that notifies a queue: `length` bytes at `addr` (port I/O when `pio`),
    of the value `datamatch` (None: any value)."""

    addr: int
    length: int
    pio: bool
    datamatch: int | None


NotifyAddrs = Callable[[int], tuple[NotifyAddr, ...]]  # queue index -> where the guest notifies it


class DeviceThread:
    """Serves one device's queues from eventfds; owns its ioeventfd and irqfd registrations."""

    def __init__(self, device: VirtioDevice, host: EventfdHost, notify_addrs: NotifyAddrs,
                 gsi: Callable[[], int | None], wired: IrqLine) -> None:  # fmt: skip
        self.device = device
        self.host = host
        self._addrs = notify_addrs
        self._gsi = gsi
        self.wired = wired  # the line as it is without an irqfd (KVM_IRQ_LINE through the machine)
        self._queue_fds = [os.eventfd(0, _EFD_FLAGS) for _ in device.queues]
        self._irq_fd = os.eventfd(0, _EFD_FLAGS)
        self._resample_fd = os.eventfd(0, _EFD_FLAGS)
        self._wake_fd = os.eventfd(0, _EFD_FLAGS)
        self._registered: dict[int, tuple[NotifyAddr, ...]] = {}
        self.irq_gsi: int | None = None  # the irqfd's GSI while one is registered
        self._level = False  # the device's line as it last set it
        self._closed = False
        # Counters (tests, debug output): queue signals served, of them notifies that came by
        # an exit instead of an ioeventfd, irqfd signals, resamples.
        self.signals = self.kicks = self.irqfd_signals = self.resamples = 0
        self._epoll = select.epoll()
        self._by_fd = {fd: i for i, fd in enumerate(self._queue_fds)}
        for fd in (*self._queue_fds, self._resample_fd, self._wake_fd):
            self._epoll.register(fd, select.EPOLLIN)
        device.kick = self._kick
        device.on_change = self.sync
        self._thread = threading.Thread(target=self._main, name=f"virtio-{device.name}", daemon=True)
        self._thread.start()

    @property
    def ioeventfds(self) -> int:
        return sum(len(a) for a in self._registered.values())

    # -- the vCPU thread's side (device lock held or taken) ---------------------------------------
    def line(self, level: bool) -> None:
        """The device's interrupt line (replaces the transport's wiring)."""
        self._level = level
        if self.irq_gsi is None:
            self.wired(level)
        elif level:
            self._signal_irq()  # de-assertion happens at the guest's EOI (resample)

    def _signal_irq(self) -> None:
        self.irqfd_signals += 1
        os.eventfd_write(self._irq_fd, 1)

    def _kick(self, index: int) -> None:
        self.kicks += 1
        os.eventfd_write(self._queue_fds[index], 1)

    def sync(self) -> None:
        """Registrations to match the device: notify addresses of the ready queues and the
        irqfd while DRIVER_OK is set, nothing otherwise."""
        dev = self.device
        with dev.lock:
            live = not self._closed and bool(dev.status & Status.DRIVER_OK)
            want = {q.index: self._addrs(q.index) for q in dev.queues if live and q.ready}
            for index, addrs in list(self._registered.items()):
                if want.get(index) != addrs:
                    self._unregister(index)
            for index, addrs in want.items():
                if index not in self._registered and addrs:
                    self._register(index, addrs)
            gsi = self._gsi() if live else None
            if gsi != self.irq_gsi:
                self._route_irq(gsi)

    def _register(self, index: int, addrs: tuple[NotifyAddr, ...]) -> None:
        fd = self._queue_fds[index]
        done: list[NotifyAddr] = []
        try:
            for a in addrs:
                self.host.add_ioeventfd(fd, a.addr, a.length, pio=a.pio, datamatch=a.datamatch)
                done.append(a)
        except OSError as e:  # e.g. another device's registration there: the exit path stays
            log.debug("%s: queue %d notify stays on the exit path: %s", self.device.label, index, e)
        if done:
            self._registered[index] = tuple(done)

    def _unregister(self, index: int) -> None:
        fd = self._queue_fds[index]
        for a in self._registered.pop(index):
            try:
                self.host.remove_ioeventfd(fd, a.addr, a.length, pio=a.pio, datamatch=a.datamatch)
            except OSError as e:
                log.debug("%s: removing queue %d's ioeventfd: %s", self.device.label, index, e)

    def _route_irq(self, gsi: int | None) -> None:
        if self.irq_gsi is not None:
            try:
                self.host.remove_irqfd(self._irq_fd, self.irq_gsi)  # KVM de-asserts the line
            except OSError as e:
                log.debug("%s: removing the irqfd: %s", self.device.label, e)
            self.irq_gsi = None
            with contextlib.suppress(BlockingIOError):  # unconsumed, it would fire at re-registration
                os.eventfd_read(self._irq_fd)
        if gsi is not None:
            try:
                self.host.add_irqfd(self._irq_fd, gsi, self._resample_fd)
            except OSError as e:
                log.debug("%s: interrupts stay on KVM_IRQ_LINE: %s", self.device.label, e)
            else:
                self.wired(False)  # the irqfd's source holds the line from now on
                self.irq_gsi = gsi
                if self._level:
                    self._signal_irq()
                return
        self.wired(self._level)

    # -- the device thread ------------------------------------------------------------------------
    def _main(self) -> None:
        while True:
            try:
                events = self._epoll.poll()
            except InterruptedError:
                continue
            for fd, _ in events:
                if not self._consume(fd):
                    continue
                if fd == self._wake_fd:
                    return
                try:
                    if fd == self._resample_fd:
                        self._resample()
                    else:
                        self.device.serve(self._by_fd[fd])
                except Exception:  # a bug in emu: keep serving, say what happened
                    log.exception("%s: device thread", self.device.label)

    def _consume(self, fd: int) -> bool:
        try:
            n = os.eventfd_read(fd)
        except BlockingIOError:
            return False
        if fd in self._by_fd:
            self.signals += n
        return True

    def _resample(self) -> None:
        """The guest EOI'd the line and KVM de-asserted it: assert again if still pending."""
        self.resamples += 1
        with self.device.lock:
            if self.irq_gsi is not None and self._level:
                self._signal_irq()

    # -- teardown ---------------------------------------------------------------------------------
    def close(self) -> None:
        with self.device.lock:
            self._closed = True
            self.sync()  # removes every registration (the VM must still exist)
            self.device.kick = None
            self.device.on_change = lambda: None
        os.eventfd_write(self._wake_fd, 1)
        self._thread.join(2)
        if self._thread.is_alive():  # stuck in a host read: leave it its fds
            log.debug("%s: device thread still busy at close", self.device.label)
            return
        self._epoll.close()
        for fd in (*self._queue_fds, self._irq_fd, self._resample_fd, self._wake_fd):
            os.close(fd)
