"""The 8254 PIT and port 0x61, programmed through the bus as Linux and a BIOS do, in virtual time.

Expected values follow the Intel 8254 datasheet: a count written by software reaches the
counting element (CE) on the next CLK edge, and that edge does not decrement it. So with the
count written just after edge W, CE holds N at edge W+1 and N-n at edge W+1+n.
"""

from __future__ import annotations

import pytest

from emu.bus import Bus
from emu.devices.pit import PIT_HZ, Pit, edge_index, edge_time
from emu.timers import ManualClock, TimerQueue

CH0, CH1, CH2, MODE = 0x40, 0x41, 0x42, 0x43
PORT_B = 0x61


class Guest:
    def __init__(self) -> None:
        self.clock = ManualClock()
        self.timers = TimerQueue(self.clock)
        self.bus = Bus()
        self.irq: list[tuple[int, bool]] = []  # (CLK edge, level)
        self.pit = Pit(self.timers, lambda level: self.irq.append((edge_index(self.clock.t), level)))
        self.pit.register(self.bus)

    def outb(self, port: int, value: int) -> None:
        self.bus.pio_write(port, 1, value)

    def inb(self, port: int) -> int:
        return self.bus.pio_read(port, 1)

    def at(self, k: int, late_ns: int = 0) -> None:
        """Move the clock to CLK edge k (plus a little, still before edge k+1), running timers
        as the machine would on the way."""
        target = edge_time(k) + late_ns
        assert target >= self.clock.t
        while (d := self.timers.next_deadline()) is not None and d <= target:
            self.clock.t = max(d, self.clock.t)
            self.timers.run_due()
        self.clock.t = target

    def jump(self, k: int) -> None:
        """Move the clock without running timers (the machine was busy)."""
        self.clock.t = edge_time(k)

    def rising(self) -> list[int]:
        return [k for k, level in self.irq if level]

    def load(self, port: int, count: int) -> None:
        self.outb(port, count & 0xFF)
        self.outb(port, count >> 8)

    def latched(self, channel: int) -> int:
        self.outb(MODE, channel << 6)  # counter latch command
        lo = self.inb(CH0 + channel)
        return lo | self.inb(CH0 + channel) << 8


@pytest.fixture
def g() -> Guest:
    return Guest()


def test_edge_arithmetic() -> None:
    for k in (0, 1, 2, 1193181, 1193182, 10**9):
        assert edge_index(edge_time(k)) == k
        assert edge_index(edge_time(k) - 1) == k - 1 or k == 0
    assert edge_time(PIT_HZ) == 1_000_000_000


def test_mode2_periodic_irq0_linux(g: Guest) -> None:
    # Linux pit_set_periodic(): 0x34 = channel 0, LSB then MSB, mode 2; LATCH for HZ=250.
    latch = (PIT_HZ + 125) // 250
    g.at(1000)
    g.outb(MODE, 0x34)
    g.load(CH0, latch)
    g.at(1000 + 1)
    assert g.latched(0) == latch  # loaded on the edge after the write, not decremented by it
    g.at(1000 + 1 + 100, late_ns=500)
    assert g.latched(0) == latch - 100
    # "When the count decrements to 1, OUT goes low for one CLK pulse" (N edges after the write).
    g.at(1000 + latch - 1)
    assert g.pit.out(0) and g.latched(0) == 2
    g.at(1000 + latch)
    assert not g.pit.out(0) and g.latched(0) == 1
    g.at(1000 + 1 + latch)
    assert g.pit.out(0) and g.latched(0) == latch  # reloaded
    g.at(1000 + 1 + 5 * latch)
    # One IRQ 0 edge per period, at each rising edge of OUT0, raised then lowered.
    assert g.rising() == [1001 + j * latch for j in range(1, 6)]
    assert g.irq[:2] == [(1001 + latch, True), (1001 + latch, False)]
    assert g.pit.missed_ticks == 0


def test_mode2_rate_over_one_second(g: Guest) -> None:
    g.outb(MODE, 0x34)
    g.load(CH0, 1193)  # ~1000.15 Hz
    g.at(PIT_HZ)
    # Edges at 1 + 1193 j up to edge 1193182: j <= 1000.15 -> 1000 interrupts in the first second.
    assert len(g.rising()) == 1000


def test_mode3_square_wave_bios_18hz(g: Guest) -> None:
    g.outb(MODE, 0x36)  # what a BIOS programs: mode 3, count 0 = 65536
    g.load(CH0, 0)
    # Even counts: CE is loaded with N and decremented by two per clock; OUT is high for N/2.
    g.at(1)
    assert g.latched(0) == 0  # 65536 reads as 0
    g.at(2)
    assert g.latched(0) == 0xFFFE
    g.at(1 + 32767)
    assert g.pit.out(0) and g.latched(0) == 2
    g.at(1 + 32768)
    assert not g.pit.out(0) and g.latched(0) == 0  # reloaded, OUT low for the second half
    g.at(1 + 65535)
    assert not g.pit.out(0)
    g.at(1 + 65536)
    assert g.pit.out(0)
    g.at(1 + 3 * 65536)
    assert g.rising() == [1 + 65536, 1 + 2 * 65536, 1 + 3 * 65536]  # ~18.2 Hz


def test_mode3_odd_count_intel_sequence(g: Guest) -> None:
    g.outb(PORT_B, 0x01)  # gate 2 on
    g.outb(MODE, 0xB6)  # channel 2, mode 3
    g.at(10)
    g.load(CH2, 5)
    values, outs = [], []
    for k in range(11, 21):
        g.at(k)
        values.append(g.latched(2))
        outs.append(g.pit.out(2))
    # Intel 8254, mode 3 odd counts: N-1 is loaded and decremented by two; OUT goes low one
    # clock after the count expires, so high for (N+1)/2 = 3 clocks and low for (N-1)/2 = 2.
    assert values == [4, 2, 0, 4, 2] * 2
    assert outs == [True, True, True, False, False] * 2


def test_mode0_one_shot(g: Guest) -> None:
    g.outb(MODE, 0x30)  # Linux's pit_shutdown and CLOCK_EVT one-shot setups use mode 0
    assert not g.pit.out(0)  # "OUT is initially low" after the control word
    g.at(50)
    g.load(CH0, 100)
    g.at(50 + 100)
    assert not g.pit.out(0) and g.latched(0) == 1
    g.at(50 + 101)  # "OUT goes high N+1 CLK pulses after the initial count is written"
    assert g.pit.out(0) and g.latched(0) == 0
    g.at(50 + 103)
    assert g.pit.out(0) and g.latched(0) == 0xFFFE  # the counter keeps wrapping, OUT stays high
    g.at(50 + 1000)
    assert g.rising() == [151]


def test_mode0_first_byte_stops_counting_and_lowers_out(g: Guest) -> None:
    g.outb(MODE, 0x30)
    g.load(CH0, 10)
    g.at(20)
    assert g.pit.out(0)
    before = g.latched(0)
    g.outb(CH0, 0x00)  # LSB of a new count
    # "Writing the first byte disables counting. OUT is set low immediately."
    assert not g.pit.out(0)
    g.at(40)
    assert g.latched(0) == before
    g.outb(CH0, 0x01)  # MSB: 0x100 loaded on the next clock
    g.at(41)
    assert g.latched(0) == 0x100
    g.at(40 + 257)
    assert g.pit.out(0)
    assert g.rising() == [11, 297]


def test_mode4_software_strobe_linux_oneshot(g: Guest) -> None:
    g.outb(MODE, 0x38)  # Linux pit_set_oneshot(): mode 4
    assert g.pit.out(0)  # OUT initially high
    g.at(7)
    g.load(CH0, 20)
    # "OUT does not strobe low until N+1 CLK pulses after the initial count is written", for one
    # clock; IRQ 0 sees the rising edge at its end.
    g.at(7 + 20)
    assert g.pit.out(0)
    g.at(7 + 21)
    assert not g.pit.out(0)
    g.at(7 + 22)
    assert g.pit.out(0)
    g.at(1000)
    assert g.rising() == [29]
    # A new count restarts it (loaded on the next clock).
    g.load(CH0, 30)
    g.at(2000)
    assert g.rising() == [29, 1032]


def test_counter_latch_holds_until_read(g: Guest) -> None:
    g.outb(MODE, 0x34)
    g.load(CH0, 1000)
    g.at(101)
    g.outb(MODE, 0x00)
    g.at(200)
    g.outb(MODE, 0x00)  # ignored: the first latched count has not been read
    assert g.inb(CH0) == (900 & 0xFF)
    g.at(300)
    assert g.inb(CH0) == 900 >> 8
    # Released: an unlatched two-byte read follows the counter.
    g.at(401)
    assert g.inb(CH0) | g.inb(CH0) << 8 == 600


def test_read_back_status_and_count(g: Guest) -> None:
    g.at(10)
    g.outb(MODE, 0x34)
    # Read-back 0xE2: latch status of channel 0. Status = OUT, null count, control bits 5:0.
    g.outb(MODE, 0xE2)
    assert g.inb(CH0) == 0x80 | 0x40 | 0x34  # OUT high (mode 2), no count in CE yet
    g.load(CH0, 500)
    g.outb(MODE, 0xE2)
    assert g.inb(CH0) == 0x80 | 0x40 | 0x34  # null count until the next clock moves CR to CE
    g.at(11)
    # 0xC2: count and status; status comes first, then LSB and MSB of the count.
    g.outb(MODE, 0xC2)
    g.at(60)
    assert g.inb(CH0) == 0x80 | 0x34
    assert g.inb(CH0) | g.inb(CH0) << 8 == 500
    # 0xD2: count only; a second read-back before reading is ignored.
    g.outb(MODE, 0xD2)
    g.at(80)
    g.outb(MODE, 0xD2)
    assert g.inb(CH0) | g.inb(CH0) << 8 == 500 - 49
    # Several channels at once: 0xEE latches the status of 0, 1 and 2.
    g.outb(MODE, 0xEE)
    assert g.inb(CH0) == 0x80 | 0x34
    assert g.inb(CH1) == 0x80 | 0x40 | 0x36  # power-on: mode 3 programmed, no count
    assert g.inb(CH2) == 0x80 | 0x40 | 0x36


def test_bcd_counting(g: Guest) -> None:
    g.outb(MODE, 0x35)  # mode 2, BCD
    g.load(CH0, 0x1000)  # 1000 decimal
    g.at(2)
    assert g.latched(0) == 0x0999
    g.at(1 + 1000)
    assert g.latched(0) == 0x1000
    assert g.rising() == [1001]
    g.at(2000)
    g.outb(MODE, 0x35)
    g.load(CH0, 0)  # 0 is 10^4 in BCD
    g.at(2001 + 10000)
    assert g.rising()[-1] == 2001 + 10000
    assert g.latched(0) == 0  # 10000 reads as 0000


def test_lsb_only_and_msb_only_access(g: Guest) -> None:
    g.outb(MODE, 0x14)  # channel 0, LSB only, mode 2
    g.outb(CH0, 200)
    g.at(2)
    assert g.inb(CH0) == 199
    assert g.inb(CH0) == 199  # every read is the LSB
    g.outb(MODE, 0x24)  # MSB only
    g.at(10)
    g.outb(CH0, 0x02)  # count 0x200
    g.at(11 + 0x10)
    assert g.inb(CH0) == 0x01  # 0x1F0
    assert g.inb(MODE) == 0xFF  # the control register cannot be read


def test_new_count_in_mode2_waits_for_period_end(g: Guest) -> None:
    g.outb(MODE, 0x34)
    g.load(CH0, 1000)
    g.at(300)
    g.load(CH0, 500)
    g.outb(MODE, 0xE2)
    assert g.inb(CH0) & 0x40  # null count: the new count is not in CE yet
    g.at(3000)
    # The current period ends at edge 1001 as programmed; then periods of 500.
    assert g.rising() == [1001, 1501, 2001, 2501]


def test_new_count_in_mode3_waits_for_half_cycle_end(g: Guest) -> None:
    g.outb(MODE, 0x36)
    g.load(CH0, 1000)
    g.at(100)  # first half (OUT high) ends at edge 501
    g.load(CH0, 200)
    g.at(2000)
    # At 501 the new count starts the low half (100 clocks), then full periods of 200.
    assert g.rising() == [601, 801, 1001, 1201, 1401, 1601, 1801]


def test_control_word_raising_out0_is_an_edge(g: Guest) -> None:
    g.outb(MODE, 0x30)
    g.load(CH0, 1000)
    g.at(500)
    assert not g.pit.out(0)
    # A control word puts OUT in its initial state at once (high for mode 2): IRQ 0 sees the edge.
    g.outb(MODE, 0x34)
    assert g.pit.out(0)
    assert g.rising() == [500]
    g.at(2000)
    assert g.rising() == [500]  # no count yet: nothing else (the mode 0 count was abandoned)


def test_lost_ticks_deliver_one_edge(g: Guest) -> None:
    g.outb(MODE, 0x34)
    g.load(CH0, 1000)
    g.jump(1 + 10 * 1000 + 500)  # ten periods pass while the machine is busy
    g.timers.run_due()
    assert len(g.rising()) == 1
    assert g.pit.missed_ticks == 9
    g.at(1 + 12 * 1000)
    assert g.rising()[1:] == [11001, 12001]  # the period grid is kept


def test_channel2_pit_calibrate_tsc(g: Guest) -> None:
    # arch/x86/kernel/tsc.c pit_calibrate_tsc(): gate high, speaker off; mode 0 on channel 2;
    # then poll port 0x61 bit 5 until OUT2 goes high.
    latch = PIT_HZ // (1000 // 10)
    g.at(100)
    g.outb(PORT_B, (g.inb(PORT_B) & ~0x02) | 0x01)
    g.outb(MODE, 0xB0)
    g.outb(CH2, latch & 0xFF)
    g.outb(CH2, latch >> 8)
    assert not g.inb(PORT_B) & 0x20
    g.at(100 + latch)
    assert not g.inb(PORT_B) & 0x20
    g.at(100 + latch + 1)
    assert g.inb(PORT_B) & 0x20
    g.at(100 + latch + 5000)
    assert g.inb(PORT_B) & 0x20
    assert g.rising() == []  # channel 2 is not IRQ 0


def test_channel2_quick_pit_calibrate(g: Guest) -> None:
    # quick_pit_calibrate(): mode 0 from 0xFFFF, then unlatched LSB/MSB reads of channel 2,
    # watching the MSB step down once every 256 clocks.
    g.outb(PORT_B, (g.inb(PORT_B) & ~0x02) | 0x01)
    g.outb(MODE, 0xB0)
    g.outb(CH2, 0xFF)
    g.outb(CH2, 0xFF)
    for i in range(0, 20):
        g.at(1 + 256 * i + 100, late_ns=300)
        g.inb(CH2)  # LSB
        assert g.inb(CH2) == 0xFF - i


def test_gate2_controls_counting(g: Guest) -> None:
    g.outb(MODE, 0xB0)  # mode 0: GATE low disables counting, high enables it
    g.load(CH2, 1000)
    g.at(100)
    assert g.latched(2) == 1000  # loaded, but the gate (port 0x61 bit 0) is low
    g.outb(PORT_B, 0x01)
    g.at(200)
    assert g.latched(2) == 1000 - 100
    g.outb(PORT_B, 0x00)
    g.at(300)
    assert g.latched(2) == 900
    # Mode 2: GATE low forces OUT high; a rising GATE reloads the count on the next clock.
    g.outb(MODE, 0xB4)
    g.load(CH2, 50)
    g.at(400)
    assert g.pit.out(2) and g.latched(2) == 900  # not loaded while the gate is low
    g.outb(PORT_B, 0x01)
    g.at(401)
    assert g.latched(2) == 50
    g.at(400 + 50)
    assert not g.pit.out(2)
    g.outb(PORT_B, 0x00)
    assert g.pit.out(2)


def test_mode1_and_mode5_need_a_gate_trigger(g: Guest) -> None:
    g.outb(MODE, 0xB2)  # channel 2, mode 1 (hardware one-shot)
    g.load(CH2, 10)
    g.at(50)
    assert g.pit.out(2)  # no trigger yet
    g.outb(PORT_B, 0x01)  # rising gate: OUT low from the next clock for N clocks
    g.at(51)
    assert not g.pit.out(2)
    g.at(60)
    assert not g.pit.out(2)
    g.at(61)
    assert g.pit.out(2)
    g.outb(MODE, 0xBA)  # mode 5 (hardware strobe)
    g.load(CH2, 10)
    g.outb(PORT_B, 0x00)
    g.at(100)
    g.outb(PORT_B, 0x01)
    g.at(111)
    assert not g.pit.out(2)  # one clock low when CE reaches 0
    g.at(112)
    assert g.pit.out(2)


def test_port_b_bits(g: Guest) -> None:
    g.outb(PORT_B, 0xFF)
    a, b = g.inb(PORT_B), g.inb(PORT_B)
    assert a & 0x0F == 0x0F and b & 0x0F == 0x0F  # gate 2, speaker, SERR#/IOCHK# enables
    assert (a ^ b) & 0x10  # refresh toggles from one read to the next
    assert not (a | b) & 0xC0  # no NMI source
    assert g.pit.port_b.speaker
    g.pit.reset()
    assert g.inb(PORT_B) & 0x0F == 0
    assert not g.pit.port_b.speaker


def test_reset_stops_irq0(g: Guest) -> None:
    g.outb(MODE, 0x34)
    g.load(CH0, 100)
    g.at(150)
    assert g.rising() == [101]
    g.pit.reset()
    assert g.timers.next_deadline() is None
    g.at(1000)
    assert g.rising() == [101]
    d = g.pit.describe()
    assert d["channels"][0]["mode"] == 3 and d["channels"][0]["out"]
