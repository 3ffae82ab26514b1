"""emu's own interrupt controllers as the machine's IrqChip (emu/platform.py), for a backend with
none of its own (Unicorn): a PC's 8259A pair, IOAPIC and local APIC, wired as KVM's in-kernel
irqchip is, so a guest finds the same platform on both backends.

- Every GSI below 16 reaches the 8259 pair (ISA IRQ n) and IOAPIC pin n; GSIs 16-23 only the
  IOAPIC (KVM's default routing; the MP table and MADT say the same).
- The 8259 pair's INTR output is the local APIC's LINT0, programmed as ExtINT at power-on
  (virtual wire, as firmware and KVM's set-up leave it), so BIOS code and PIC-mode guests get
  their interrupts through the APIC unchanged.
- IOAPIC messages and IPIs travel on the ApicBus; EOIs of level-triggered vectors come back to
  the IOAPIC through it.
- The local APIC's registers are an MMIO page at its (relocatable) base and, for x2APIC,
  IA32_APIC_BASE and TSC_DEADLINE, MSRs the backend routes here. The CPU's INTR pin takes
  interrupts through the APIC's INTA cycle.
"""

from __future__ import annotations

from typing import Any

from emu import layout
from emu.bus import Bus
from emu.cpu.cpuid import CRYSTAL_HZ, UNICORN_APIC_EXTRAS, Feature
from emu.devices.ioapic import PINS, IoApic
from emu.devices.lapic import MMIO_SIZE, MSR_APIC_BASE, MSR_TSC_DEADLINE, ApicBus, LocalApic
from emu.devices.pic import PicPair
from emu.platform import GuestTsc, InterruptPin, MsrRouter
from emu.timers import TimerQueue

X2APIC_MSRS = range(0x800, 0x900)
ISA_IRQS = 16


class EmuIrqChip:
    name = "emu 8259A pair, IOAPIC and local APIC"
    local_apic = True

    def __init__(self, bus: Bus, pin: InterruptPin, timers: TimerQueue, msrs: MsrRouter,
                 tsc: GuestTsc | None, *, cpus: int = 1) -> None:  # fmt: skip
        self._bus = bus
        self._pin = pin
        self.apic_bus = ApicBus()
        self.ioapic = IoApic(self.apic_bus, apic_id=layout.ioapic_id(cpus))
        self.ioapic.register(bus)
        self.apic_bus.subscribe_eoi(self.ioapic)
        # The 8259's INTR is LINT0; its INTA cycle runs when the APIC hands the CPU an ExtINT.
        self.pic = PicPair(on_intr=lambda level: self.lapic.set_lint(0, level))
        self.pic.register(bus)
        self.lapic = LocalApic(
            0, timers, self.apic_bus, pin, timer_hz=CRYSTAL_HZ, bsp=True, tsc=tsc,
            # What CPUID shows under Unicorn (emu/cpu/cpuid.py, UNICORN_APIC_EXTRAS).
            tsc_deadline=Feature.TSC_DEADLINE in UNICORN_APIC_EXTRAS and tsc is not None,
            x2apic=Feature.X2APIC in UNICORN_APIC_EXTRAS,
            extint_acknowledge=self.pic.acknowledge, on_base_change=self._move_window, virtual_wire=True,
        )  # fmt: skip
        self.apic_bus.register(self.lapic)
        self._window: int | None = None
        self._move_window(self.lapic.mmio_window or 0, self.lapic.mmio_window is not None)
        msrs.route((MSR_APIC_BASE, MSR_TSC_DEADLINE, *X2APIC_MSRS), self.lapic)
        pin.connect(self.lapic.acknowledge)

    def _move_window(self, base: int, enabled: bool) -> None:
        """IA32_APIC_BASE moved or enabled/disabled the xAPIC register page."""
        if self._window is not None:
            self._bus.unregister_mmio(self._window)
            self._window = None
        if enabled:
            self._bus.register_mmio(base, MMIO_SIZE, self.lapic, "local APIC")
            self._window = base

    def set_irq(self, gsi: int, level: bool) -> None:
        if gsi < ISA_IRQS:
            self.pic.set_irq(gsi, level)
        if gsi < PINS:
            self.ioapic.set_irq(gsi, level)

    def interrupt_ready(self) -> bool:
        return self._pin.accepts_interrupt()

    def reset(self) -> None:
        self.pic.reset()
        self.ioapic.reset()
        self.lapic.reset()

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.name, **self.pic.describe(), "ioapic": self.ioapic.describe(),
            "lapic": self.lapic.describe(),
        }  # fmt: skip
