"""What travels between the APICs: an interrupt message (an IOAPIC redirection entry fired, an IPI
from a local APIC's ICR, an MSI write) and the EOI broadcast back. The IOAPIC, the local APICs and
the router that connects them (emu/devices/lapic.py's ApicBus) speak only these types."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol


class DeliveryMode(IntEnum):
    """ICR / redirection-entry bits 10:8 (SDM vol. 3A 11.6.1, 82093AA datasheet)."""

    FIXED = 0
    LOWEST_PRIORITY = 1
    SMI = 2
    NMI = 4
    INIT = 5
    STARTUP = 6
    EXTINT = 7


class DestMode(IntEnum):
    PHYSICAL = 0
    LOGICAL = 1


class Shorthand(IntEnum):
    """ICR bits 19:18."""

    NONE = 0
    SELF = 1
    ALL_INCLUDING_SELF = 2
    ALL_EXCLUDING_SELF = 3


@dataclass(frozen=True)
class InterruptMessage:
    """One interrupt on its way to local APICs.

    `dest` is an APIC ID (physical) or a logical destination (flat: a bit mask; cluster: cluster in
    bits 7:4, members in 3:0; x2APIC: the 32-bit logical ID) as the sender's mode has it. `level`
    is the ICR's level bit (an INIT with level 0 is the "INIT level de-assert" that does nothing).
    `level_triggered` makes the receiving APIC set TMR and broadcast an EOI for the vector.
    `source` is the sending APIC's ID for shorthands (None from the IOAPIC or an MSI)."""

    vector: int
    delivery: DeliveryMode = DeliveryMode.FIXED
    dest_mode: DestMode = DestMode.PHYSICAL
    dest: int = 0
    level_triggered: bool = False
    level: bool = True
    shorthand: Shorthand = Shorthand.NONE
    source: int | None = None
    x2apic: bool = False  # the sender is in x2APIC mode: 32-bit destinations, broadcast 0xFFFFFFFF


class InterruptSink(Protocol):
    """Where messages go (the ApicBus)."""

    def deliver(self, msg: InterruptMessage) -> None: ...


class EoiListener(Protocol):
    """Told of every EOI for a level-triggered vector (the IOAPIC clears that entry's remote IRR)."""

    def end_of_interrupt(self, vector: int) -> None: ...
