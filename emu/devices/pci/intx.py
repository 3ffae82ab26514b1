"""A PCI function's INTx pin: the wire between the device that drives it and the interrupt line
it reaches.

It exists before the function and the device (both are given it when they are built), so the
device's interrupt is fixed at construction: the device drives the pin, the function's command
register masks it (Interrupt Disable) and shows it (status bit 3), and whatever is left goes to
the line the pin was wired to (the host's routed line, or a device thread's irqfd under KVM).
"""

from __future__ import annotations

from emu.platform import IrqLine

INTA = 1  # interrupt pin register values: 1-4 = INTA-INTD (0: no pin)


class IntxPin:
    def __init__(self, number: int, line: IrqLine) -> None:
        self.number = number
        self._line = line
        self.level = False  # as the device drives it, before the mask
        self.masked = False  # the command register's Interrupt Disable bit

    def drive(self, level: bool) -> None:
        """The device's side (an IrqLine)."""
        self.level = level
        self._line(level and not self.masked)

    def mask(self, masked: bool) -> None:
        """Interrupt Disable changed: a pending level is withheld or let through."""
        self.masked = masked
        self._line(self.level and not masked)

    def reset(self, masked: bool) -> None:
        self.level = False
        self.masked = masked
        self._line(False)
