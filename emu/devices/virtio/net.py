"""virtio-net (virtio 1.x spec 5.1) on a tap interface: receiveq0 and transmitq0, no control
queue and no offloads (the guest checksums and segments everything itself), MAC and link status
in the configuration space.

Transmit runs on the vCPU thread inside the notify: each chain is a virtio-net header plus one
Ethernet frame, written to the tap. Receive: a reader thread (`TapLink`) reads frames from the tap
into an Inbox; the vCPU thread copies them into the buffers the driver posted (one frame per
chain, header first) and raises the interrupt.
"""

from __future__ import annotations

import logging
import os
import select
import struct
import threading

from emu.devices.virtio.constants import F_VERSION_1, ISR_USED_BUFFER, DeviceId
from emu.devices.virtio.device import VirtioDevice
from emu.devices.virtio.inbox import Defer, Inbox, run_now
from emu.devices.virtio.queue import Chain, Virtqueue
from emu.devices.virtio.wiring import Wiring
from emu.memory import GuestMemory

log = logging.getLogger("emu.virtio.net")

# Feature bits (spec 5.1.3).
F_MAC = 1 << 5
F_MRG_RXBUF = 1 << 15
F_STATUS = 1 << 16
LINK_UP = 1

RX, TX = 0, 1
HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
HDR_NUM_BUFFERS = 2  # num_buffers: in the header with VERSION_1 or MRG_RXBUF
GSO_NONE = 0
ETH_HEADER = 14
MAX_FRAME = 65535 + ETH_HEADER
RX_BACKLOG = 256  # frames waiting for guest buffers before the tap reader waits


class TapLink:
    """One tap fd (or any datagram fd: the tests use a socketpair) and the thread reading it."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, inbox: Inbox) -> None:
        self._thread = threading.Thread(target=self._read_loop, args=(inbox,), name=f"net-{self.name}", daemon=True)
        self._thread.start()

    def _read_loop(self, inbox: Inbox) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(200):
                continue
            try:
                frame = os.read(self.fd, MAX_FRAME)
            except BlockingIOError:
                continue
            except OSError as e:
                log.debug("tap %s: read failed: %s", self.name, e)
                return
            # Back-pressure: wait (a little at a time, so close() is prompt) while the guest has
            # no buffers; the tap's own queue then fills and the host's stack slows down.
            while not inbox.put(frame, wait=0.2):
                if self._stop.is_set() or inbox.closed:
                    return

    def send(self, frame: bytes) -> bool:
        try:
            os.write(self.fd, frame)
        except OSError as e:  # EAGAIN (the host side is not reading) or the link went away
            log.debug("tap %s: frame of %d bytes dropped: %s", self.name, len(frame), e)
            return False
        return True

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        os.close(self.fd)


class VirtioNet(VirtioDevice):
    device_id = DeviceId.NET
    name = "net"
    num_queues = 2

    def __init__(self, memory: GuestMemory, wiring: Wiring, link: TapLink, mac: bytes, defer: Defer = run_now) -> None:
        self.link = link
        self.mac = mac
        self.inbox = Inbox(RX_BACKLOG, defer, self._deliver)
        self.rx_packets = self.tx_packets = self.rx_dropped = self.tx_dropped = 0
        super().__init__(memory, wiring)
        link.start(self.inbox)

    def device_features(self) -> int:
        return F_MAC | F_STATUS

    def config_bytes(self) -> bytes:
        # mac, status, max_virtqueue_pairs (read only with MQ; 1 is the truth anyway)
        return self.mac + struct.pack("<HH", LINK_UP, 1)

    def device_reset(self) -> None:
        self.inbox.clear()

    def header_len(self) -> int:
        return HDR.size + (HDR_NUM_BUFFERS if self.has(F_VERSION_1) or self.has(F_MRG_RXBUF) else 0)

    # -- guest → host ---------------------------------------------------------------------------
    def handle(self, queue: Virtqueue, chain: Chain) -> int:
        if queue.index != TX:
            return 0
        data = chain.read()
        hlen = self.header_len()
        if len(data) < hlen + ETH_HEADER:
            log.debug("%s: transmit of %d bytes is shorter than a header and a frame", self.label, len(data))
            self.tx_dropped += 1
            return 0
        gso_type = HDR.unpack_from(data)[1]
        if gso_type != GSO_NONE:  # segmentation offload was never offered
            log.debug("%s: transmit with gso_type %d dropped", self.label, gso_type)
            self.tx_dropped += 1
            return 0
        if self.link.send(data[hlen:]):
            self.tx_packets += 1
        else:
            self.tx_dropped += 1
        return 0

    def process(self, q: Virtqueue) -> None:
        if q.index == RX:
            self._fill(q)  # new receive buffers: frames waiting for them can go in
        else:
            super().process(q)

    # -- host → guest (vCPU thread, asked for by the Inbox) --------------------------------------
    def _deliver(self) -> None:
        with self.lock:
            if self.queue_live(RX):
                self.guarded(lambda: self._fill(self.queues[RX]))
            else:
                self.rx_dropped += len(self.inbox)  # no driver (yet): the frames go nowhere, as on a real NIC
                self.inbox.clear()

    def _fill(self, q: Virtqueue) -> None:
        hdr = HDR.pack(0, GSO_NONE, 0, 0, 0, 0)
        if self.header_len() > HDR.size:
            hdr += struct.pack("<H", 1)  # num_buffers: each frame in one chain
        while len(self.inbox):
            chain = q.pop()
            if chain is None:
                break  # the driver posts more buffers and notifies; the rest waits
            frame = self.inbox.pop() or b""
            if chain.writable_len < len(hdr) + len(frame):
                log.debug("%s: %d-byte frame does not fit a %d-byte buffer", self.label, len(frame), chain.writable_len)
                self.rx_dropped += 1
                q.push(chain.head, 0)  # the driver sees a short packet and reuses the buffer
                continue
            written = chain.write(0, hdr) + chain.write(len(hdr), frame)
            self.rx_packets += 1
            q.push(chain.head, written)
        if q.need_interrupt():
            self.raise_isr(ISR_USED_BUFFER)

    def close(self) -> None:
        self.inbox.close()
        self.link.close()
