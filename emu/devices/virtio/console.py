"""virtio-console (virtio 1.x spec 5.3) with one port and no optional features: receiveq0 (host →
guest) and transmitq0 (guest → host). Linux makes port 0 its hvc0 console.

Guest output goes to a host sink (a file or stdout) as it is transmitted; host input (`feed`, any
thread) waits in an Inbox and is copied into the guest's posted receive buffers on the vCPU
thread, split across buffers as a byte stream.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable

from emu.devices.virtio.constants import ISR_USED_BUFFER, DeviceId
from emu.devices.virtio.device import VirtioDevice
from emu.devices.virtio.inbox import Defer, Inbox, run_now
from emu.devices.virtio.queue import Chain, Virtqueue
from emu.devices.virtio.wiring import Wiring
from emu.memory import GuestMemory

log = logging.getLogger("emu.virtio.console")

RX, TX = 0, 1
INPUT_LIMIT = 1024  # pending input chunks; more is dropped (a paste far larger than the guest reads)

Sink = Callable[[bytes], object]  # a file's write() returns a count: ignored


class VirtioConsole(VirtioDevice):
    device_id = DeviceId.CONSOLE
    name = "console"
    num_queues = 2

    def __init__(
        self, memory: GuestMemory, wiring: Wiring, output: Sink, close_output: Callable[[], None] = lambda: None,
        defer: Defer = run_now,
    ) -> None:  # fmt: skip
        self.output = output
        self._close_output = close_output
        self.inbox = Inbox(INPUT_LIMIT, defer, self._deliver)
        self.bytes_out = self.bytes_in = 0
        super().__init__(memory, wiring)

    def config_bytes(self) -> bytes:
        # cols, rows, max_nr_ports, emerg_wr: only meaningful with SIZE/MULTIPORT/EMERG_WRITE,
        # which emu does not offer; present so the layout is the spec's.
        return struct.pack("<HHII", 0, 0, 1, 0)

    def device_reset(self) -> None:
        # Pending input survives: Linux resets the device when its driver loads, and what was
        # typed before that should still arrive.
        self.inbox.rearm()

    def handle(self, queue: Virtqueue, chain: Chain) -> int:
        if queue.index == TX:
            data = chain.read()
            self.bytes_out += len(data)
            try:
                self.output(data)
            except OSError as e:  # a full disk or a closed pipe must not stop the guest
                log.debug("%s: output failed: %s", self.label, e)
        return 0  # a transmit buffer is only read; a receive buffer is never handled here

    def process(self, q: Virtqueue) -> None:
        if q.index == RX:
            self._fill(q)  # the driver posted receive buffers: pending input may go in now
        else:
            super().process(q)

    # -- host → guest -----------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Host input for the guest (any thread; dropped when far too much is pending)."""
        if data and not self.inbox.put(bytes(data)):
            log.debug("%s: input dropped (%d bytes pending)", self.label, len(self.inbox))

    def _deliver(self) -> None:
        with self.lock:
            if self.queue_live(RX):
                self.guarded(lambda: self._fill(self.queues[RX]))

    def _fill(self, q: Virtqueue) -> None:
        while len(self.inbox):
            chain = q.pop()
            if chain is None:
                break  # no buffer posted: the rest waits for the driver's next notify
            data = self.inbox.pop() or b""
            n = chain.write(0, data)
            if n < len(data):
                self.inbox.unpop(data[n:])
            self.bytes_in += n
            q.push(chain.head, n)
        if q.need_interrupt():
            self.raise_isr(ISR_USED_BUFFER)

    def close(self) -> None:
        self.inbox.close()
        self._close_output()
