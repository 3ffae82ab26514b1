"""virtio-mmio transport (virtio 1.x spec 4.2): version 2 (modern) and version 1 (legacy).

One 4 KiB register window per device and one level-triggered interrupt line (the device drives
it: the transport adds no logic to it). Linux finds the devices from
`virtio_mmio.device=4K@0xADDR:IRQ` words on its command line (`cmdline_word()`).
Registers are 32 bits wide; the device-specific configuration starts at 0x100. Accesses the spec
does not allow (a write to a read-only register, a legacy-only register on a modern device and
the other way round) are ignored and logged at debug level.
"""

from __future__ import annotations

import logging
from enum import IntEnum

from emu import layout
from emu.bus import Bus
from emu.devices.virtio.constants import VENDOR_ID
from emu.devices.virtio.device import VirtioDevice
from emu.devices.virtio.wiring import NotifyAddr

log = logging.getLogger("emu.virtio")

MAGIC = 0x74726976  # "virt"
CONFIG_OFFSET = 0x100


class Reg(IntEnum):
    MAGIC = 0x000
    VERSION = 0x004
    DEVICE_ID = 0x008
    VENDOR_ID = 0x00C
    DEVICE_FEATURES = 0x010
    DEVICE_FEATURES_SEL = 0x014
    DRIVER_FEATURES = 0x020
    DRIVER_FEATURES_SEL = 0x024
    GUEST_PAGE_SIZE = 0x028  # legacy
    QUEUE_SEL = 0x030
    QUEUE_NUM_MAX = 0x034
    QUEUE_NUM = 0x038
    QUEUE_ALIGN = 0x03C  # legacy
    QUEUE_PFN = 0x040  # legacy
    QUEUE_READY = 0x044  # modern
    QUEUE_NOTIFY = 0x050
    INTERRUPT_STATUS = 0x060
    INTERRUPT_ACK = 0x064
    STATUS = 0x070
    QUEUE_DESC_LOW = 0x080
    QUEUE_DESC_HIGH = 0x084
    QUEUE_DRIVER_LOW = 0x090
    QUEUE_DRIVER_HIGH = 0x094
    QUEUE_DEVICE_LOW = 0x0A0
    QUEUE_DEVICE_HIGH = 0x0A4
    SHM_SEL = 0x0AC
    SHM_LEN_LOW = 0x0B0
    SHM_LEN_HIGH = 0x0B4
    SHM_BASE_LOW = 0x0B8
    SHM_BASE_HIGH = 0x0BC
    CONFIG_GENERATION = 0x0FC


_LEGACY_ONLY = {Reg.GUEST_PAGE_SIZE, Reg.QUEUE_ALIGN, Reg.QUEUE_PFN}
_MODERN_ONLY = {
    Reg.QUEUE_READY, Reg.QUEUE_DESC_LOW, Reg.QUEUE_DESC_HIGH, Reg.QUEUE_DRIVER_LOW,
    Reg.QUEUE_DRIVER_HIGH, Reg.QUEUE_DEVICE_LOW, Reg.QUEUE_DEVICE_HIGH, Reg.SHM_SEL,
    Reg.SHM_LEN_LOW, Reg.SHM_LEN_HIGH, Reg.SHM_BASE_LOW, Reg.SHM_BASE_HIGH, Reg.CONFIG_GENERATION,
}  # fmt: skip
_NAMES = {r.value: r.name for r in Reg}


def mmio_label(base: int, name: str) -> str:
    """How log lines name device `name` in the slot at `base`."""
    return f"virtio-mmio@{base:#x} {name}"


class VirtioMmio:
    """A virtio device behind a virtio-mmio register window at `base`; the device was built to
    interrupt on line `irq` (a GSI: the command-line word and the ACPI tables announce it)."""

    def __init__(self, device: VirtioDevice, base: int, irq: int, *, legacy: bool = False) -> None:
        self.device = device
        self.base = base
        self.irq = irq
        self.version = 1 if legacy else 2
        device.legacy = legacy
        # Firecracker's virtio-mmio devices take a driver that leaves VERSION_1 out (OSv's does).
        device.version_1_required = False
        self.reset()

    @property
    def kind(self) -> str:
        return "mmio-legacy" if self.version == 1 else "mmio"

    def register(self, bus: Bus) -> None:
        bus.register_mmio(self.base, layout.VIRTIO_MMIO_SLOT_SIZE, self, f"virtio-{self.kind} {self.device.name}")

    def cmdline_word(self) -> str:
        """How Linux learns about this device (drivers/virtio/virtio_mmio.c `device=` parameter)."""
        return f"virtio_mmio.device=4K@{self.base:#x}:{self.irq}"

    def notify_addrs(self, index: int) -> tuple[NotifyAddr, ...]:
        """Where the driver notifies queue `index`: one register for every queue, the value
        names the queue."""
        return (NotifyAddr(self.base + Reg.QUEUE_NOTIFY, 4, False, index),)

    def reset(self) -> None:
        """Machine reset: the transport's selectors and the device."""
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.queue_sel = 0
        self.guest_page_size = 4096
        self.device.reset()

    # -- register accesses (vCPU thread; under the device's lock, see device.py) --------------
    def mmio_read(self, offset: int, size: int) -> int:
        with self.device.lock:
            return self._read(offset, size)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        with self.device.lock:
            self._write(offset, size, value)
            self.device.changed()

    def _read(self, offset: int, size: int) -> int:
        dev = self.device
        if offset >= CONFIG_OFFSET:
            return dev.config_read(offset - CONFIG_OFFSET, size)
        if size != 4 or offset % 4:
            log.debug("%s: %d-byte read of register %#x (registers are 32-bit)", dev.label, size, offset)
            return 0
        if (self.version == 1 and offset in _MODERN_ONLY) or (self.version == 2 and offset in _LEGACY_ONLY):
            log.debug("%s: read of %s, which version %d does not have", dev.label, _NAMES[offset], self.version)
            return 0
        q = dev.queue(self.queue_sel)
        match offset:
            case Reg.MAGIC:
                return MAGIC
            case Reg.VERSION:
                return self.version
            case Reg.DEVICE_ID:
                return dev.device_id
            case Reg.VENDOR_ID:
                return VENDOR_ID
            case Reg.DEVICE_FEATURES:
                return dev.features_word(self.device_features_sel)
            case Reg.QUEUE_NUM_MAX:
                return q.max_size if q is not None else 0  # 0: no such queue
            case Reg.QUEUE_PFN:
                return (q.desc_addr // self.guest_page_size) if q is not None and q.ready else 0
            case Reg.QUEUE_READY:
                return int(q is not None and q.ready)
            case Reg.INTERRUPT_STATUS:
                return dev.isr
            case Reg.STATUS:
                return int(dev.status)
            case Reg.SHM_LEN_LOW | Reg.SHM_LEN_HIGH:
                return 0xFFFF_FFFF  # no shared memory regions
            case Reg.CONFIG_GENERATION:
                return dev.config_generation
        log.debug("%s: read of write-only or unknown register %#x", dev.label, offset)
        return 0

    def _write(self, offset: int, size: int, value: int) -> None:
        dev = self.device
        if offset >= CONFIG_OFFSET:
            dev.config_write(offset - CONFIG_OFFSET, value.to_bytes(size, "little"))
            return
        if size != 4 or offset % 4:
            log.debug("%s: %d-byte write of register %#x (registers are 32-bit)", dev.label, size, offset)
            return
        if (self.version == 1 and offset in _MODERN_ONLY) or (self.version == 2 and offset in _LEGACY_ONLY):
            log.debug("%s: write of %s, which version %d does not have", dev.label, _NAMES[offset], self.version)
            return
        match offset:
            case Reg.DEVICE_FEATURES_SEL:
                self.device_features_sel = value
            case Reg.DRIVER_FEATURES:
                dev.set_driver_features(self.driver_features_sel, value)
            case Reg.DRIVER_FEATURES_SEL:
                self.driver_features_sel = value
            case Reg.GUEST_PAGE_SIZE:
                if value == 0 or value & (value - 1):
                    dev.fail(f"guest page size {value:#x} is not a power of two")
                else:
                    self.guest_page_size = value
            case Reg.QUEUE_SEL:
                self.queue_sel = value
            case Reg.QUEUE_NUM:
                if (q := dev.queue_to_set_up(self.queue_sel, "QueueNum")) is not None:
                    q.size = value
            case Reg.QUEUE_ALIGN:
                if (q := dev.queue_to_set_up(self.queue_sel, "QueueAlign")) is not None:
                    if value == 0 or value & (value - 1):
                        dev.fail(f"queue alignment {value:#x} is not a power of two")
                    else:
                        q.legacy_align = value
            case Reg.QUEUE_PFN:
                # One page-aligned block: descriptors, available ring, used ring at QueueAlign.
                dev.set_legacy_queue(self.queue_sel, value * self.guest_page_size)
            case Reg.QUEUE_READY:
                if (q := dev.queue(self.queue_sel)) is None:
                    dev.fail(f"QueueReady for queue {self.queue_sel}, which does not exist")
                elif value & 1 and not q.ready:
                    dev.enable_queue(q)
                elif not value & 1:
                    q.ready = False
            case Reg.QUEUE_NOTIFY:
                dev.notify(value & 0xFFFF)  # bits 16+ carry the next offset with NOTIFICATION_DATA
            case Reg.INTERRUPT_ACK:
                dev.ack_isr(value)
            case Reg.STATUS:
                dev.set_status(value)
                if value == 0:
                    self.device_features_sel = self.driver_features_sel = self.queue_sel = 0
            case Reg.QUEUE_DESC_LOW | Reg.QUEUE_DESC_HIGH:
                if (q := dev.queue_to_set_up(self.queue_sel, "QueueDesc")) is not None:
                    q.desc_addr = _set_half(q.desc_addr, offset == Reg.QUEUE_DESC_HIGH, value)
            case Reg.QUEUE_DRIVER_LOW | Reg.QUEUE_DRIVER_HIGH:
                if (q := dev.queue_to_set_up(self.queue_sel, "QueueDriver")) is not None:
                    q.avail_addr = _set_half(q.avail_addr, offset == Reg.QUEUE_DRIVER_HIGH, value)
            case Reg.QUEUE_DEVICE_LOW | Reg.QUEUE_DEVICE_HIGH:
                if (q := dev.queue_to_set_up(self.queue_sel, "QueueDevice")) is not None:
                    q.used_addr = _set_half(q.used_addr, offset == Reg.QUEUE_DEVICE_HIGH, value)
            case Reg.SHM_SEL:
                pass
            case _:
                log.debug("%s: write %#x to read-only or unknown register %#x", dev.label, value, offset)


def _set_half(current: int, high: bool, value: int) -> int:
    if high:
        return (current & 0xFFFF_FFFF) | (value << 32)
    return (current & ~0xFFFF_FFFF) | value
