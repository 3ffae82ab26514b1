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
- One local APIC per vCPU (APIC ID = the vCPU's index), the 8259 on CPU 0's LINT0. Their
  registers are an MMIO page at the (relocatable) base, which every vCPU sees as its own APIC's
  (the backend says whose access it is: `current_cpu`), and, for x2APIC, IA32_APIC_BASE and
  TSC_DEADLINE, MSRs each vCPU's router sends to its own APIC. Each CPU's INTR pin takes
  interrupts through its APIC's INTA cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


class _ApicWindow:
    """The xAPIC register page: each access goes to the APIC of the vCPU making it."""

    def __init__(self, apics: Sequence[LocalApic], current_cpu: Callable[[], int]) -> None:
        self._apics = apics
        self._current = current_cpu

    def mmio_read(self, offset: int, size: int) -> int:
        return self._apics[self._current()].mmio_read(offset, size)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        self._apics[self._current()].mmio_write(offset, size, value)


class EmuIrqChip:
    name = "emu 8259A pair, IOAPIC and local APIC"
    local_apic = True

    def __init__(self, bus: Bus, pins: Sequence[InterruptPin], timers: TimerQueue, msrs: Sequence[MsrRouter],
                 tsc: GuestTsc | None, current_cpu: Callable[[], int] = lambda: 0) -> None:  # fmt: skip
        """One local APIC for each of `pins` (a vCPU's INTR, NMI, INIT and STARTUP) and `msrs`."""
        self._bus = bus
        self._pins = pins
        cpus = len(pins)
        self.apic_bus = ApicBus()
        self.ioapic = IoApic(self.apic_bus, apic_id=layout.ioapic_id(cpus))
        self.ioapic.register(bus)
        self.apic_bus.subscribe_eoi(self.ioapic)
        # The 8259's INTR is CPU 0's LINT0; its INTA cycle runs when that APIC hands its CPU an ExtINT.
        self.pic = PicPair(on_intr=lambda level: self.lapics[0].set_lint(0, level))
        self.pic.register(bus)
        self.lapics: list[LocalApic] = []
        self._window: int | None = None
        for cpu, (pin, router) in enumerate(zip(pins, msrs, strict=True)):
            lapic = LocalApic(
                cpu, timers, self.apic_bus, pin, timer_hz=CRYSTAL_HZ, bsp=cpu == 0, tsc=tsc,
                # What CPUID shows under Unicorn (emu/cpu/cpuid.py, UNICORN_APIC_EXTRAS).
                tsc_deadline=Feature.TSC_DEADLINE in UNICORN_APIC_EXTRAS and tsc is not None,
                x2apic=Feature.X2APIC in UNICORN_APIC_EXTRAS,
                extint_acknowledge=self.pic.acknowledge if cpu == 0 else None,
                on_base_change=self._move_window,
                # Firmware programs LINT0/LINT1 of the bootstrap processor only.
                virtual_wire=cpu == 0,
            )  # fmt: skip
            self.apic_bus.register(lapic)
            router.route((MSR_APIC_BASE, MSR_TSC_DEADLINE, *X2APIC_MSRS), lapic)
            pin.connect(lapic.acknowledge)
            self.lapics.append(lapic)
        self.lapic = self.lapics[0]
        self._page = _ApicWindow(self.lapics, current_cpu)
        self._move_window(self.lapic.mmio_window or 0, self.lapic.mmio_window is not None)

    def _move_window(self, base: int, enabled: bool) -> None:
        """IA32_APIC_BASE moved, enabled or disabled (x2APIC mode too) a vCPU's xAPIC register
        page. Guests move every CPU's page alike: the page is where the last move put it, and
        stays while any APIC still has one."""
        if not enabled:
            bases = [a.mmio_window for a in self.lapics if a.mmio_window is not None]
            enabled, base = bool(bases), (bases[0] if bases else 0)
        if self._window == base and enabled:
            return
        if self._window is not None:
            self._bus.unregister_mmio(self._window)
            self._window = None
        if enabled:
            self._bus.register_mmio(base, MMIO_SIZE, self._page, "local APIC")
            self._window = base

    def set_irq(self, gsi: int, level: bool) -> None:
        if gsi < ISA_IRQS:
            self.pic.set_irq(gsi, level)
        if gsi < PINS:
            self.ioapic.set_irq(gsi, level)

    def interrupt_ready(self) -> bool:
        return any(pin.accepts_interrupt() for pin in self._pins)

    def reset(self) -> None:
        self.pic.reset()
        self.ioapic.reset()
        for lapic in self.lapics:
            lapic.reset()

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.name, **self.pic.describe(), "ioapic": self.ioapic.describe(),
            "lapic": self.lapic.describe(),
        }  # fmt: skip
        if len(self.lapics) > 1:
            out["lapics"] = [lapic.describe() for lapic in self.lapics]
        return out
