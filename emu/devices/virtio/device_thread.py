"""A virtio device's queues and interrupt off the vCPU thread (KVM: ioeventfd, irqfd).

While the driver has the device running (DRIVER_OK), each ready queue's notify address is an
ioeventfd: the guest's write signals an eventfd inside KVM and the vCPU goes on running; this
device's thread wakes up and serves the queue. The interrupt is a resampling irqfd (irqfd.py).

The registrations follow the device's state (`sync()`: after every register write and reset, a
change listener of the device, and after a PCI decode change, a decode listener of the function):
a reset, a stopped queue, a BAR moved or decode turned off removes them, and accesses go back to
the ordinary exit path. A notify that still arrives by an exit signals the queue's eventfd too
(`kicks`), so only the thread processes the queues.

Two objects because the device is built in between: `EventfdServing` (the strategy, serving.py)
holds the queue eventfds and the irqfd line the device is built with; `start()` then runs the
`DeviceThread` for the device and the transport's notify addresses.

One thread per device, not one for all: a blocking host read (a slow disk, a FIFO) then stalls
only that device's queues, never another device's. The GIL serializes the Python parts anyway.
"""

from __future__ import annotations

import logging
import os
import select
import threading

from emu.devices.virtio.constants import DeviceStatus
from emu.devices.virtio.device import VirtioDevice
from emu.devices.virtio.irqfd import EFD_FLAGS, IrqfdLine
from emu.devices.virtio.wiring import NotifyAddr, NotifyAddrs, Serve
from emu.platform import EventFds, IrqLine

log = logging.getLogger("emu.virtio")


class EventfdServing:
    """The KVM strategy for one device: a notify by an exit signals the queue's eventfd (what an
    ioeventfd does without the exit), the interrupt goes through an irqfd when it can."""

    def __init__(self, host: EventFds, gsi: int, wired: IrqLine, num_queues: int, label: str) -> None:
        self.host = host
        self.irq = IrqfdLine(host, gsi, wired, label)
        self.queue_fds = tuple(os.eventfd(0, EFD_FLAGS) for _ in range(num_queues))
        self.kicks = 0  # notifies of live queues that came by an exit
        self.stopped = False  # the thread is gone: notifies are served inline again

    @property
    def line(self) -> IrqLine:
        return self.irq.line

    def notified(self, index: int, serve: Serve) -> None:
        if self.stopped:
            serve()
            return
        self.kicks += 1
        os.eventfd_write(self.queue_fds[index], 1)

    def start(self, device: VirtioDevice, addrs: NotifyAddrs) -> DeviceThread:
        return DeviceThread(device, self, addrs)

    def close(self) -> None:
        for fd in self.queue_fds:
            os.close(fd)
        self.irq.close()


class DeviceThread:
    """Serves one device's queues from eventfds; owns its ioeventfd and irqfd registrations."""

    def __init__(self, device: VirtioDevice, serving: EventfdServing, addrs: NotifyAddrs) -> None:
        self.device = device
        self.serving = serving
        self._addrs = addrs
        self._registered: dict[int, tuple[NotifyAddr, ...]] = {}
        self._closed = False
        self.signals = 0  # queue signals served (ioeventfd or kick)
        self._wake_fd = os.eventfd(0, EFD_FLAGS)
        self._by_fd = {fd: i for i, fd in enumerate(serving.queue_fds)}
        self._epoll = select.epoll()
        for fd in (*serving.queue_fds, serving.irq.resample_fd, self._wake_fd):
            self._epoll.register(fd, select.EPOLLIN)
        device.change_listeners.append(self.sync)
        self._thread = threading.Thread(target=self._main, name=f"virtio-{device.name}", daemon=True)
        self._thread.start()

    # -- counters (tests, debug output) -----------------------------------------------------------
    @property
    def ioeventfds(self) -> int:
        return sum(len(a) for a in self._registered.values())

    @property
    def kicks(self) -> int:
        return self.serving.kicks

    @property
    def irqfd_signals(self) -> int:
        return self.serving.irq.signals

    @property
    def irq_gsi(self) -> int | None:
        return self.serving.irq.routed

    # -- registrations (vCPU thread) --------------------------------------------------------------
    def sync(self) -> None:
        """Registrations to match the device: notify addresses of the ready queues and the
        irqfd while DRIVER_OK is set, nothing otherwise."""
        dev = self.device
        with dev.lock:
            live = not self._closed and bool(dev.status & DeviceStatus.DRIVER_OK)
            want = {q.index: self._addrs(q.index) for q in dev.queues if live and q.ready}
            for index, addrs in list(self._registered.items()):
                if want.get(index) != addrs:
                    self._unregister(index)
            for index, addrs in want.items():
                if index not in self._registered and addrs:
                    self._register(index, addrs)
            self.serving.irq.route(live)

    def _register(self, index: int, addrs: tuple[NotifyAddr, ...]) -> None:
        fd = self.serving.queue_fds[index]
        host = self.serving.host
        done: list[NotifyAddr] = []
        try:
            for a in addrs:
                host.add_ioeventfd(fd, a.addr, a.length, pio=a.pio, datamatch=a.datamatch)
                done.append(a)
        except OSError as e:  # e.g. another device's registration there: the exit path stays
            log.debug("%s: queue %d notify stays on the exit path: %s", self.device.label, index, e)
        if done:
            self._registered[index] = tuple(done)

    def _unregister(self, index: int) -> None:
        fd = self.serving.queue_fds[index]
        for a in self._registered.pop(index):
            try:
                self.serving.host.remove_ioeventfd(fd, a.addr, a.length, pio=a.pio, datamatch=a.datamatch)
            except OSError as e:
                log.debug("%s: removing queue %d's ioeventfd: %s", self.device.label, index, e)

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
                    if fd == self.serving.irq.resample_fd:
                        self.serving.irq.resampled()
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

    # -- teardown ---------------------------------------------------------------------------------
    def close(self) -> None:
        with self.device.lock:
            self._closed = True
            self.sync()  # removes every registration (the VM must still exist)
            self.device.change_listeners.remove(self.sync)
            self.serving.stopped = True
        os.eventfd_write(self._wake_fd, 1)
        self._thread.join(2)
        if self._thread.is_alive():  # stuck in a host read: leave it its fds
            log.debug("%s: device thread still busy at close", self.device.label)
            return
        self._epoll.close()
        os.close(self._wake_fd)
        self.serving.close()
