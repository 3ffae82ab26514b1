"""The Intel 8254 programmable interval timer at 0x40-0x43, and port 0x61 (system control B).

Nothing ticks in software. The 1.193182 MHz input clock is a function of the machine clock: CLK
edge k falls at ceil(k * 1e9 / PIT_HZ) ns, and every counter value and OUT level is computed
from the number of edges since the counting element (CE) was loaded. Timing follows the Intel
8254 datasheet: a count written by software is loaded into CE on the next CLK edge, which does
not decrement it (so mode 0 raises OUT N+1 edges after the write, mode 2 lowers it N edges after
it); a gate trigger likewise loads CE on the next edge.

Channel 0's OUT is IRQ 0. A TimerQueue timer runs at each rising edge of OUT0 and pulses the
line (raise, then lower) so an edge-triggered PIC sees one edge per period. If the machine fell
behind and several rising edges are already past when the timer runs, one edge is delivered and
the rest are counted in `missed_ticks`: Linux keeps time with the TSC, lost ticks lose no time.

Channel 1 (DRAM refresh on a PC) has no wire; channel 2's gate and OUT go through port 0x61.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from emu import layout
from emu.bus import Bus
from emu.timers import Timer, TimerQueue

PIT_HZ = layout.PIT_HZ
_NS = 1_000_000_000
_FOREVER = 1 << 80  # an edge index no clock reaches

# Control word (port 0x43).
CW_BCD = 0x01
CW_SC_READBACK = 3  # select-counter value of the read-back command
RB_NO_COUNT = 0x20  # read-back: bit clear = latch the count
RB_NO_STATUS = 0x10  # read-back: bit clear = latch the status
# Access modes (control word bits 5:4).
ACCESS_LATCH, ACCESS_LSB, ACCESS_MSB, ACCESS_WORD = 0, 1, 2, 3
# Status byte (read-back): OUT, null count, then the programmed control bits 5:0.
STATUS_OUT = 0x80
STATUS_NULL = 0x40

# Port 0x61.
PORTB_GATE2 = 0x01
PORTB_SPEAKER = 0x02
PORTB_WRITABLE = 0x0F  # gate 2, speaker data, SERR# and IOCHK# enables
PORTB_REFRESH = 0x10
PORTB_OUT2 = 0x20

POWER_ON_CONTROL = 0x36  # mode 3, LSB then MSB, binary: what a PC BIOS programs


def edge_index(t_ns: int) -> int:
    """The last CLK edge at or before clock time `t_ns`."""
    return t_ns * PIT_HZ // _NS


def edge_time(k: int) -> int:
    """Clock time (ns) of CLK edge `k`."""
    return -(-k * _NS // PIT_HZ)


def to_bcd(v: int) -> int:
    return int(str(v % 10000), 16)


def from_bcd(v: int) -> int:
    return (v >> 12 & 0xF) * 1000 + (v >> 8 & 0xF) * 100 + (v >> 4 & 0xF) * 10 + (v & 0xF)


@dataclass
class _Channel:
    """One counter. CE was loaded with `count` at CLK edge `anchor`; n = edges since then."""

    index: int
    gate: bool
    control: int = POWER_ON_CONTROL & 0x3F
    mode: int = 3
    access: int = ACCESS_WORD
    bcd: bool = False
    cr: int = 0  # count register as written (0 means the full modulus)
    cr_written: bool = False  # a complete count arrived since the control word
    write_lsb: int | None = None  # LSB of a two-byte count, waiting for its MSB
    read_msb: bool = False  # two-byte reads: the next byte is the MSB
    latch: int | None = None  # output latch held by a latch command
    latch_reads: int = 0
    status: int | None = None  # status latched by read-back
    anchor: int | None = None  # None: not counting (no count, or waiting for a trigger)
    count: int = 0
    pending: tuple[int, int, int] | None = None  # modes 2/3: (load edge, anchor, count) of a new count
    paused: int | None = None  # n frozen while the gate disables counting
    idle: int = 0  # what CE reads while not counting (register encoding)
    null_until: int = _FOREVER  # null count is set until this edge (CR not yet moved into CE)

    # -- state at edge k ------------------------------------------------------------------------
    @property
    def modulus(self) -> int:
        return 10000 if self.bcd else 0x10000

    def initial_count(self) -> int:
        value = from_bcd(self.cr) if self.bcd else self.cr
        return value or self.modulus

    def sync(self, k: int) -> None:
        """Move a new count waiting for the end of the period or half-cycle into CE."""
        if self.pending is not None and k >= self.pending[0]:
            _, self.anchor, self.count = self.pending
            self.pending = None

    def edges(self, k: int) -> int | None:
        if self.paused is not None:
            return self.paused
        if self.anchor is None:
            return None
        return k - self.anchor

    def out(self, k: int) -> bool:
        self.sync(k)
        n, count, mode = self.edges(k), self.count, self.mode
        if mode == 0:  # low from the control word (or a new count) until CE reaches 0
            return n is not None and n >= count
        if mode == 1:  # low from the edge after the trigger until CE reaches 0
            return n is None or n < 0 or n >= count
        if mode in (4, 5):  # low for the one clock at which CE reaches 0
            return n != count
        if not self.gate or n is None or n < 0:
            return True  # modes 2/3: GATE low forces OUT high at once
        if mode == 2:  # low for the one clock at which CE is 1
            return n % count != count - 1
        return n % count < (count + 1) // 2  # mode 3: high for (N+1)/2, low for (N-1)/2 clocks

    def ce(self, k: int) -> int:
        """The counting element as the guest reads it (BCD-encoded in BCD mode)."""
        self.sync(k)
        n = self.edges(k)
        if n is None or n < 0:
            return self.idle
        count = self.count
        if self.mode == 2:
            value = count - n % count  # N down to 1, then reload
        elif self.mode == 3:
            # Intel: even N is loaded and decremented by 2 each clock; odd N loads N-1 (even) and
            # does the same, the high half lasting one clock longer (it reads 0 for a clock).
            phase = n % count
            high = (count + 1) // 2
            half = phase if phase < high else phase - high
            value = (count & ~1) - 2 * half
        else:  # modes 0, 1, 4, 5 keep counting down past 0 (wrapping)
            value = count - n
        value %= self.modulus
        return to_bcd(value) if self.bcd else value

    def null_count(self, k: int) -> bool:
        return k < self.null_until

    # -- rising edges of OUT --------------------------------------------------------------------
    def _segment_rising(self, anchor: int, count: int, k: int) -> int | None:
        mode = self.mode
        if mode in (0, 1):
            edge = anchor + count
        elif mode in (4, 5):
            edge = anchor + count + 1  # OUT returns high the clock after CE reached 0
        else:
            if count < 2:
                return None  # count 1 is illegal in modes 2 and 3: OUT never toggles here
            j = max(1, (k - anchor) // count + 1)
            return anchor + j * count
        return edge if edge > k else None

    def next_rising(self, k: int) -> int | None:
        """The first CLK edge after `k` at which OUT goes from low to high."""
        self.sync(k)
        if self.anchor is None or self.paused is not None or (self.mode in (2, 3) and not self.gate):
            return None
        edge = self._segment_rising(self.anchor, self.count, k)
        if self.pending is not None:
            load, anchor, count = self.pending
            if edge is None or edge > load:
                edge = self._segment_rising(anchor, count, max(k, load))
        return edge

    def risings_between(self, first: int, k: int) -> int:
        """Rising edges in (first, k] (for debug accounting; periodic modes only)."""
        if self.mode in (2, 3) and self.count >= 2 and k > first:
            return (k - first) // self.count
        return 0

    # -- guest accesses -------------------------------------------------------------------------
    def program(self, control: int, k: int) -> None:
        """A control word: 'all control logic is reset' and OUT takes the mode's initial state."""
        self.idle = self.ce(k)
        self.control = control & 0x3F
        self.access = control >> 4 & 3
        mode = control >> 1 & 7
        self.mode = mode - 4 if mode > 5 else mode  # 110 and 111 are modes 2 and 3
        self.bcd = bool(control & CW_BCD)
        self.cr_written = False
        self.write_lsb = None
        self.read_msb = False
        self.latch = None
        self.status = None
        self.anchor = None
        self.pending = None
        self.paused = None
        self.null_until = _FOREVER

    def latch_count(self, k: int) -> None:
        # A second latch before the first is read is ignored.
        if self.latch is None:
            self.latch = self.ce(k)
            self.latch_reads = 2 if self.access == ACCESS_WORD else 1

    def latch_status(self, k: int) -> None:
        if self.status is None:
            out = STATUS_OUT if self.out(k) else 0
            null = STATUS_NULL if self.null_count(k) else 0
            self.status = out | null | self.control

    def read(self, k: int) -> int:
        if self.status is not None:  # status first when both were latched
            value, self.status = self.status, None
            return value
        if self.latch is not None:
            value = self.latch
            self.latch_reads -= 1
            if self.latch_reads == 0:
                self.latch = None
        else:
            value = self.ce(k)
        if self.access == ACCESS_LSB:
            return value & 0xFF
        if self.access == ACCESS_MSB:
            return value >> 8
        byte = value >> 8 if self.read_msb else value & 0xFF
        self.read_msb = not self.read_msb
        return byte

    def write(self, value: int, k: int) -> None:
        if self.access == ACCESS_LSB:
            self.cr = value
        elif self.access == ACCESS_MSB:
            self.cr = value << 8
        elif self.write_lsb is None:
            self.write_lsb = value
            if self.mode == 0:
                # Mode 0: "writing the first byte disables counting; OUT is set low immediately".
                self.idle = self.ce(k)
                self.anchor = None
                self.pending = None
                self.paused = None
            return
        else:
            self.cr = self.write_lsb | value << 8
            self.write_lsb = None
        self.load(k)

    def load(self, k: int) -> None:
        """A complete count is in CR: when it goes into CE depends on the mode."""
        self.sync(k)
        self.cr_written = True
        count = self.initial_count()
        mode = self.mode
        if mode in (0, 4):
            # Loaded on the next clock (a count written during counting restarts it); counting
            # waits while GATE is low.
            self.anchor, self.count, self.pending = k + 1, count, None
            self.paused = None if self.gate else 0
            self.null_until = k + 1
        elif mode in (1, 5) or not self.gate:
            self.null_until = _FOREVER  # loaded by the next gate trigger
        elif self.anchor is None or k < self.anchor:
            self.anchor, self.count, self.pending = k + 1, count, None  # first count: load and go
            self.null_until = k + 1
        else:
            # Modes 2/3 while counting: the current period (mode 2) or half-cycle (mode 3) ends
            # first, then the new count is loaded.
            n = k - self.anchor
            period = self.count
            start = self.anchor + n // period * period
            if mode == 2:
                load, anchor = start + period, start + period
            elif n % period < (period + 1) // 2:
                load = start + (period + 1) // 2  # end of a high half: the new count starts low
                anchor = load - (count + 1) // 2
            else:
                load = anchor = start + period
            self.pending = (load, anchor, count)
            self.null_until = load

    def set_gate(self, level: bool, k: int) -> None:
        if level == self.gate:
            return
        self.sync(k)
        mode = self.mode
        if not level:
            if mode in (0, 2, 3, 4) and self.anchor is not None and self.paused is None:
                self.paused = max(k - self.anchor, 0)  # counting stops (modes 2/3: OUT high too)
                self.pending = None  # modes 2/3: the rising gate reloads CR anyway
        elif mode in (0, 4):
            if self.anchor is not None and self.paused is not None:
                self.anchor = k - self.paused  # counting resumes where it stopped
                self.paused = None
        elif self.cr_written:
            # Modes 1, 2, 3, 5: a rising GATE is a trigger; CE is reloaded on the next clock.
            self.anchor, self.count = k + 1, self.initial_count()
            self.pending = None
            self.paused = None
            self.null_until = k + 1
        self.gate = level

    def describe(self, k: int) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "access": self.access,
            "bcd": self.bcd,
            "count_register": self.cr,
            "count": self.count if self.anchor is not None else None,
            "value": self.ce(k),
            "out": self.out(k),
            "gate": self.gate,
            "null_count": self.null_count(k),
        }


class Pit:
    """8254 PIT at 0x40-0x43 (with port 0x61 as `port_b`, registered and reset along with it).

    Runs on the vCPU thread only: port accesses and TimerQueue callbacks.
    """

    def __init__(self, timers: TimerQueue, irq0: Callable[[bool], None]) -> None:
        self._timers = timers
        self._irq0 = irq0
        self._channels: list[_Channel] = []
        self._timer: Timer | None = None
        self._timer_edge = 0
        #: Rising edges of OUT0 delivered to IRQ 0, and those skipped because the machine was late.
        self.ticks = 0
        self.missed_ticks = 0
        self.port_b = SystemControlB(self)
        self._power_on()

    def _power_on(self) -> None:
        # The datasheet leaves mode, count and OUT undefined at power-on. emu starts each channel
        # as if mode 3 had been programmed without a count: OUT high, nothing counting, no IRQ 0
        # until software loads a count. Gates: channels 0/1 tied high, channel 2 from port 0x61.
        self._channels = [_Channel(0, gate=True), _Channel(1, gate=True), _Channel(2, gate=False)]
        self._cancel()

    # -- wiring ---------------------------------------------------------------------------------
    def register(self, bus: Bus) -> None:
        bus.register_pio(layout.PORT_PIT, 4, self, "8254 PIT")
        self.port_b.register(bus)

    def reset(self) -> None:
        self._power_on()
        self.port_b.reset()

    # -- machine side ---------------------------------------------------------------------------
    def _now(self) -> int:
        return edge_index(self._timers.clock.now_ns())

    def out(self, channel: int) -> bool:
        return self._channels[channel].out(self._now())

    def value(self, channel: int) -> int:
        """The channel's counting element now, as an unlatched read would see it."""
        return self._channels[channel].ce(self._now())

    def set_gate(self, channel: int, level: bool) -> None:
        k = self._now()
        ch = self._channels[channel]
        was_high = ch.out(k)
        ch.set_gate(level, k)
        if channel == 0:
            self._out0_changed(k, was_high)

    def describe(self) -> dict[str, Any]:
        k = self._now()
        return {
            "channels": [ch.describe(k) for ch in self._channels],
            "ticks": self.ticks,
            "missed_ticks": self.missed_ticks,
        }

    # -- guest side -----------------------------------------------------------------------------
    def io_read(self, offset: int, size: int) -> int:
        if offset == 3:
            return 0xFF  # the control word register cannot be read: the 8254 leaves D7-D0 floating
        return self._channels[offset].read(self._now())

    def io_write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF  # byte-wide: a wider write reaches the addressed register with its low byte
        k = self._now()
        if offset < 3:
            ch = self._channels[offset]
            was_high = ch.out(k)
            ch.write(value, k)
            if offset == 0:
                self._out0_changed(k, was_high)
            return
        select = value >> 6
        if select == CW_SC_READBACK:
            for i, ch in enumerate(self._channels):
                if value & (2 << i):
                    if not value & RB_NO_STATUS:
                        ch.latch_status(k)
                    if not value & RB_NO_COUNT:
                        ch.latch_count(k)
            return
        ch = self._channels[select]
        if value >> 4 & 3 == ACCESS_LATCH:
            ch.latch_count(k)
            return
        was_high = ch.out(k)
        ch.program(value, k)
        if select == 0:
            self._out0_changed(k, was_high)

    # -- IRQ 0 ----------------------------------------------------------------------------------
    def _out0_changed(self, k: int, was_high: bool) -> None:
        """Channel 0 was reprogrammed: a write that raised OUT0 by itself (a control word ending
        a mode 0 count, for one) is an edge on IRQ 0 too; then follow the new timeline."""
        if not was_high and self._channels[0].out(k):
            self._pulse()
        self._schedule(k)

    def _pulse(self) -> None:
        self.ticks += 1
        self._irq0(True)
        self._irq0(False)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self, k: int) -> None:
        self._cancel()
        edge = self._channels[0].next_rising(k)
        if edge is not None:
            self._timer_edge = edge
            self._timer = self._timers.add(edge_time(edge), self._on_timer)

    def _on_timer(self, now_ns: int) -> None:
        self._timer = None
        k = edge_index(now_ns)
        self.missed_ticks += self._channels[0].risings_between(self._timer_edge, k)
        self._pulse()
        self._schedule(k)


class SystemControlB:
    """Port 0x61 ("NMI status and control" on PIIX/ICH): bit 0 gates PIT channel 2, bit 1
    enables the speaker, bits 2/3 enable SERR#/IOCHK# NMIs (stored only); reads add bit 4, the
    refresh toggle, and bit 5, channel 2's OUT at this instant (what Linux's PIT calibration of
    the TSC polls). Bits 6/7 (NMI sources) read 0: nothing raises them.

    A chipset flips bit 4 every 15 us (channel 1's refresh requests). emu flips it on every read
    instead: BIOS delay loops and probes that wait for it to change make progress at once, in
    any clock.
    """

    def __init__(self, pit: Pit) -> None:
        self._pit = pit
        self._value = 0
        self._refresh = False

    def register(self, bus: Bus) -> None:
        bus.register_pio(layout.PORT_SYSCTL_B, 1, self, "system control port B")

    def reset(self) -> None:
        self._value = 0
        self._refresh = False
        self._pit.set_gate(2, False)

    @property
    def speaker(self) -> bool:
        """The speaker sounds when both channel 2's gate and the speaker data bit are on."""
        return self._value & (PORTB_GATE2 | PORTB_SPEAKER) == PORTB_GATE2 | PORTB_SPEAKER

    def io_read(self, offset: int, size: int) -> int:
        self._refresh = not self._refresh
        value = self._value
        if self._refresh:
            value |= PORTB_REFRESH
        if self._pit.out(2):
            value |= PORTB_OUT2
        return value

    def io_write(self, offset: int, size: int, value: int) -> None:
        self._value = value & PORTB_WRITABLE
        self._pit.set_gate(2, bool(value & PORTB_GATE2))
