"""The 82093AA I/O APIC model, programmed through IOREGSEL/IOWIN on the bus as a guest does, with a
recording sink in place of the local APICs."""

from __future__ import annotations

import threading

import pytest

from emu import layout
from emu.bus import Bus
from emu.devices import ioapic
from emu.devices.apic_message import DeliveryMode, DestMode, InterruptMessage
from emu.devices.ioapic import IoApic

LEVEL = ioapic.TRIGGER_LEVEL
LOW = ioapic.POLARITY_LOW
MASKED = ioapic.MASKED


class Sink:
    def __init__(self) -> None:
        self.messages: list[InterruptMessage] = []

    def deliver(self, msg: InterruptMessage) -> None:
        self.messages.append(msg)

    def take(self) -> list[InterruptMessage]:
        out, self.messages = self.messages, []
        return out


class Guest:
    def __init__(self, apic_id: int = 0) -> None:
        self.sink = Sink()
        self.chip = IoApic(self.sink, apic_id=apic_id)
        self.bus = Bus()
        self.chip.register(self.bus)

    def read(self, index: int) -> int:
        self.bus.mmio_write(layout.IOAPIC_BASE + ioapic.IOREGSEL, 4, index)
        return self.bus.mmio_read(layout.IOAPIC_BASE + ioapic.IOWIN, 4)

    def write(self, index: int, value: int) -> None:
        self.bus.mmio_write(layout.IOAPIC_BASE + ioapic.IOREGSEL, 4, index)
        self.bus.mmio_write(layout.IOAPIC_BASE + ioapic.IOWIN, 4, value)

    def program(self, pin: int, low: int, dest: int = 0) -> None:
        """As Linux does: the high dword first, then the low one (which may unmask)."""
        self.write(0x11 + 2 * pin, dest << 24)
        self.write(0x10 + 2 * pin, low)

    def entry(self, pin: int) -> int:
        return self.read(0x10 + 2 * pin) | self.read(0x11 + 2 * pin) << 32


def test_id_version_arbitration_and_reset_state() -> None:
    g = Guest(apic_id=2)
    assert g.read(0) == 2 << 24
    assert g.read(1) == 23 << 16 | 0x11  # version 0x11, max redirection entry 23
    assert g.read(2) == 2 << 24
    g.write(0, 0x0F00_0000 | 0xFF)
    assert g.read(0) == 0x0F00_0000 and g.read(2) == 0x0F00_0000  # arbitration follows the ID
    g.write(1, 0)
    g.write(2, 0)
    assert g.read(1) == 23 << 16 | 0x11 and g.read(2) == 0x0F00_0000  # read-only
    assert all(g.entry(pin) == MASKED for pin in range(24))
    assert g.read(0x40) == 0 and g.read(3) == 0  # no such registers
    assert g.bus.mmio_read(layout.IOAPIC_BASE + 0x40, 4) == 0  # no EOI register on version 0x11
    g.bus.mmio_write(layout.IOAPIC_BASE + ioapic.IOREGSEL, 1, 0x12)
    assert g.bus.mmio_read(layout.IOAPIC_BASE + ioapic.IOREGSEL, 4) == 0x12
    g.program(4, 0x31 | LEVEL, dest=3)
    g.chip.reset()
    assert g.read(0) == 2 << 24 and g.entry(4) == MASKED


def test_redirection_entries_read_back_without_read_only_bits() -> None:
    g = Guest()
    low = 0x45 | 1 << 8 | ioapic.DEST_MODE_LOGICAL | LOW | LEVEL  # lowest priority, logical
    g.program(7, low | ioapic.DELIVERY_STATUS | ioapic.REMOTE_IRR | MASKED, dest=0xA5)
    assert g.entry(7) == (low | MASKED) | 0xA5 << 56
    g.write(0x11 + 2 * 14, 0xFFFF_FFFF)
    assert g.entry(14) == MASKED | 0xFF << 56  # bits 55:32 are reserved
    described = g.chip.describe()["entries"][7]
    assert described == {
        "pin": 7, "vector": 0x45, "delivery": "LOWEST_PRIORITY", "dest_mode": "logical", "dest": 0xA5,
        "trigger": "level", "polarity": "low", "masked": True, "remote_irr": False, "line": False,
    }  # fmt: skip


def test_edge_sends_one_message_per_rising_edge() -> None:
    g = Guest()
    g.program(2, 0x30, dest=1)
    g.chip.set_irq(2, True)
    g.chip.set_irq(2, True)  # still high: no edge
    g.chip.set_irq(2, False)
    assert g.sink.take() == [InterruptMessage(vector=0x30, dest=1, level_triggered=False)]
    g.chip.set_irq(2, True)
    g.chip.set_irq(2, False)
    assert [m.vector for m in g.sink.take()] == [0x30]
    assert g.entry(2) & ioapic.REMOTE_IRR == 0  # edge entries never set remote IRR


def test_edge_while_masked_is_lost() -> None:
    g = Guest()
    g.program(5, 0x35 | MASKED)
    g.chip.set_irq(5, True)
    g.chip.set_irq(5, False)
    g.chip.set_irq(5, True)  # held while masked
    g.program(5, 0x35)  # unmasking an edge entry sends nothing
    assert g.sink.take() == []
    g.chip.set_irq(5, False)
    g.chip.set_irq(5, True)
    assert [m.vector for m in g.sink.take()] == [0x35]


def test_level_remote_irr_and_eoi_resend() -> None:
    g = Guest()
    g.program(9, 0x49 | LEVEL)
    g.chip.set_irq(9, True)
    assert g.sink.take() == [InterruptMessage(vector=0x49, level_triggered=True)]
    assert g.entry(9) & ioapic.REMOTE_IRR
    g.chip.set_irq(9, True)  # still asserted, remote IRR set: nothing more
    assert g.sink.take() == []
    g.chip.end_of_interrupt(0x48)  # another vector: untouched
    assert g.entry(9) & ioapic.REMOTE_IRR and g.sink.take() == []
    g.chip.end_of_interrupt(0x49)  # line still high: sent again at once
    assert [m.vector for m in g.sink.take()] == [0x49] and g.entry(9) & ioapic.REMOTE_IRR
    g.chip.set_irq(9, False)
    g.chip.end_of_interrupt(0x49)
    assert g.sink.take() == [] and not g.entry(9) & ioapic.REMOTE_IRR
    g.chip.set_irq(9, True)
    assert [m.vector for m in g.sink.take()] == [0x49]


def test_eoi_clears_every_level_entry_with_the_vector() -> None:
    g = Guest()
    for pin in (14, 15):
        g.program(pin, 0x60 | LEVEL)
        g.chip.set_irq(pin, True)
    assert len(g.sink.take()) == 2
    g.chip.set_irq(14, False)
    g.chip.end_of_interrupt(0x60)
    assert [m.vector for m in g.sink.take()] == [0x60]  # pin 15 again; pin 14 is quiet
    assert not g.entry(14) & ioapic.REMOTE_IRR and g.entry(15) & ioapic.REMOTE_IRR


def test_switching_to_edge_clears_remote_irr() -> None:
    """Linux's EOI on version 0x11 chips (__eoi_ioapic_pin): mask and set edge, then restore."""
    g = Guest()
    g.program(10, 0x3A | LEVEL)
    g.chip.set_irq(10, True)
    g.chip.set_irq(10, False)
    assert g.sink.take() and g.entry(10) & ioapic.REMOTE_IRR
    g.write(0x10 + 20, 0x3A | MASKED)
    assert not g.entry(10) & ioapic.REMOTE_IRR
    g.write(0x10 + 20, 0x3A | LEVEL)
    assert g.sink.take() == []  # the line is low: nothing to send


def test_masked_level_sends_when_unmasked() -> None:
    g = Guest()
    g.program(11, 0x4B | LEVEL | MASKED)
    g.chip.set_irq(11, True)
    assert g.sink.take() == []
    g.program(11, 0x4B | LEVEL)
    assert [m.vector for m in g.sink.take()] == [0x4B] and g.entry(11) & ioapic.REMOTE_IRR
    g.program(11, 0x4B | LEVEL | MASKED)
    g.program(11, 0x4B | LEVEL)  # remote IRR still set: no second message
    assert g.sink.take() == []


def test_level_dropped_before_unmask_sends_nothing() -> None:
    g = Guest()
    g.program(16, 0x50 | LEVEL | MASKED)
    g.chip.set_irq(16, True)
    g.chip.set_irq(16, False)
    g.program(16, 0x50 | LEVEL)
    assert g.sink.take() == []


def test_active_low_polarity_inverts_the_pin() -> None:
    g = Guest()
    g.chip.set_irq(20, True)  # idle high, as an active-low line is
    g.program(20, 0x70 | LEVEL | LOW)
    assert g.sink.take() == []
    g.chip.set_irq(20, False)  # asserted
    assert [m.vector for m in g.sink.take()] == [0x70]
    g.chip.set_irq(20, True)
    g.chip.end_of_interrupt(0x70)
    assert g.sink.take() == []
    # Edge, active low: the falling edge of the pin is the rising edge of the signal.
    g.program(21, 0x71 | LOW)
    g.chip.set_irq(21, True)
    assert g.sink.take() == []
    g.chip.set_irq(21, False)
    assert [m.vector for m in g.sink.take()] == [0x71]


@pytest.mark.parametrize(
    ("mode", "delivery"),
    [(0, DeliveryMode.FIXED), (1, DeliveryMode.LOWEST_PRIORITY), (2, DeliveryMode.SMI),
     (4, DeliveryMode.NMI), (5, DeliveryMode.INIT), (7, DeliveryMode.EXTINT)],
)  # fmt: skip
def test_delivery_modes_and_destinations(mode: int, delivery: DeliveryMode) -> None:
    g = Guest()
    g.program(0, 0x20 | mode << 8 | ioapic.DEST_MODE_LOGICAL, dest=0x0F)
    g.chip.set_irq(0, True)
    (msg,) = g.sink.take()
    assert (msg.delivery, msg.dest_mode, msg.dest, msg.source) == (delivery, DestMode.LOGICAL, 0x0F, None)


def test_nmi_and_extint_are_edge_even_when_programmed_level() -> None:
    g = Guest()
    g.program(3, 4 << 8 | LEVEL)  # NMI
    g.chip.set_irq(3, True)
    (msg,) = g.sink.take()
    assert msg.delivery is DeliveryMode.NMI and not msg.level_triggered
    assert not g.entry(3) & ioapic.REMOTE_IRR
    g.chip.set_irq(3, True)
    assert g.sink.take() == []


def test_reserved_delivery_mode_sends_nothing() -> None:
    g = Guest()
    g.program(1, 0x21 | 3 << 8)
    g.chip.set_irq(1, True)
    assert g.sink.take() == []
    assert g.chip.describe()["entries"][1]["delivery"] == 3


def test_pins_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError):
        Guest().chip.set_irq(24, True)


def test_set_irq_from_many_threads() -> None:
    """Device threads raise and lower their pins while the vCPU sends EOIs: one message per edge."""
    g = Guest()
    pins = range(16, 24)
    for pin in pins:
        g.program(pin, 0x80 + pin)

    def toggle(pin: int) -> None:
        for _ in range(500):
            g.chip.set_irq(pin, True)
            g.chip.set_irq(pin, False)

    threads = [threading.Thread(target=toggle, args=(pin,)) for pin in pins]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    vectors = [m.vector for m in g.sink.take()]
    assert sorted(set(vectors)) == [0x80 + pin for pin in pins]
    assert all(vectors.count(0x80 + pin) == 500 for pin in pins)
