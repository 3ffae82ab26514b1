"""The legacy virtio-pci register block (virtio 0.9.5; virtio 1.x spec 4.1.4.10): an I/O BAR with
fixed offsets, used by legacy and transitional devices. emu offers no MSI-X, so the
device-specific configuration starts at 0x14."""

from __future__ import annotations

import logging
from enum import IntEnum

from emu.devices.virtio.transport.pci_state import VirtioPciState

log = logging.getLogger("emu.virtio")

LEGACY_BAR = 0
PAGE_SHIFT = 12  # legacy queue addresses are 4 KiB page numbers
CONFIG_OFFSET = 0x14


class LegacyReg(IntEnum):
    HOST_FEATURES = 0x00  # 32-bit, read-only
    GUEST_FEATURES = 0x04  # 32-bit
    QUEUE_PFN = 0x08  # 32-bit
    QUEUE_NUM = 0x0C  # 16-bit, read-only: the queue size is the device's
    QUEUE_SEL = 0x0E  # 16-bit
    QUEUE_NOTIFY = 0x10  # 16-bit
    STATUS = 0x12  # 8-bit
    ISR = 0x13  # 8-bit, reading acknowledges


_SIZES = {LegacyReg.HOST_FEATURES: 4, LegacyReg.GUEST_FEATURES: 4, LegacyReg.QUEUE_PFN: 4,
          LegacyReg.QUEUE_NUM: 2, LegacyReg.QUEUE_SEL: 2, LegacyReg.QUEUE_NOTIFY: 2,
          LegacyReg.STATUS: 1, LegacyReg.ISR: 1}  # fmt: skip


def io_bar_size(config_len: int) -> int:
    size = 32
    while size < CONFIG_OFFSET + config_len:
        size *= 2
    return size


class LegacyRegs:
    """The I/O BAR's handler (offsets from the BAR's base)."""

    def __init__(self, transport: VirtioPciState) -> None:
        self.t = transport

    def _reg(self, offset: int, size: int, what: str) -> LegacyReg | None:
        if offset in _SIZES and _SIZES[LegacyReg(offset)] == size:
            return LegacyReg(offset)
        log.debug("%s: %d-byte legacy %s at %#x (no such register)", self.t.device.label, size, what, offset)
        return None

    def io_read(self, offset: int, size: int) -> int:
        with self.t.device.lock:
            return self._read(offset, size)

    def io_write(self, offset: int, size: int, value: int) -> None:
        with self.t.device.lock:
            self._write(offset, size, value)
            self.t.device.changed()

    def _read(self, offset: int, size: int) -> int:
        t, dev = self.t, self.t.device
        t.use_interface(legacy=True)
        if offset >= CONFIG_OFFSET:
            return dev.config_read(offset - CONFIG_OFFSET, size)
        reg = self._reg(offset, size, "read")
        q = dev.queue(t.queue_sel)
        match reg:
            case LegacyReg.HOST_FEATURES:
                return dev.offered_features() & 0xFFFF_FFFF
            case LegacyReg.GUEST_FEATURES:
                return dev.driver_features & 0xFFFF_FFFF
            case LegacyReg.QUEUE_PFN:
                return q.desc_addr >> PAGE_SHIFT if q is not None and q.ready else 0
            case LegacyReg.QUEUE_NUM:
                return q.max_size if q is not None else 0  # 0: no such queue
            case LegacyReg.QUEUE_SEL:
                return t.queue_sel
            case LegacyReg.STATUS:
                return int(dev.status)
            case LegacyReg.ISR:
                return dev.read_isr_and_clear()
        return 0

    def _write(self, offset: int, size: int, value: int) -> None:
        t, dev = self.t, self.t.device
        t.use_interface(legacy=True)
        if offset >= CONFIG_OFFSET:
            dev.config_write(offset - CONFIG_OFFSET, value.to_bytes(size, "little"))
            return
        reg = self._reg(offset, size, "write")
        match reg:
            case LegacyReg.GUEST_FEATURES:
                dev.set_driver_features(0, value)
            case LegacyReg.QUEUE_PFN:
                # No QueueNum or QueueAlign here: the queue takes its maximum size, 4 KiB alignment.
                dev.set_legacy_queue(t.queue_sel, value << PAGE_SHIFT, size=dev.queue_max_size)
            case LegacyReg.QUEUE_SEL:
                t.queue_sel = value
            case LegacyReg.QUEUE_NOTIFY:
                dev.notify(value)
            case LegacyReg.STATUS:
                dev.set_status(value)
                if value == 0:
                    t.queue_sel = 0
            case LegacyReg.HOST_FEATURES | LegacyReg.QUEUE_NUM | LegacyReg.ISR:
                log.debug("%s: write %#x to read-only legacy register %#x", dev.label, value, offset)
