"""virtio-pci (virtio 1.x spec 4.1): a virtio device as a PCI function, in three flavours.

- modern (1.x only): device ID 0x1040 + type, revision 1, vendor capabilities in configuration
  space pointing at four regions of one 64-bit memory BAR (common configuration, ISR, device
  configuration, notifications) plus the PCI-configuration-access capability.
- legacy (0.9.5): transitional device ID, subsystem ID = device type, an I/O BAR with the legacy
  register block (pci_legacy.py), no capabilities.
- transitional: both; the driver picks. The interface the driver touches while the device is
  reset decides which semantics (features, FEATURES_OK) the core applies until the next reset.

Interrupts are INTx (pin A) only: emu has no MSI-X (Unicorn has no local APIC to deliver it).
"""

from __future__ import annotations

import logging
import struct
from enum import Enum, IntEnum
from typing import TYPE_CHECKING

from emu.devices.pci.function import CAP_ID_VENDOR, Bar, BarKind, PciFunction
from emu.devices.virtio.constants import DeviceId
from emu.devices.virtio.device import VirtioDevice
from emu.devices.virtio.pci_legacy import LegacyRegs, io_bar_size

if TYPE_CHECKING:
    from emu.devices.virtio.eventfd import DeviceThread

log = logging.getLogger("emu.virtio")

VENDOR = 0x1AF4  # Red Hat, Inc.: the virtio vendor ID
MODERN_DEVICE_BASE = 0x1040
MODERN_SUBSYSTEM = 0x40  # non-transitional devices should use 0x40 or above (spec 4.1.2.1)
TRANSITIONAL_IDS = {DeviceId.NET: 0x1000, DeviceId.BLOCK: 0x1001, DeviceId.CONSOLE: 0x1003, DeviceId.RNG: 0x1005}
CLASS_CODES = {DeviceId.NET: 0x020000, DeviceId.BLOCK: 0x010000, DeviceId.CONSOLE: 0x078000, DeviceId.RNG: 0x00FF00}
NO_VECTOR = 0xFFFF  # VIRTIO_MSI_NO_VECTOR: no MSI-X, so every vector reads as none

LEGACY_BAR = 0
MODERN_BAR = 4  # 64-bit: BARs 4 and 5, as QEMU places it
MODERN_BAR_SIZE = 0x4000
COMMON_OFF, ISR_OFF, DEVICE_OFF, NOTIFY_OFF = 0x0000, 0x1000, 0x2000, 0x3000
REGION = 0x1000
NOTIFY_MULTIPLIER = 4


class PciMode(Enum):
    MODERN = "modern"
    LEGACY = "legacy"
    TRANSITIONAL = "transitional"


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


class VirtioPci(PciFunction):
    """A virtio device on the PCI bus (plug it into a PciHost, which assigns its BARs)."""

    io_thread: DeviceThread | None = None  # KVM: serves the queues (eventfd.py)

    def __init__(self, device: VirtioDevice, mode: PciMode) -> None:
        kind = DeviceId(device.device_id)
        modern_only = mode is PciMode.MODERN
        super().__init__(
            VENDOR, MODERN_DEVICE_BASE + kind if modern_only else TRANSITIONAL_IDS[kind], CLASS_CODES[kind],
            revision=1 if modern_only else 0, subsystem_vendor=VENDOR,
            subsystem=MODERN_SUBSYSTEM if modern_only else kind, intx_pin=1, name=f"virtio-{device.name}",
        )  # fmt: skip
        self.device = device
        self.mode = mode
        device.legacy = mode is PciMode.LEGACY
        device.irq = self.set_intx
        device.label = f"virtio-pci {device.name}"
        if mode is not PciMode.MODERN:
            size = io_bar_size(len(device.config_bytes()))
            self.add_bar(Bar(LEGACY_BAR, BarKind.IO, size, LegacyRegs(self), "legacy"))
        self._cfg_cap: int | None = None
        if mode is not PciMode.LEGACY:
            self.add_bar(Bar(MODERN_BAR, BarKind.MEM64, MODERN_BAR_SIZE, _ModernRegs(self), "modern"))
            self._add_modern_caps()
        self.queue_sel = 0
        self.dfselect = self.gfselect = 0

    @property
    def kind(self) -> str:
        return {PciMode.MODERN: "pci-modern", PciMode.LEGACY: "pci-legacy", PciMode.TRANSITIONAL: "pci"}[self.mode]

    def _add_modern_caps(self) -> None:
        def cap(cfg_type: CapType, offset: int, length: int, extra: bytes = b"", writable: bytes = b"") -> int:
            body = struct.pack("<BBBB2xII", 16 + len(extra), cfg_type, MODERN_BAR, 0, offset, length) + extra
            return self.add_capability(CAP_ID_VENDOR, body, writable)

        cap(CapType.COMMON, COMMON_OFF, COMMON_LEN)
        cap(CapType.ISR, ISR_OFF, 1)
        cap(CapType.DEVICE, DEVICE_OFF, REGION)
        notify_len = NOTIFY_MULTIPLIER * len(self.device.queues)
        cap(CapType.NOTIFY, NOTIFY_OFF, notify_len, struct.pack("<I", NOTIFY_MULTIPLIER))
        # VIRTIO_PCI_CAP_PCI_CFG: a window onto the BAR through configuration space (bar, offset,
        # length and the data dword are the driver's to write).
        writable = bytes([0, 0, 0xFF, 0, 0, 0]) + b"\xff" * 12
        self._cfg_cap = cap(CapType.PCI_CFG, 0, 0, bytes(4), writable)

    def use_interface(self, legacy: bool) -> None:
        """Transitional devices: the first interface used after a reset decides the semantics."""
        if self.mode is PciMode.TRANSITIONAL and self.device.status == 0 and self.device.legacy != legacy:
            self.device.legacy = legacy

    def reset(self) -> None:
        """Machine reset: configuration space (host), transport selectors and the device."""
        with self.device.lock:
            super().reset()
            self.queue_sel = self.dfselect = self.gfselect = 0
            self.device.legacy = self.mode is PciMode.LEGACY
            self.device.reset()

    # -- the PCI-configuration-access capability --------------------------------------------------
    def _cfg_window(self, offset: int, size: int) -> tuple[int, int] | None:
        """(BAR offset, length) when a config access hits the capability's data dword."""
        cap = self._cfg_cap
        if cap is None or not (cap + 16 <= offset and offset + size <= cap + 20):
            return None
        bar, bar_offset, length = self.cfg[cap + 4], *struct.unpack_from("<II", self.cfg, cap + 8)
        if bar != MODERN_BAR or length not in (1, 2, 4) or bar_offset + length > MODERN_BAR_SIZE:
            return None
        return bar_offset, length

    def special_read(self, offset: int, size: int) -> int | None:
        window = self._cfg_window(offset, size)
        if window is None:
            return None
        return self.bars[MODERN_BAR].handler.mmio_read(*window)  # type: ignore[attr-defined]

    def special_write(self, offset: int, size: int, value: int) -> None:
        window = self._cfg_window(offset, size)
        if window is not None:
            bar_offset, length = window
            data = int.from_bytes(self.cfg[self._cfg_cap + 16 : self._cfg_cap + 16 + length], "little")  # type: ignore[operator]
            self.bars[MODERN_BAR].handler.mmio_write(bar_offset, length, data)  # type: ignore[attr-defined]


class _ModernRegs:
    """The modern memory BAR's handler."""

    def __init__(self, t: VirtioPci) -> None:
        self.t = t

    def mmio_read(self, offset: int, size: int) -> int:
        with self.t.device.lock:
            return self._read(offset, size)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        with self.t.device.lock:
            self._write(offset, size, value)
            self.t.device.on_change()

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
