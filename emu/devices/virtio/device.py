"""The virtio device core: feature negotiation, device status, config space, virtqueues and the
interrupt status, independent of the transport that exposes them.

A device (blk, ...) subclasses VirtioDevice and supplies its id, feature bits, config bytes and
`handle()` for a popped chain. A transport maps its registers onto the core's methods. The
guest's mistakes never raise out of here: they put the device into NEEDS_RESET (status bit 0x40,
with a config-change interrupt as the spec asks), are logged at debug level, and the device
ignores its queues until the driver resets it.

Connections (wiring.py) come with construction: the interrupt line, the log label and where a
queue notify goes (served inline, or handed to a device thread). Who needs to follow the device's
state (a device thread's registrations) subscribes to `change_listeners`, which run after every
transport register write and every reset.

Threads (docs/architecture/virtio-pci.md, "virtio threads"): every entry point (transport registers, notify,
host-data delivery, reset) runs under `lock`, a per-device reentrant lock. Under KVM a device
thread (device_thread.py) serves the queues: `process()` drops the lock while `handle()` does the
host I/O, so the vCPU can read registers meanwhile, and a reset waits for that request to finish.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import ClassVar

from emu.devices.virtio.constants import (
    F_EVENT_IDX,
    F_INDIRECT_DESC,
    F_VERSION_1,
    ISR_CONFIG_CHANGE,
    ISR_USED_BUFFER,
    DeviceStatus,
)
from emu.devices.virtio.queue import Chain, Virtqueue, VirtqueueError
from emu.devices.virtio.wiring import Wiring
from emu.errors import GuestMemoryError
from emu.memory import GuestMemory

log = logging.getLogger("emu.virtio")

_RING_FEATURES = F_INDIRECT_DESC | F_EVENT_IDX


class VirtioDevice:
    """Transport-independent state of one virtio device."""

    device_id: ClassVar[int] = 0
    name: ClassVar[str] = "virtio"
    num_queues: ClassVar[int] = 1
    queue_max_size: ClassVar[int] = 256

    def __init__(self, memory: GuestMemory, wiring: Wiring) -> None:
        self.memory = memory
        self.queues = [Virtqueue(memory, i, self.queue_max_size) for i in range(self.num_queues)]
        self.legacy = False  # the transport's: legacy (virtio 0.9.5) semantics
        # The transport's: refuse FEATURES_OK from a modern driver that did not accept VERSION_1
        # (the spec lets a device do so; virtio-mmio does not, as Firecracker's devices do not).
        self.version_1_required = True
        self._irq = wiring.irq
        self._dispatch = wiring.queues
        self.label = wiring.label or self.name  # for log lines
        self.change_listeners: list[Callable[[], None]] = []
        self.errors = 0  # times the device went into NEEDS_RESET (for tests and debug output)
        self.lock = threading.Condition(threading.RLock())
        self.generation = 0  # bumped by every reset: work started before it is dropped
        self.inflight = 0  # handle() calls running without the lock
        self.reset()

    # -- what a device supplies -----------------------------------------------------------------
    def device_features(self) -> int:
        """Device-specific feature bits (0-23 and 50+) the device offers."""
        return 0

    def config_bytes(self) -> bytes:
        """The device-specific configuration space, as the driver reads it."""
        return b""

    def config_write(self, offset: int, data: bytes) -> None:
        """A driver write into the configuration space (read-only fields ignore it)."""

    def handle(self, queue: Virtqueue, chain: Chain) -> int:
        """Process one chain and return the bytes written to its writable part."""
        raise NotImplementedError

    def device_reset(self) -> None:
        """Device-specific state back to its reset value."""

    def close(self) -> None:
        """Release host resources (image file, tap, output sink) when the machine goes."""

    # -- negotiation and status -----------------------------------------------------------------
    def offered_features(self) -> int:
        """What the device offers on this transport: a modern device must offer VERSION_1; a
        legacy one only sees the low 32 bits and never VERSION_1."""
        features = self.device_features() | _RING_FEATURES
        if self.legacy:
            return features & 0xFFFF_FFFF
        return features | F_VERSION_1

    def reset(self) -> None:
        with self.lock:
            self.generation += 1
            while self.inflight:  # a request in progress on the device thread finishes first
                self.lock.wait()
            self._reset()
        self.changed()

    def changed(self) -> None:
        """State a listener may follow changed (a register write, a reset)."""
        for listener in self.change_listeners:
            listener()

    def _reset(self) -> None:
        self.status = DeviceStatus(0)
        self.driver_features = 0
        self.isr = 0
        self.config_generation = 0  # no device changes its configuration at run time (yet)
        for q in self.queues:
            q.reset()
        self.device_reset()
        self._irq(False)

    def set_driver_features(self, word: int, value: int) -> None:
        """DriverFeatures write of 32-bit word `word` (0: bits 0-31, 1: bits 32-63)."""
        if word not in (0, 1) or self.status & (DeviceStatus.FEATURES_OK | DeviceStatus.DRIVER_OK):
            return  # features are fixed once FEATURES_OK is set (or only two words exist)
        shift = 32 * word
        self.driver_features = (self.driver_features & ~(0xFFFF_FFFF << shift)) | (value << shift)

    def features_word(self, word: int) -> int:
        """DeviceFeatures read of 32-bit word `word` (0 beyond the two words that exist)."""
        return (self.offered_features() >> (32 * word)) & 0xFFFF_FFFF if word < 2 else 0

    def has(self, feature: int) -> bool:
        return bool(self.driver_features & feature)

    def set_status(self, value: int) -> None:
        if value == 0:
            self.reset()
            return
        new = DeviceStatus(value & 0xFF) & ~DeviceStatus.NEEDS_RESET
        newly = new & ~self.status
        if newly & DeviceStatus.FEATURES_OK and not self._features_acceptable():
            new &= ~DeviceStatus.FEATURES_OK  # the driver reads it back and gives up, as the spec says
        self.status = new | (self.status & DeviceStatus.NEEDS_RESET)
        if newly & DeviceStatus.DRIVER_OK and not self.legacy and not new & DeviceStatus.FEATURES_OK:
            self.fail("DRIVER_OK without FEATURES_OK accepted")

    def _features_acceptable(self) -> bool:
        extra = self.driver_features & ~self.offered_features()
        if extra:
            log.debug("%s: driver accepted features %#x that were not offered", self.label, extra)
            return False
        if not self.legacy and not self.has(F_VERSION_1):
            if self.version_1_required:
                log.debug("%s: a modern device needs VERSION_1, the driver did not accept it", self.label)
                return False
            log.debug("%s: the driver did not accept VERSION_1: modern semantics all the same", self.label)
        return True

    @property
    def broken(self) -> bool:
        return bool(self.status & (DeviceStatus.NEEDS_RESET | DeviceStatus.FAILED))

    def fail(self, why: str) -> None:
        """The driver did something invalid: NEEDS_RESET, a config-change interrupt, keep running."""
        self.errors += 1
        log.debug("%s: %s: device needs a reset", self.label, why)
        if self.status & DeviceStatus.NEEDS_RESET:
            return
        self.status |= DeviceStatus.NEEDS_RESET
        if self.status & DeviceStatus.DRIVER_OK:
            self.raise_isr(ISR_CONFIG_CHANGE)

    # -- queues -----------------------------------------------------------------------------------
    def queue(self, index: int) -> Virtqueue | None:
        """The queue a transport's queue selector names (None: no such queue)."""
        return self.queues[index] if index < len(self.queues) else None

    def queue_to_set_up(self, index: int, what: str) -> Virtqueue | None:
        """Queue `index` for a write of its setup field `what`: None (and NEEDS_RESET) when the
        queue does not exist or is live, as every transport's setup registers require."""
        q = self.queue(index)
        if q is None:
            self.fail(f"{what} for queue {index}, which does not exist")
        elif q.ready:
            self.fail(f"{what} written while queue {index} is live")
        else:
            return q
        return None

    def set_legacy_queue(self, index: int, addr: int, size: int | None = None) -> None:
        """A legacy QueuePFN write (both legacy transports): the rings in one block at `addr`
        (Virtqueue.place_legacy), address 0 stops the queue. `size` overrides the queue size first
        (legacy virtio-pci has no QueueNum: the queue takes its maximum)."""
        q = self.queue(index)
        if q is not None and addr == 0:
            q.ready = False  # the driver stops the queue
            return
        q = self.queue_to_set_up(index, "QueuePFN")
        if q is None:
            return
        if size is not None:
            q.size = size
        q.place_legacy(addr)
        self.enable_queue(q)

    def enable_queue(self, q: Virtqueue) -> None:
        try:
            q.enable(self.has(F_INDIRECT_DESC), self.has(F_EVENT_IDX))
        except VirtqueueError as e:
            self.fail(str(e))

    def notify(self, index: int) -> None:
        """The driver notified queue `index` (an exit): process every available chain here, or
        hand the queue to the device thread when the device has one."""
        with self.lock:
            if self.broken:
                return
            if not self.status & DeviceStatus.DRIVER_OK:
                self.fail(f"queue {index} notified before DRIVER_OK")
                return
            if not 0 <= index < len(self.queues):
                self.fail(f"notify of queue {index}, which does not exist")
                return
            q = self.queues[index]
            if not q.ready:
                self.fail(f"queue {index} notified before it was set up")
                return
            self._dispatch.notified(index, lambda: self.guarded(lambda: self.process(q)))

    def serve(self, index: int) -> None:
        """The device thread's notify: a signal that arrives after a reset or a queue stop is
        stale, not a guest mistake, and is dropped."""
        with self.lock:
            if self.queue_live(index):
                self.guarded(lambda: self.process(self.queues[index]))

    def process(self, q: Virtqueue) -> None:
        """Serve a notified queue: by default every available chain goes through `handle()`.
        Devices whose queues wait for host data (net and console receive queues) override it.
        Called with the lock held; `handle()` runs without it (see the module doc)."""
        generation = self.generation
        while (chain := q.pop()) is not None:
            self.inflight += 1
            self.lock.release()
            try:
                written = self.handle(q, chain)
            finally:
                self.lock.acquire()
                self.inflight -= 1
                self.lock.notify_all()
            if generation != self.generation or not q.ready:
                return  # reset (or stopped) meanwhile: the driver no longer expects the answer
            q.push(chain.head, written)
        if q.need_interrupt():
            self.raise_isr(ISR_USED_BUFFER)

    def guarded(self, work: Callable[[], None]) -> None:
        """Run queue work; a guest mistake found on the way puts the device into NEEDS_RESET."""
        try:
            work()
        except (VirtqueueError, GuestMemoryError) as e:
            self.fail(str(e))

    def queue_live(self, index: int) -> bool:
        """Can the device put host data (a packet, console input) into queue `index` now?"""
        return not self.broken and bool(self.status & DeviceStatus.DRIVER_OK) and self.queues[index].ready

    # -- interrupts -------------------------------------------------------------------------------
    def raise_isr(self, bits: int) -> None:
        self.isr |= bits
        self._irq(True)

    def ack_isr(self, bits: int) -> None:
        self.isr &= ~bits
        if not self.isr:
            self._irq(False)

    def read_isr_and_clear(self) -> int:
        """Legacy PCI semantics (reading the ISR acknowledges it)."""
        value, self.isr = self.isr, 0
        self._irq(False)
        return value

    # -- config space -----------------------------------------------------------------------------
    def config_read(self, offset: int, size: int) -> int:
        data = self.config_bytes()
        if offset < 0 or offset + size > len(data):
            return 0
        return int.from_bytes(data[offset : offset + size], "little")
