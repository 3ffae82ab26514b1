"""ACPI fixed-hardware registers a full (not hardware-reduced) FADT must point at: the PM1a event
block (PM1_STS, PM1_EN), the PM1a control block (PM1_CNT) and the 24-bit PM timer (ACPI 6.5
section 4.8). emu/firmware/tables/acpi.py describes them; only `--acpi on` creates them.

No event ever fires: there is no power or sleep button and the timer-overflow event is not
wired, so the SCI line stays low. SCI_EN reads as set (the platform is in ACPI mode from the
start). The DSDT declares one sleep state, S5: SLP_EN with its SLP_TYP powers the machine off;
any other sleep request is logged and ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from emu import layout
from emu.bus import Bus
from emu.timers import Clock

log = logging.getLogger("emu.acpi")

PM_TIMER_HZ = 3_579_545
PM_TIMER_MASK = 0xFF_FFFF  # 24 bits (the FADT leaves TMR_VAL_EXT clear)
SCI_EN = 1 << 0
SLP_EN = 1 << 13
PM1_CNT_WRITABLE = 0x1C06  # BM_RLD, GBL_RLS, SLP_TYP (SLP_EN is write-only, SCI_EN fixed)
PM1_STS_WRITABLE = 0x8D31  # the status bits ACPI defines; all write-1-to-clear
PM1_EN_WRITABLE = 0x0721  # TMR_EN, GBL_EN, PWRBTN_EN, SLPBTN_EN, RTC_EN


class AcpiPm:
    """The PM1a event and control blocks and the PM timer in one I/O range at `base`."""

    def __init__(self, base: int, clock: Clock, on_power_off: Callable[[], None]) -> None:
        """`on_power_off`: the guest entered S5 (SLP_EN with the DSDT's \\_S5 SLP_TYP)."""
        self.base = base
        self._clock = clock
        self._on_power_off = on_power_off
        self.reset()

    def register(self, bus: Bus) -> None:
        bus.register_pio(self.base, layout.ACPI_PM_BLOCK_SIZE, self, "acpi-pm")

    def reset(self) -> None:
        self.pm1_sts = 0
        self.pm1_en = 0
        self.pm1_cnt = SCI_EN
        self._epoch_ns = self._clock.now_ns()

    def timer(self) -> int:
        ticks = (self._clock.now_ns() - self._epoch_ns) * PM_TIMER_HZ // 1_000_000_000
        return ticks & PM_TIMER_MASK

    def _registers(self) -> bytes:
        """The 12-byte block as the guest sees it (little-endian, any width reads a slice)."""
        evt = self.pm1_sts.to_bytes(2, "little") + self.pm1_en.to_bytes(2, "little")
        cnt = self.pm1_cnt.to_bytes(2, "little") + bytes(2)
        return evt + cnt + self.timer().to_bytes(4, "little")

    def io_read(self, offset: int, size: int) -> int:
        data = self._registers()[offset : offset + size]
        return int.from_bytes(data.ljust(size, b"\xff"), "little")

    def io_write(self, offset: int, size: int, value: int) -> None:
        # Split the write into the 16-bit registers it covers (a dword write to PM1_EVT sets both).
        for reg in range(offset & ~1, offset + size, 2):
            lo = max(reg, offset)
            hi = min(reg + 2, offset + size)
            part = (value >> (8 * (lo - offset))) & ((1 << (8 * (hi - lo))) - 1)
            mask = ((1 << (8 * (hi - lo))) - 1) << (8 * (lo - reg))
            self._write16(reg, part << (8 * (lo - reg)), mask)

    def _write16(self, reg: int, value: int, mask: int) -> None:
        if reg == layout.ACPI_PM1_EVT_OFF:
            self.pm1_sts &= ~(value & PM1_STS_WRITABLE)
        elif reg == layout.ACPI_PM1_EVT_OFF + 2:
            self.pm1_en = (self.pm1_en & ~mask) | (value & mask & PM1_EN_WRITABLE)
        elif reg == layout.ACPI_PM1_CNT_OFF:
            self.pm1_cnt = (self.pm1_cnt & ~(mask & PM1_CNT_WRITABLE)) | (value & mask & PM1_CNT_WRITABLE) | SCI_EN
            slp_typ = (value >> 10) & 7
            if value & mask & SLP_EN and slp_typ == layout.ACPI_SLP_TYP_S5:
                self._on_power_off()
            elif value & mask & SLP_EN:
                log.info("acpi: sleep request SLP_TYP=%d ignored (only S5 is declared)", slp_typ)
        elif reg >= layout.ACPI_PM_TMR_OFF:
            pass  # the timer is read-only
