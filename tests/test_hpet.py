"""The HPET (IA-PC HPET spec 1.0a) programmed through its MMIO registers as a guest does, in
virtual time: counter ticks every 100 ns, so tick k is clock time 100 * k ns."""

from __future__ import annotations

from pathlib import Path

import pytest

from emu import layout
from emu.bus import Bus
from emu.config import MachineConfig
from emu.devices import hpet
from emu.devices.hpet import Hpet, tick_index, tick_time
from emu.machine import Machine
from emu.platform import IrqLine
from emu.timers import ManualClock, TimerQueue

BASE = layout.HPET_BASE
CONF, STATUS, COUNTER = 0x10, 0x20, 0xF0
ENABLE, LEGACY = hpet.ENABLE_CNF, hpet.LEG_RT_CNF
LEVEL, INT_ENB, PERIODIC, VAL_SET, MODE32 = (
    hpet.TN_INT_TYPE_LEVEL, hpet.TN_INT_ENB, hpet.TN_TYPE_PERIODIC, hpet.TN_VAL_SET, hpet.TN_32MODE,
)  # fmt: skip


def tn_conf(n: int) -> int:
    return 0x100 + 0x20 * n


def tn_cmp(n: int) -> int:
    return 0x108 + 0x20 * n


def route(pin: int) -> int:
    return pin << hpet.TN_ROUTE_SHIFT


class Guest:
    def __init__(self) -> None:
        self.clock = ManualClock()
        self.timers = TimerQueue(self.clock)
        self.bus = Bus()
        self.events: list[tuple[int, int, bool]] = []  # (tick, GSI, level)
        self.legacy: list[bool] = []
        self.hpet = Hpet(self.timers, self.line, on_legacy=self.legacy.append)
        self.hpet.register(self.bus)

    def line(self, gsi: int) -> IrqLine:
        return lambda level: self.events.append((tick_index(self.clock.t), gsi, level))

    def read(self, offset: int, size: int = 8) -> int:
        return self.bus.mmio_read(BASE + offset, size)

    def write(self, offset: int, value: int, size: int = 8) -> None:
        self.bus.mmio_write(BASE + offset, size, value)

    def at(self, tick: int) -> None:
        """Move the clock to counter tick `tick`, running timers as the machine would."""
        target = tick_time(tick)
        while (d := self.timers.next_deadline()) is not None and d <= target:
            self.clock.t = max(d, self.clock.t)
            self.timers.run_due()
        self.clock.t = target

    def rising(self, gsi: int | None = None) -> list[int]:
        return [k for k, g, level in self.events if level and gsi in (None, g)]

    def start(self) -> None:
        self.write(CONF, self.read(CONF) | ENABLE)


def test_capabilities() -> None:
    g = Guest()
    caps = g.read(0)
    assert caps & 0xFF == 1  # revision
    assert caps >> 8 & 0x1F == 2  # NUM_TIM_CAP: three timers
    assert caps & hpet.CAP_COUNT_SIZE and caps & hpet.CAP_LEG_RT
    assert caps >> 16 & 0xFFFF == 0x8086
    assert caps >> 32 == 100_000_000  # femtoseconds per tick: 10 MHz, the spec's upper bound 0x05F5E100
    assert (g.read(0, 4), g.read(4, 4)) == (caps & 0xFFFF_FFFF, caps >> 32) == (hpet.BLOCK_ID, 0x05F5E100)
    g.write(0, 0)
    assert g.read(0) == caps
    for n in range(3):
        conf = g.read(tn_conf(n))
        assert conf >> 32 == 0x00F0_0000  # Tn_INT_ROUTE_CAP: IOAPIC pins 20-23
        assert conf & hpet.TN_SIZE_CAP and not conf & (1 << 15)  # 64-bit comparator, no FSB
        assert bool(conf & hpet.TN_PER_INT_CAP) == (n == 0)
        assert g.read(tn_cmp(n)) == (1 << 64) - 1  # reset value: all ones
    assert g.read(0x110) == 0 and g.read(0x200) == 0 and g.read(0x08) == 0


def test_counter_counts_at_10_mhz_from_the_clock() -> None:
    g = Guest()
    g.clock.t = 12_345  # between ticks: the counter's ticks fall on the clock's 100 ns grid
    g.start()
    g.clock.advance(1_000_000_000)
    assert g.read(COUNTER) == 10_000_000
    g.clock.advance(54)
    assert g.read(COUNTER) == 10_000_000
    g.clock.advance(1)  # 12_400 + 1 s
    assert g.read(COUNTER) == 10_000_001


def test_counter_frozen_while_halted_and_writable() -> None:
    g = Guest()
    g.clock.advance(5_000_000)
    assert g.read(COUNTER) == 0  # halted after reset
    g.write(COUNTER, 0x1_FFFF_FFF0)
    g.write(COUNTER + 4, 0x7, size=4)  # the high half alone
    assert g.read(COUNTER) == 0x7_FFFF_FFF0
    g.write(COUNTER, 0x1_FFFF_FFF0)
    g.start()
    g.clock.advance(0x20 * 100)
    assert g.read(COUNTER) == 0x2_0000_0010
    assert (g.read(COUNTER, 4), g.read(COUNTER + 4, 4)) == (0x10, 0x2)  # 32-bit halves
    g.write(CONF, 0)
    g.clock.advance(10**9)
    assert g.read(COUNTER) == 0x2_0000_0010  # frozen
    g.start()
    g.clock.advance(100)
    assert g.read(COUNTER) == 0x2_0000_0011  # resumes where it stopped


def test_one_shot_comparator_fires_once_at_the_exact_tick() -> None:
    g = Guest()
    g.write(tn_conf(2), INT_ENB | route(20))
    g.write(tn_cmp(2), 1000)
    g.start()
    g.at(999)
    assert g.events == []
    g.at(10**6)
    assert g.events == [(1000, 20, True), (1000, 20, False)]  # one edge, at tick 1000
    assert g.read(STATUS) == 0  # edge timers leave the status alone


def test_one_shot_32_bit_mode_matches_again_after_the_wrap() -> None:
    g = Guest()
    g.write(tn_conf(1), INT_ENB | MODE32 | route(21))
    g.write(tn_cmp(1), 0x1_0000_0040)  # the upper half is dropped in 32-bit mode
    assert g.read(tn_cmp(1)) == 0x40
    g.start()
    g.at(1 << 33)
    assert g.rising(21) == [0x40, (1 << 32) + 0x40]


def test_comparator_at_the_current_count_waits_for_the_wrap() -> None:
    g = Guest()
    g.start()
    g.at(500)
    g.write(tn_conf(2), INT_ENB | MODE32 | route(22))
    g.write(tn_cmp(2), 500, size=4)
    g.at(501)
    assert g.events == []
    assert g.hpet.describe()["timers"][2]["next_deadline_ns"] == tick_time(500 + (1 << 32))


def test_periodic_fires_on_exact_multiples() -> None:
    """Linux's sequence (hpet_clkevt_set_state_periodic): VAL_SET, comparator = now + delta, then
    the period alone; the comparator reads back as the next match."""
    g = Guest()
    g.start()
    g.at(123)
    now = g.read(COUNTER, 4)
    g.write(tn_conf(0), INT_ENB | PERIODIC | VAL_SET | MODE32 | route(20), size=4)
    g.write(tn_cmp(0), now + 40_000, size=4)
    g.write(tn_cmp(0), 40_000, size=4)
    assert not g.read(tn_conf(0)) & VAL_SET  # cleared by the first write
    g.at(123 + 10 * 40_000 + 5)
    assert g.rising(20) == [123 + k * 40_000 for k in range(1, 11)]
    assert g.read(tn_cmp(0)) == 123 + 11 * 40_000
    assert g.hpet.describe()["timers"][0]["missed"] == 0


def test_periodic_late_delivers_one_edge_and_stays_on_its_grid() -> None:
    g = Guest()
    g.write(tn_conf(0), INT_ENB | PERIODIC | VAL_SET | route(23))
    g.write(tn_cmp(0), 1000)
    g.write(tn_cmp(0), 1000)
    g.start()
    g.at(1000)
    g.clock.t = tick_time(4500)  # the machine was busy for three and a half periods
    g.timers.run_due()
    g.at(6000)
    assert g.rising(23) == [1000, 4500, 5000, 6000]
    t0 = g.hpet.describe()["timers"][0]
    assert (t0["fired"], t0["missed"]) == (4, 2)


def test_register_access_handles_a_due_match_first() -> None:
    g = Guest()
    g.write(tn_conf(2), LEVEL | INT_ENB | route(21))
    g.write(tn_cmp(2), 10)
    g.start()
    g.clock.t = tick_time(50)  # the timer queue has not run yet
    assert g.read(STATUS) == 4
    assert g.events == [(50, 21, True)]


def test_level_interrupt_holds_until_the_status_bit_is_cleared() -> None:
    g = Guest()
    g.write(tn_conf(2), LEVEL | INT_ENB | route(21))
    g.write(tn_cmp(2), 100)
    g.start()
    g.at(5000)
    assert g.events == [(100, 21, True)] and g.read(STATUS) == 1 << 2
    g.write(STATUS, 0)  # writing 0 changes nothing
    g.write(STATUS, 1 << 1)
    assert g.read(STATUS) == 1 << 2 and len(g.events) == 1
    g.write(STATUS, 1 << 2)  # write 1 to clear
    assert g.read(STATUS) == 0 and g.events[-1] == (5000, 21, False)


def test_level_status_without_int_enb_and_disable_lowers_the_line() -> None:
    g = Guest()
    g.write(tn_conf(1), LEVEL | route(22))
    g.write(tn_cmp(1), 100)
    g.start()
    g.at(200)
    assert g.read(STATUS) == 1 << 1 and g.events == []  # the status bit without an interrupt
    g.write(tn_conf(1), LEVEL | INT_ENB | route(22))
    assert g.events == [(200, 22, True)]
    g.write(CONF, 0)  # halting the counter disables every interrupt
    assert g.events[-1] == (200, 22, False) and g.read(STATUS) == 1 << 1
    g.start()
    assert g.events[-1] == (200, 22, True)


def test_level_timers_sharing_a_pin_are_wired_or() -> None:
    g = Guest()
    for n, cmp in ((1, 100), (2, 200)):
        g.write(tn_conf(n), LEVEL | INT_ENB | route(20))
        g.write(tn_cmp(n), cmp)
    g.start()
    g.at(300)
    g.write(STATUS, 1 << 1)
    assert g.events == [(100, 20, True)]
    g.write(STATUS, 1 << 2)
    assert g.events == [(100, 20, True), (300, 20, False)]


def test_route_outside_the_capability_is_not_taken() -> None:
    g = Guest()
    g.write(tn_conf(2), INT_ENB | route(21))
    g.write(tn_conf(2), INT_ENB | route(5))
    assert g.read(tn_conf(2)) >> hpet.TN_ROUTE_SHIFT & 0x1F == 21
    g.write(tn_conf(1), PERIODIC | INT_ENB)
    assert not g.read(tn_conf(1)) & PERIODIC  # timer 1 cannot be periodic
    assert g.read(tn_conf(1)) >> hpet.TN_ROUTE_SHIFT & 0x1F == 0
    g.write(tn_cmp(1), 10)
    g.start()
    g.at(100)
    assert g.events == []  # no route chosen yet: timer 1 drives nothing


def test_legacy_replacement_routes_timers_0_and_1_to_irq_0_and_8() -> None:
    g = Guest()
    g.write(tn_conf(0), INT_ENB | route(20))
    g.write(tn_conf(1), INT_ENB | route(21))
    g.write(tn_conf(2), INT_ENB | route(22))
    for n in range(3):
        g.write(tn_cmp(n), 100 * (n + 1))
    g.write(CONF, ENABLE | LEGACY)
    assert g.legacy == [True]
    g.at(1000)
    assert [(k, gsi) for k, gsi, level in g.events if level] == [
        (100, layout.IRQ_PIT), (200, layout.IRQ_RTC), (300, 22),
    ]  # fmt: skip
    assert g.hpet.describe()["legacy_replacement"]
    g.write(CONF, ENABLE)
    g.write(CONF, ENABLE)
    assert g.legacy == [True, False]


def test_legacy_lines_are_the_machine_s_choice() -> None:
    g = Guest()
    g.hpet = Hpet(g.timers, g.line, legacy_gsis=(2, 8))  # ISA IRQ 0 on IOAPIC pin 2
    g.hpet.register(bus := Bus())
    bus.mmio_write(BASE + tn_conf(0), 8, INT_ENB)
    bus.mmio_write(BASE + tn_cmp(0), 8, 10)
    bus.mmio_write(BASE + CONF, 8, ENABLE | LEGACY)
    g.at(20)
    assert g.rising() == [10] and g.events[0][1] == 2


def test_reset() -> None:
    g = Guest()
    g.write(tn_conf(2), LEVEL | INT_ENB | route(21))
    g.write(tn_cmp(2), 10)
    g.write(CONF, ENABLE | LEGACY)
    g.at(20)
    assert g.events == [(10, 21, True)]
    g.hpet.reset()
    assert g.events[-1] == (20, 21, False) and g.legacy == [True, False]
    assert (g.read(CONF), g.read(STATUS), g.read(COUNTER)) == (0, 0, 0)
    assert g.read(tn_conf(2)) & 0xFFFF == hpet.TN_SIZE_CAP
    assert g.timers.next_deadline() is None


@pytest.mark.parametrize("size", [1, 2, 4])
def test_narrow_accesses_hit_the_bytes_they_name(size: int) -> None:
    g = Guest()
    g.write(COUNTER, 0x1122_3344_5566_7788)
    assert g.read(COUNTER + 4, size) == 0x1122_3344 & ((1 << 8 * size) - 1)
    g.write(COUNTER + 2, 0, size)
    expect = 0x1122_3344_5566_7788 & ~(((1 << 8 * size) - 1) << 16)
    assert g.read(COUNTER) == expect


def test_describe() -> None:
    g = Guest()
    g.write(tn_conf(0), INT_ENB | PERIODIC | VAL_SET | route(20))
    g.write(tn_cmp(0), 500)
    g.start()
    d = g.hpet.describe()
    assert d["enabled"] and d["counter"] == 0 and d["status"] == 0
    assert d["timers"][0] == {
        "type": "periodic", "trigger": "edge", "int_enabled": True, "mode32": False, "route": 20, "gsi": 20,
        "comparator": 500, "period": 500, "next_deadline_ns": 50_000, "fired": 0, "missed": 0,
    }  # fmt: skip


def test_legacy_replacement_drops_the_lines_the_pit_and_rtc_left_high(tmp_path: Path) -> None:
    """A PIT or RTC line left high when legacy replacement cuts them off would hide the edges
    of the HPET's own timers on IRQ 0 and 8 (emu's controllers, Unicorn)."""
    image = tmp_path / "hlt.img"
    image.write_bytes(b"\xf4")
    with Machine(MachineConfig(image=image, mem=8 << 20)) as m:
        m.set_irq(layout.IRQ_PIT, True)
        m.set_irq(layout.IRQ_RTC, True)
        m.bus.mmio_write(BASE + CONF, 8, ENABLE | LEGACY)
        lines = {e["pin"]: e["line"] for e in m.irqchip.describe()["ioapic"]["entries"]}
        assert not lines[layout.IRQ_PIT] and not lines[layout.IRQ_RTC]
