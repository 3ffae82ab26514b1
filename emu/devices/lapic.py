"""The local APIC emu emulates for each vCPU (under Unicorn), and the APIC bus between them.

A pure device model (SDM vol. 3A chapter 10): the machine connects it to its CPU through
`CpuSignals` (emu/platform.py: the INTR level, NMI, INIT, STARTUP), gives it the xAPIC MMIO page (`mmio_read`,
`mmio_write`, moved when `on_base_change` says so), routes MSR 0x1B, 0x6E0 and 0x800-0x8FF to
`read_msr`/`write_msr`, and runs the INTA cycle with `acknowledge()` when the CPU takes an
interrupt.

What this APIC is: an integrated xAPIC (version 0x14) with x2APIC mode (when the CPU model has
it), six LVT entries (timer, thermal, performance counter, LINT0, LINT1, error: max LVT entry 5,
no CMCI; the thermal and performance entries hold what software writes but never fire), no
EOI-broadcast suppression, no remote read. The ESR reports only what a Pentium 4 or later can:
send and receive illegal vector, illegal register address.

Choices where the SDM leaves room (each is marked where it is made):
- IPIs are sent at once: the ICR's delivery-status bit always reads idle, as does every LVT's.
  IPIs are edge-triggered; the ICR's level and trigger bits only mark the INIT level de-assert
  (level 0, level-triggered), which does nothing. A fixed or lowest-priority IPI (or SELF IPI)
  with a vector below 16 is not sent and sets "send illegal vector".
- xAPIC MMIO: only aligned 32-bit accesses reach a register; other sizes and offsets read 0 and
  are ignored (logged at debug). A reserved register reads 0, ignores writes and sets "illegal
  register address"; a write to a read-only register is ignored.
- The xAPIC ID register is writable (bits 31:24, as KVM and QEMU allow) and routes xAPIC physical
  destinations; x2APIC mode always uses the hardware ID given at construction.
- Logical destinations: DFR models other than flat (0xF) and cluster (0x0) are taken as flat; a
  destination of all ones (0xFF, x2APIC 0xFFFFFFFF) reaches every APIC whatever its LDR.
- Lowest priority goes to the enabled destination with the lowest PPR, ties to the lowest APIC ID;
  focus-processor checking (SVR bit 9) is stored but not used.
- A software-disabled APIC (SVR bit 8 clear) accepts no fixed or lowest-priority interrupt and
  delivers none of those held in IRR until re-enabled; NMI, INIT, STARTUP and ExtINT still work.
- LINT0/LINT1: a globally disabled APIC (IA32_APIC_BASE.EN = 0) passes LINT0 through as INTR and
  LINT1 as NMI (SDM 10.4.3: "functionally equivalent to a processor without an APIC"). Otherwise
  an unmasked LVT entry in ExtINT mode passes the 8259's INTR through (virtual wire), whatever
  SVR says, ahead of any vector in IRR. At power-on the SDM has every LVT masked; with
  `virtual_wire=True` power-on leaves LINT0 = ExtINT and LINT1 = NMI unmasked instead, as a PC
  BIOS programs them and emu's KVM set-up does (software cannot: while SVR bit 8 is clear the
  mask bits cannot be cleared). INIT returns them to masked, as on hardware.
- EN 1 -> 0 returns every register to its power-up state except the APIC IDs (SDM 10.12.5.1:
  only the x2APIC ID and the 8-bit xAPIC ID survive); xAPIC -> x2APIC keeps the other registers.
  The BSP bit of IA32_APIC_BASE is read-only (writes keep it).
- The timer (emu/devices/lapic_timer.py) counts from the machine clock; TSC-deadline mode reads
  the guest's TSC (emu.platform.GuestTsc) and converts the distance to the deadline into clock
  time at its rate.

Thread-safety: one RLock per LocalApic. The CPU's callbacks are called with it held (they must
not block). Whatever leaves the APIC for other devices (IPIs to the bus, EOIs to the IOAPIC, the
8259's INTA cycle, `on_base_change`) is called after it is released, so two APICs, or an APIC
and the IOAPIC or the 8259 pair, never hold each other's locks in opposite orders.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, IntEnum, IntFlag
from typing import Any

from emu import layout
from emu.devices.apic_message import (
    DeliveryMode,
    DestMode,
    EoiListener,
    InterruptMessage,
    InterruptSink,
    Shorthand,
)
from emu.devices.lapic_timer import ApicTimer, TimerMode
from emu.platform import CpuSignals, GuestTsc
from emu.timers import TimerQueue

log = logging.getLogger("emu.lapic")

VERSION = 0x14  # integrated APIC (Pentium 4 and later)
MAX_LVT = 5  # six entries: timer, thermal, perf, LINT0, LINT1, error
VERSION_REGISTER = MAX_LVT << 16 | VERSION  # bit 24 clear: no EOI-broadcast suppression

MMIO_SIZE = 0x1000
MSR_APIC_BASE = 0x1B
MSR_TSC_DEADLINE = 0x6E0
MSR_X2APIC_FIRST = 0x800
MSR_X2APIC_LAST = 0x8FF

# IA32_APIC_BASE (SDM Figure 10-5).
BASE_BSP = 1 << 8
BASE_EXTD = 1 << 10
BASE_EN = 1 << 11
BASE_ADDRESS = ~0xFFF

XAPIC_BROADCAST = 0xFF
X2APIC_BROADCAST = 0xFFFF_FFFF


class Reg(IntEnum):
    """xAPIC register offsets in the MMIO page; the x2APIC MSR is 0x800 + offset / 16."""

    ID = 0x20
    VERSION = 0x30
    TPR = 0x80
    APR = 0x90
    PPR = 0xA0
    EOI = 0xB0
    RRD = 0xC0
    LDR = 0xD0
    DFR = 0xE0
    SVR = 0xF0
    ISR = 0x100  # 8 registers each: 0x100-0x170
    TMR = 0x180
    IRR = 0x200
    ESR = 0x280
    ICR_LOW = 0x300
    ICR_HIGH = 0x310
    LVT_TIMER = 0x320
    LVT_THERMAL = 0x330
    LVT_PERF = 0x340
    LVT_LINT0 = 0x350
    LVT_LINT1 = 0x360
    LVT_ERROR = 0x370
    TIMER_INITIAL = 0x380
    TIMER_CURRENT = 0x390
    TIMER_DIVIDE = 0x3E0
    SELF_IPI = 0x3F0  # x2APIC only


class Lvt(IntEnum):
    """The LVT entries this APIC has, as indices."""

    TIMER = 0
    THERMAL = 1
    PERF = 2
    LINT0 = 3
    LINT1 = 4
    ERROR = 5


# LVT bits (SDM Figure 10-8).
LVT_VECTOR = 0xFF
LVT_DELIVERY_SHIFT = 8
LVT_DELIVERY = 7 << LVT_DELIVERY_SHIFT
LVT_DELIVERY_STATUS = 1 << 12  # reads 0: emu delivers at once
LVT_POLARITY_LOW = 1 << 13
LVT_REMOTE_IRR = 1 << 14
LVT_LEVEL = 1 << 15
LVT_MASKED = 1 << 16
LVT_TIMER_MODE_SHIFT = 17
# What software can write in each entry (delivery status and remote IRR are read-only; the timer
# and error entries have no delivery mode: always fixed).
_LVT_WRITABLE = {
    Lvt.TIMER: LVT_MASKED | LVT_VECTOR,  # plus the mode bits, by what the CPU model has
    Lvt.THERMAL: LVT_MASKED | LVT_DELIVERY | LVT_VECTOR,
    Lvt.PERF: LVT_MASKED | LVT_DELIVERY | LVT_VECTOR,
    Lvt.LINT0: LVT_MASKED | LVT_LEVEL | LVT_POLARITY_LOW | LVT_DELIVERY | LVT_VECTOR,
    # "Level-sensitive interrupts are not supported for LINT1" (SDM 10.5.1): no trigger bit.
    Lvt.LINT1: LVT_MASKED | LVT_POLARITY_LOW | LVT_DELIVERY | LVT_VECTOR,
    Lvt.ERROR: LVT_MASKED | LVT_VECTOR,
}

# SVR (SDM Figure 10-23).
SVR_VECTOR = 0xFF
SVR_ENABLE = 1 << 8
SVR_FOCUS_DISABLED = 1 << 9
SVR_WRITABLE = SVR_VECTOR | SVR_ENABLE | SVR_FOCUS_DISABLED

# ICR (SDM Figure 10-12).
ICR_VECTOR = 0xFF
ICR_DELIVERY_SHIFT = 8
ICR_DEST_LOGICAL = 1 << 11
ICR_DELIVERY_STATUS = 1 << 12
ICR_LEVEL_ASSERT = 1 << 14
ICR_TRIGGER_LEVEL = 1 << 15
ICR_SHORTHAND_SHIFT = 18
ICR_LOW_WRITABLE = 0x000C_CFFF  # everything but delivery status and the reserved bits
ICR_XAPIC_DEST_SHIFT = 56

DFR_FLAT = 0xF
DFR_CLUSTER = 0x0


class Esr(IntFlag):
    """Error status bits a Pentium 4 or later reports (SDM 10.5.3); bits 0-3 are P6-only."""

    REDIRECTABLE_IPI = 1 << 4
    SEND_ILLEGAL_VECTOR = 1 << 5
    RECEIVE_ILLEGAL_VECTOR = 1 << 6
    ILLEGAL_REGISTER = 1 << 7


class ApicMode(Enum):
    """IA32_APIC_BASE EN and EXTD (SDM 10.12.5.1)."""

    DISABLED = "disabled"
    XAPIC = "xapic"
    X2APIC = "x2apic"


# SDM Figure 10-27: x2APIC -> xAPIC and disabled -> x2APIC go through another state.
_ILLEGAL_TRANSITIONS = {(ApicMode.X2APIC, ApicMode.XAPIC), (ApicMode.DISABLED, ApicMode.X2APIC)}


def _highest(bits: int) -> int | None:
    return bits.bit_length() - 1 if bits else None


def _priority_class(vector: int) -> int:
    return vector >> 4


@dataclass
class _State:
    """Every register INIT resets (all but the IDs and IA32_APIC_BASE), at its power-up value
    (SDM 10.4.7.1): LVT entries masked, SVR 0xFF (software-disabled), DFR all ones, the rest 0."""

    tpr: int = 0
    ldr: int = 0  # xAPIC LDR, bits 31:24
    dfr: int = 0xFFFF_FFFF
    svr: int = 0xFF
    irr: int = 0  # 256-bit vector sets
    isr: int = 0
    tmr: int = 0
    esr: int = 0  # what the guest reads (latched by the last ESR write)
    errors: int = 0  # errors since the last ESR write
    icr: int = 0  # 64 bits: destination in 63:32 (x2APIC) or 63:56 (xAPIC)
    lvt: list[int] = field(default_factory=lambda: [LVT_MASKED] * len(Lvt))
    remote_irr: list[bool] = field(default_factory=lambda: [False] * len(Lvt))  # level LINT0
    extint_message: bool = False  # an ExtINT message (from the IOAPIC) waits for INTA


class LocalApic:
    """One vCPU's local APIC.

    `timer_hz` is the timer's input clock (CPUID 0x15's crystal). `tsc` is the guest's TSC, which
    TSC-deadline mode compares with IA32_TSC_DEADLINE and converts to clock time at `tsc.khz`;
    `tsc_deadline` says whether the CPU model has that mode (then `tsc` is required). `x2apic`
    says whether it has x2APIC mode (IA32_APIC_BASE.EXTD). `extint_acknowledge` is the 8259's
    INTA cycle, run when the pending interrupt is an ExtINT. `on_base_change(base, mmio_enabled)`
    is told whenever the xAPIC MMIO window moves, appears (xAPIC mode, enabled) or goes away.
    """

    def __init__(
        self,
        apic_id: int,
        timers: TimerQueue,
        bus: InterruptSink,
        cpu: CpuSignals,
        *,
        timer_hz: int,
        bsp: bool,
        tsc: GuestTsc | None = None,
        tsc_deadline: bool = False,
        x2apic: bool = True,
        extint_acknowledge: Callable[[], int] | None = None,
        on_base_change: Callable[[int, bool], None] | None = None,
        virtual_wire: bool = False,
        phys_addr_limit: int = layout.PHYS_ADDR_LIMIT,
    ) -> None:
        if not 0 <= apic_id <= X2APIC_BROADCAST - 1:
            raise ValueError(f"APIC ID {apic_id:#x} out of range")
        if tsc_deadline and tsc is None:
            raise ValueError("TSC-deadline mode needs the guest's TSC")
        self.apic_id = apic_id
        self.bsp = bsp
        self._bus = bus
        self._cpu = cpu
        self._tsc_deadline = tsc_deadline
        self._extint_acknowledge = extint_acknowledge
        self.on_base_change = on_base_change
        self._virtual_wire = virtual_wire
        self._base_reserved = 0xFF | 1 << 9 | ~(phys_addr_limit - 1) | (0 if x2apic else BASE_EXTD)
        self._lock = threading.RLock()
        self._timer = ApicTimer(timers, timer_hz, self._lock, self._timer_expired, tsc)
        self._eoi_listeners: list[EoiListener] = []
        self._lint = [False, False]  # pin levels: wires, kept across resets
        self._intr = False
        self._outbox: list[Callable[[], None]] = []  # run after the lock is released
        self._base = 0
        self._xapic_id = 0
        self._s = _State()
        self._window: int | None = layout.LAPIC_BASE  # the machine maps the first one itself
        self._power_on()

    # -- machine side ---------------------------------------------------------------------------
    def subscribe_eoi(self, listener: EoiListener) -> None:
        """Tell `listener` of every EOI for a level-triggered vector (the IOAPIC)."""
        with self._lock:
            self._eoi_listeners.append(listener)

    def reset(self) -> None:
        """Machine reset: the power-on state (xAPIC mode at the default base)."""
        with self._lock:
            self._power_on()
            self._update_intr()
        self._flush()

    @property
    def mode(self) -> ApicMode:
        if not self._base & BASE_EN:
            return ApicMode.DISABLED
        return ApicMode.X2APIC if self._base & BASE_EXTD else ApicMode.XAPIC

    @property
    def apic_base(self) -> int:
        """IA32_APIC_BASE."""
        return self._base

    @property
    def mmio_window(self) -> int | None:
        """Where the xAPIC registers are, or None (disabled or x2APIC: no MMIO)."""
        return self._base & BASE_ADDRESS if self.mode is ApicMode.XAPIC else None

    @property
    def intr(self) -> bool:
        """The level last given to `cpu.set_intr`."""
        return self._intr

    def set_lint(self, pin: int, level: bool) -> None:
        """Drive LINT0 (pin 0: the 8259's INTR under virtual wire) or LINT1 (pin 1)."""
        if pin not in (0, 1):
            raise ValueError(f"LINT{pin} does not exist")
        with self._lock:
            entry = Lvt.LINT0 if pin == 0 else Lvt.LINT1
            before = self._lint_asserted(entry)
            self._lint[pin] = level
            self._lint_changed(entry, before)
            self._update_intr()
        self._flush()

    def acknowledge(self) -> int:
        """The INTA cycle: an ExtINT goes to the 8259 (its vector), else the highest IRR vector
        above PPR moves to ISR; with nothing deliverable, the spurious vector."""
        with self._lock:
            extint = self._extint_pending()  # ExtINT first: it bypasses the APIC's priorities
            if extint:
                self._s.extint_message = False
                vector = self._s.svr & SVR_VECTOR
            else:
                vector = self._take_interrupt()
            self._update_intr()
        if not extint:
            return vector
        if self._extint_acknowledge is None:
            log.debug("APIC %d: ExtINT with no 8259 connected: spurious", self.apic_id)
            return vector
        # Outside the lock: the 8259's INTA changes its INTR, which comes back through set_lint.
        return self._extint_acknowledge()

    def describe(self) -> dict[str, Any]:
        with self._lock:
            s = self._s
            return {
                "id": self.apic_id if self.mode is ApicMode.X2APIC else self._xapic_id,
                "mode": self.mode.value,
                "bsp": self.bsp,
                "apic_base": self._base,
                "software_enabled": self._software_enabled,
                "spurious_vector": s.svr & SVR_VECTOR,
                "tpr": s.tpr,
                "ppr": self._ppr(),
                "ldr": self._read_ldr(),
                "dfr": s.dfr,
                "irr": _vectors(s.irr),
                "isr": _vectors(s.isr),
                "tmr": _vectors(s.tmr),
                "esr": s.esr,
                "icr": s.icr,
                "lvt": {entry.name.lower(): self._describe_lvt(entry) for entry in Lvt},
                "timer": self._timer.describe(),
                "lint": list(self._lint),
                "intr": self._intr,
            }

    # -- the APIC bus side (ApicBus) ------------------------------------------------------------
    @property
    def hardware_enabled(self) -> bool:
        return bool(self._base & BASE_EN)

    @property
    def accepts_fixed(self) -> bool:
        """Takes fixed and lowest-priority interrupts: globally and software enabled."""
        with self._lock:
            return self.hardware_enabled and self._software_enabled

    def arbitration_priority(self) -> int:
        """What lowest-priority arbitration compares (emu: the PPR)."""
        with self._lock:
            return self._ppr()

    def matches(self, msg: InterruptMessage) -> bool:
        """Is this APIC a destination of `msg` (no shorthand)? SDM 10.6.2."""
        with self._lock:
            if not self.hardware_enabled:
                return False
            if msg.dest_mode is DestMode.PHYSICAL:
                return self._match_physical(msg)
            return self._match_logical(msg)

    def receive(self, msg: InterruptMessage) -> None:
        """`msg` was routed here."""
        with self._lock:
            self._receive(msg)
            self._update_intr()
        self._flush()

    # -- registers: xAPIC MMIO ------------------------------------------------------------------
    def mmio_read(self, offset: int, size: int) -> int:
        with self._lock:
            value = self._xapic_read(offset, size)
            self._update_intr()  # an error interrupt (reserved register) may be pending now
        self._flush()
        return value

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            self._xapic_write(offset, size, value)
            self._update_intr()
        self._flush()

    # -- registers: MSRs ------------------------------------------------------------------------
    def read_msr(self, msr: int) -> int | None:
        """IA32_APIC_BASE, IA32_TSC_DEADLINE or an x2APIC register; None means #GP."""
        with self._lock:
            value = self._read_msr(msr)
            self._update_intr()
        self._flush()
        return value

    def write_msr(self, msr: int, value: int) -> bool:
        """False means #GP."""
        if msr == MSR_APIC_BASE:
            return self.write_base(value)
        with self._lock:
            ok = self._write_msr(msr, value)
            self._update_intr()
        self._flush()
        return ok

    def write_base(self, value: int) -> bool:
        """WRMSR IA32_APIC_BASE; False (#GP) for reserved bits or an illegal transition."""
        with self._lock:
            ok = self._write_base(value)
            self._update_intr()
        self._flush()
        return ok

    # =========================================================================================
    # internals (lock held)
    # =========================================================================================
    def _flush(self) -> None:
        """Run what had to wait for the lock to be released (IPIs, EOIs, base changes)."""
        while True:
            with self._lock:
                if not self._outbox:
                    return
                work, self._outbox = self._outbox, []
            for job in work:
                job()

    def _power_on(self) -> None:
        self._base = layout.LAPIC_BASE | BASE_EN | (BASE_BSP if self.bsp else 0)
        self._xapic_id = self.apic_id & 0xFF
        self._reset_registers()
        if self._virtual_wire:
            # As a PC BIOS leaves them (MP spec virtual wire mode): the 8259 on LINT0, NMI on LINT1.
            self._s.lvt[Lvt.LINT0] = int(DeliveryMode.EXTINT) << LVT_DELIVERY_SHIFT
            self._s.lvt[Lvt.LINT1] = int(DeliveryMode.NMI) << LVT_DELIVERY_SHIFT
        self._window_changed()

    def _reset_registers(self) -> None:
        """INIT: everything but the IDs and IA32_APIC_BASE (SDM 10.4.7.3)."""
        self._s = _State()
        self._timer.reset()

    def _window_changed(self) -> None:
        window = self.mmio_window
        callback = self.on_base_change
        if window != self._window and callback is not None:
            self._outbox.append(functools.partial(callback, self._base & BASE_ADDRESS, window is not None))
        self._window = window

    @property
    def _software_enabled(self) -> bool:
        return bool(self._s.svr & SVR_ENABLE)

    # -- priorities (SDM 10.8.3) ----------------------------------------------------------------
    def _ppr(self) -> int:
        tpr = self._s.tpr
        isrv = _highest(self._s.isr) or 0
        if _priority_class(tpr) >= _priority_class(isrv):
            return tpr
        return isrv & 0xF0

    def _apr(self) -> int:
        """Arbitration priority (SDM Figure 10-15; the else branch taken as the highest of the
        three priority classes)."""
        tpr = self._s.tpr
        isrv = _highest(self._s.isr) or 0
        irrv = _highest(self._s.irr) or 0
        if _priority_class(tpr) >= _priority_class(irrv) and _priority_class(tpr) > _priority_class(isrv):
            return tpr
        return max(tpr & 0xF0, isrv & 0xF0, irrv & 0xF0)

    def _deliverable_vector(self) -> int | None:
        if not (self.hardware_enabled and self._software_enabled):
            return None  # held in IRR until enabled again
        irrv = _highest(self._s.irr)
        if irrv is None or _priority_class(irrv) <= _priority_class(self._ppr()):
            return None
        return irrv

    def _update_intr(self) -> None:
        pending = self._extint_pending() or self._deliverable_vector() is not None
        if pending != self._intr:
            self._intr = pending
            self._cpu.set_intr(pending)

    def _take_interrupt(self) -> int:
        vector = self._deliverable_vector()
        if vector is None:
            return self._s.svr & SVR_VECTOR
        bit = 1 << vector
        self._s.irr &= ~bit
        self._s.isr |= bit
        return vector

    # -- accepting interrupts -------------------------------------------------------------------
    def _accept(self, vector: int, level: bool, *, report: bool = True) -> None:
        """A fixed interrupt arrives (IPI, IOAPIC, MSI or an LVT entry)."""
        if vector < 16:
            # SDM 10.5.3: vectors 0-15 are illegal; the interrupt is dropped.
            if report:
                self._error(Esr.RECEIVE_ILLEGAL_VECTOR)
            return
        bit = 1 << vector
        self._s.irr |= bit
        if level:
            self._s.tmr |= bit
        else:
            self._s.tmr &= ~bit

    def _receive(self, msg: InterruptMessage) -> None:
        if not self.hardware_enabled:
            return
        delivery = msg.delivery
        if delivery in (DeliveryMode.FIXED, DeliveryMode.LOWEST_PRIORITY):
            if self._software_enabled:
                self._accept(msg.vector, msg.level_triggered)
            else:
                log.debug("APIC %d software-disabled: vector %#x dropped", self.apic_id, msg.vector)
        elif delivery is DeliveryMode.NMI:
            self._cpu.nmi()
        elif delivery is DeliveryMode.INIT:
            # The INIT level de-assert (level 0, level-triggered) only synchronises arbitration
            # IDs, which no APIC since the Pentium 4 does (SDM 10.6.1): nothing to do.
            if msg.level or not msg.level_triggered:
                self._init()
        elif delivery is DeliveryMode.STARTUP:
            self._cpu.startup(msg.vector)
        elif delivery is DeliveryMode.EXTINT:
            self._s.extint_message = True
        else:
            log.debug("APIC %d: SMI ignored (emu has no SMM)", self.apic_id)

    def _init(self) -> None:
        self._reset_registers()
        self._cpu.init()

    def _error(self, bits: Esr) -> None:
        """Record an error and raise the LVT error interrupt (SDM 10.5.3)."""
        self._s.errors |= bits
        entry = self._s.lvt[Lvt.ERROR]
        if not entry & LVT_MASKED:
            self._accept(entry & LVT_VECTOR, False, report=False)  # an illegal error vector: no loop

    def _eoi(self) -> None:
        """SDM 10.8.5: the highest ISR bit is cleared; a level-triggered vector is broadcast."""
        vector = _highest(self._s.isr)
        if vector is None:
            return
        bit = 1 << vector
        self._s.isr &= ~bit
        if not self._s.tmr & bit:
            return
        for entry in (Lvt.LINT0, Lvt.LINT1):
            if self._s.remote_irr[entry] and self._s.lvt[entry] & LVT_VECTOR == vector:
                self._s.remote_irr[entry] = False
                self._deliver_lint_level(entry)  # still asserted: again
        for listener in self._eoi_listeners:
            self._outbox.append(functools.partial(listener.end_of_interrupt, vector))

    def _timer_expired(self) -> None:
        """From the timer, lock held: it only calls this while its entry is unmasked."""
        self._accept(self._s.lvt[Lvt.TIMER] & LVT_VECTOR, False)
        self._update_intr()

    # -- LINT0/LINT1 (SDM 10.5.1) ---------------------------------------------------------------
    def _lint_asserted(self, entry: Lvt) -> bool:
        level = self._lint[entry - Lvt.LINT0]
        if not self.hardware_enabled:
            return level
        return level != bool(self._s.lvt[entry] & LVT_POLARITY_LOW)

    def _lint_delivery(self, entry: Lvt) -> int | None:
        """The delivery mode of an unmasked LINT entry, or None."""
        if not self.hardware_enabled:
            # No APIC: LINT0 is INTR and LINT1 is NMI.
            return int(DeliveryMode.EXTINT if entry is Lvt.LINT0 else DeliveryMode.NMI)
        value = self._s.lvt[entry]
        if value & LVT_MASKED:
            return None
        return (value & LVT_DELIVERY) >> LVT_DELIVERY_SHIFT

    def _lint_changed(self, entry: Lvt, before: bool) -> None:
        asserted = self._lint_asserted(entry)
        delivery = self._lint_delivery(entry)
        rising = asserted and not before
        if delivery == DeliveryMode.FIXED:
            if self._lint_level_triggered(entry):
                self._deliver_lint_level(entry)
            elif rising and self._software_enabled:
                self._accept(self._s.lvt[entry] & LVT_VECTOR, False)
        elif rising and delivery == DeliveryMode.NMI:
            self._cpu.nmi()
        elif rising and delivery == DeliveryMode.INIT:
            self._init()
        elif rising and delivery == DeliveryMode.SMI:
            log.debug("APIC %d: SMI through LINT%d ignored", self.apic_id, entry - Lvt.LINT0)
        # ExtINT is a level: _extint_pending() looks at the pin.

    def _lint_level_triggered(self, entry: Lvt) -> bool:
        return entry is Lvt.LINT0 and bool(self._s.lvt[entry] & LVT_LEVEL)

    def _deliver_lint_level(self, entry: Lvt) -> None:
        """A level-triggered fixed LINT0: one interrupt while asserted, until its EOI."""
        if (
            self._lint_delivery(entry) == DeliveryMode.FIXED
            and self._lint_level_triggered(entry)
            and self._lint_asserted(entry)
            and not self._s.remote_irr[entry]
            and self._software_enabled
        ):
            self._s.remote_irr[entry] = True
            self._accept(self._s.lvt[entry] & LVT_VECTOR, True)

    def _extint_pending(self) -> bool:
        if self._s.extint_message:
            return True
        return any(
            self._lint_delivery(entry) == DeliveryMode.EXTINT and self._lint_asserted(entry)
            for entry in (Lvt.LINT0, Lvt.LINT1)
        )

    # -- destinations (SDM 10.6.2) --------------------------------------------------------------
    def _match_physical(self, msg: InterruptMessage) -> bool:
        if msg.dest == (X2APIC_BROADCAST if msg.x2apic else XAPIC_BROADCAST):
            return True
        own = self.apic_id if self.mode is ApicMode.X2APIC else self._xapic_id
        return msg.dest == own

    def _match_logical(self, msg: InterruptMessage) -> bool:
        dest = msg.dest
        if dest == (X2APIC_BROADCAST if msg.x2apic else XAPIC_BROADCAST):
            return True  # "broadcast to all APICs": all destination bits set
        if self.mode is ApicMode.X2APIC:
            ldr = self._x2apic_ldr()  # cluster in 31:16, member bit in 15:0 (SDM 10.12.10.2)
            return dest >> 16 == ldr >> 16 and bool(dest & ldr & 0xFFFF)
        ldr = self._s.ldr >> 24
        dest &= 0xFF
        if self._s.dfr >> 28 == DFR_CLUSTER:  # cluster in bits 7:4, members in 3:0
            return dest >> 4 == ldr >> 4 and bool(dest & ldr & 0xF)
        return bool(dest & ldr)  # flat (other DFR models are reserved: taken as flat)

    def _x2apic_ldr(self) -> int:
        return (self.apic_id >> 4) << 16 | 1 << (self.apic_id & 0xF)

    # -- sending IPIs (SDM 10.6.1) --------------------------------------------------------------
    def _send_ipi(self) -> None:
        icr = self._s.icr
        x2apic = self.mode is ApicMode.X2APIC
        vector = icr & ICR_VECTOR
        raw_delivery = icr >> ICR_DELIVERY_SHIFT & 7
        if raw_delivery in (3, int(DeliveryMode.EXTINT)):
            log.debug("APIC %d: ICR delivery mode %d is reserved: nothing sent", self.apic_id, raw_delivery)
            return
        delivery = DeliveryMode(raw_delivery)
        if delivery in (DeliveryMode.FIXED, DeliveryMode.LOWEST_PRIORITY) and vector < 16:
            self._error(Esr.SEND_ILLEGAL_VECTOR)
            return
        msg = InterruptMessage(
            vector=vector,
            delivery=delivery,
            dest_mode=DestMode.LOGICAL if icr & ICR_DEST_LOGICAL else DestMode.PHYSICAL,
            dest=icr >> 32 if x2apic else icr >> ICR_XAPIC_DEST_SHIFT,
            # IPIs are edge-triggered: level and trigger only mark an INIT level de-assert.
            level_triggered=delivery is DeliveryMode.INIT and bool(icr & ICR_TRIGGER_LEVEL),
            level=bool(icr & ICR_LEVEL_ASSERT) or delivery is not DeliveryMode.INIT,
            shorthand=Shorthand(icr >> ICR_SHORTHAND_SHIFT & 3),
            source=self.apic_id,
            x2apic=x2apic,
        )
        self._outbox.append(functools.partial(self._bus.deliver, msg))

    def _self_ipi(self, vector: int) -> None:
        """x2APIC SELF IPI: a fixed edge interrupt to this APIC, without the bus."""
        if vector < 16:
            self._error(Esr.SEND_ILLEGAL_VECTOR)
        elif self._software_enabled:
            self._accept(vector, False)

    # -- register reads -------------------------------------------------------------------------
    def _read_ldr(self) -> int:
        return self._x2apic_ldr() if self.mode is ApicMode.X2APIC else self._s.ldr

    def _read_lvt(self, entry: Lvt) -> int:
        value = self._s.lvt[entry]
        if self._s.remote_irr[entry]:
            value |= LVT_REMOTE_IRR
        return value

    def _read_common(self, offset: int) -> int | None:
        """Registers that read the same in both modes; None for the others."""
        s = self._s
        if Reg.ISR <= offset < Reg.ESR:
            bank = (s.isr, s.tmr, s.irr)[(offset - Reg.ISR) >> 7]
            return bank >> (32 * (offset >> 4 & 7)) & 0xFFFF_FFFF
        if Reg.LVT_TIMER <= offset <= Reg.LVT_ERROR:
            return self._read_lvt(Lvt((offset - Reg.LVT_TIMER) >> 4))
        match offset:
            case Reg.VERSION:
                return VERSION_REGISTER
            case Reg.TPR:
                return s.tpr
            case Reg.PPR:
                return self._ppr()
            case Reg.LDR:
                return self._read_ldr()
            case Reg.SVR:
                return s.svr
            case Reg.ESR:
                return s.esr
            case Reg.TIMER_INITIAL:
                return self._timer.initial
            case Reg.TIMER_CURRENT:
                return self._timer.current()
            case Reg.TIMER_DIVIDE:
                return self._timer.dcr
        return None

    def _xapic_read(self, offset: int, size: int) -> int:
        if self.mode is not ApicMode.XAPIC or size != 4 or offset & 0xF or not 0 <= offset < MMIO_SIZE:
            log.debug("APIC %d: %d-byte MMIO read at +%#x (%s) reads 0", self.apic_id, size, offset, self.mode.value)
            return 0
        value = self._read_common(offset)
        if value is not None:
            return value
        match offset:
            case Reg.ID:
                return self._xapic_id << 24
            case Reg.APR:
                return self._apr()
            case Reg.EOI | Reg.RRD:
                return 0  # write-only; remote read is not supported
            case Reg.DFR:
                return self._s.dfr
            case Reg.ICR_LOW:
                return self._s.icr & 0xFFFF_FFFF  # delivery status idle: sent at once
            case Reg.ICR_HIGH:
                return self._s.icr >> 32
        self._illegal_register(offset)
        return 0

    def _read_msr(self, msr: int) -> int | None:
        if msr == MSR_APIC_BASE:
            return self._base
        if msr == MSR_TSC_DEADLINE:
            return self._timer.read_deadline() if self._tsc_deadline else None
        if not MSR_X2APIC_FIRST <= msr <= MSR_X2APIC_LAST or self.mode is not ApicMode.X2APIC:
            return None
        offset = (msr - MSR_X2APIC_FIRST) << 4
        if offset == Reg.ID:
            return self.apic_id
        if offset == Reg.ICR_LOW:
            return self._s.icr  # no delivery-status bit in x2APIC mode
        if offset in (Reg.DFR, Reg.APR, Reg.RRD):
            return None  # no such register in x2APIC mode
        return self._read_common(offset)  # None (#GP) for write-only and reserved registers

    # -- register writes ------------------------------------------------------------------------
    def _write_common(self, offset: int, value: int) -> bool:
        """Writable registers that behave the same in both modes; False for the others."""
        s = self._s
        if Reg.LVT_TIMER <= offset <= Reg.LVT_ERROR:
            self._write_lvt(Lvt((offset - Reg.LVT_TIMER) >> 4), value)
        elif offset == Reg.TPR:
            s.tpr = value & 0xFF
        elif offset == Reg.SVR:
            self._write_svr(value)
        elif offset == Reg.TIMER_INITIAL:
            self._timer.write_initial(value)
        elif offset == Reg.TIMER_DIVIDE:
            self._timer.write_divide(value)
        else:
            return False
        return True

    def _xapic_write(self, offset: int, size: int, value: int) -> None:
        if self.mode is not ApicMode.XAPIC or size != 4 or offset & 0xF or not 0 <= offset < MMIO_SIZE:
            log.debug(
                "APIC %d: %d-byte MMIO write %#x at +%#x (%s) ignored",
                self.apic_id,
                size,
                value,
                offset,
                self.mode.value,
            )
            return
        value &= 0xFFFF_FFFF
        if self._write_common(offset, value):
            return
        s = self._s
        if offset == Reg.ID:
            self._xapic_id = value >> 24
        elif offset == Reg.EOI:
            self._eoi()
        elif offset == Reg.LDR:
            s.ldr = value & 0xFF00_0000
        elif offset == Reg.DFR:
            s.dfr = value | 0x0FFF_FFFF
        elif offset == Reg.ESR:
            self._latch_esr()
        elif offset == Reg.ICR_HIGH:
            s.icr = (value & 0xFF00_0000) << 32 | (s.icr & 0xFFFF_FFFF)
        elif offset == Reg.ICR_LOW:
            s.icr = (s.icr & ~0xFFFF_FFFF) | (value & ICR_LOW_WRITABLE)
            self._send_ipi()
        elif self._read_common(offset) is None and offset not in (Reg.APR, Reg.RRD):
            self._illegal_register(offset)
        # else: a read-only register: the write is ignored

    def _write_msr(self, msr: int, value: int) -> bool:
        if msr == MSR_TSC_DEADLINE:
            if self._tsc_deadline:
                self._timer.write_deadline(value & 0xFFFF_FFFF_FFFF_FFFF)
            return self._tsc_deadline
        if not MSR_X2APIC_FIRST <= msr <= MSR_X2APIC_LAST or self.mode is not ApicMode.X2APIC:
            return False
        offset = (msr - MSR_X2APIC_FIRST) << 4
        if offset == Reg.ICR_LOW:
            self._s.icr = value & (0xFFFF_FFFF << 32 | ICR_LOW_WRITABLE)
            self._send_ipi()
            return True
        if value >> 32:
            return False  # the upper half of every other x2APIC register is reserved
        if offset in (Reg.EOI, Reg.ESR):
            if value:
                return False  # SDM 10.12.1.2: only 0 may be written
            if offset == Reg.EOI:
                self._eoi()
            else:
                self._latch_esr()
            return True
        if offset == Reg.SELF_IPI:
            self._self_ipi(value & 0xFF)
            return True
        return self._write_common(offset, value)  # read-only and reserved: #GP

    def _write_lvt(self, entry: Lvt, value: int) -> None:
        writable = _LVT_WRITABLE[entry]
        if entry is Lvt.TIMER:
            writable |= (3 if self._tsc_deadline else 1) << LVT_TIMER_MODE_SHIFT
        value &= writable
        if not self._software_enabled:
            value |= LVT_MASKED  # SDM 10.4.7.2: the masks cannot be cleared while disabled
        if entry is Lvt.TIMER and value >> LVT_TIMER_MODE_SHIFT & 3 == 3:
            value &= ~(3 << LVT_TIMER_MODE_SHIFT)  # reserved mode: taken as one-shot
        self._s.lvt[entry] = value
        if entry is Lvt.TIMER:
            self._timer.configure(TimerMode(value >> LVT_TIMER_MODE_SHIFT & 3), bool(value & LVT_MASKED))
        elif entry in (Lvt.LINT0, Lvt.LINT1):
            # No edge from a write: only a level-triggered entry (or ExtINT) follows the pin now.
            if not self._lint_level_triggered(entry):
                self._s.remote_irr[entry] = False
            self._deliver_lint_level(entry)

    def _write_svr(self, value: int) -> None:
        was_enabled = self._software_enabled
        self._s.svr = value & SVR_WRITABLE
        if was_enabled and not self._software_enabled:
            for entry in Lvt:  # SDM 10.4.7.2: software disable masks every LVT entry
                self._write_lvt(entry, self._s.lvt[entry] | LVT_MASKED)

    def _latch_esr(self) -> None:
        """SDM 10.5.3: a write makes the errors since the previous write readable."""
        self._s.esr, self._s.errors = self._s.errors, 0

    def _illegal_register(self, offset: int) -> None:
        log.debug("APIC %d: access to reserved register +%#x", self.apic_id, offset)
        self._error(Esr.ILLEGAL_REGISTER)

    # -- IA32_APIC_BASE (SDM 10.4.4, 10.12.5) ---------------------------------------------------
    def _write_base(self, value: int) -> bool:
        if value & self._base_reserved:
            return False
        en, extd = bool(value & BASE_EN), bool(value & BASE_EXTD)
        if extd and not en:
            return False  # the invalid state
        new = ApicMode.X2APIC if extd else ApicMode.XAPIC if en else ApicMode.DISABLED
        old = self.mode
        if (old, new) in _ILLEGAL_TRANSITIONS:
            return False
        self._base = (value & ~BASE_BSP) | (self._base & BASE_BSP)  # the BSP bit is read-only
        if new is ApicMode.DISABLED and old is not ApicMode.DISABLED:
            # Only the IDs survive (SDM 10.12.5.1); pending and in-service interrupts are lost.
            self._reset_registers()
        self._window_changed()
        return True

    # -- debugger -------------------------------------------------------------------------------
    def _describe_lvt(self, entry: Lvt) -> dict[str, Any]:
        value = self._read_lvt(entry)
        out: dict[str, Any] = {"raw": value, "vector": value & LVT_VECTOR, "masked": bool(value & LVT_MASKED)}
        if entry is Lvt.TIMER:
            out["timer_mode"] = TimerMode(value >> LVT_TIMER_MODE_SHIFT & 3).name.lower()
        elif entry is not Lvt.ERROR:
            delivery = (value & LVT_DELIVERY) >> LVT_DELIVERY_SHIFT
            out["delivery"] = DeliveryMode(delivery).name.lower() if delivery in _DELIVERY_VALUES else delivery
        if entry in (Lvt.LINT0, Lvt.LINT1):
            out["trigger"] = "level" if value & LVT_LEVEL else "edge"
            out["active_low"] = bool(value & LVT_POLARITY_LOW)
            out["remote_irr"] = bool(value & LVT_REMOTE_IRR)
        return out


_DELIVERY_VALUES = {int(d) for d in DeliveryMode}


def _vectors(bits: int) -> list[int]:
    return [v for v in range(256) if bits >> v & 1]


class ApicBus:
    """Routes interrupt messages (IPIs, the IOAPIC's, MSIs) to the local APICs (SDM 10.6.2)."""

    def __init__(self) -> None:
        self._apics: tuple[LocalApic, ...] = ()
        self._eoi_listeners: list[EoiListener] = []
        self._lock = threading.Lock()

    @property
    def apics(self) -> tuple[LocalApic, ...]:
        return self._apics

    def register(self, apic: LocalApic) -> None:
        with self._lock:
            if any(a.apic_id == apic.apic_id for a in self._apics):
                raise ValueError(f"two local APICs with ID {apic.apic_id}")
            self._apics = (*self._apics, apic)
            listeners = list(self._eoi_listeners)
        for listener in listeners:
            apic.subscribe_eoi(listener)

    def subscribe_eoi(self, listener: EoiListener) -> None:
        """Tell `listener` of level-triggered EOIs on every local APIC, present and future."""
        with self._lock:
            self._eoi_listeners.append(listener)
            apics = self._apics
        for apic in apics:
            apic.subscribe_eoi(listener)

    def deliver(self, msg: InterruptMessage) -> None:
        for apic in self._destinations(msg):
            apic.receive(msg)

    def _destinations(self, msg: InterruptMessage) -> list[LocalApic]:
        apics = self._apics
        shorthand = msg.shorthand
        if shorthand is Shorthand.SELF:
            targets = [a for a in apics if a.apic_id == msg.source]
        elif shorthand is Shorthand.ALL_INCLUDING_SELF:
            targets = list(apics)
        elif shorthand is Shorthand.ALL_EXCLUDING_SELF:
            targets = [a for a in apics if a.apic_id != msg.source]
        else:
            targets = [a for a in apics if a.matches(msg)]
        targets = [a for a in targets if a.hardware_enabled]
        if msg.delivery is DeliveryMode.LOWEST_PRIORITY:
            # emu's arbitration: the lowest PPR wins, ties go to the lowest APIC ID.
            ready = [a for a in targets if a.accepts_fixed]
            if not ready:
                log.debug("lowest-priority vector %#x: no enabled destination", msg.vector)
                return []
            return [min(ready, key=lambda a: (a.arbitration_priority(), a.apic_id))]
        return targets
