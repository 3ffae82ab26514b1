"""kvmclock, KVM's paravirtual clock, kept by emu for backends without one (Unicorn).

A guest that finds KVM's CPUID signature with the clocksource features writes the guest-physical
address of a `pvclock_vcpu_time_info` to MSR_KVM_SYSTEM_TIME_NEW (bit 0: enable) and of a
`pvclock_wall_clock` to MSR_KVM_WALL_CLOCK_NEW. It then reads time without exits: system_time
plus the TSC ticks since tsc_timestamp, scaled by tsc_to_system_mul and tsc_shift. emu fills the
structures once, from one reading of the guest TSC and the machine clock taken together; both
run at fixed rates (the host's, or virtual time's), so the guest's kvmclock agrees with the PIT,
the HPET and the PM timer, and the stable bit is honest.

Layouts and MSR numbers: Linux's Documentation/virt/kvm/x86/msr.rst (pvclock ABI).
"""

from __future__ import annotations

import logging
import struct
from fractions import Fraction

from emu.errors import GuestMemoryError
from emu.memory import GuestMemory
from emu.platform import GuestTsc, MsrHandler
from emu.timers import Clock, wall_ns_at_zero

log = logging.getLogger("emu.kvmclock")

MSR_KVM_WALL_CLOCK = 0x11
MSR_KVM_SYSTEM_TIME = 0x12
MSR_KVM_WALL_CLOCK_NEW = 0x4B56_4D00
MSR_KVM_SYSTEM_TIME_NEW = 0x4B56_4D01
MSRS = (MSR_KVM_WALL_CLOCK, MSR_KVM_SYSTEM_TIME, MSR_KVM_WALL_CLOCK_NEW, MSR_KVM_SYSTEM_TIME_NEW)

PVCLOCK_TSC_STABLE_BIT = 1 << 0
_TIME_INFO = struct.Struct("<IIQQIbB2x")  # version, pad, tsc_timestamp, system_time, mul, shift, flags
_WALL_CLOCK = struct.Struct("<III")  # version, sec, nsec
_NS = 1_000_000_000


def time_scale(tsc_khz: int) -> tuple[int, int]:
    """(tsc_to_system_mul, tsc_shift) with ns = ((ticks << shift, or >> -shift) * mul) >> 32: the
    smallest shift that keeps mul below 2^32, so mul keeps the most precision."""
    ns_per_tick = Fraction(1_000_000, tsc_khz)
    shift = 0
    while Fraction(2) ** shift <= ns_per_tick:
        shift += 1
    while Fraction(2) ** (shift - 1) > ns_per_tick:
        shift -= 1
    return int(ns_per_tick * 2**32 / Fraction(2) ** shift), shift


class KvmClock:
    """kvmclock's shared part: the structures the MSRs point at, from one clock reading; each
    vCPU's MSRs are `handler(cpu)`."""

    def __init__(self, memory: GuestMemory, clock: Clock, tsc: GuestTsc, *, epoch: float | None = None,
                 cpus: int = 1) -> None:  # fmt: skip
        """`epoch`: the wall-clock time (Unix seconds) at clock time 0 of a deterministic run; None:
        the host's time now. `cpus`: vCPUs, each with its own MSRs (`handler(cpu)`)."""
        self._memory = memory
        self._clock = clock
        self._tsc = tsc
        self._start_ns = clock.now_ns()  # system_time counts from here: the guest's uptime
        # The wall-clock time at system_time 0: what the guest adds system_time to.
        self._wall_at_start = wall_ns_at_zero(clock, epoch) + self._start_ns
        self._mul, self._shift = time_scale(tsc.khz)
        self._cpus = [KvmClockMsrs(self) for _ in range(cpus)]
        # One (TSC, clock) reading for every vCPU's structure: readings taken apart would differ
        # by their sampling error, and a guest trusting the stable bit would see time step back
        # between CPUs. Both run at fixed rates, so one reading serves for ever.
        self._reference: tuple[int, int] | None = None

    def handler(self, cpu: int) -> MsrHandler:
        """The kvmclock MSRs of vCPU `cpu`."""
        return self._cpus[cpu]

    def written(self, msr: int, value: int) -> None:
        """A vCPU wrote `value` to kvmclock MSR `msr`: fill the structure it points at."""
        if msr in (MSR_KVM_SYSTEM_TIME, MSR_KVM_SYSTEM_TIME_NEW) and value & 1:
            self._write(value & ~0x1F, self._time_info(), "system time")  # 32-byte aligned
        elif msr in (MSR_KVM_WALL_CLOCK, MSR_KVM_WALL_CLOCK_NEW):
            wall = self._wall_at_start
            self._write(value, _WALL_CLOCK.pack(2, wall // _NS, wall % _NS), "wall clock")

    def reset(self) -> None:
        for msrs in self._cpus:
            msrs.reset()
        self._reference = None

    def _time_info(self) -> bytes:
        if self._reference is None:
            self._reference = self._tsc.read(), self._clock.now_ns()
        tsc, ns = self._reference
        # An even version: the guest reads a consistent copy (emu writes while the vCPU is stopped).
        return _TIME_INFO.pack(2, 0, tsc, ns - self._start_ns, self._mul, self._shift, PVCLOCK_TSC_STABLE_BIT)

    def _write(self, addr: int, data: bytes, what: str) -> None:
        try:
            self._memory.write(addr, data)
        except GuestMemoryError:
            log.debug("kvmclock %s at %#x is outside guest RAM: ignored", what, addr)


class KvmClockMsrs:
    """One vCPU's kvmclock MSRs (emu.platform.MsrHandler) over the shared clock."""

    def __init__(self, clock: KvmClock) -> None:
        self._clock = clock
        self._values = dict.fromkeys(MSRS, 0)

    def read_msr(self, msr: int) -> int | None:
        return self._values.get(msr)

    def write_msr(self, msr: int, value: int) -> bool:
        if msr not in self._values:
            return False
        self._values[msr] = value
        self._clock.written(msr, value)
        return True

    def reset(self) -> None:
        self._values = dict.fromkeys(MSRS, 0)
