"""What the legacy and the modern virtio-pci register blocks share: the device, the flavour of
the function, the selector registers and which interface the driver chose."""

from __future__ import annotations

from enum import Enum

from emu.devices.virtio.device import VirtioDevice


class PciMode(Enum):
    MODERN = "modern"
    LEGACY = "legacy"
    TRANSITIONAL = "transitional"

    @property
    def kind(self) -> str:
        """The transport's name as the options and log lines spell it."""
        return {PciMode.MODERN: "pci-modern", PciMode.LEGACY: "pci-legacy", PciMode.TRANSITIONAL: "pci"}[self]


class VirtioPciState:
    """Selectors and interface choice of one virtio-pci function (VirtioPci is one)."""

    def __init__(self, device: VirtioDevice, mode: PciMode) -> None:
        self.device = device
        self.mode = mode
        device.legacy = mode is PciMode.LEGACY
        self.queue_sel = 0
        self.dfselect = self.gfselect = 0

    @property
    def kind(self) -> str:
        return self.mode.kind

    def use_interface(self, legacy: bool) -> None:
        """Transitional devices: the first interface used after a reset decides the semantics."""
        if self.mode is PciMode.TRANSITIONAL and self.device.status == 0 and self.device.legacy != legacy:
            self.device.legacy = legacy

    def reset_interface(self) -> None:
        """Machine reset: the selectors, and the semantics back to the flavour's default."""
        self.queue_sel = self.dfselect = self.gfselect = 0
        self.device.legacy = self.mode is PciMode.LEGACY
