"""The High Precision Event Timer at layout.HPET_BASE (IA-PC HPET specification 1.0a): a 64-bit
main counter at 10 MHz and three comparators, timer 0 periodic-capable, with legacy replacement
routing. FSB (MSI) delivery is not offered.

Nothing ticks in software. The main counter is a function of the machine clock: counter tick k
falls at ceil(k * 1e9 / COUNTER_HZ) ns (100 ns exactly at 10 MHz), and while the counter runs
its value is (k + offset) mod 2^64; halted, it holds `frozen`. A comparator's next match is the
first tick after now at which the counter equals it (modulo 2^32 for a timer in 32-bit mode), and
only that tick goes into the TimerQueue. A periodic timer adds its period to the comparator at
every match, so its matches fall on exact multiples of the period from the value set with
Tn_VAL_SET_CNF and nothing drifts. Had the machine fallen behind by several periods, one interrupt
is delivered and the rest are counted in `missed` (as the PIT does).

Whenever the guest touches a register, due matches are handled first, so a read or write never
sees a state that skipped an interrupt the timer queue has not run yet.

Interrupts (spec 2.3.9.2): an edge-triggered timer pulses its line (raise, lower); a
level-triggered timer sets its bit in the general interrupt status register and holds its line
while that bit is set, until software writes 1 to it. The status bit is set even with
Tn_INT_ENB_CNF clear ("the timer will still operate and generate appropriate status bits"), and
ENABLE_CNF = 0 lowers every line ("halt main count and disable all timer interrupts").

Routing: Tn_INT_ROUTE_CNF picks an IOAPIC pin among layout.HPET_IRQ_PINS (Tn_INT_ROUTE_CAP); a
value outside them is not taken ("the value read back will not match what is written"). The
device drives GSI n through `irq_line(n)`, the machine's line factory. Legacy replacement
(LEG_RT_CNF) sends timer 0 to ISA IRQ 0 and timer 1 to ISA IRQ 8, which in the spec's words is
"IRQ0 in non-APIC or IRQ2 in the I/O APIC": which IOAPIC pin ISA IRQ 0 reaches is the machine's
wiring (layout.IOAPIC_IRQ0_PIN, the tables' override), so the HPET drives the machine's ISA lines
`legacy_gsis` (default IRQ_PIT and IRQ_RTC) and the interrupt controllers route them. The spec
also disconnects the PIT and RTC interrupts in that mode; the HPET cannot reach them, so it tells
the machine through `on_legacy(enabled)` (under KVM: the in-kernel PIT's HPET_LEGACY flag).
Several level timers on one line are wired-OR.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from emu import layout
from emu.bus import Bus
from emu.platform import IrqLine
from emu.timers import Timer, TimerQueue

COUNTER_HZ = 10_000_000  # as QEMU's: the spec's slowest allowed clock is 10 MHz (100 ns)
_NS = 1_000_000_000
_FS = 1_000_000_000_000_000
ONES32 = (1 << 32) - 1
ONES64 = (1 << 64) - 1
# Matches further away than this (a 64-bit comparator centuries ahead) are not put in the
# TimerQueue: the timer thread's wait cannot take such a timeout.
_HORIZON_NS = 1 << 62

# General capabilities and ID (offset 0x000).
REV_ID = 1
NUM_TIMERS = 3
VENDOR_ID = 0x8086
CLK_PERIOD_FS = _FS // COUNTER_HZ
CAP_COUNT_SIZE = 1 << 13  # the main counter is 64 bits wide
CAP_LEG_RT = 1 << 15
CAPABILITIES = CLK_PERIOD_FS << 32 | VENDOR_ID << 16 | CAP_LEG_RT | CAP_COUNT_SIZE | (NUM_TIMERS - 1) << 8 | REV_ID
#: The ACPI HPET table's "event timer block ID": the capabilities register's low 32 bits.
BLOCK_ID = CAPABILITIES & ONES32
#: The ACPI HPET table's minimum periodic tick: 1000 ticks (100 us). Deadlines run between guest
#: runs, and a shorter period would cost more host time in interrupts than the guest gets to run.
MIN_TICK = 1000

# Register offsets.
REG_CAPABILITIES = 0x000
REG_CONFIG = 0x010
REG_STATUS = 0x020
REG_COUNTER = 0x0F0
TIMER_BASE = 0x100
TIMER_STRIDE = 0x20
TN_CONFIG, TN_COMPARATOR, TN_FSB_ROUTE = 0x00, 0x08, 0x10

# General configuration.
ENABLE_CNF = 1 << 0
LEG_RT_CNF = 1 << 1

# Timer N configuration and capabilities.
TN_INT_TYPE_LEVEL = 1 << 1
TN_INT_ENB = 1 << 2
TN_TYPE_PERIODIC = 1 << 3
TN_PER_INT_CAP = 1 << 4
TN_SIZE_CAP = 1 << 5  # a 64-bit comparator
TN_VAL_SET = 1 << 6
TN_32MODE = 1 << 8
TN_ROUTE_SHIFT = 9
TN_ROUTE_MASK = 0x1F << TN_ROUTE_SHIFT
TN_WRITABLE = TN_INT_TYPE_LEVEL | TN_INT_ENB | TN_TYPE_PERIODIC | TN_VAL_SET | TN_32MODE | TN_ROUTE_MASK


def tick_index(t_ns: int) -> int:
    """The last counter tick at or before clock time `t_ns`."""
    return t_ns * COUNTER_HZ // _NS


def tick_time(k: int) -> int:
    """Clock time (ns) of counter tick `k`."""
    return -(-k * _NS // COUNTER_HZ)


@dataclass
class _Timer:
    """One comparator. `next_tick` is the absolute tick of its next match while the counter runs."""

    index: int
    route_cap: int  # bit n: IOAPIC pin n may be chosen
    periodic_cap: bool
    config: int = 0  # the writable bits
    comparator: int = ONES64  # the spec's reset value: all ones
    period: int = 0  # "the value last written", added at each periodic match
    next_tick: int | None = None
    handle: Timer | None = field(default=None, repr=False)
    fired: int = 0
    missed: int = 0

    @property
    def width(self) -> int:
        return ONES32 if self.config & TN_32MODE else ONES64

    @property
    def level(self) -> bool:
        return bool(self.config & TN_INT_TYPE_LEVEL)

    @property
    def int_enabled(self) -> bool:
        return bool(self.config & TN_INT_ENB)

    @property
    def periodic(self) -> bool:
        return bool(self.config & TN_TYPE_PERIODIC)

    @property
    def route(self) -> int:
        return self.config >> TN_ROUTE_SHIFT & 0x1F

    def read_config(self) -> int:
        caps = TN_SIZE_CAP | (TN_PER_INT_CAP if self.periodic_cap else 0)
        return self.route_cap << 32 | caps | self.config

    def write_config(self, value: int) -> None:
        new = value & TN_WRITABLE
        if not self.periodic_cap:
            new &= ~TN_TYPE_PERIODIC
        if not self.route_cap >> (new >> TN_ROUTE_SHIFT & 0x1F) & 1:
            new = new & ~TN_ROUTE_MASK | self.config & TN_ROUTE_MASK  # not a pin it can reach
        self.config = new
        self.comparator &= self.width
        self.period &= self.width

    def write_comparator(self, value: int, mask: int) -> None:
        """A write to (part of) the comparator. It always sets the period ("the value last
        written"); it sets the comparator too unless the timer is periodic without VAL_SET. So one
        write with VAL_SET sets both, as most chipsets do, and Linux's second write (the period
        alone, for chips that need two) changes only the period."""
        width = self.width
        self.period = (self.period & ~mask | value) & width
        if not self.periodic or self.config & TN_VAL_SET:
            self.comparator = (self.comparator & ~mask | value) & width
            # VAL_SET clears itself once the comparator's top dword is written (a 32-bit guest
            # sets a 64-bit comparator low dword first).
            if mask & width & ~(width >> 32):
                self.config &= ~TN_VAL_SET

    def rearm(self, tick: int, counter: int | None) -> None:
        """The next match after `tick`, the counter being `counter` there (None: halted)."""
        if counter is None:
            self.next_tick = None
        else:
            self.next_tick = tick + ((self.comparator - counter - 1) & self.width) + 1

    def catch_up(self, tick: int) -> int:
        """Matches at or before `tick` not yet handled: move past them and return how many."""
        if self.next_tick is None or self.next_tick > tick:
            return 0
        late = tick - self.next_tick
        if self.periodic and self.period:
            n = late // self.period + 1
            self.comparator = (self.comparator + n * self.period) & self.width
            self.next_tick += n * self.period
        else:
            n = late // (self.width + 1) + 1  # the counter wraps round to the same value
            self.next_tick += n * (self.width + 1)
        return n

    def describe(self, gsi: int | None) -> dict[str, Any]:
        return {
            "type": "periodic" if self.periodic else "one-shot",
            "trigger": "level" if self.level else "edge",
            "int_enabled": self.int_enabled,
            "mode32": bool(self.config & TN_32MODE),
            "route": self.route,
            "gsi": gsi,
            "comparator": self.comparator,
            "period": self.period,
            "next_deadline_ns": tick_time(self.next_tick) if self.next_tick is not None else None,
            "fired": self.fired,
            "missed": self.missed,
        }


class Hpet:
    """One HPET event timer block (3 timers) on the TimerQueue's clock.

    `irq_line(gsi)` gives the line of GSI `gsi` (IOAPIC pin, or ISA IRQ below 16); `legacy_gsis`
    are the ISA IRQ 0 and IRQ 8 lines used in legacy replacement mode; `on_legacy(enabled)` is
    called when LEG_RT_CNF changes, outside the HPET's lock. Thread-safe (MMIO may come from any
    vCPU thread, timers run on the one that runs the queue).
    """

    def __init__(
        self,
        timers: TimerQueue,
        irq_line: Callable[[int], IrqLine],
        *,
        legacy_gsis: tuple[int, int] = (layout.IRQ_PIT, layout.IRQ_RTC),
        on_legacy: Callable[[bool], None] | None = None,
    ) -> None:
        self._queue = timers
        self._irq_line = irq_line
        self._legacy_gsis = legacy_gsis
        self._on_legacy = on_legacy
        self._lock = threading.Lock()
        self._lines: dict[int, IrqLine] = {}
        self._held: dict[int, bool] = {}  # GSI -> the level this device drives it to
        route_cap = sum(1 << pin for pin in layout.HPET_IRQ_PINS)
        self._timers = [_Timer(i, route_cap, periodic_cap=i == 0) for i in range(NUM_TIMERS)]
        self._config = 0
        self._status = 0
        self._frozen = 0  # the counter while halted
        self._offset = 0  # while running: counter = tick + offset (mod 2^64)

    # -- wiring ---------------------------------------------------------------------------------
    def register(self, bus: Bus) -> None:
        bus.register_mmio(layout.HPET_BASE, layout.HPET_SIZE, self, "HPET")

    def reset(self) -> None:
        with self._lock:
            was_legacy = self._legacy
            self._config = self._status = self._frozen = self._offset = 0
            for t in self._timers:
                self._cancel(t)
                t.config, t.comparator, t.period, t.next_tick, t.fired, t.missed = 0, ONES64, 0, None, 0, 0
            self._update_lines()
        if was_legacy and self._on_legacy is not None:
            self._on_legacy(False)

    # -- state ----------------------------------------------------------------------------------
    @property
    def _running(self) -> bool:
        return bool(self._config & ENABLE_CNF)

    @property
    def _legacy(self) -> bool:
        return bool(self._config & LEG_RT_CNF)

    def _now(self) -> int:
        return tick_index(self._queue.clock.now_ns())

    def _counter(self, tick: int) -> int:
        return (tick + self._offset) & ONES64 if self._running else self._frozen

    def counter(self) -> int:
        """The main counter now (for the machine and tests)."""
        with self._lock:
            return self._counter(self._now())

    def _gsi(self, t: _Timer) -> int | None:
        if self._legacy and t.index < 2:
            return self._legacy_gsis[t.index]
        return t.route if t.route_cap >> t.route & 1 else None

    # -- matches and interrupts -----------------------------------------------------------------
    def _expire(self, tick: int) -> None:
        """Handle every match at or before `tick`."""
        for t in self._timers:
            n = t.catch_up(tick)
            if n:
                t.fired += 1
                t.missed += n - 1
                self._fire(t)

    def _fire(self, t: _Timer) -> None:
        if t.level:
            self._status |= 1 << t.index  # the line follows in _update_lines
            return
        gsi = self._gsi(t)
        if t.int_enabled and gsi is not None and not self._held.get(gsi):
            line = self._line(gsi)
            line(True)
            line(False)

    def _line(self, gsi: int) -> IrqLine:
        line = self._lines.get(gsi)
        if line is None:
            line = self._lines[gsi] = self._irq_line(gsi)
        return line

    def _update_lines(self) -> None:
        """Drive each line to the OR of the level timers holding it."""
        want: dict[int, bool] = dict.fromkeys(self._held, False)
        if self._running:
            for t in self._timers:
                gsi = self._gsi(t)
                if t.level and t.int_enabled and self._status >> t.index & 1 and gsi is not None:
                    want[gsi] = True
        for gsi, level in want.items():
            if self._held.get(gsi, False) != level:
                self._held[gsi] = level
                self._line(gsi)(level)

    def _cancel(self, t: _Timer) -> None:
        if t.handle is not None:
            t.handle.cancel()
            t.handle = None

    def _schedule(self) -> None:
        """One TimerQueue deadline per timer whose next match does something observable."""
        now_ns = self._queue.clock.now_ns()
        for t in self._timers:
            deadline = None
            if t.next_tick is not None and (t.int_enabled or t.level):
                deadline = tick_time(t.next_tick)
                if deadline - now_ns > _HORIZON_NS:
                    deadline = None
            if t.handle is not None and t.handle.deadline_ns == deadline and not t.handle.cancelled:
                continue
            self._cancel(t)
            if deadline is not None:
                t.handle = self._queue.add(deadline, partial(self._on_timer, t))

    def _on_timer(self, t: _Timer, now_ns: int) -> None:
        with self._lock:
            t.handle = None  # a rescheduled timer's old deadline was cancelled and never runs
            self._expire(tick_index(now_ns))
            self._update_lines()
            self._schedule()

    def _rearm_all(self, tick: int) -> None:
        counter = self._counter(tick) if self._running else None
        for t in self._timers:
            t.rearm(tick, counter)

    # -- guest side -----------------------------------------------------------------------------
    def mmio_read(self, offset: int, size: int) -> int:
        with self._lock:
            tick = self._now()
            self._expire(tick)
            self._update_lines()
            value = self._read(offset & ~7, tick)
        return value >> 8 * (offset & 7)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        shift = 8 * (offset & 7)
        mask = ((1 << 8 * size) - 1) << shift & ONES64
        with self._lock:
            tick = self._now()
            self._expire(tick)
            was_legacy = self._legacy
            self._write(offset & ~7, value << shift & mask, mask, tick)
            self._update_lines()
            self._schedule()
            legacy = self._legacy
        if legacy != was_legacy and self._on_legacy is not None:
            self._on_legacy(legacy)

    def _timer_at(self, reg: int) -> tuple[_Timer, int] | None:
        index, sub = divmod(reg - TIMER_BASE, TIMER_STRIDE)
        if reg < TIMER_BASE or index >= NUM_TIMERS:
            return None
        return self._timers[index], sub

    def _read(self, reg: int, tick: int) -> int:
        if reg == REG_CAPABILITIES:
            return CAPABILITIES
        if reg == REG_CONFIG:
            return self._config
        if reg == REG_STATUS:
            return self._status
        if reg == REG_COUNTER:
            return self._counter(tick)
        found = self._timer_at(reg)
        if found is None:
            return 0
        t, sub = found
        if sub == TN_CONFIG:
            return t.read_config()
        if sub == TN_COMPARATOR:
            return t.comparator
        return 0  # FSB interrupt route: no FSB delivery

    def _write(self, reg: int, value: int, mask: int, tick: int) -> None:
        if reg == REG_CONFIG:
            self._write_config((self._config & ~mask | value) & (ENABLE_CNF | LEG_RT_CNF), tick)
        elif reg == REG_STATUS:
            self._status &= ~value  # write 1 to clear
        elif reg == REG_COUNTER:
            # The spec leaves a write while the counter runs undefined; emu takes it.
            new = self._counter(tick) & ~mask | value
            if self._running:
                self._offset = new - tick
            else:
                self._frozen = new
            self._rearm_all(tick)
        elif (found := self._timer_at(reg)) is not None:
            t, sub = found
            if sub == TN_CONFIG:
                t.write_config(t.config & ~mask | value)
            elif sub == TN_COMPARATOR:
                t.write_comparator(value, mask)
            else:
                return
            counter = self._counter(tick) if self._running else None
            t.rearm(tick, counter)

    def _write_config(self, new: int, tick: int) -> None:
        started = new & ENABLE_CNF and not self._running
        stopped = self._running and not new & ENABLE_CNF
        if stopped:
            self._frozen = self._counter(tick)
        self._config = new
        if started:
            self._offset = self._frozen - tick
        if started or stopped:
            self._rearm_all(tick)

    # -- debugger -------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        with self._lock:
            tick = self._now()
            return {
                "enabled": self._running,
                "legacy_replacement": self._legacy,
                "counter": self._counter(tick),
                "status": self._status,
                "timers": [t.describe(self._gsi(t)) for t in self._timers],
            }
