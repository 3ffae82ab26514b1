"""The MC146818 RTC and CMOS RAM at 0x70/0x71, driven through the bus in virtual time.

Expected values follow the MC146818A datasheet (register A-D semantics, UIP 244 us before the
update, RS rates at 32.768 kHz, don't-care alarm bytes >= 0xC0) and QEMU's CMOS layout for the
memory-size bytes that SeaBIOS reads.
"""

from __future__ import annotations

import calendar

import pytest

from emu import layout
from emu.bus import Bus
from emu.devices.cmos import Cmos
from emu.timers import ManualClock, TimerQueue

INDEX, DATA = 0x70, 0x71
SEC, MIN, HOUR, WDAY, DAY, MON, YEAR, CENTURY = 0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32
SEC_ALARM, MIN_ALARM, HOUR_ALARM = 0x01, 0x03, 0x05
A, B, C, D = 0x0A, 0x0B, 0x0C, 0x0D
MS = 1_000_000
S = 1_000_000_000

EPOCH = calendar.timegm((2024, 2, 29, 23, 59, 58))  # a Thursday, leap day


class Guest:
    def __init__(self, memory: int = 256 * layout.MiB, epoch: float = EPOCH) -> None:
        self.clock = ManualClock()
        self.timers = TimerQueue(self.clock)
        self.bus = Bus()
        self.irq: list[tuple[int, bool]] = []
        self.cmos = Cmos(self.timers, lambda level: self.irq.append((self.clock.t, level)), memory, epoch=epoch)
        self.cmos.register(self.bus)

    def rd(self, index: int) -> int:
        self.bus.pio_write(INDEX, 1, index)
        return self.bus.pio_read(DATA, 1)

    def wr(self, index: int, value: int) -> None:
        self.bus.pio_write(INDEX, 1, index)
        self.bus.pio_write(DATA, 1, value)

    def time(self) -> tuple[int, ...]:
        return tuple(self.rd(i) for i in (YEAR, MON, DAY, HOUR, MIN, SEC))

    def until(self, t: int, read_c: bool = True) -> int:
        """Run the machine to clock time t; an interrupt handler reads register C on every
        IRQ 8. Returns the number of interrupts."""
        count = 0
        while (d := self.timers.next_deadline()) is not None and d <= t:
            self.clock.t = max(d, self.clock.t)
            self.timers.run_due()
            if self.irq and self.irq[-1][1]:
                count += 1
                if read_c:
                    self.rd(C)
        self.clock.t = t
        return count

    @property
    def line(self) -> bool:
        return bool(self.irq) and self.irq[-1][1]


@pytest.fixture
def g() -> Guest:
    return Guest()


def test_time_bcd_24h_and_rollover(g: Guest) -> None:
    assert g.time() == (0x24, 0x02, 0x29, 0x23, 0x59, 0x58)
    assert g.rd(WDAY) == 5  # day of week 1-7, Sunday = 1: Thursday
    assert g.rd(CENTURY) == 0x20
    g.clock.t = 2 * S
    assert g.time() == (0x24, 0x03, 0x01, 0x00, 0x00, 0x00)
    assert g.rd(WDAY) == 6
    assert g.rd(D) == 0x80  # VRT: valid RAM and time


def test_binary_and_12_hour_formats(g: Guest) -> None:
    g.wr(B, 0x06)  # DM=1 binary, 24-hour
    assert g.time() == (24, 2, 29, 23, 59, 58)
    g.wr(B, 0x00)  # BCD, 12-hour: PM in bit 7
    assert g.rd(HOUR) == 0x80 | 0x11
    g.clock.t = 2 * S
    assert g.rd(HOUR) == 0x12  # midnight is 12 AM
    g.wr(B, 0x04)  # binary, 12-hour
    g.clock.t = (12 * 3600 + 2) * S
    assert g.rd(HOUR) == 0x80 | 12  # noon is 12 PM


def test_linux_set_time_sequence(g: Guest) -> None:
    # drivers/rtc/mc146818-lib.c mc146818_set_time(): SET, divider reset, fields, restore B, A.
    control, freq = g.rd(B), g.rd(A)
    g.wr(B, control | 0x80)
    g.wr(A, freq | 0x70)
    for index, value in ((YEAR, 0x30), (MON, 0x06), (DAY, 0x15), (HOUR, 0x12), (MIN, 0x34), (SEC, 0x56)):
        g.wr(index, value)
    g.clock.t = 3 * S
    assert g.time() == (0x30, 0x06, 0x15, 0x12, 0x34, 0x56)  # held while SET is 1
    assert not g.rd(A) & 0x80  # no UIP while updates are inhibited
    g.wr(B, control)
    g.clock.t += 2 * S
    assert g.rd(SEC) == 0x56  # still held: the divider chain is in reset
    g.wr(A, freq)
    # "The first update cycle begins 0.5 seconds after the divider chain is released."
    g.clock.t += 499 * MS
    assert g.rd(SEC) == 0x56
    g.clock.t += 1 * MS
    assert g.rd(SEC) == 0x57
    g.clock.t += 3600 * S
    assert g.time() == (0x30, 0x06, 0x15, 0x13, 0x34, 0x57)
    assert g.rd(CENTURY) == 0x20
    assert g.rd(WDAY) == 0x07  # 2030-06-15 is a Saturday


def test_set_bit_keeps_divider_phase_and_clears_uie(g: Guest) -> None:
    g.clock.t = 300 * MS
    g.wr(B, 0x02 | 0x10)  # UIE
    g.wr(B, 0x82 | 0x10)  # SET with UIE: "UIE is cleared when SET goes high"
    assert g.rd(B) == 0x82
    g.wr(SEC, 0x10)
    g.clock.t = 900 * MS
    g.wr(B, 0x02)
    assert g.rd(SEC) == 0x10
    # The divider kept running: the next update is at the next whole second of its chain.
    g.clock.t = 1000 * MS - 1
    assert g.rd(SEC) == 0x10
    g.clock.t = 1000 * MS
    assert g.rd(SEC) == 0x11


def test_write_time_while_running(g: Guest) -> None:
    g.clock.t = 100 * MS
    g.wr(MIN, 0x05)
    assert g.time() == (0x24, 0x02, 0x29, 0x23, 0x05, 0x58)
    g.clock.t = 1 * S
    assert g.rd(SEC) == 0x59


def test_uip_window(g: Guest) -> None:
    # UIP is 1 from 244 us before the update; if it reads 0 the update is at least 244 us away.
    g.clock.t = S - 300_000
    assert not g.rd(A) & 0x80
    g.clock.t = S - 240_000
    assert g.rd(A) == 0x80 | 0x26
    assert g.rd(SEC) == 0x58  # registers still hold the old second
    g.clock.t = S
    assert not g.rd(A) & 0x80
    assert g.rd(SEC) == 0x59
    g.wr(A, 0x26 | 0x80)
    assert g.rd(A) == 0x26  # UIP is read-only


def test_register_c_flags_without_interrupts(g: Guest) -> None:
    # No interrupt enabled: no timer at all, but the flags are still set by the hardware.
    assert g.timers.next_deadline() is None
    assert g.rd(C) == 0
    g.clock.t = 5 * MS
    assert g.rd(C) == 0x40  # PF: the 1024 Hz tap fired; no IRQF without PIE
    assert g.rd(C) == 0  # reading cleared it
    g.clock.t = 1 * S
    assert g.rd(C) == 0x50  # PF and UF (the update at the second boundary)
    assert g.irq == []


def test_periodic_1024hz_one_simulated_second(g: Guest) -> None:
    g.rd(C)
    g.wr(B, 0x42)  # PIE, rate 6 (1024 Hz) from register A's power-on 0x26
    assert g.until(S) == 1024
    assert g.cmos.missed_periodic == 0


@pytest.mark.parametrize(("rs", "hz"), [(3, 8192), (1, 256), (2, 128), (15, 2), (13, 8)])
def test_periodic_rates(g: Guest, rs: int, hz: int) -> None:
    g.wr(A, 0x20 | rs)
    g.rd(C)
    g.wr(B, 0x42)
    assert g.until(S) == hz


def test_periodic_irq_held_until_register_c_read(g: Guest) -> None:
    g.rd(C)
    g.wr(B, 0x42)
    g.until(10 * MS, read_c=False)
    assert g.line
    assert g.irq == [(976_563, True)]  # one rising edge: IRQ 8 stays high until C is read
    assert g.timers.next_deadline() is None  # nothing to do until then
    assert g.rd(C) == 0xC0  # IRQF | PF
    assert not g.line
    assert g.timers.next_deadline() == 10_742_188  # the next 1/1024 s tap after 10 ms


def test_enabling_pie_with_pf_pending_interrupts_at_once(g: Guest) -> None:
    g.clock.t = 5 * MS
    g.wr(B, 0x42)  # IRQF = PF & PIE: PF was already set
    assert g.line
    g.rd(C)
    assert not g.line


def test_update_ended_interrupt(g: Guest) -> None:
    g.rd(C)
    g.wr(B, 0x12)  # UIE
    assert g.until(3 * S + 500 * MS) == 3
    assert [t for t, level in g.irq if level] == [1 * S, 2 * S, 3 * S]


def test_alarm_with_dont_care(g: Guest) -> None:
    g.wr(SEC_ALARM, 0x30)
    g.wr(MIN_ALARM, 0xC0)  # don't care
    g.wr(HOUR_ALARM, 0xFF)  # don't care
    g.rd(C)
    g.wr(B, 0x22)  # AIE
    g.until(200 * S)
    # 23:59:58 + n s; hh:mm:30 comes at 32 s, 92 s, 152 s.
    assert [t for t, level in g.irq if level] == [32 * S, 92 * S, 152 * S]


def test_alarm_exact_time_and_flags(g: Guest) -> None:
    g.wr(SEC_ALARM, 0x05)
    g.wr(MIN_ALARM, 0x01)
    g.wr(HOUR_ALARM, 0x00)
    g.rd(C)
    g.wr(B, 0x22)
    g.until(60 * S + 7 * S, read_c=False)  # 00:01:05 is 67 s after 23:59:58
    assert [t for t, level in g.irq if level] == [67 * S]
    assert g.rd(C) == 0x80 | 0x20 | 0x10 | 0x40  # IRQF, AF, and UF/PF that came with it


def test_lost_periodic_interrupts_deliver_one(g: Guest) -> None:
    g.rd(C)
    g.wr(B, 0x42)
    g.clock.t = 10 * S // 1024 + 100  # ten periods while the machine was busy
    g.timers.run_due()
    assert g.line
    assert g.cmos.missed_periodic == 9


def test_memory_fields_256m(g: Guest) -> None:
    assert g.rd(0x15) | g.rd(0x16) << 8 == 640
    assert g.rd(0x17) | g.rd(0x18) << 8 == 0xFFFF  # (256 MiB - 1 MiB) / KiB capped
    assert g.rd(0x30) | g.rd(0x31) << 8 == 0xFFFF
    assert g.rd(0x34) | g.rd(0x35) << 8 == (256 - 16) * 16  # 64 KiB blocks above 16 MiB
    assert (g.rd(0x5B), g.rd(0x5C), g.rd(0x5D)) == (0, 0, 0)
    checksum = sum(g.rd(i) for i in range(0x10, 0x2E))
    assert g.rd(0x2E) << 8 | g.rd(0x2F) == checksum


def test_memory_fields_small_and_5g() -> None:
    g = Guest(memory=5 * layout.GiB)
    low = layout.MMIO_HOLE_START
    assert g.rd(0x34) | g.rd(0x35) << 8 == (low - 16 * layout.MiB) // (64 * layout.KiB)
    above = g.rd(0x5B) | g.rd(0x5C) << 8 | g.rd(0x5D) << 16
    assert above == (5 * layout.GiB - low) // (64 * layout.KiB)
    g = Guest(memory=8 * layout.MiB)
    assert g.rd(0x17) | g.rd(0x18) << 8 == 7 * 1024
    assert g.rd(0x34) | g.rd(0x35) << 8 == 0


def test_floppy_types_and_equipment(g: Guest) -> None:
    assert g.rd(0x14) & 0x02  # FPU present
    g.cmos.set_floppy_types(4)  # one 1.44 MB drive
    assert g.rd(0x10) == 0x40
    assert g.rd(0x14) & 0xC1 == 0x01
    g.cmos.set_floppy_types(4, 2)
    assert g.rd(0x10) == 0x42
    assert g.rd(0x14) & 0xC1 == 0x41  # bits 7:6 = drives - 1
    assert g.rd(0x2E) << 8 | g.rd(0x2F) == sum(g.rd(i) for i in range(0x10, 0x2E))


def test_index_port_and_nmi_mask(g: Guest) -> None:
    g.bus.pio_write(INDEX, 1, 0x80 | 0x0F)
    assert g.cmos.nmi_masked
    g.bus.pio_write(DATA, 1, 0x0A)  # shutdown status (index 0x0F, bit 7 is the NMI mask)
    g.bus.pio_write(INDEX, 1, 0x0F)
    assert not g.cmos.nmi_masked
    assert g.bus.pio_read(DATA, 1) == 0x0A
    assert g.bus.pio_read(INDEX, 1) == 0xFF


def test_reset_keeps_ram_and_time_clears_interrupts(g: Guest) -> None:
    g.wr(0x0F, 0x05)
    g.wr(0x40, 0x77)
    g.rd(C)
    g.wr(B, 0x72 | 0x08)  # PIE, AIE, UIE, SQWE
    g.until(10 * MS, read_c=False)
    assert g.line
    g.cmos.reset()
    # MC146818 RESET: PIE, AIE, UIE, SQWE and IRQF/PF/AF/UF clear; RAM and time stay.
    assert not g.line
    assert g.rd(B) == 0x02
    assert g.rd(0x0F) == 0x05 and g.rd(0x40) == 0x77
    assert g.rd(SEC) == 0x58
    assert g.timers.next_deadline() is None


def test_host_time_by_default() -> None:
    import time

    clock = ManualClock(123 * S)
    cmos = Cmos(TimerQueue(clock), lambda level: None, 64 * layout.MiB)
    assert abs(cmos.rtc_time() - time.time()) < 5
