"""virtio-pci (virtio 1.x spec 4.1): a virtio device as a PCI function, in three flavours.

- modern (1.x only): device ID 0x1040 + type, revision 1, vendor capabilities in configuration
  space pointing at four regions of one 64-bit memory BAR (pci_modern.py) plus the
  PCI-configuration-access capability.
- legacy (0.9.5): transitional device ID, subsystem ID = device type, an I/O BAR with the legacy
  register block (pci_legacy.py), no capabilities.
- transitional: both; the driver picks. The interface the driver touches while the device is
  reset decides which semantics (features, FEATURES_OK) the core applies until the next reset.

Interrupts are INTx (pin A) only: emu has no MSI-X (Unicorn has no local APIC to deliver it). The
device drives the function's IntxPin, which was wired (attach.py) before either was built.
"""

from __future__ import annotations

import struct

from emu.devices.pci.function import CAP_ID_VENDOR, Bar, BarKind, PciFunction
from emu.devices.pci.intx import IntxPin
from emu.devices.virtio.constants import DeviceId
from emu.devices.virtio.device import VirtioDevice
from emu.devices.virtio.transport.pci_legacy import LEGACY_BAR, LegacyReg, LegacyRegs, io_bar_size
from emu.devices.virtio.transport.pci_modern import (
    COMMON_LEN,
    COMMON_OFF,
    DEVICE_OFF,
    ISR_OFF,
    MODERN_BAR,
    MODERN_BAR_SIZE,
    NOTIFY_MULTIPLIER,
    NOTIFY_OFF,
    REGION,
    CapType,
    ModernRegs,
)
from emu.devices.virtio.transport.pci_state import PciMode, VirtioPciState
from emu.devices.virtio.wiring import NotifyAddr

VENDOR = 0x1AF4  # Red Hat, Inc.: the virtio vendor ID
MODERN_DEVICE_BASE = 0x1040
MODERN_SUBSYSTEM = 0x40  # non-transitional devices should use 0x40 or above (spec 4.1.2.1)
TRANSITIONAL_IDS = {DeviceId.NET: 0x1000, DeviceId.BLOCK: 0x1001, DeviceId.CONSOLE: 0x1003, DeviceId.RNG: 0x1005}
CLASS_CODES = {DeviceId.NET: 0x020000, DeviceId.BLOCK: 0x010000, DeviceId.CONSOLE: 0x078000, DeviceId.RNG: 0x00FF00}


def pci_label(number: int, mode: PciMode, name: str) -> str:
    """How log lines name device `name` of flavour `mode` in slot `number` of bus 0."""
    return f"virtio-{mode.kind} 00:{number:02x}.0 {name}"


class VirtioPci(PciFunction, VirtioPciState):
    """A virtio device on the PCI bus (plug it into a PciHost, which assigns its BARs)."""

    def __init__(self, device: VirtioDevice, mode: PciMode, intx: IntxPin) -> None:
        kind = DeviceId(device.device_id)
        modern_only = mode is PciMode.MODERN
        PciFunction.__init__(
            self, VENDOR, MODERN_DEVICE_BASE + kind if modern_only else TRANSITIONAL_IDS[kind], CLASS_CODES[kind],
            revision=1 if modern_only else 0, subsystem_vendor=VENDOR,
            subsystem=MODERN_SUBSYSTEM if modern_only else kind, intx=intx, name=f"virtio-{device.name}",
        )  # fmt: skip
        VirtioPciState.__init__(self, device, mode)
        if mode is not PciMode.MODERN:
            size = io_bar_size(len(device.config_bytes()))
            self.add_bar(Bar(LEGACY_BAR, BarKind.IO, size, LegacyRegs(self), "legacy"))
        self._cfg_cap: int | None = None
        if mode is not PciMode.LEGACY:
            self.add_bar(Bar(MODERN_BAR, BarKind.MEM64, MODERN_BAR_SIZE, ModernRegs(self), "modern"))
            self._add_modern_caps()

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

    def reset(self) -> None:
        """Machine reset: configuration space (host), transport selectors and the device."""
        with self.device.lock:
            super().reset()
            self.reset_interface()
            self.device.reset()

    def notify_addrs(self, index: int) -> tuple[NotifyAddr, ...]:
        """Where the driver notifies queue `index` now: on the interface it uses, where that BAR
        decodes (nothing while it does not)."""
        legacy = self.device.legacy
        bar = self.bars.get(LEGACY_BAR if legacy else MODERN_BAR)
        base = self.bar_address(bar.index) if bar is not None and self.decodes(bar) else 0
        if not base:
            return ()
        if legacy:  # one port for every queue: the value names the queue
            return (NotifyAddr(base + LegacyReg.QUEUE_NOTIFY, 2, True, index),)
        # Modern: the address names the queue and the value does not matter; Linux writes 16
        # bits, other drivers may write 32 (KVM matches lengths exactly).
        at = base + NOTIFY_OFF + NOTIFY_MULTIPLIER * index
        return NotifyAddr(at, 2, False, None), NotifyAddr(at, 4, False, None)

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
