"""The modern virtio-pci interface (virtio 1.x spec 4.1.4): one 64-bit memory BAR with four
regions (common configuration, ISR, device configuration, notifications), each announced by a
vendor capability in configuration space (the function adds those: pci.py)."""

from __future__ import annotations

import logging
from enum import IntEnum

from emu.devices.virtio.transport.pci_state import VirtioPciState

log = logging.getLogger("emu.virtio")

MODERN_BAR = 4  # 64-bit: BARs 4 and 5, as QEMU places it
MODERN_BAR_SIZE = 0x4000
COMMON_OFF, ISR_OFF, DEVICE_OFF, NOTIFY_OFF = 0x0000, 0x1000, 0x2000, 0x3000
REGION = 0x1000
NOTIFY_MULTIPLIER = 4
NO_VECTOR = 0xFFFF  # VIRTIO_MSI_NO_VECTOR: no MSI-X, so every vector reads as none


class CapType(IntEnum):
    COMMON = 1
    NOTIFY = 2
    ISR = 3
    DEVICE = 4
    PCI_CFG = 5


class Common(IntEnum):
    """struct virtio_pci_common_cfg (offset: field)."""

    DFSELECT = 0x00
    DF = 0x04
    GFSELECT = 0x08
    GF = 0x0C
    MSIX = 0x10
    NUM_QUEUES = 0x12
    STATUS = 0x14
    GENERATION = 0x15
    QSELECT = 0x16
    QSIZE = 0x18
    QMSIX = 0x1A
    QENABLE = 0x1C
    QNOTIFY_OFF = 0x1E
    QDESC = 0x20
    QDRIVER = 0x28
    QDEVICE = 0x30


COMMON_LEN = 0x38
_FIELD_SIZE = {Common.DFSELECT: 4, Common.DF: 4, Common.GFSELECT: 4, Common.GF: 4, Common.MSIX: 2,
               Common.NUM_QUEUES: 2, Common.STATUS: 1, Common.GENERATION: 1, Common.QSELECT: 2,
               Common.QSIZE: 2, Common.QMSIX: 2, Common.QENABLE: 2, Common.QNOTIFY_OFF: 2,
               Common.QDESC: 8, Common.QDRIVER: 8, Common.QDEVICE: 8}  # fmt: skip
_QUEUE_ADDR = {Common.QDESC: "desc_addr", Common.QDRIVER: "avail_addr", Common.QDEVICE: "used_addr"}


def _field(offset: int, size: int) -> tuple[Common, int] | None:
    """(field, byte offset inside it) for an access the spec allows: a whole field, or one
    32-bit half of a 64-bit field."""
    for f, fsize in _FIELD_SIZE.items():
        if f <= offset < f + fsize:
            inner = offset - f
            if (inner == 0 and size == fsize) or (fsize == 8 and size == 4 and inner in (0, 4)):
                return f, inner
            return None
    return None


class ModernRegs:
    """The modern memory BAR's handler."""

    def __init__(self, t: VirtioPciState) -> None:
        self.t = t

    def mmio_read(self, offset: int, size: int) -> int:
        with self.t.device.lock:
            return self._read(offset, size)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        with self.t.device.lock:
            self._write(offset, size, value)
            self.t.device.changed()

    def _read(self, offset: int, size: int) -> int:
        t, dev = self.t, self.t.device
        region, inner = offset & ~(REGION - 1), offset & (REGION - 1)
        if region == COMMON_OFF:
            t.use_interface(legacy=False)
            return self._common_read(inner, size)
        if region == ISR_OFF:
            return dev.read_isr_and_clear() if inner == 0 else 0
        if region == DEVICE_OFF:
            return dev.config_read(inner, size)
        return 0  # notification region and padding: write-only or nothing

    def _write(self, offset: int, size: int, value: int) -> None:
        t, dev = self.t, self.t.device
        region, inner = offset & ~(REGION - 1), offset & (REGION - 1)
        if region == COMMON_OFF:
            t.use_interface(legacy=False)
            self._common_write(inner, size, value)
        elif region == DEVICE_OFF:
            dev.config_write(inner, value.to_bytes(size, "little"))
        elif region == NOTIFY_OFF and inner % NOTIFY_MULTIPLIER == 0:
            dev.notify(inner // NOTIFY_MULTIPLIER)  # the address names the queue
        else:
            log.debug("%s: write %#x to read-only modern BAR offset %#x", dev.label, value, offset)

    def _common_read(self, offset: int, size: int) -> int:
        t, dev = self.t, self.t.device
        hit = _field(offset, size)
        if hit is None:
            log.debug("%s: %d-byte read of common config %#x", dev.label, size, offset)
            return 0
        f, inner = hit
        q = dev.queue(t.queue_sel)
        value = 0
        match f:
            case Common.DFSELECT:
                value = t.dfselect
            case Common.DF:
                value = dev.features_word(t.dfselect)
            case Common.GFSELECT:
                value = t.gfselect
            case Common.GF:
                value = (dev.driver_features >> (32 * t.gfselect)) & 0xFFFF_FFFF if t.gfselect < 2 else 0
            case Common.MSIX | Common.QMSIX:
                value = NO_VECTOR
            case Common.NUM_QUEUES:
                value = len(dev.queues)
            case Common.STATUS:
                value = int(dev.status)
            case Common.GENERATION:
                value = dev.config_generation & 0xFF
            case Common.QSELECT:
                value = t.queue_sel
            case Common.QSIZE:
                value = q.size if q is not None else 0  # 0: no such queue
            case Common.QENABLE:
                value = int(q is not None and q.ready)
            case Common.QNOTIFY_OFF:
                value = q.index if q is not None else 0
            case Common.QDESC | Common.QDRIVER | Common.QDEVICE:
                value = getattr(q, _QUEUE_ADDR[f]) if q is not None else 0
        return (value >> (8 * inner)) & ((1 << (8 * size)) - 1)

    def _common_write(self, offset: int, size: int, value: int) -> None:
        t, dev = self.t, self.t.device
        hit = _field(offset, size)
        if hit is None:
            log.debug("%s: %d-byte write of common config %#x", dev.label, size, offset)
            return
        f, inner = hit
        match f:
            case Common.DFSELECT:
                t.dfselect = value
            case Common.GFSELECT:
                t.gfselect = value
            case Common.GF:
                dev.set_driver_features(t.gfselect, value)
            case Common.STATUS:
                dev.set_status(value)
                if value == 0:
                    t.queue_sel = t.dfselect = t.gfselect = 0
            case Common.QSELECT:
                t.queue_sel = value
            case Common.QSIZE:
                if (q := dev.queue_to_set_up(t.queue_sel, "queue_size")) is not None:
                    q.size = value  # validated when enabled
            case Common.QENABLE:
                if (q := dev.queue(t.queue_sel)) is None:
                    dev.fail(f"queue_enable for queue {t.queue_sel}, which does not exist")
                elif value == 1 and not q.ready:
                    dev.enable_queue(q)
            case Common.QDESC | Common.QDRIVER | Common.QDEVICE:
                attr = _QUEUE_ADDR[f]
                if (q := dev.queue_to_set_up(t.queue_sel, attr)) is not None:
                    shift = 8 * inner
                    mask = ((1 << (8 * size)) - 1) << shift
                    setattr(q, attr, (getattr(q, attr) & ~mask) | (value << shift))
            case Common.MSIX | Common.QMSIX:
                pass  # no MSI-X: the vector reads back as NO_VECTOR, which tells the driver
            case _:
                log.debug("%s: write %#x to read-only common config %#x", dev.label, value, offset)
