"""int 1Ah: the BIOS tick count and the real-time clock, read from the CMOS through its ports.

The RTC is read through ports 70h/71h like a guest would, so whatever CMOS device the machine
has answers; without one (ports read all-ones) the host's local time is reported instead.
"""

from __future__ import annotations

import time

from emu import layout
from emu.bus import Bus
from emu.devices.cmos import (
    B_24H,
    B_DM_BINARY,
    B_DSE,
    REG_A,
    REG_B,
    REG_CENTURY,
    REG_DAY,
    REG_HOURS,
    REG_MINUTES,
    REG_MONTH,
    REG_SECONDS,
    REG_YEAR,
)
from emu.firmware.bios import bda
from emu.firmware.bios.regs import UNSUPPORTED, Regs
from emu.memory import GuestMemory

TICKS_PER_DAY = 0x1800B0


def bcd(v: int) -> int:
    return ((v // 10) << 4) | (v % 10)


def from_bcd(v: int) -> int:
    return (v >> 4) * 10 + (v & 0x0F)


def ticks_since_midnight(now: float | None = None) -> int:
    t = time.localtime(now)
    seconds = t.tm_hour * 3600 + t.tm_min * 60 + t.tm_sec
    return seconds * TICKS_PER_DAY // 86400


class Clock:
    def __init__(self, mem: GuestMemory, bus: Bus) -> None:
        self.mem = mem
        self.bus = bus

    def post(self) -> None:
        self.mem.write_u32(bda.TICKS, ticks_since_midnight())
        self.mem.write_u8(bda.MIDNIGHT, 0)

    def _cmos(self, reg: int) -> int:
        self.bus.pio_write(layout.PORT_CMOS_INDEX, 1, reg)
        return self.bus.pio_read(layout.PORT_CMOS_DATA, 1)

    def _cmos_write(self, reg: int, value: int) -> None:
        self.bus.pio_write(layout.PORT_CMOS_INDEX, 1, reg)
        self.bus.pio_write(layout.PORT_CMOS_DATA, 1, value)

    def _rtc(self, regs: tuple[int, ...]) -> tuple[list[int], int] | None:
        """BCD values of the CMOS registers and register B, or None without a CMOS."""
        if self._cmos(REG_A) == 0xFF and self._cmos(REG_B) == 0xFF:
            return None
        b = self._cmos(REG_B)
        values = [self._cmos(reg) for reg in regs]
        if b & B_DM_BINARY:
            values = [bcd(v & 0x7F) | (v & 0x80) for v in values]
        return values, b

    def service(self, r: Regs) -> None:
        ah = r.ah
        if ah == 0x00:
            ticks = self.mem.read_u32(bda.TICKS)
            r.cx, r.dx = ticks >> 16, ticks & 0xFFFF
            r.al = self.mem.read_u8(bda.MIDNIGHT)
            self.mem.write_u8(bda.MIDNIGHT, 0)
            r.cf = False
        elif ah == 0x01:
            self.mem.write_u32(bda.TICKS, ((r.cx << 16) | r.dx) % TICKS_PER_DAY)
            self.mem.write_u8(bda.MIDNIGHT, 0)
            r.ok()
        elif ah == 0x02:
            self._time(r)
        elif ah == 0x04:
            self._date(r)
        elif ah == 0x03:
            self._set(r, ((REG_HOURS, r.ch), (REG_MINUTES, r.cl), (REG_SECONDS, r.dh)))
        elif ah == 0x05:
            self._set(r, ((REG_CENTURY, r.ch), (REG_YEAR, r.cl), (REG_MONTH, r.dh), (REG_DAY, r.dl)))
        else:  # AH=B1h (the PCI BIOS) never gets here: see pci.py
            r.fail(UNSUPPORTED)

    def _time(self, r: Regs) -> None:
        rtc = self._rtc((REG_HOURS, REG_MINUTES, REG_SECONDS))
        if rtc is None:
            t = time.localtime()
            hours, minutes, seconds, dst = bcd(t.tm_hour), bcd(t.tm_min), bcd(t.tm_sec), max(t.tm_isdst, 0)
        else:
            (hours, minutes, seconds), b = rtc
            if not b & B_24H:  # 12-hour clock: bit 7 of the hour is PM
                h = from_bcd(hours & 0x7F) % 12 + (12 if hours & 0x80 else 0)
                hours = bcd(h)
            dst = b & B_DSE
        r.ch, r.cl, r.dh, r.dl = hours, minutes, seconds, dst
        r.ok()

    def _date(self, r: Regs) -> None:
        rtc = self._rtc((REG_CENTURY, REG_YEAR, REG_MONTH, REG_DAY))
        if rtc is None:
            t = time.localtime()
            century, year, month, day = bcd(t.tm_year // 100), bcd(t.tm_year % 100), bcd(t.tm_mon), bcd(t.tm_mday)
        else:
            century, year, month, day = rtc[0]
        r.ch, r.cl, r.dh, r.dl = century, year, month, day
        r.ok()

    def _set(self, r: Regs, values: tuple[tuple[int, int], ...]) -> None:
        b = self._cmos(REG_B)
        if b == 0xFF:
            r.fail(UNSUPPORTED)  # no RTC to set
            return
        for reg, value in values:
            self._cmos_write(reg, from_bcd(value) if b & B_DM_BINARY else value)
        r.ok()
