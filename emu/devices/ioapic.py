"""The Intel 82093AA I/O APIC at layout.IOAPIC_BASE: 24 input pins, each with a redirection entry
that turns its signal into an interrupt message for the local APICs.

Version 0x11, as KVM's in-kernel IOAPIC, so a guest sees the same chip on both backends: an
82093AA has no EOI register (that came with version 0x20), so the only ways to clear a remote IRR
are the local APIC's EOI broadcast (`end_of_interrupt`, apic_message.EoiListener) and switching
the entry to edge-triggered, which Linux does on these versions (`__eoi_ioapic_pin`).

Registers (datasheet section 3): IOREGSEL at +0x00 selects one of IOAPICID (0), IOAPICVER (1),
IOAPICARB (2) or the redirection table (0x10-0x3F, low then high dword of entry n at 0x10 + 2n);
IOWIN at +0x10 reads and writes it. Anything else reads 0.

Pins: `set_irq(pin, level)` gives a pin's electrical level (any thread). The polarity bit inverts
it into "asserted". Edge entries send one message per rising edge of the asserted signal; an edge
while masked is lost, as the datasheet says. Level entries send while asserted, unmasked and with
remote IRR clear, and set remote IRR; an EOI for the vector clears it and sends again if the pin
is still asserted. NMI, SMI, INIT and ExtINT are edge-only whatever the trigger bit says (the
datasheet: "treated as an edge triggered interrupt, even if it is programmed as level").

Messages are built under the lock and handed to the sink after it is released: the sink (the
ApicBus) may call `end_of_interrupt` back on another vCPU thread, and holding the lock across it
would order the two locks both ways.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from emu import layout
from emu.bus import Bus
from emu.devices.apic_message import DeliveryMode, DestMode, InterruptMessage, InterruptSink

VERSION = 0x11
PINS = 24

# MMIO offsets.
IOREGSEL = 0x00
IOWIN = 0x10

# Indirect registers.
REG_ID = 0x00
REG_VERSION = 0x01
REG_ARBITRATION = 0x02
REG_REDIR_FIRST = 0x10
REG_REDIR_LAST = REG_REDIR_FIRST + 2 * PINS - 1
ID_SHIFT = 24
ID_MASK = 0xF  # IOAPICID bits 27:24

# Redirection entry bits.
VECTOR_MASK = 0xFF
DELIVERY_SHIFT = 8
DEST_MODE_LOGICAL = 1 << 11
DELIVERY_STATUS = 1 << 12  # "send pending": emu delivers at once, so always 0
POLARITY_LOW = 1 << 13
REMOTE_IRR = 1 << 14
TRIGGER_LEVEL = 1 << 15
MASKED = 1 << 16
DEST_SHIFT = 56
# What software can write: vector, delivery mode, destination mode, polarity, trigger, mask, and
# the destination field. Delivery status and remote IRR are read-only.
WRITABLE = 0xFFF | POLARITY_LOW | TRIGGER_LEVEL | MASKED | 0xFF << DEST_SHIFT

# Delivery modes with a vector that honour level triggering; the others are edge-only.
_LEVEL_CAPABLE = (DeliveryMode.FIXED, DeliveryMode.LOWEST_PRIORITY)
_VALID_DELIVERY = {int(m) for m in DeliveryMode if m is not DeliveryMode.STARTUP}


@dataclass
class RedirectionEntry:
    """One pin's entry: the writable bits in `bits`, remote IRR kept apart (read-only)."""

    bits: int = MASKED  # after reset every entry is masked; the rest is 0
    remote_irr: bool = False

    @property
    def value(self) -> int:
        return self.bits | (REMOTE_IRR if self.remote_irr else 0)

    @property
    def vector(self) -> int:
        return self.bits & VECTOR_MASK

    @property
    def delivery(self) -> int:
        return self.bits >> DELIVERY_SHIFT & 7

    @property
    def masked(self) -> bool:
        return bool(self.bits & MASKED)

    @property
    def active_low(self) -> bool:
        return bool(self.bits & POLARITY_LOW)

    @property
    def level(self) -> bool:
        """Level-triggered in effect: the trigger bit, for the delivery modes that honour it."""
        return bool(self.bits & TRIGGER_LEVEL) and self.delivery in _LEVEL_CAPABLE

    @property
    def dest(self) -> int:
        return self.bits >> DEST_SHIFT

    def message(self) -> InterruptMessage | None:
        """The message this entry sends, or None for a reserved delivery mode (sends nothing)."""
        if self.delivery not in _VALID_DELIVERY:
            return None
        mode = DestMode.LOGICAL if self.bits & DEST_MODE_LOGICAL else DestMode.PHYSICAL
        return InterruptMessage(
            vector=self.vector,
            delivery=DeliveryMode(self.delivery),
            dest_mode=mode,
            dest=self.dest,
            level_triggered=self.level,
        )

    def describe(self, pin: int, line: bool) -> dict[str, Any]:
        delivery = DeliveryMode(self.delivery).name if self.delivery in _VALID_DELIVERY else self.delivery
        return {
            "pin": pin,
            "vector": self.vector,
            "delivery": delivery,
            "dest_mode": "logical" if self.bits & DEST_MODE_LOGICAL else "physical",
            "dest": self.dest,
            "trigger": "level" if self.bits & TRIGGER_LEVEL else "edge",
            "polarity": "low" if self.active_low else "high",
            "masked": self.masked,
            "remote_irr": self.remote_irr,
            "line": line,
        }


class IoApic:
    """82093AA I/O APIC (version 0x11, 24 pins) sending its messages to `sink`.

    `apic_id` is the ID register's value after reset: the machine gives the ID the MP table and
    the MADT announce (layout.ioapic_id), so a guest that compares them finds them equal.
    Thread-safe: pins change from device threads, MMIO and EOIs come from every vCPU thread.
    """

    def __init__(self, sink: InterruptSink, *, apic_id: int = 0) -> None:
        self._sink = sink
        self._reset_id = apic_id & ID_MASK
        self._lock = threading.Lock()
        self._lines = 0  # pin levels as devices drive them: wires, kept across a reset
        self._power_on()

    def _power_on(self) -> None:
        self._id = self._reset_id
        self._arbitration = self._reset_id
        self._select = 0
        self._entries = [RedirectionEntry() for _ in range(PINS)]

    # -- wiring ---------------------------------------------------------------------------------
    def register(self, bus: Bus) -> None:
        bus.register_mmio(layout.IOAPIC_BASE, layout.IOAPIC_SIZE, self, "IOAPIC")

    def reset(self) -> None:
        with self._lock:
            self._power_on()

    # -- pins and EOI ---------------------------------------------------------------------------
    def set_irq(self, pin: int, level: bool) -> None:
        """Drive input pin `pin` to `level` (True = high). Any thread; never blocks for long."""
        if not 0 <= pin < PINS:
            raise ValueError(f"the IOAPIC has pins 0-{PINS - 1}, not {pin}")
        bit = 1 << pin
        with self._lock:
            entry = self._entries[pin]
            was = self._asserted(pin)
            self._lines = self._lines | bit if level else self._lines & ~bit
            now = self._asserted(pin)
            if entry.level:
                send = self._level_message(pin)
            else:
                send = entry.message() if now and not was and not entry.masked else None
        self._send([send])

    def end_of_interrupt(self, vector: int) -> None:
        """A local APIC's EOI for a level-triggered `vector`: clear the remote IRR of every
        level entry with that vector, and send again where the pin is still asserted."""
        with self._lock:
            out = []
            for pin, entry in enumerate(self._entries):
                if entry.remote_irr and entry.vector == vector and entry.level:
                    entry.remote_irr = False
                    out.append(self._level_message(pin))
        self._send(out)

    def _asserted(self, pin: int) -> bool:
        return bool(self._lines >> pin & 1) != self._entries[pin].active_low

    def _level_message(self, pin: int) -> InterruptMessage | None:
        """A level entry's state changed: send (and set remote IRR) if it now should."""
        entry = self._entries[pin]
        if not entry.level or entry.masked or entry.remote_irr or not self._asserted(pin):
            return None
        msg = entry.message()
        entry.remote_irr = msg is not None
        return msg

    def _send(self, messages: Iterable[InterruptMessage | None]) -> None:
        for msg in messages:
            if msg is not None:
                self._sink.deliver(msg)

    # -- guest side -----------------------------------------------------------------------------
    def mmio_read(self, offset: int, size: int) -> int:
        with self._lock:
            if offset & ~3 == IOREGSEL:
                value = self._select
            elif offset & ~3 == IOWIN:
                value = self._read_register(self._select)
            else:
                return 0
        return value >> 8 * (offset & 3)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        shift = 8 * (offset & 3)
        mask = ((1 << 8 * size) - 1) << shift & 0xFFFF_FFFF
        value = value << shift & mask
        with self._lock:
            if offset & ~3 == IOREGSEL:
                self._select = (self._select & ~mask | value) & 0xFF
                return
            if offset & ~3 != IOWIN:
                return
            old = self._read_register(self._select)
            send = self._write_register(self._select, old & ~mask | value)
        self._send([send])

    def _read_register(self, index: int) -> int:
        if index == REG_ID:
            return self._id << ID_SHIFT
        if index == REG_VERSION:
            return (PINS - 1) << 16 | VERSION
        if index == REG_ARBITRATION:
            return self._arbitration << ID_SHIFT
        if REG_REDIR_FIRST <= index <= REG_REDIR_LAST:
            value = self._entries[(index - REG_REDIR_FIRST) // 2].value
            return value >> 32 if index & 1 else value & 0xFFFF_FFFF
        return 0

    def _write_register(self, index: int, value: int) -> InterruptMessage | None:
        if index == REG_ID:
            # "The APIC Arbitration ID register is loaded whenever the I/O APIC ID register is written."
            self._id = self._arbitration = value >> ID_SHIFT & ID_MASK
            return None
        if not REG_REDIR_FIRST <= index <= REG_REDIR_LAST:
            return None  # version and arbitration are read-only
        pin = (index - REG_REDIR_FIRST) // 2
        entry = self._entries[pin]
        half = 32 if index & 1 else 0
        entry.bits = (entry.bits & ~(0xFFFF_FFFF << half) | value << half) & WRITABLE
        if not entry.bits & TRIGGER_LEVEL:
            # Remote IRR means nothing for an edge entry, and the chip clears it: Linux relies on
            # this to end a level interrupt on IOAPICs without an EOI register.
            entry.remote_irr = False
        return self._level_message(pin)  # unmasking an asserted level entry sends

    # -- debugger -------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {
                "id": self._id,
                "version": VERSION,
                "ioregsel": self._select,
                "entries": [e.describe(pin, bool(self._lines >> pin & 1)) for pin, e in enumerate(self._entries)],
            }
