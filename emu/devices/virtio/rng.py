"""virtio-rng (virtio 1.x spec 5.4, "entropy device"): one request queue whose writable buffers
the device fills with random bytes. Linux shows it as /dev/hwrng (rng_current: virtio_rng.0)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable

from emu.devices.virtio.constants import DeviceId
from emu.devices.virtio.device import VirtioDevice
from emu.devices.virtio.queue import Chain, Virtqueue
from emu.devices.virtio.wiring import Wiring
from emu.memory import GuestMemory

MAX_REQUEST = 64 * 1024  # bytes per request: a guest asking for gigabytes gets them in pieces

EntropySource = Callable[[int], bytes]


def seeded_source(seed: int = 0) -> EntropySource:
    """A repeatable source for --deterministic runs (the same bytes every run)."""
    return random.Random(seed).randbytes


class VirtioRng(VirtioDevice):
    device_id = DeviceId.RNG
    name = "rng"

    def __init__(self, memory: GuestMemory, wiring: Wiring, source: EntropySource = os.urandom) -> None:
        self.source = source
        self.bytes_served = 0
        super().__init__(memory, wiring)

    def handle(self, queue: Virtqueue, chain: Chain) -> int:
        size = min(chain.writable_len, MAX_REQUEST)
        written = chain.write(0, self.source(size)) if size else 0
        self.bytes_served += written
        return written
