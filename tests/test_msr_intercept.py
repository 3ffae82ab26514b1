"""rdmsr/wrmsr under Unicorn reach emu's handlers through the SVM MSR intercept
(emu/backends/unicorn/msr_intercept.py), and kvmclock fills its structures from them."""

from __future__ import annotations

import struct
from pathlib import Path

from guests.backends import require

from emu.config import BackendName, MachineConfig
from emu.devices.kvmclock import MSR_KVM_SYSTEM_TIME_NEW, MSR_KVM_WALL_CLOCK_NEW, KvmClock, time_scale
from emu.machine import Machine
from emu.memory import GuestMemory
from emu.timers import ManualClock
from emu.tools.asm import assemble

GUEST = """
bits 16
org 0x8000
    mov word [13 * 4], gp_handler   ; real-mode IVT: #GP
    mov word [13 * 4 + 2], 0
    mov ecx, 0x4b564d01             ; outside the permission map's ranges: always exits
    rdmsr
    mov [0x600], eax
    mov [0x604], edx
    mov ecx, 0x1b                   ; inside range 0: exits because the map marks it
    rdmsr                           ; the handler refuses: #GP(0)
    mov ecx, 0x12345678             ; no handler, outside the ranges: TCG's read-as-0
    mov eax, 0xffffffff
    rdmsr
    mov [0x608], eax
    mov ecx, 0x4b564d00
    mov eax, 0xdeadbeef
    mov edx, 0x1
    wrmsr
    mov ecx, 0xc0000080             ; EFER: not routed, so Unicorn's own
    rdmsr
    mov [0x60c], eax
    cli
    hlt
gp_handler:
    inc byte [0x610]
    push bp
    mov bp, sp
    add word [bp + 2], 2            ; skip the 2-byte rdmsr
    pop bp
    iret
"""


class Recorder:
    def __init__(self) -> None:
        self.writes: list[tuple[int, int]] = []

    def read_msr(self, msr: int) -> int | None:
        return 0x1122_3344_5566_7788 if msr == 0x4B56_4D01 else None

    def write_msr(self, msr: int, value: int) -> bool:
        self.writes.append((msr, value))
        return True


def test_routed_msrs_reach_their_handler_and_refusals_raise_gp(tmp_path: Path) -> None:
    image = tmp_path / "msr.img"
    image.write_bytes(assemble(GUEST, name="msr_intercept"))
    rec = Recorder()
    with Machine(MachineConfig(backend=BackendName.UNICORN, mem=8 << 20, image=image, load_addr=0x8000)) as m:
        routers = m.backend.msr_routers()
        assert routers is not None
        router = routers[0]
        router.route((0x1B, 0x4B56_4D00, 0x4B56_4D01), rec)
        result = m.run()
        assert result.status == 0, result.reason
        mem = m.memory
        assert mem.read_u32(0x600) == 0x5566_7788 and mem.read_u32(0x604) == 0x1122_3344
        assert mem.read_u8(0x610) == 1  # exactly one #GP: the refused read of 0x1b
        assert mem.read_u32(0x608) == 0  # an unknown MSR reads 0, as under plain TCG
        assert rec.writes == [(0x4B56_4D00, 0x1_DEAD_BEEF)]
        assert mem.read_u32(0x60C) == 0  # EFER after reset, from Unicorn itself


AFTER_INT3 = """
bits 16
org 0x8000
    mov word [3 * 4], int3_handler  ; real-mode IVT: int3
    mov word [3 * 4 + 2], 0
    int3                            ; leaves Unicorn's exception_is_int set
    mov ecx, 0x4b564d01
    rdmsr                           ; an MSR exit right after: EIP must stay at this rdmsr
    mov [0x600], eax
    mov byte [0x604], 1             ; reached once, after the rdmsr
    cli
    hlt
int3_handler:
    inc byte [0x605]
    iret
"""


def test_an_msr_exit_after_int3_keeps_its_rip(tmp_path: Path) -> None:
    """Unicorn sets EIP to exception_next_eip before the interrupt hook whenever exception_is_int
    is set, and an MSR exit never clears it: after an int3, the exit arrived at the int3 handler's
    address instead of the rdmsr's (Linux lost an MSR read and swapped GS wrongly). Fixed by
    clearing it with every delivery."""
    image = tmp_path / "after_int3.img"
    image.write_bytes(assemble(AFTER_INT3, name="msr_after_int3"))
    with Machine(MachineConfig(backend=BackendName.UNICORN, mem=8 << 20, image=image, load_addr=0x8000)) as m:
        routers = m.backend.msr_routers()
        assert routers is not None
        router = routers[0]
        router.route((0x4B56_4D01,), Recorder())
        result = m.run()
        assert result.status == 0, result.reason
        assert m.memory.read_u32(0x600) == 0x5566_7788
        assert (m.memory.read_u8(0x604), m.memory.read_u8(0x605)) == (1, 1)


def test_kvm_runs_msrs_in_the_kernel_and_offers_no_router(tmp_path: Path) -> None:
    require(BackendName.KVM)
    image = tmp_path / "hlt.img"
    image.write_bytes(b"\xf4")
    with Machine(MachineConfig(backend=BackendName.KVM, mem=8 << 20, image=image)) as m:
        assert m.backend.msr_routers() is None


class FixedTsc:
    khz = 2_000_000

    def __init__(self) -> None:
        self.value = 0

    def read(self) -> int:
        return self.value


def test_kvmclock_structures_give_the_guest_the_machine_clock() -> None:
    clock = ManualClock(5_000_000_000)
    tsc = FixedTsc()
    memory = GuestMemory(8 << 20)
    try:
        kc = KvmClock(memory, clock, tsc, epoch=1_704_067_200).handler(0)
        clock.advance(3_000_000)  # 3 ms after start
        tsc.value = 123_456_789
        assert kc.write_msr(MSR_KVM_SYSTEM_TIME_NEW, 0x5000 | 1)
        version, _, tsc_ts, system_time, mul, shift, flags = struct.unpack("<IIQQIbB", memory.read(0x5000, 30))
        assert version % 2 == 0 and flags & 1  # consistent copy, TSC stable
        assert tsc_ts == 123_456_789 and system_time == 3_000_000
        # What the guest computes 1 s of TSC later: 1 s more.
        delta = 2_000_000_000
        delta = delta << shift if shift >= 0 else delta >> -shift
        assert system_time + (delta * mul >> 32) == 1_003_000_000
        assert kc.write_msr(MSR_KVM_WALL_CLOCK_NEW, 0x6000)
        _, sec, nsec = struct.unpack("<III", memory.read(0x6000, 12))
        # Wall time at system_time 0, i.e. when the device was made: the epoch (wall time at clock
        # 0) plus the 5 s the clock had then. (The first version wrote the epoch itself, so a guest
        # on host time read a wall clock behind by the host clock's reading: caught in review.)
        assert (sec, nsec) == (1_704_067_200 + 5, 0)
        assert kc.read_msr(MSR_KVM_SYSTEM_TIME_NEW) == 0x5001
        assert kc.read_msr(0x1234) is None and not kc.write_msr(0x1234, 0)
    finally:
        memory.close()


def test_time_scale_keeps_a_second_a_second() -> None:
    for khz in (100, 1_000_000, 2_000_000, 2_600_000, 3_700_000):
        mul, shift = time_scale(khz)
        assert 1 << 31 <= mul < 1 << 32
        ticks = khz * 1000
        scaled = ticks << shift if shift >= 0 else ticks >> -shift
        assert abs((scaled * mul >> 32) - 1_000_000_000) <= 1
