"""The PC's CMOS: a Motorola MC146818 real-time clock with 128 bytes of battery-backed RAM.

Index port 0x70 (bit 7 masks NMI), data port 0x71. The time is the host's UTC (or `epoch`
seconds at clock zero, for deterministic runs) and advances with the machine clock; register
values are computed from it on demand. The 32.768 kHz divider chain is a phase relative to the
clock: the periodic interrupt taps it, and the once-a-second update happens where it wraps.
Writing the time moves only the whole seconds (the divider keeps running), as on the chip.

Flags in register C are set whether or not their interrupt is enabled, so they are worked out
lazily from the time elapsed when register C is read; a TimerQueue timer is scheduled only
while an interrupt is enabled and IRQ 8 is low (once it is high, only reading C changes it).

Memory-size bytes follow QEMU's pc_cmos_init, which SeaBIOS and other firmware read.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable
from typing import Any

from emu import layout
from emu.bus import Bus
from emu.timers import Timer, TimerQueue, wall_ns_at_zero

_NS = 1_000_000_000
DIVIDER_HZ = 32768
UIP_TICKS = 8  # UIP rises 244 us (8 divider cycles) before each update

# Register indexes.
REG_SECONDS = 0x00
REG_SECONDS_ALARM = 0x01
REG_MINUTES = 0x02
REG_MINUTES_ALARM = 0x03
REG_HOURS = 0x04
REG_HOURS_ALARM = 0x05
REG_WEEKDAY = 0x06
REG_DAY = 0x07
REG_MONTH = 0x08
REG_YEAR = 0x09
REG_A = 0x0A
REG_B = 0x0B
REG_C = 0x0C
REG_D = 0x0D
REG_CENTURY = layout.CMOS_CENTURY
TIME_REGS = frozenset({REG_SECONDS, REG_MINUTES, REG_HOURS, REG_WEEKDAY, REG_DAY, REG_MONTH, REG_YEAR, REG_CENTURY})

A_UIP = 0x80
A_DV = 0x70  # divider control: 010 = 32.768 kHz time base, 11x = divider chain held in reset
A_DV_RESET = 0x60
A_RS = 0x0F  # rate select for the periodic interrupt
B_SET = 0x80
B_PIE = 0x40
B_AIE = 0x20
B_UIE = 0x10
B_SQWE = 0x08
B_DM_BINARY = 0x04
B_24H = 0x02
B_DSE = 0x01
C_IRQF = 0x80
C_PF = 0x40  # same bit positions as the enables in register B
C_AF = 0x20
C_UF = 0x10
D_VRT = 0x80  # valid RAM and time: the battery is fine
ALARM_DONT_CARE = 0xC0  # an alarm byte with bits 7:6 set matches every value

INDEX_NMI_MASK = 0x80
HOUR_PM = 0x80

# Register A/B as a PC BIOS leaves them (QEMU's power-on values): 32.768 kHz, 1024 Hz rate
# selected, 24-hour BCD, no interrupts.
POWER_ON_A = 0x26
POWER_ON_B = B_24H

EQUIP_FLOPPY = 0x01
EQUIP_FPU = 0x02


def _periodic_ticks(rs: int) -> int:
    """Divider cycles per periodic interrupt (RS 1 and 2 repeat 8 and 9 at 32.768 kHz)."""
    if rs in (1, 2):
        rs += 7
    return 1 << (rs - 1)


class Cmos:
    """MC146818 RTC + CMOS RAM at 0x70/0x71. Runs on the vCPU thread (ports and timers).

    `irq8(level)` is called when the IRQ output changes: it rises when a flag in register C
    meets its enable in register B and falls when register C is read.
    """

    def __init__(
        self,
        timers: TimerQueue,
        irq8: Callable[[bool], None],
        memory_size: int,
        *,
        epoch: float | None = None,
    ) -> None:
        self._timers = timers
        self._irq8 = irq8
        self._ram = bytearray(128)
        self._index = 0
        #: Port 0x70 bit 7 as last written: NMIs masked.
        self.nmi_masked = False
        now = timers.clock.now_ns()
        # divider time = clock + _div_offset; RTC time = divider time + _seconds whole seconds.
        self._div_offset = wall_ns_at_zero(timers.clock, epoch)
        self._seconds = 0
        self._held = False  # SET or divider reset: the time registers live in _ram, frozen
        self._flags = 0
        self._flags_until = now
        self._irq_level = False
        self._timer: Timer | None = None
        #: Periodic interrupts that fell due while the machine was late (one was delivered).
        self.missed_periodic = 0
        self._ram[REG_A] = POWER_ON_A
        self._ram[REG_B] = POWER_ON_B
        self._ram[REG_D] = D_VRT
        self._ram[layout.CMOS_EQUIPMENT] = EQUIP_FPU
        self._set_memory(memory_size)

    # -- wiring ---------------------------------------------------------------------------------
    def register(self, bus: Bus) -> None:
        bus.register_pio(layout.PORT_CMOS_INDEX, 2, self, "MC146818 RTC/CMOS")

    def reset(self) -> None:
        """The RESET pin: PIE, AIE, UIE, SQWE and the register C flags clear; the time, the rest
        of register B and the RAM (0x0F shutdown status included) are battery-backed."""
        now = self._timers.clock.now_ns()
        self._fold(now)
        self._ram[REG_B] &= ~(B_PIE | B_AIE | B_UIE | B_SQWE)
        self._flags = 0
        self._index = 0
        self.nmi_masked = False
        self._update_irq()
        self._reschedule(now)

    # -- machine / firmware side ----------------------------------------------------------------
    def set_floppy_types(self, drive0: int, drive1: int = 0) -> None:
        """CMOS 0x10 drive types (0 none, 1 360K, 2 1.2M, 3 720K, 4 1.44M, 5 2.88M) and the
        equipment byte's floppy bits; the checksum follows."""
        self._ram[layout.CMOS_FLOPPY_TYPES] = (drive0 & 0xF) << 4 | (drive1 & 0xF)
        drives = (drive0 != 0) + (drive1 != 0)
        equip = self._ram[layout.CMOS_EQUIPMENT] & ~0xC1
        if drives:
            equip |= EQUIP_FLOPPY | (drives - 1) << 6
        self._ram[layout.CMOS_EQUIPMENT] = equip
        self._update_checksum()

    def read(self, index: int) -> int:
        """Register `index` as the guest reads it through port 0x71 (index unchanged)."""
        return self._read(index & 0x7F)

    def write(self, index: int, value: int) -> None:
        """Register `index` as if the guest wrote it through port 0x71."""
        self._write(index & 0x7F, value & 0xFF)

    def rtc_time(self) -> float:
        """The RTC's time now, in Unix seconds (frozen while SET or the divider reset holds it)."""
        now = self._timers.clock.now_ns()
        if self._held:
            return float(self._decode_time())
        return self._rtc_ns(now) / _NS

    def describe(self) -> dict[str, Any]:
        now = self._timers.clock.now_ns()
        return {
            "time": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.rtc_time())),
            "held": self._held,
            "a": self._read(REG_A),
            "b": self._ram[REG_B],
            "flags": self._flags,
            "irq": self._irq_level,
            "index": self._index,
            "nmi_masked": self.nmi_masked,
            "next_event_ns": self._timer.deadline_ns - now if self._timer is not None else None,
            "missed_periodic": self.missed_periodic,
        }

    # -- ports ----------------------------------------------------------------------------------
    def io_read(self, offset: int, size: int) -> int:
        if offset == 0:
            return 0xFF  # the index register is write-only on a PC
        return self._read(self._index)

    def io_write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == 0:
            self._index = value & 0x7F
            self.nmi_masked = bool(value & INDEX_NMI_MASK)
        else:
            self._write(self._index, value)

    # -- registers ------------------------------------------------------------------------------
    def _read(self, index: int) -> int:
        if index in TIME_REGS and not self._held:
            return self._time_fields(self._timers.clock.now_ns())[index]
        if index == REG_A:
            now = self._timers.clock.now_ns()
            uip = not self._held and self._divider_ticks(now) % DIVIDER_HZ >= DIVIDER_HZ - UIP_TICKS
            return (self._ram[REG_A] & ~A_UIP) | (A_UIP if uip else 0)
        if index == REG_C:
            now = self._timers.clock.now_ns()
            self._fold(now)
            value = self._flags | (C_IRQF if self._irq_level else 0)
            self._flags = 0  # reading C clears every flag and releases IRQ 8
            self._update_irq()
            self._reschedule(now)
            return value
        if index == REG_D:
            return D_VRT
        return self._ram[index]

    def _write(self, index: int, value: int) -> None:
        now = self._timers.clock.now_ns()
        if index in TIME_REGS:
            if self._held:
                self._ram[index] = value  # taken up when SET clears
                return
            self._fold(now)
            # A running clock takes the new field at once, with the others as they are now.
            for i, v in self._time_fields(now).items():
                self._ram[i] = v
            self._ram[index] = value
            self._take_time(now)
            self._reschedule(now)
            return
        if index == REG_A:
            self._fold(now)
            was_reset = self._divider_reset()
            self._ram[REG_A] = value & ~A_UIP
            if self._divider_reset() and not was_reset:
                self._hold(now)
            elif was_reset and not self._divider_reset():
                # Out of reset the divider starts from zero: the first update comes 500 ms later.
                self._div_offset = _NS // 2 - now
                if not self._ram[REG_B] & B_SET:
                    self._release(now)
            self._update_irq()
            self._reschedule(now)
            return
        if index == REG_B:
            self._fold(now)
            old = self._ram[REG_B]
            if value & B_SET:
                value &= ~B_UIE  # SET going high clears UIE (and ends any update cycle)
                self._hold(now)
            elif old & B_SET and not self._divider_reset():
                self._release(now)
            self._ram[REG_B] = value
            self._update_irq()
            self._reschedule(now)
            return
        if index in (REG_C, REG_D):
            return  # read-only
        self._ram[index] = value
        if index in (REG_SECONDS_ALARM, REG_MINUTES_ALARM, REG_HOURS_ALARM):
            self._fold(now)
            self._reschedule(now)

    # -- time -----------------------------------------------------------------------------------
    def _divider_reset(self) -> bool:
        return self._ram[REG_A] & A_DV_RESET == A_DV_RESET

    def _divider_ns(self, now: int) -> int:
        return now + self._div_offset

    def _divider_ticks(self, now: int) -> int:
        return self._divider_ns(now) * DIVIDER_HZ // _NS

    def _rtc_ns(self, now: int) -> int:
        return self._divider_ns(now) + self._seconds * _NS

    def _encode(self, value: int) -> int:
        if self._ram[REG_B] & B_DM_BINARY:
            return value
        return (value // 10) << 4 | value % 10

    def _decode(self, value: int) -> int:
        if self._ram[REG_B] & B_DM_BINARY:
            return value
        return (value >> 4) * 10 + (value & 0xF)

    def _encode_hour(self, hour: int) -> int:
        if self._ram[REG_B] & B_24H:
            return self._encode(hour)
        return self._encode(hour % 12 or 12) | (HOUR_PM if hour >= 12 else 0)

    def _decode_hour(self, value: int) -> int:
        if self._ram[REG_B] & B_24H:
            return self._decode(value)
        return self._decode(value & ~HOUR_PM) % 12 + (12 if value & HOUR_PM else 0)

    def _time_fields(self, now: int) -> dict[int, int]:
        t = time.gmtime(self._rtc_ns(now) // _NS)
        return {
            REG_SECONDS: self._encode(t.tm_sec),
            REG_MINUTES: self._encode(t.tm_min),
            REG_HOURS: self._encode_hour(t.tm_hour),
            REG_WEEKDAY: self._encode((t.tm_wday + 1) % 7 + 1),  # 1 = Sunday
            REG_DAY: self._encode(t.tm_mday),
            REG_MONTH: self._encode(t.tm_mon),
            REG_YEAR: self._encode(t.tm_year % 100),
            REG_CENTURY: self._encode(t.tm_year // 100),
        }

    def _decode_time(self) -> int:
        """Unix seconds from the time registers in RAM (out-of-range values are normalised)."""
        ram = self._ram
        year = self._decode(ram[REG_CENTURY]) * 100 + self._decode(ram[REG_YEAR])
        month = min(max(self._decode(ram[REG_MONTH]), 1), 12)
        day = max(self._decode(ram[REG_DAY]), 1)
        hour = self._decode_hour(ram[REG_HOURS])
        minute = self._decode(ram[REG_MINUTES])
        second = self._decode(ram[REG_SECONDS])
        return calendar.timegm((year, month, 1, 0, 0, 0)) + (day - 1) * 86400 + hour * 3600 + minute * 60 + second

    def _hold(self, now: int) -> None:
        """Updates stop: freeze the time registers in RAM where the guest can rewrite them."""
        if not self._held:
            for i, v in self._time_fields(now).items():
                self._ram[i] = v
            self._held = True

    def _release(self, now: int) -> None:
        self._take_time(now)
        self._held = False

    def _take_time(self, now: int) -> None:
        """Whole seconds from the registers in RAM; the divider keeps its phase."""
        self._seconds = self._decode_time() - self._divider_ns(now) // _NS

    # -- alarm ----------------------------------------------------------------------------------
    def _alarm_values(self, index: int, limit: int, hour: bool = False) -> list[int]:
        value = self._ram[index]
        if value & ALARM_DONT_CARE == ALARM_DONT_CARE:
            return list(range(limit))
        decoded = self._decode_hour(value) if hour else self._decode(value)
        return [decoded] if 0 <= decoded < limit else []

    def _next_alarm(self, after: int) -> int | None:
        """The first RTC second after `after` whose time of day matches the alarm bytes."""
        hours = self._alarm_values(REG_HOURS_ALARM, 24, hour=True)
        minutes = self._alarm_values(REG_MINUTES_ALARM, 60)
        seconds = self._alarm_values(REG_SECONDS_ALARM, 60)
        day, tod = after - after % 86400, after % 86400
        for h in hours:
            if (h + 1) * 3600 <= tod + 1:
                continue
            for m in minutes:
                if h * 3600 + (m + 1) * 60 <= tod + 1:
                    continue
                for s in seconds:
                    if h * 3600 + m * 60 + s > tod:
                        return day + h * 3600 + m * 60 + s
        if hours and minutes and seconds:  # the first match tomorrow
            return day + 86400 + hours[0] * 3600 + minutes[0] * 60 + seconds[0]
        return None

    # -- flags and IRQ 8 ------------------------------------------------------------------------
    def _fold(self, now: int) -> None:
        """Set the register C flags for what happened between the last fold and `now`."""
        start, self._flags_until = self._flags_until, now
        if now <= start or self._divider_reset():
            return
        rs = self._ram[REG_A] & A_RS
        if rs:
            period = _periodic_ticks(rs)
            if self._divider_ticks(now) // period > self._divider_ticks(start) // period:
                self._flags |= C_PF
        if self._held:
            return
        first, last = self._divider_ns(start) // _NS, self._divider_ns(now) // _NS
        if last > first:
            self._flags |= C_UF
            alarm = self._next_alarm(first + self._seconds)
            if alarm is not None and alarm <= last + self._seconds:
                self._flags |= C_AF

    def _update_irq(self) -> None:
        level = bool(self._flags & self._ram[REG_B] & (C_PF | C_AF | C_UF))
        if level != self._irq_level:
            self._irq_level = level
            self._irq8(level)

    def _reschedule(self, now: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        enabled = self._ram[REG_B] & (B_PIE | B_AIE | B_UIE)
        if not enabled or self._irq_level or self._divider_reset():
            return
        deadlines = []
        rs = self._ram[REG_A] & A_RS
        if enabled & B_PIE and rs:
            period = _periodic_ticks(rs)
            tick = (self._divider_ticks(now) // period + 1) * period
            deadlines.append(-(-tick * _NS // DIVIDER_HZ) - self._div_offset)
        if not self._held:
            second = self._divider_ns(now) // _NS
            if enabled & B_UIE:
                deadlines.append((second + 1) * _NS - self._div_offset)
            if enabled & B_AIE:
                alarm = self._next_alarm(second + self._seconds)
                if alarm is not None:
                    deadlines.append((alarm - self._seconds) * _NS - self._div_offset)
        if deadlines:
            self._timer = self._timers.add(min(deadlines), self._on_timer)

    def _on_timer(self, now: int) -> None:
        self._timer = None
        rs = self._ram[REG_A] & A_RS
        if self._ram[REG_B] & B_PIE and rs:
            period = _periodic_ticks(rs)
            edges = self._divider_ticks(now) // period - self._divider_ticks(self._flags_until) // period
            self.missed_periodic += max(edges - 1, 0)
        self._fold(now)
        self._update_irq()
        self._reschedule(now)

    # -- RAM ------------------------------------------------------------------------------------
    def _set_memory(self, memory_size: int) -> None:
        ram = self._ram
        low = min(memory_size, layout.MMIO_HOLE_START)
        high = memory_size - low
        base_kib = min(low, layout.REAL_MODE_END) // layout.KiB
        ext_kib = min(max(low - layout.HIGH_MEMORY, 0) // layout.KiB, 0xFFFF)
        above_16m = min(max(low - 16 * layout.MiB, 0) // (64 * layout.KiB), 0xFFFF)
        above_4g = high // (64 * layout.KiB)
        ram[layout.CMOS_BASE_MEM_KIB : layout.CMOS_BASE_MEM_KIB + 2] = base_kib.to_bytes(2, "little")
        ram[layout.CMOS_EXT_MEM_KIB : layout.CMOS_EXT_MEM_KIB + 2] = ext_kib.to_bytes(2, "little")
        ram[layout.CMOS_EXT_MEM_KIB2 : layout.CMOS_EXT_MEM_KIB2 + 2] = ext_kib.to_bytes(2, "little")
        ram[layout.CMOS_MEM_ABOVE_16M : layout.CMOS_MEM_ABOVE_16M + 2] = above_16m.to_bytes(2, "little")
        ram[layout.CMOS_MEM_ABOVE_4G : layout.CMOS_MEM_ABOVE_4G + 3] = min(above_4g, 0xFFFFFF).to_bytes(3, "little")
        self._update_checksum()

    def _update_checksum(self) -> None:
        total = sum(self._ram[layout.CMOS_FLOPPY_TYPES : layout.CMOS_CHECKSUM]) & 0xFFFF  # 0x10-0x2D
        self._ram[layout.CMOS_CHECKSUM] = total >> 8
        self._ram[layout.CMOS_CHECKSUM + 1] = total & 0xFF
