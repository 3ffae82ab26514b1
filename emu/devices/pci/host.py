"""The PCI host bridge: configuration mechanism #1 (ports 0xCF8/0xCFC), bus 0, BAR assignment,
BAR decode on the machine's bus and INTx routing to ISA interrupt lines.

emu plays the firmware's part: `assign()` gives every BAR an address (memory BARs in the MMIO
hole, I/O BARs in 0xC000-0xFFFF, each aligned to its size), writes the interrupt line register
and enables decode, so a guest that does no enumeration of its own (or Linux, which keeps what it
finds) sees a configured bus. A guest may move BARs and toggle decode; a BAR the guest places over
another device's range is not mapped (logged at debug level) and emu keeps running.

A device is built for a slot (`free_slot()` says which one and gives the interrupt line its pin
reaches), then plugged there: its interrupt is wired before it exists, never re-pointed.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from emu import layout
from emu.bus import Bus
from emu.devices.pci.function import COMMAND, INTERRUPT_LINE, Bar, BarKind, Command, PciFunction
from emu.errors import EmuError
from emu.platform import IrqLine

log = logging.getLogger("emu.pci")

ENABLE = 1 << 31

# Intel 440FX host bridge IDs (what QEMU's pc machine shows; Linux's PCI sanity check wants a
# host bridge or an Intel/Compaq device on bus 0 before it trusts mechanism #1).
HOST_BRIDGE_VENDOR = 0x8086
HOST_BRIDGE_DEVICE = 0x1237
CLASS_HOST_BRIDGE = 0x060000


@dataclass(frozen=True)
class IntxRoute:
    """Slot `device`'s pin (1-4 = INTA-INTD) is wired to ISA interrupt line `irq`."""

    device: int
    pin: int
    irq: int


def intx_irq(device: int, pin: int) -> int:
    """The board's wiring: the usual swizzle of INTA-D over the PCI interrupt lines."""
    irqs = layout.PCI_INTX_IRQS
    return irqs[(device + pin - 1) % len(irqs)]


@dataclass(frozen=True)
class PciSlot:
    """Slot `number` on bus 0: its INTx pin reaches interrupt line `gsi` through `line` (the
    host's wired-OR with the other slots on that line)."""

    number: int
    gsi: int
    line: IrqLine


class PciHost:
    """Bus 0 with a host bridge at 00:00.0; `plug()` puts single-function devices in slots."""

    def __init__(self, bus: Bus, irq_line: Callable[[int], IrqLine]) -> None:
        self.bus = bus
        self._lines = {irq: irq_line(irq) for irq in layout.PCI_INTX_IRQS}
        self.address = 0
        self.functions: dict[int, PciFunction] = {}  # device number -> function 0
        self._mapped: dict[tuple[int, int], tuple[BarKind, int]] = {}  # (device, BAR) -> where
        self._asserted: dict[int, set[int]] = {}  # ISA line -> devices asserting it
        self._lock = threading.Lock()
        bridge = PciFunction(HOST_BRIDGE_VENDOR, HOST_BRIDGE_DEVICE, CLASS_HOST_BRIDGE, revision=2, name="host bridge")
        self._attach(0, bridge)

    def register(self) -> None:
        self.bus.register_pio(layout.PORT_PCI_CONFIG_ADDRESS, 4, _AddressPort(self), "PCI config address")
        self.bus.register_pio(layout.PORT_PCI_CONFIG_DATA, 4, _DataPort(self), "PCI config data")

    # -- devices ----------------------------------------------------------------------------------
    def free_slot(self, pin: int) -> PciSlot:
        """The first free slot, for a device whose INTx pin is `pin` (1-4: INTA-INTD)."""
        for device in range(layout.PCI_FIRST_SLOT, layout.PCI_FIRST_SLOT + layout.PCI_SLOTS):
            if device not in self.functions:
                gsi = intx_irq(device, pin)
                return PciSlot(device, gsi, functools.partial(self._intx, device, gsi))
        raise EmuError(f"no free PCI slot: emu has {layout.PCI_SLOTS}")

    def plug(self, slot: PciSlot, fn: PciFunction) -> None:
        """Put `fn` (built with `slot.line` behind its INTx pin) in `slot`."""
        if slot.number in self.functions:
            raise EmuError(f"PCI slot {slot.number} is taken: {fn.name} cannot go there")
        self._attach(slot.number, fn)

    def _attach(self, device: int, fn: PciFunction) -> None:
        self.functions[device] = fn
        fn.decode_listeners.append(functools.partial(self._remap, device))

    def routes(self) -> list[IntxRoute]:
        """INTx wiring of the populated slots, for the MP table."""
        return [IntxRoute(d, fn.intx_pin, intx_irq(d, fn.intx_pin)) for d, fn in sorted(self.functions.items())
                if fn.intx_pin]  # fmt: skip

    def assign(self) -> None:
        """Firmware's job at power-on: addresses for every BAR, the interrupt line, decode on."""
        io, mem = layout.PCI_IO_BASE, layout.PCI_MMIO_BASE
        for device, fn in sorted(self.functions.items()):
            # Largest first keeps the natural alignment cheap.
            for bar in sorted(fn.bars.values(), key=lambda b: -b.size):
                if bar.kind is BarKind.IO:
                    io = (io + bar.size - 1) & ~(bar.size - 1)
                    address, io = io, io + bar.size
                    limit = layout.PCI_IO_END
                else:
                    mem = (mem + bar.size - 1) & ~(bar.size - 1)
                    address, mem = mem, mem + bar.size
                    limit = layout.PCI_MMIO_END
                if address + bar.size > limit:
                    raise EmuError(f"the PCI BARs do not fit in emu's {bar.kind.value} window")
                fn.set_bar_address(bar.index, address)
                log.debug("%02x:%02x.0 %s BAR%d %s at %#x (%#x bytes)", 0, device, fn.name, bar.index,
                          bar.kind.value, address, bar.size)  # fmt: skip
            if fn.intx_pin:
                fn.cfg[INTERRUPT_LINE] = intx_irq(device, fn.intx_pin)
            if fn.bars:
                fn.config_write(COMMAND, 2, fn.command | Command.IO | Command.MEMORY | Command.MASTER)
            fn.seal()
        self.program_elcr()

    def program_elcr(self) -> None:
        """Make the PCI lines level-triggered in emu's 8259s, as a PC BIOS does through the ELCR
        (under KVM the ports belong to the in-kernel PIC and this is a no-op: guests there route
        PCI interrupts through the IOAPIC, which the MP table programs as level)."""
        for port in (layout.PORT_ELCR, layout.PORT_ELCR + 1):
            bits = sum(1 << (irq & 7) for irq in layout.PCI_INTX_IRQS if (irq >= 8) == (port != layout.PORT_ELCR))
            if bits:
                self.bus.pio_write(port, 1, self.bus.pio_read(port, 1) | bits)

    def reset(self) -> None:
        with self._lock:
            self._asserted.clear()
        for fn in self.functions.values():
            fn.reset()
        for line in self._lines.values():
            line(False)
        self.address = 0
        self.program_elcr()

    # -- configuration mechanism #1 ---------------------------------------------------------------
    def _target(self, offset: int, size: int) -> tuple[PciFunction, int] | None:
        a = self.address
        if not a & ENABLE or offset + size > 4:
            return None
        bus, device, function, reg = (a >> 16) & 0xFF, (a >> 11) & 0x1F, (a >> 8) & 0x7, a & 0xFC
        if bus != 0 or function != 0:
            return None  # every device of emu's is single-function
        fn = self.functions.get(device)
        return (fn, reg + offset) if fn is not None else None

    def config_read(self, offset: int, size: int) -> int:
        target = self._target(offset, size)
        if target is None:
            return (1 << (8 * size)) - 1  # no device: the master aborts, the read is all-ones
        fn, reg = target
        return fn.config_read(reg, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        target = self._target(offset, size)
        if target is not None:
            fn, reg = target
            fn.config_write(reg, size, value)

    # -- BAR decode -------------------------------------------------------------------------------
    def _remap(self, device: int) -> None:
        fn = self.functions[device]
        for bar in fn.bars.values():
            key = (device, bar.index)
            want: tuple[BarKind, int] | None = None
            if fn.decodes(bar):
                want = (bar.kind, fn.bar_address(bar.index))
            if self._mapped.get(key) == want:
                continue
            old = self._mapped.pop(key, None)
            if old is not None:
                kind, base = old
                (self.bus.unregister_pio if kind is BarKind.IO else self.bus.unregister_mmio)(base)
            if want is not None and self._map(fn, bar, want[1]):
                self._mapped[key] = want

    def _map(self, fn: PciFunction, bar: Bar, base: int) -> bool:
        name = f"PCI {fn.name} BAR{bar.index}"
        if base == 0:
            return False  # unassigned (or being sized): decode nothing
        try:
            if bar.kind is BarKind.IO:
                if base + bar.size > 0x10000:
                    return False
                self.bus.register_pio(base, bar.size, bar.handler, name)  # type: ignore[arg-type]
            else:
                if base + bar.size > layout.PHYS_ADDR_LIMIT:
                    return False
                self.bus.register_mmio(base, bar.size, bar.handler, name)  # type: ignore[arg-type]
        except EmuError as e:
            log.debug("%s at %#x not mapped: %s", name, base, e)
            return False
        return True

    # -- INTx -------------------------------------------------------------------------------------
    def _intx(self, device: int, irq: int, level: bool) -> None:
        """Wired-OR of every device on the line: it stays asserted while any of them asserts."""
        with self._lock:
            devices = self._asserted.setdefault(irq, set())
            before = bool(devices)
            if level:
                devices.add(device)
            else:
                devices.discard(device)
            after = bool(devices)
        if after != before:
            self._lines[irq](after)


class _AddressPort:
    """CONFIG_ADDRESS: only dword accesses reach it (byte accesses at 0xCF8-0xCFB belong to other
    chipset registers on a PC; Linux's mechanism #1 probe writes one)."""

    def __init__(self, host: PciHost) -> None:
        self.host = host

    def io_read(self, offset: int, size: int) -> int:
        if offset == 0 and size == 4:
            return self.host.address
        return (1 << (8 * size)) - 1

    def io_write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 4:
            self.host.address = value & 0x80FF_FFFC


class _DataPort:
    """CONFIG_DATA: byte, word and dword accesses at 0xCFC-0xCFF reach the addressed register."""

    def __init__(self, host: PciHost) -> None:
        self.host = host

    def io_read(self, offset: int, size: int) -> int:
        return self.host.config_read(offset, size)

    def io_write(self, offset: int, size: int, value: int) -> None:
        self.host.config_write(offset, size, value)
