"""emu's own interrupt controllers as the machine's IrqChip (emu/platform.py), for a backend with
none of its own (Unicorn): the 8259A pair on ports 0x20/0xA0 and the ELCR, driving the CPU's
INTR pin; the CPU takes an interrupt through the pair's INTA cycle.

The next platform step (a local APIC per vCPU and an IOAPIC) lands here: lines are GSIs, the
pin is per vCPU."""

from __future__ import annotations

from typing import Any

from emu.bus import Bus
from emu.devices.pic import PicPair
from emu.platform import InterruptPin


class EmuIrqChip:
    name = "emu 8259A pair"
    local_apic = False

    def __init__(self, bus: Bus, pin: InterruptPin) -> None:
        self._pin = pin
        self.pic = PicPair(on_intr=pin.set_intr)
        self.pic.register(bus)
        pin.connect(self.pic.acknowledge)

    def set_irq(self, gsi: int, level: bool) -> None:
        self.pic.set_irq(gsi, level)

    def interrupt_ready(self) -> bool:
        return self._pin.accepts_interrupt()

    def reset(self) -> None:
        self.pic.reset()

    def describe(self) -> dict[str, Any]:
        return {"source": "emu 8259A pair", **self.pic.describe()}
