"""The local APIC and the APIC bus, driven as a guest drives them: xAPIC registers through the MMIO
page, x2APIC registers and IA32_APIC_BASE through MSRs, time through a ManualClock. Expected
values follow the Intel SDM vol. 3A chapter 10."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest

from emu.bus import Bus
from emu.devices.apic_message import DeliveryMode, DestMode, InterruptMessage
from emu.devices.lapic import ApicBus, LocalApic
from emu.devices.lapic_timer import divisor
from emu.devices.pic import PicPair
from emu.timers import ManualClock, TimerQueue

# xAPIC register offsets.
ID, VERSION, TPR, APR, PPR, EOI, LDR, DFR, SVR = 0x20, 0x30, 0x80, 0x90, 0xA0, 0xB0, 0xD0, 0xE0, 0xF0
ISR, TMR, IRR, ESR, ICR_LO, ICR_HI = 0x100, 0x180, 0x200, 0x280, 0x300, 0x310
LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR = 0x320, 0x330, 0x340, 0x350, 0x360, 0x370
TIMER_INITIAL, TIMER_CURRENT, TIMER_DIVIDE = 0x380, 0x390, 0x3E0
# x2APIC MSRs.
MSR_APIC_BASE, MSR_TSC_DEADLINE = 0x1B, 0x6E0
X2_ID, X2_VERSION, X2_TPR, X2_PPR, X2_EOI, X2_LDR, X2_SVR = 0x802, 0x803, 0x808, 0x80A, 0x80B, 0x80D, 0x80F
X2_IRR, X2_ESR, X2_ICR, X2_LVT_TIMER = 0x820, 0x828, 0x830, 0x832
X2_INITIAL, X2_CURRENT, X2_DIVIDE, X2_SELF_IPI = 0x838, 0x839, 0x83E, 0x83F

# Bits.
BASE_BSP, BASE_EXTD, BASE_EN = 1 << 8, 1 << 10, 1 << 11
SVR_ON = 0x100
MASKED = 1 << 16
LEVEL = 1 << 15
PERIODIC, TSC_DEADLINE = 1 << 17, 2 << 17
DELIVERY_STATUS = 1 << 12
ICR_ASSERT = 1 << 14
LOGICAL = 1 << 11
DM_FIXED, DM_LOWEST, DM_NMI, DM_INIT, DM_STARTUP, DM_EXTINT = 0, 1 << 8, 4 << 8, 5 << 8, 6 << 8, 7 << 8
SELF, ALL_INCL, ALL_EXCL = 1 << 18, 2 << 18, 3 << 18
ESR_SEND_ILLEGAL, ESR_RECEIVE_ILLEGAL, ESR_ILLEGAL_REGISTER = 1 << 5, 1 << 6, 1 << 7

TIMER_HZ = 25_000_000  # CPUID 0x15's crystal
TSC_KHZ = 2_000_000  # 2 GHz: 2 TSC ticks per ns
BASE = 0xFEE0_0000


@dataclass
class FakeCpu:
    """Records what the APIC signals."""

    intr: bool = False
    events: list[tuple[str, int]] = field(default_factory=list)

    def set_intr(self, pending: bool) -> None:
        self.intr = pending

    def nmi(self) -> None:
        self.events.append(("nmi", 0))

    def init(self) -> None:
        self.events.append(("init", 0))

    def startup(self, vector: int) -> None:
        self.events.append(("startup", vector))


class FakeTsc:
    khz = TSC_KHZ

    def __init__(self, clock: ManualClock) -> None:
        self._clock = clock
        self.lag_ns = 0  # how far the TSC runs behind the clock

    def read(self) -> int:
        return (self._clock.t - self.lag_ns) * TSC_KHZ // 1_000_000


class Eois:
    def __init__(self) -> None:
        self.vectors: list[int] = []

    def end_of_interrupt(self, vector: int) -> None:
        self.vectors.append(vector)


class Machine:
    """`n` CPUs, each with its local APIC, on one APIC bus."""

    def __init__(
        self,
        n: int = 1,
        *,
        timer_hz: int = TIMER_HZ,
        tsc_deadline: bool = False,
        virtual_wire: bool = False,
        ids: list[int] | None = None,
    ) -> None:
        self.clock = ManualClock()
        self.timers = TimerQueue(self.clock)
        self.bus = ApicBus()
        self.tsc = FakeTsc(self.clock)
        self.cpus = [FakeCpu() for _ in range(n)]
        self.extint_acks = 0
        self.moves: list[tuple[int, bool]] = []
        self.apics: list[LocalApic] = []
        for i, apic_id in enumerate(ids or list(range(n))):
            apic = LocalApic(
                apic_id,
                self.timers,
                self.bus,
                self.cpus[i],
                timer_hz=timer_hz,
                bsp=i == 0,
                tsc=self.tsc,
                tsc_deadline=tsc_deadline,
                extint_acknowledge=self._extint_ack,
                on_base_change=lambda base, on: self.moves.append((base, on)),
                virtual_wire=virtual_wire and i == 0,
            )
            self.bus.register(apic)
            self.apics.append(apic)
        self.taken: list[tuple[int, int]] = []  # (clock time, vector) as the CPU took them

    def _extint_ack(self) -> int:
        self.extint_acks += 1
        return 0x08

    def until(self, t_ns: int, cpu: int = 0) -> None:
        """Move the clock to `t_ns`, running timers as the machine does and letting CPU `cpu`
        take (acknowledge and EOI) each interrupt when it is raised."""
        assert t_ns >= self.clock.t
        while (d := self.timers.next_deadline()) is not None and d <= t_ns:
            self.clock.t = max(d, self.clock.t)
            self.timers.run_due()
            self.serve(cpu)
        self.clock.t = t_ns

    def serve(self, cpu: int = 0) -> None:
        apic = self.apics[cpu]
        while self.cpus[cpu].intr:
            self.taken.append((self.clock.t, apic.acknowledge()))
            wr(apic, EOI, 0)


def wr(apic: LocalApic, offset: int, value: int) -> None:
    apic.mmio_write(offset, 4, value)


def rd(apic: LocalApic, offset: int) -> int:
    return apic.mmio_read(offset, 4)


def vectors(apic: LocalApic, bank: int) -> list[int]:
    bits = sum(rd(apic, bank + 0x10 * i) << (32 * i) for i in range(8))
    return [v for v in range(256) if bits >> v & 1]


def enable(*apics: LocalApic) -> None:
    for apic in apics:
        wr(apic, SVR, SVR_ON | 0xFF)


def fixed(vector: int, dest: int = 0, *, level: bool = False) -> InterruptMessage:
    """What an IOAPIC entry or an MSI sends: fixed, physical destination."""
    return InterruptMessage(vector=vector, dest=dest, level_triggered=level)


def send(apic: LocalApic, low: int, dest: int = 0) -> None:
    wr(apic, ICR_HI, dest << 24)
    wr(apic, ICR_LO, low)


def esr(apic: LocalApic) -> int:
    wr(apic, ESR, 0)  # write first: the read returns the errors since the previous write
    return rd(apic, ESR)


# -- reset state -------------------------------------------------------------------------------


def test_power_on_register_values() -> None:
    m = Machine(2)
    bsp, ap = m.apics
    assert rd(bsp, ID) == 0 and rd(ap, ID) == 1 << 24
    assert rd(bsp, VERSION) == 0x0005_0014  # version 0x14, max LVT entry 5, no EOI suppression
    assert rd(bsp, LDR) == 0 and rd(bsp, DFR) == 0xFFFF_FFFF
    assert rd(bsp, SVR) == 0xFF  # software-disabled, spurious vector 0xFF
    assert [rd(bsp, r) for r in (TPR, PPR, APR, ESR, ICR_LO, ICR_HI)] == [0] * 6
    assert [rd(bsp, r) for r in (LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR)] == [MASKED] * 6
    assert [rd(bsp, r) for r in (TIMER_INITIAL, TIMER_CURRENT, TIMER_DIVIDE)] == [0, 0, 0]
    assert vectors(bsp, IRR) == vectors(bsp, ISR) == vectors(bsp, TMR) == []
    assert bsp.apic_base == BASE | BASE_EN | BASE_BSP and ap.apic_base == BASE | BASE_EN
    assert bsp.read_msr(MSR_APIC_BASE) == bsp.apic_base
    assert bsp.mmio_window == BASE and m.moves == []


def test_xapic_id_ldr_dfr_are_writable_and_read_only_registers_ignore_writes() -> None:
    m = Machine()
    apic = m.apics[0]
    wr(apic, ID, 0x0700_00FF)
    wr(apic, LDR, 0x1234_5678)
    wr(apic, DFR, 0x0000_0000)
    wr(apic, VERSION, 0)
    wr(apic, PPR, 0xFF)
    assert rd(apic, ID) == 0x0700_0000
    assert rd(apic, LDR) == 0x1200_0000
    assert rd(apic, DFR) == 0x0FFF_FFFF  # cluster model; bits 27:0 read as ones
    assert rd(apic, VERSION) == 0x0005_0014 and rd(apic, PPR) == 0
    assert esr(apic) == 0  # read-only registers are not errors


def test_odd_accesses_read_zero_and_reserved_registers_report_illegal_register() -> None:
    m = Machine()
    apic = m.apics[0]
    enable(apic)
    assert apic.mmio_read(SVR, 1) == 0 and apic.mmio_read(SVR + 4, 4) == 0
    apic.mmio_write(TPR, 2, 0x50)
    assert rd(apic, TPR) == 0 and esr(apic) == 0
    assert rd(apic, 0x2F0) == 0  # LVT CMCI: not advertised (max LVT 5)
    assert esr(apic) == ESR_ILLEGAL_REGISTER


# -- priorities and EOI ------------------------------------------------------------------------


def test_software_disabled_apic_drops_fixed_interrupts_and_keeps_lvt_masked() -> None:
    m = Machine()
    apic, cpu = m.apics[0], m.cpus[0]
    m.bus.deliver(fixed(0x40))
    assert vectors(apic, IRR) == [] and not cpu.intr
    wr(apic, LVT_LINT1, DM_NMI)
    assert rd(apic, LVT_LINT1) == MASKED | DM_NMI  # the mask cannot be cleared while disabled

    enable(apic)
    m.bus.deliver(fixed(0x40))
    assert vectors(apic, IRR) == [0x40] and cpu.intr
    wr(apic, LVT_LINT1, DM_NMI)
    assert rd(apic, LVT_LINT1) == DM_NMI

    wr(apic, SVR, 0xFF)  # software disable: held in IRR, not delivered; every LVT masked
    assert vectors(apic, IRR) == [0x40] and not cpu.intr
    assert rd(apic, LVT_LINT1) == MASKED | DM_NMI
    assert apic.acknowledge() == 0xFF  # spurious
    enable(apic)
    assert cpu.intr and apic.acknowledge() == 0x40


def test_tpr_gates_delivery_by_priority_class_and_ppr_follows_the_sdm() -> None:
    m = Machine()
    apic, cpu = m.apics[0], m.cpus[0]
    enable(apic)
    wr(apic, TPR, 0x45)
    assert rd(apic, PPR) == 0x45
    m.bus.deliver(fixed(0x4F))  # class 4 is not above PPR's class 4
    assert vectors(apic, IRR) == [0x4F] and not cpu.intr
    assert apic.acknowledge() == 0xFF and vectors(apic, ISR) == []
    wr(apic, TPR, 0x3F)
    assert cpu.intr and apic.acknowledge() == 0x4F
    assert rd(apic, PPR) == 0x40  # ISRV class above TPR class: ISRV & 0xF0
    wr(apic, TPR, 0x4A)
    assert rd(apic, PPR) == 0x4A  # TPR class >= ISRV class: TPR
    wr(apic, TPR, 0)
    wr(apic, EOI, 0)
    assert rd(apic, PPR) == 0 and not cpu.intr


def test_nested_interrupts_of_two_classes() -> None:
    m = Machine()
    apic, cpu = m.apics[0], m.cpus[0]
    enable(apic)
    m.bus.deliver(fixed(0x41))
    assert apic.acknowledge() == 0x41
    m.bus.deliver(fixed(0x48))  # same class as the one in service: waits
    assert not cpu.intr
    m.bus.deliver(fixed(0x61))  # higher class: nests
    assert cpu.intr and apic.acknowledge() == 0x61
    assert vectors(apic, ISR) == [0x41, 0x61] and rd(apic, PPR) == 0x60
    assert rd(apic, ISR + 0x10 * 3) == 1 << 1  # vector 0x61 is bit 1 of ISR register 3
    wr(apic, EOI, 0)  # clears the highest: 0x61
    assert vectors(apic, ISR) == [0x41] and not cpu.intr
    wr(apic, EOI, 0)
    assert vectors(apic, ISR) == [] and cpu.intr and apic.acknowledge() == 0x48
    wr(apic, EOI, 0)
    wr(apic, EOI, 0)  # nothing in service: no effect
    assert vectors(apic, ISR) == vectors(apic, IRR) == [] and not cpu.intr


def test_apr_follows_the_sdm() -> None:
    m = Machine()
    apic = m.apics[0]
    enable(apic)
    wr(apic, TPR, 0x35)
    assert rd(apic, APR) == 0x35  # TPR class above everything
    m.bus.deliver(fixed(0x50))
    assert rd(apic, APR) == 0x50  # IRRV class above TPR class


def test_level_triggered_eoi_is_broadcast_once_to_a_subscriber() -> None:
    m = Machine(2)
    apic = m.apics[0]
    enable(*m.apics)
    eois = Eois()
    m.bus.subscribe_eoi(eois)
    m.bus.deliver(fixed(0x60, level=True))
    m.bus.deliver(fixed(0x70))
    assert vectors(apic, TMR) == [0x60]
    assert apic.acknowledge() == 0x70
    wr(apic, EOI, 0)  # edge: no broadcast
    assert eois.vectors == []
    assert apic.acknowledge() == 0x60
    wr(apic, EOI, 0)
    assert eois.vectors == [0x60]


def test_eoi_listener_may_deliver_again_from_its_callback() -> None:
    """The IOAPIC resends a still-asserted level interrupt from end_of_interrupt."""
    m = Machine()
    apic = m.apics[0]
    enable(apic)

    class Resender:
        def __init__(self) -> None:
            self.count = 0

        def end_of_interrupt(self, vector: int) -> None:
            self.count += 1
            if self.count < 3:
                m.bus.deliver(fixed(vector, level=True))

    resender = Resender()
    m.bus.subscribe_eoi(resender)
    m.bus.deliver(fixed(0x55, level=True))
    m.serve()
    assert [v for _, v in m.taken] == [0x55, 0x55, 0x55] and resender.count == 3


def test_illegal_vectors_set_esr_and_raise_the_error_lvt() -> None:
    m = Machine(2)
    a, b = m.apics
    enable(a, b)
    m.bus.deliver(fixed(0x05))
    assert vectors(a, IRR) == [] and rd(a, ESR) == 0  # nothing latched yet
    assert esr(a) == ESR_RECEIVE_ILLEGAL
    assert esr(a) == 0  # the write cleared it
    wr(a, LVT_ERROR, 0xFE)
    send(a, DM_FIXED | 0x0F, dest=1)  # not sent
    assert vectors(b, IRR) == [] and esr(b) == 0
    assert vectors(a, IRR) == [0xFE] and m.cpus[0].intr
    assert esr(a) == ESR_SEND_ILLEGAL


# -- IPIs and destinations ---------------------------------------------------------------------


def test_fixed_ipi_by_physical_destination_and_icr_reads_idle() -> None:
    m = Machine(3)
    enable(*m.apics)
    send(m.apics[0], DM_FIXED | ICR_ASSERT | 0x70, dest=2)
    assert [vectors(a, IRR) for a in m.apics] == [[], [], [0x70]]
    assert m.cpus[2].intr
    assert rd(m.apics[0], ICR_LO) & DELIVERY_STATUS == 0
    assert rd(m.apics[0], ICR_LO) == ICR_ASSERT | 0x70 and rd(m.apics[0], ICR_HI) == 2 << 24


def test_written_xapic_id_routes_physical_destinations() -> None:
    m = Machine(2)
    enable(*m.apics)
    wr(m.apics[1], ID, 9 << 24)
    send(m.apics[0], 0x71, dest=9)
    assert vectors(m.apics[1], IRR) == [0x71]


def test_fixed_ipi_by_logical_flat_destination() -> None:
    m = Machine(3)
    enable(*m.apics)
    for i, apic in enumerate(m.apics):
        wr(apic, LDR, (1 << i) << 24)  # DFR stays flat
    send(m.apics[0], LOGICAL | 0x72, dest=0b110)
    assert [vectors(a, IRR) for a in m.apics] == [[], [0x72], [0x72]]


def test_fixed_ipi_by_logical_cluster_destination() -> None:
    m = Machine(3)
    enable(*m.apics)
    for apic, ldr in zip(m.apics, (0x11, 0x12, 0x21), strict=True):
        wr(apic, DFR, 0x0FFF_FFFF)
        wr(apic, LDR, ldr << 24)
    send(m.apics[0], LOGICAL | 0x73, dest=0x13)  # cluster 1, members 0 and 1
    send(m.apics[0], LOGICAL | 0x74, dest=0x21)  # cluster 2, member 0
    send(m.apics[0], LOGICAL | 0x75, dest=0x24)  # cluster 2, member 2: nobody
    assert [vectors(a, IRR) for a in m.apics] == [[0x73], [0x73], [0x74]]


@pytest.mark.parametrize("logical", [False, True], ids=["physical", "logical"])
def test_broadcast_destination_reaches_every_apic(logical: bool) -> None:
    m = Machine(3)
    enable(*m.apics)
    send(m.apics[1], (LOGICAL if logical else 0) | 0x76, dest=0xFF)
    assert [vectors(a, IRR) for a in m.apics] == [[0x76]] * 3


@pytest.mark.parametrize(
    ("shorthand", "expected"),
    [(SELF, [False, True, False]), (ALL_INCL, [True, True, True]), (ALL_EXCL, [True, False, True])],
    ids=["self", "all-including-self", "all-excluding-self"],
)
def test_shorthands(shorthand: int, expected: list[bool]) -> None:
    m = Machine(3)
    enable(*m.apics)
    send(m.apics[1], shorthand | 0x77, dest=0)  # the destination field is ignored
    assert [vectors(a, IRR) == [0x77] for a in m.apics] == expected
    assert rd(m.apics[1], ICR_LO) & DELIVERY_STATUS == 0


def test_init_startup_and_nmi_reach_the_cpu() -> None:
    m = Machine(2)
    bsp, ap = m.apics
    enable(bsp, ap)
    wr(ap, TPR, 0x20)
    wr(ap, LDR, 0x0400_0000)
    wr(ap, ID, 5 << 24)
    send(bsp, DM_INIT | ICR_ASSERT | LEVEL, dest=5)
    assert m.cpus[1].events == [("init", 0)]
    # INIT reset every register but the ID (and IA32_APIC_BASE).
    assert rd(ap, ID) == 5 << 24 and rd(ap, TPR) == 0 and rd(ap, LDR) == 0 and rd(ap, SVR) == 0xFF
    assert ap.apic_base == BASE | BASE_EN
    send(bsp, DM_INIT | LEVEL, dest=5)  # INIT level de-assert: nothing
    send(bsp, DM_STARTUP | 0x9A, dest=5)
    send(bsp, DM_NMI, dest=5)
    assert m.cpus[1].events == [("init", 0), ("startup", 0x9A), ("nmi", 0)]
    send(bsp, ALL_EXCL | DM_STARTUP | 0x10)  # the software-disabled AP still takes STARTUP
    assert m.cpus[1].events[-1] == ("startup", 0x10) and m.cpus[0].events == []


def test_lowest_priority_goes_to_the_lowest_ppr_ties_to_the_lowest_id() -> None:
    m = Machine(4)
    enable(*m.apics)
    for apic, tpr in zip(m.apics, (0x30, 0x20, 0x10, 0x10), strict=True):
        wr(apic, LDR, 0x0100_0000)
        wr(apic, TPR, tpr)
    send(m.apics[0], LOGICAL | DM_LOWEST | 0x80, dest=0x01)
    assert [vectors(a, IRR) for a in m.apics] == [[], [], [0x80], []]
    wr(m.apics[0], SVR, 0xFF)  # software-disabled: out of the arbitration
    wr(m.apics[3], TPR, 0)
    m.bus.deliver(InterruptMessage(0x81, DeliveryMode.LOWEST_PRIORITY, DestMode.LOGICAL, dest=0xFF))
    assert [vectors(a, IRR) for a in m.apics] == [[], [], [0x80], [0x81]]


def test_messages_do_not_reach_a_globally_disabled_apic() -> None:
    m = Machine(2)
    enable(*m.apics)
    assert m.apics[1].write_base(BASE)
    send(m.apics[0], ALL_INCL | 0x90)
    send(m.apics[0], ALL_EXCL | DM_NMI)
    assert vectors(m.apics[0], IRR) == [0x90] and m.cpus[1].events == []


# -- timer -------------------------------------------------------------------------------------


def test_divide_configuration() -> None:
    assert [divisor(v) for v in (0, 1, 2, 3, 8, 9, 10, 11)] == [2, 4, 8, 16, 32, 64, 128, 1]


def test_one_shot_fires_once_after_initial_times_divide_ticks() -> None:
    m = Machine()
    apic = m.apics[0]
    enable(apic)
    wr(apic, TIMER_DIVIDE, 3)  # divide by 16
    wr(apic, LVT_TIMER, 0xEC)
    wr(apic, TIMER_INITIAL, 1000)
    expiry = 1000 * 16 * 1_000_000_000 // TIMER_HZ  # 640 us
    assert rd(apic, TIMER_CURRENT) == 1000
    m.until(expiry // 2)
    assert rd(apic, TIMER_CURRENT) == 500
    m.until(expiry - 1)
    assert m.taken == [] and rd(apic, TIMER_CURRENT) == 1
    m.until(10 * expiry)
    assert m.taken == [(expiry, 0xEC)]
    assert rd(apic, TIMER_CURRENT) == 0 and rd(apic, TIMER_INITIAL) == 1000


def test_periodic_fires_at_exact_multiples_without_drift() -> None:
    hz = 3_000_000  # a period of 333333.33 ns: rounding each period would drift
    m = Machine(timer_hz=hz)
    apic = m.apics[0]
    enable(apic)
    wr(apic, TIMER_DIVIDE, 0xB)  # divide by 1
    wr(apic, LVT_TIMER, PERIODIC | 0xED)
    wr(apic, TIMER_INITIAL, 1000)
    m.until(100 * 1_000_000_000 * 1000 // hz + 1)
    expected = [-(-k * 1000 * 1_000_000_000 // hz) for k in range(1, 101)]
    assert [t for t, _ in m.taken] == expected
    assert {v for _, v in m.taken} == {0xED}


def test_periodic_current_count_reloads() -> None:
    m = Machine()
    apic = m.apics[0]
    enable(apic)
    wr(apic, TIMER_DIVIDE, 0xB)
    wr(apic, LVT_TIMER, PERIODIC | 0xED)
    wr(apic, TIMER_INITIAL, 100)  # 4 us at 25 MHz
    m.until(4_000 + 40 * 3)  # three ticks into the second period
    assert rd(apic, TIMER_CURRENT) == 97 and len(m.taken) == 1


def test_masked_timer_counts_but_does_not_interrupt() -> None:
    m = Machine()
    apic = m.apics[0]
    enable(apic)
    wr(apic, TIMER_DIVIDE, 0xB)
    wr(apic, LVT_TIMER, MASKED | PERIODIC | 0xEE)
    wr(apic, TIMER_INITIAL, 1000)  # 40 us
    m.until(10_000)
    assert rd(apic, TIMER_CURRENT) == 750
    m.until(200_000)
    assert m.taken == [] and vectors(apic, IRR) == [] and m.timers.next_deadline() is None
    wr(apic, LVT_TIMER, PERIODIC | 0xEE)  # unmasked: the next expiry of the same schedule
    m.until(239_999)
    assert m.taken == []
    m.until(240_000)
    assert m.taken == [(240_000, 0xEE)]


def test_one_shot_that_expired_while_masked_does_not_fire_when_unmasked() -> None:
    m = Machine()
    apic = m.apics[0]
    enable(apic)
    wr(apic, TIMER_DIVIDE, 0xB)
    wr(apic, LVT_TIMER, MASKED | 0xEE)
    wr(apic, TIMER_INITIAL, 100)
    m.until(10_000)
    wr(apic, LVT_TIMER, 0xEE)
    m.until(100_000)
    assert m.taken == [] and rd(apic, TIMER_CURRENT) == 0


def test_reprogramming_cancels_the_old_count_and_zero_stops_it() -> None:
    m = Machine()
    apic = m.apics[0]
    enable(apic)
    wr(apic, TIMER_DIVIDE, 0xB)
    wr(apic, LVT_TIMER, 0xEF)
    wr(apic, TIMER_INITIAL, 1000)  # would expire at 40 us
    m.until(20_000)
    wr(apic, TIMER_INITIAL, 1000)  # restarts: 60 us
    m.until(59_999)
    assert m.taken == []
    m.until(100_000)
    assert m.taken == [(60_000, 0xEF)]
    wr(apic, LVT_TIMER, PERIODIC | 0xEF)
    wr(apic, TIMER_INITIAL, 1000)
    m.until(120_000)
    wr(apic, TIMER_INITIAL, 0)
    m.until(1_000_000)
    assert m.taken == [(60_000, 0xEF)] and rd(apic, TIMER_CURRENT) == 0


def test_late_queue_delivers_a_due_expiry_before_a_reprogramming() -> None:
    """The machine ran the guest past the deadline before running timers: the interrupt still
    happened before the guest's next register write."""
    m = Machine()
    apic = m.apics[0]
    enable(apic)
    wr(apic, TIMER_DIVIDE, 0xB)
    wr(apic, LVT_TIMER, 0xEF)
    wr(apic, TIMER_INITIAL, 100)  # 4 us
    m.clock.t = 10_000  # no timers run
    wr(apic, LVT_TIMER, MASKED | 0xEF)
    assert vectors(apic, IRR) == [0xEF]


def test_tsc_deadline_fires_at_the_deadline_and_zero_disarms() -> None:
    m = Machine(tsc_deadline=True)
    apic = m.apics[0]
    enable(apic)
    assert apic.read_msr(MSR_TSC_DEADLINE) == 0
    assert apic.write_msr(MSR_TSC_DEADLINE, 1_000_000)  # ignored outside TSC-deadline mode
    assert apic.read_msr(MSR_TSC_DEADLINE) == 0
    wr(apic, LVT_TIMER, TSC_DEADLINE | 0xE0)
    assert rd(apic, LVT_TIMER) == TSC_DEADLINE | 0xE0
    wr(apic, TIMER_INITIAL, 1000)  # ignored in TSC-deadline mode
    assert rd(apic, TIMER_INITIAL) == 0 and rd(apic, TIMER_CURRENT) == 0
    assert apic.write_msr(MSR_TSC_DEADLINE, m.tsc.read() + 20_000)  # 10 us
    assert apic.read_msr(MSR_TSC_DEADLINE) == 20_000
    m.until(9_999)
    assert m.taken == []
    m.until(50_000)
    assert m.taken == [(10_000, 0xE0)]
    assert apic.read_msr(MSR_TSC_DEADLINE) == 0  # cleared when it fired
    apic.write_msr(MSR_TSC_DEADLINE, m.tsc.read() + 20_000)
    apic.write_msr(MSR_TSC_DEADLINE, 0)  # disarmed
    m.until(1_000_000)
    assert m.taken == [(10_000, 0xE0)]
    apic.write_msr(MSR_TSC_DEADLINE, 1)  # in the past: at once
    m.until(1_000_000)
    assert m.taken == [(10_000, 0xE0), (1_000_000, 0xE0)]


def test_tsc_deadline_needs_the_cpu_feature() -> None:
    m = Machine()
    apic = m.apics[0]
    enable(apic)
    assert apic.read_msr(MSR_TSC_DEADLINE) is None and not apic.write_msr(MSR_TSC_DEADLINE, 1)
    wr(apic, LVT_TIMER, TSC_DEADLINE | 0xE0)
    assert rd(apic, LVT_TIMER) == 0xE0  # bit 18 is reserved without the feature


def test_leaving_tsc_deadline_mode_disarms() -> None:
    m = Machine(tsc_deadline=True)
    apic = m.apics[0]
    enable(apic)
    wr(apic, LVT_TIMER, TSC_DEADLINE | 0xE0)
    apic.write_msr(MSR_TSC_DEADLINE, 20_000)
    wr(apic, LVT_TIMER, 0xE0)
    wr(apic, LVT_TIMER, TSC_DEADLINE | 0xE0)
    m.until(100_000)
    assert m.taken == [] and apic.read_msr(MSR_TSC_DEADLINE) == 0


# -- x2APIC and IA32_APIC_BASE -----------------------------------------------------------------


def test_x2apic_mode_through_apic_base() -> None:
    m = Machine(ids=[0x12345])
    apic = m.apics[0]
    assert apic.read_msr(X2_ID) is None  # xAPIC mode: x2APIC MSRs raise #GP
    assert not apic.write_msr(X2_TPR, 0)
    assert apic.write_msr(MSR_APIC_BASE, BASE | BASE_EN | BASE_EXTD)
    assert apic.mode.value == "x2apic" and apic.apic_base == BASE | BASE_EN | BASE_EXTD | BASE_BSP
    assert apic.read_msr(X2_ID) == 0x12345  # all 32 bits
    assert apic.read_msr(X2_LDR) == 0x1234 << 16 | 1 << 5  # cluster id >> 4, bit id & 15
    assert apic.read_msr(X2_VERSION) == 0x0005_0014
    assert m.moves == [(BASE, False)]
    # The MMIO page no longer answers.
    assert rd(apic, ID) == 0 and rd(apic, VERSION) == 0
    wr(apic, SVR, 0x1FF)
    assert apic.read_msr(X2_SVR) == 0xFF
    assert apic.write_msr(X2_SVR, 0x1FF) and apic.read_msr(X2_SVR) == 0x1FF


def test_x2apic_registers_and_gp_cases() -> None:
    m = Machine()
    apic = m.apics[0]
    apic.write_base(BASE | BASE_EN | BASE_EXTD)
    assert apic.write_msr(X2_SVR, 0x1FF) and apic.write_msr(X2_TPR, 0x20)
    assert apic.read_msr(X2_PPR) == 0x20
    assert not apic.write_msr(X2_ID, 5) and not apic.write_msr(X2_LDR, 0) and not apic.write_msr(X2_PPR, 0)
    assert apic.read_msr(X2_EOI) is None and apic.read_msr(X2_SELF_IPI) is None
    assert apic.read_msr(0x80E) is None and apic.read_msr(0x809) is None  # no DFR, no APR
    assert apic.read_msr(0x831) is None and apic.read_msr(0x82F) is None  # no ICR high, no CMCI
    assert not apic.write_msr(X2_TPR, 1 << 32)  # reserved upper half
    assert apic.write_msr(X2_SELF_IPI, 0x31)
    assert m.cpus[0].intr and apic.read_msr(X2_IRR + 1) == 1 << 0x11
    assert apic.acknowledge() == 0x31
    assert not apic.write_msr(X2_EOI, 1)  # a non-zero EOI raises #GP
    assert apic.write_msr(X2_EOI, 0) and not m.cpus[0].intr
    assert apic.write_msr(X2_SELF_IPI, 0x05)
    assert not apic.write_msr(X2_ESR, 1) and apic.write_msr(X2_ESR, 0)
    assert apic.read_msr(X2_ESR) == ESR_SEND_ILLEGAL
    assert apic.write_msr(X2_DIVIDE, 0xB) and apic.write_msr(X2_LVT_TIMER, 0xE1)
    assert apic.write_msr(X2_INITIAL, 250)  # 10 us
    m.clock.t = 4_000
    assert apic.read_msr(X2_CURRENT) == 150 and not apic.write_msr(X2_CURRENT, 0)


def test_x2apic_ipi_with_32_bit_destinations() -> None:
    m = Machine(3, ids=[0, 0x101, 0x112])
    for apic in m.apics:
        assert apic.write_base(apic.apic_base | BASE_EXTD)
        assert apic.write_msr(X2_SVR, 0x1FF)
    a = m.apics[0]
    assert a.write_msr(X2_ICR, 0x101 << 32 | 0x40)
    assert a.write_msr(X2_ICR, (0x11 << 16 | 1 << 2) << 32 | LOGICAL | 0x41)  # cluster 0x11, ID 0x112
    assert a.write_msr(X2_ICR, 0xFFFF_FFFF << 32 | 0x42)
    assert [vectors_x2(x) for x in m.apics] == [[0x42], [0x40, 0x42], [0x41, 0x42]]
    assert a.read_msr(X2_ICR) == 0xFFFF_FFFF << 32 | 0x42


def vectors_x2(apic: LocalApic) -> list[int]:
    bits = 0
    for i in range(8):
        value = apic.read_msr(X2_IRR + i)
        assert value is not None
        bits |= value << (32 * i)
    return [v for v in range(256) if bits >> v & 1]


def test_illegal_apic_base_writes_raise_gp() -> None:
    m = Machine()
    apic = m.apics[0]
    assert not apic.write_base(BASE | BASE_EXTD)  # EN=0, EXTD=1: invalid
    assert not apic.write_base(BASE | BASE_EN | 1)  # reserved bit 0
    assert not apic.write_base(1 << 40 | BASE_EN)  # beyond the physical address width
    assert apic.write_base(BASE | BASE_EN | BASE_EXTD)
    assert not apic.write_base(BASE | BASE_EN)  # x2APIC -> xAPIC directly
    assert apic.write_base(BASE)  # x2APIC -> disabled
    assert not apic.write_base(BASE | BASE_EN | BASE_EXTD)  # disabled -> x2APIC
    assert apic.write_base(BASE | BASE_EN)  # disabled -> xAPIC
    assert apic.apic_base == BASE | BASE_EN | BASE_BSP  # the BSP bit stays


def test_disabling_returns_registers_to_power_up_except_the_id() -> None:
    m = Machine(2)
    ap = m.apics[1]
    enable(ap)
    wr(ap, ID, 7 << 24)
    wr(ap, TPR, 0x30)
    wr(ap, LVT_LINT0, DM_EXTINT)
    m.bus.deliver(fixed(0x50, dest=7))
    assert ap.acknowledge() == 0x50
    assert ap.write_base(BASE)
    assert ap.mmio_window is None and ap.read_msr(X2_ID) is None and rd(ap, ID) == 0
    assert ap.write_base(BASE | BASE_EN)
    assert rd(ap, ID) == 7 << 24
    assert [rd(ap, r) for r in (TPR, SVR, LVT_LINT0)] == [0, 0xFF, MASKED]
    assert vectors(ap, ISR) == [] and vectors(ap, IRR) == []


def test_base_relocation_moves_the_mmio_window() -> None:
    m = Machine()
    apic = m.apics[0]
    assert apic.write_base(0xFEB0_0000 | BASE_EN)
    assert m.moves == [(0xFEB0_0000, True)] and apic.mmio_window == 0xFEB0_0000
    assert apic.write_base(0xFEB0_0000 | BASE_EN)  # no change: no call
    assert apic.write_base(0xFEB0_0000)
    assert apic.write_base(0xFEB0_0000 | BASE_EN | BASE_BSP)
    assert m.moves == [(0xFEB0_0000, True), (0xFEB0_0000, False), (0xFEB0_0000, True)]
    apic.reset()
    assert m.moves[-1] == (BASE, True) and apic.apic_base == BASE | BASE_EN | BASE_BSP


# -- LINT0/LINT1 -------------------------------------------------------------------------------


def test_lint0_extint_passes_the_8259_through_and_acknowledge_runs_its_inta() -> None:
    m = Machine(virtual_wire=True)
    apic, cpu = m.apics[0], m.cpus[0]
    assert rd(apic, LVT_LINT0) == DM_EXTINT and rd(apic, LVT_LINT1) == DM_NMI
    apic.set_lint(0, True)
    assert cpu.intr  # software-disabled as at power-on, yet the 8259 gets through
    assert apic.acknowledge() == 0x08 and m.extint_acks == 1
    apic.set_lint(0, False)
    assert not cpu.intr
    apic.set_lint(1, True)
    assert cpu.events == [("nmi", 0)]


def test_lint0_extint_has_priority_over_apic_vectors() -> None:
    m = Machine(virtual_wire=True)
    apic = m.apics[0]
    enable(apic)
    m.bus.deliver(fixed(0x90))
    apic.set_lint(0, True)
    assert apic.acknowledge() == 0x08
    apic.set_lint(0, False)
    assert apic.acknowledge() == 0x90


def test_masked_lint0_blocks_the_8259_and_a_disabled_apic_passes_it() -> None:
    m = Machine()
    apic, cpu = m.apics[0], m.cpus[0]
    apic.set_lint(0, True)
    assert not cpu.intr  # power-on per the SDM: LINT0 masked
    assert apic.write_base(BASE)  # globally disabled: LINT0 is the CPU's INTR pin
    assert cpu.intr and apic.acknowledge() == 0x08
    apic.set_lint(1, True)  # ... and LINT1 its NMI pin
    assert m.cpus[0].events == [("nmi", 0)]


class VirtualWire:
    """The 8259 pair on LINT0 of a local APIC, both on a port bus, as the machine wires them.
    `pause` makes the 8259 hold its lock a little longer while it drives LINT0."""

    def __init__(self, pause: float = 0) -> None:
        self.cpu = FakeCpu()
        self.bus = Bus()
        self.pic = PicPair(on_intr=self._intr)
        self.pic.register(self.bus)
        self.pause = pause
        timers = TimerQueue(ManualClock())
        self.apic = LocalApic(
            0, timers, ApicBus(), self.cpu, timer_hz=TIMER_HZ, bsp=True,
            extint_acknowledge=self.pic.acknowledge, virtual_wire=True,
        )  # fmt: skip
        for port, value in ((0x20, 0x11), (0x21, 0x08), (0x21, 0x04), (0x21, 0x01), (0x21, 0x00)):
            self.bus.pio_write(port, 1, value)  # ICW1-4 and OCW1 as a BIOS programs the master

    def _intr(self, level: bool) -> None:
        if self.pause:
            time.sleep(self.pause)
        self.apic.set_lint(0, level)


def test_virtual_wire_with_the_real_8259() -> None:
    w = VirtualWire()
    w.pic.set_irq(0, True)
    assert w.cpu.intr
    assert w.apic.acknowledge() == 0x08
    assert not w.cpu.intr  # INTA moved IRQ 0 to the 8259's ISR
    w.bus.pio_write(0x20, 1, 0x20)  # EOI to the 8259
    w.pic.set_irq(0, False)
    w.pic.set_irq(0, True)
    assert w.cpu.intr and w.apic.acknowledge() == 0x08


def test_devices_on_other_threads_do_not_deadlock_with_the_vcpu() -> None:
    """A device thread raises an 8259 line (the 8259's lock, then the APIC's) and another sends
    IPIs while the vCPU thread runs INTA cycles (the APIC's lock is released before the 8259's
    is taken)."""
    w = VirtualWire(pause=0.0002)
    w.bus.pio_write(0x4D0, 1, 1 << 4)  # IRQ 4 level-triggered: INTR also falls on the device's thread
    enable(w.apic)
    stop = threading.Event()
    taken: list[int] = []

    def device() -> None:
        while not stop.is_set():
            w.pic.set_irq(4, True)
            w.pic.set_irq(4, False)

    def sender() -> None:
        while not stop.is_set():
            w.apic.receive(fixed(0x40))
            time.sleep(0)

    def vcpu() -> None:
        while not stop.is_set() and not ({0x40, 0x0C} <= set(taken) and len(taken) > 20):
            if not w.cpu.intr:
                time.sleep(0)
                continue
            vector = w.apic.acknowledge()
            taken.append(vector)
            if vector == 0x40:
                wr(w.apic, EOI, 0)
            elif vector == 0x0C:
                w.bus.pio_write(0x20, 1, 0x20)  # 8259 EOI

    threads = [threading.Thread(target=f, daemon=True) for f in (vcpu, device, sender)]
    for t in threads:
        t.start()
    threads[0].join(10)
    stop.set()
    for t in threads:
        t.join(2)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert {0x40, 0x0C} <= set(taken) and len(taken) > 20


def test_level_triggered_fixed_lint0_redelivers_after_eoi_while_asserted() -> None:
    m = Machine()
    apic, cpu = m.apics[0], m.cpus[0]
    enable(apic)
    wr(apic, LVT_LINT0, LEVEL | 0x66)
    apic.set_lint(0, True)
    assert cpu.intr and apic.acknowledge() == 0x66
    assert rd(apic, LVT_LINT0) & 1 << 14  # remote IRR
    assert vectors(apic, TMR) == [0x66]
    wr(apic, EOI, 0)
    assert apic.acknowledge() == 0x66  # still asserted: again
    apic.set_lint(0, False)
    wr(apic, EOI, 0)
    assert not cpu.intr and rd(apic, LVT_LINT0) == LEVEL | 0x66


def test_edge_fixed_lint1_delivers_once_per_rising_edge() -> None:
    m = Machine()
    apic = m.apics[0]
    enable(apic)
    wr(apic, LVT_LINT1, 0x67)
    apic.set_lint(1, True)
    apic.set_lint(1, True)
    m.serve()
    apic.set_lint(1, False)
    apic.set_lint(1, True)
    m.serve()
    assert [v for _, v in m.taken] == [0x67, 0x67]


def test_extint_smi_and_reserved_messages() -> None:
    m = Machine(2)
    apic, cpu = m.apics[0], m.cpus[0]
    enable(*m.apics)
    m.bus.deliver(InterruptMessage(0, DeliveryMode.EXTINT, dest=0))  # an IOAPIC pin in ExtINT mode
    assert cpu.intr and apic.acknowledge() == 0x08 and m.extint_acks == 1 and not cpu.intr
    m.bus.deliver(InterruptMessage(0, DeliveryMode.SMI, dest=0))
    send(m.apics[1], 3 << 8 | 0x40, dest=0)  # delivery mode 011 is reserved
    send(m.apics[1], DM_EXTINT | 0x40, dest=0)  # not an ICR delivery mode
    assert cpu.events == [] and not cpu.intr and vectors(apic, IRR) == [] and esr(m.apics[1]) == 0


def test_extint_without_an_8259_is_spurious() -> None:
    clock = ManualClock()
    cpu = FakeCpu()
    apic = LocalApic(1, TimerQueue(clock), ApicBus(), cpu, timer_hz=TIMER_HZ, bsp=False)
    apic.receive(InterruptMessage(0, DeliveryMode.EXTINT, dest=1))
    assert cpu.intr and apic.acknowledge() == 0xFF and not cpu.intr


def test_lowest_priority_with_no_enabled_destination_is_dropped() -> None:
    m = Machine(2)
    m.bus.deliver(InterruptMessage(0x81, DeliveryMode.LOWEST_PRIORITY, DestMode.PHYSICAL, dest=0xFF))
    assert not any(cpu.intr for cpu in m.cpus)
    enable(*m.apics)
    assert vectors(m.apics[0], IRR) == vectors(m.apics[1], IRR) == []


def test_lint_init_and_polarity() -> None:
    m = Machine()
    apic = m.apics[0]
    enable(apic)
    wr(apic, TPR, 0x20)
    wr(apic, LVT_LINT1, DM_INIT)
    apic.set_lint(1, True)
    assert m.cpus[0].events == [("init", 0)] and rd(apic, TPR) == 0  # INIT reset the registers
    enable(apic)
    wr(apic, LVT_LINT1, 1 << 13 | DM_NMI)  # active low: asserted while the pin is low
    apic.set_lint(1, False)
    assert m.cpus[0].events[-1] == ("nmi", 0)


def test_xapic_write_to_a_reserved_register_is_an_error() -> None:
    m = Machine()
    apic = m.apics[0]
    wr(apic, 0x3F0, 0x40)  # SELF IPI exists only in x2APIC mode
    assert esr(apic) == ESR_ILLEGAL_REGISTER and vectors(apic, IRR) == []


def test_without_x2apic_extd_is_reserved() -> None:
    apic = LocalApic(0, TimerQueue(ManualClock()), ApicBus(), FakeCpu(), timer_hz=TIMER_HZ, bsp=True, x2apic=False)
    assert not apic.write_base(BASE | BASE_EN | BASE_EXTD)
    assert apic.mode.value == "xapic"


def test_divide_change_keeps_the_current_count() -> None:
    m = Machine()
    apic = m.apics[0]
    enable(apic)
    wr(apic, TIMER_DIVIDE, 0xB)  # by 1: 40 ns a count
    wr(apic, LVT_TIMER, 0xE3)
    wr(apic, TIMER_INITIAL, 1000)
    m.until(4_000)
    assert rd(apic, TIMER_CURRENT) == 900
    wr(apic, TIMER_DIVIDE, 0)  # by 2: 80 ns a count from here
    m.until(8_000)
    assert rd(apic, TIMER_CURRENT) == 850
    m.until(1_000_000)
    assert m.taken == [(4_000 + 900 * 80, 0xE3)]


def test_periodic_switched_to_one_shot_ends_with_the_current_period() -> None:
    m = Machine()
    apic = m.apics[0]
    enable(apic)
    wr(apic, TIMER_DIVIDE, 0xB)
    wr(apic, LVT_TIMER, PERIODIC | 0xE7)
    wr(apic, TIMER_INITIAL, 100)  # 4 us
    m.until(5_000)
    wr(apic, LVT_TIMER, 0xE7)
    assert rd(apic, TIMER_CURRENT) == 75
    m.until(100_000)
    assert m.taken == [(4_000, 0xE7), (8_000, 0xE7)] and rd(apic, TIMER_CURRENT) == 0


def test_reserved_timer_mode_is_one_shot() -> None:
    m = Machine(tsc_deadline=True)
    apic = m.apics[0]
    enable(apic)
    wr(apic, LVT_TIMER, 3 << 17 | 0xE4)
    assert rd(apic, LVT_TIMER) == 0xE4


def test_tsc_deadline_passing_while_masked_disarms_without_interrupt() -> None:
    m = Machine(tsc_deadline=True)
    apic = m.apics[0]
    enable(apic)
    wr(apic, LVT_TIMER, MASKED | TSC_DEADLINE | 0xE5)
    apic.write_msr(MSR_TSC_DEADLINE, 20_000)
    assert apic.read_msr(MSR_TSC_DEADLINE) == 20_000
    m.until(20_000)
    assert apic.read_msr(MSR_TSC_DEADLINE) == 0
    apic.write_msr(MSR_TSC_DEADLINE, 60_000)
    m.until(40_000)
    wr(apic, LVT_TIMER, TSC_DEADLINE | 0xE5)  # unmasked after the deadline: nothing
    m.until(100_000)
    assert m.taken == [] and apic.read_msr(MSR_TSC_DEADLINE) == 0


def test_tsc_deadline_waits_for_a_tsc_behind_the_clock() -> None:
    m = Machine(tsc_deadline=True)
    apic = m.apics[0]
    enable(apic)
    wr(apic, LVT_TIMER, TSC_DEADLINE | 0xE6)
    apic.write_msr(MSR_TSC_DEADLINE, 20_000)  # 10 us by the clock
    m.tsc.lag_ns = 3  # the TSC falls behind afterwards
    m.until(100_000)
    assert m.taken == [(10_003, 0xE6)]


# -- machine side ------------------------------------------------------------------------------


def test_reset_returns_to_power_on() -> None:
    m = Machine(tsc_deadline=True)
    apic, cpu = m.apics[0], m.cpus[0]
    enable(apic)
    wr(apic, LVT_TIMER, PERIODIC | 0xE2)
    wr(apic, TIMER_INITIAL, 10)
    m.bus.deliver(fixed(0x50))
    apic.write_base(BASE | BASE_EN | BASE_EXTD)
    apic.reset()
    assert apic.mode.value == "xapic" and not cpu.intr and m.timers.next_deadline() is None
    assert rd(apic, SVR) == 0xFF and vectors(apic, IRR) == [] and rd(apic, LVT_TIMER) == MASKED


def test_describe() -> None:
    m = Machine(tsc_deadline=True)
    apic = m.apics[0]
    enable(apic)
    wr(apic, TPR, 0x20)
    wr(apic, LVT_LINT0, DM_EXTINT)
    wr(apic, TIMER_DIVIDE, 0xB)
    wr(apic, LVT_TIMER, PERIODIC | 0xEC)
    wr(apic, TIMER_INITIAL, 1000)
    m.bus.deliver(fixed(0x31, level=True))
    m.clock.t = 4_000
    d = apic.describe()
    assert d["id"] == 0 and d["mode"] == "xapic" and d["software_enabled"]
    assert d["tpr"] == 0x20 and d["ppr"] == 0x20
    assert d["irr"] == [0x31] and d["tmr"] == [0x31] and d["isr"] == []
    assert d["lvt"]["lint0"] == {
        "raw": DM_EXTINT,
        "vector": 0,
        "masked": False,
        "delivery": "extint",
        "trigger": "edge",
        "active_low": False,
        "remote_irr": False,
    }
    assert d["lvt"]["timer"]["timer_mode"] == "periodic" and d["lvt"]["error"]["masked"]
    assert d["timer"]["mode"] == "periodic" and d["timer"]["initial_count"] == 1000
    assert d["timer"]["current_count"] == 900 and d["timer"]["divide"] == 1


def test_bus_rejects_duplicate_ids_and_subscribes_later_apics() -> None:
    m = Machine()
    eois = Eois()
    m.bus.subscribe_eoi(eois)
    late = LocalApic(1, m.timers, m.bus, FakeCpu(), timer_hz=TIMER_HZ, bsp=False)
    m.bus.register(late)
    with pytest.raises(ValueError, match="two local APICs"):
        m.bus.register(LocalApic(1, m.timers, m.bus, FakeCpu(), timer_hz=TIMER_HZ, bsp=False))
    enable(late)
    m.bus.deliver(fixed(0x60, dest=1, level=True))
    assert late.acknowledge() == 0x60
    wr(late, EOI, 0)
    assert eois.vectors == [0x60]
