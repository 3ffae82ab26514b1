"""rdmsr and wrmsr of chosen MSRs handled in Python under Unicorn.

Unicorn 2.1.4 has no hook for rdmsr/wrmsr (its instruction hooks refuse them, measured), so the
local APIC's MSRs (IA32_APIC_BASE, x2APIC, TSC_DEADLINE) and kvmclock's could not exist. QEMU's
TCG core, which Unicorn is, implements AMD SVM: an SVM guest whose VMCB asks for MSR intercepts
leaves to the host on rdmsr/wrmsr of every MSR marked in its MSR permission map. emu sets the
guest-mode flag, the MSR intercept bit and a VMCB address in the raw CPU state (the guest never
executes VMRUN and cannot see any of it), and serves the VMCB and the permission map from an MMIO
range above the guest's physical address space. The exit reaches Unicorn's interrupt hook as
exception 0x100 + SVM_EXIT_MSR with RIP at the instruction; emu performs the access and moves on.

Only the MSR intercept is armed: every other SVM intercept check (hlt, I/O, CR access,
exceptions) finds its bit clear, so the guest runs as before. MSRs outside the three ranges the
permission map covers always exit; with no handler they keep TCG's behaviour (read 0, writes
ignored).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable

import unicorn
from unicorn import x86_const as X

from emu import layout
from emu.backends.base import BackendUnavailable
from emu.backends.unicorn import rawstate as R
from emu.platform import MsrHandler

log = logging.getLogger("emu.unicorn")

SVM_EXIT_INTR = 0x60
SVM_EXIT_MSR = 0x7C
#: The exception index Unicorn's interrupt hook receives for an MSR exit (QEMU's EXCP_VMEXIT + code).
MSR_EXIT = 0x100 + SVM_EXIT_MSR
_INTERCEPT_MSR = 1 << (SVM_EXIT_MSR - SVM_EXIT_INTR)
_VMCB_MSRPM_BASE = 0x48  # control.msrpm_base_pa
_MSRPM_SIZE = 0x2000
# The permission map's ranges: (first MSR, bit offset of its read bit); 2 bits (read, write) per MSR.
_RANGES = ((0x0000_0000, 0), (0xC000_0000, 0x4000), (0xC001_0000, 0x8000))
_RANGE_LEN = 0x2000
RDMSR = b"\x0f\x32"
WRMSR = b"\x0f\x30"


def _bit(msr: int) -> int | None:
    """The read bit's index in the permission map (the write bit follows), None outside it."""
    for first, offset in _RANGES:
        if first <= msr < first + _RANGE_LEN:
            return offset + 2 * (msr - first)
    return None


class MsrIntercept:
    """The permission map the engine reads, and the dispatch of an intercepted access to the
    running vCPU's handler (each vCPU routes its own: emu/backends/unicorn/vcpu.py)."""

    def __init__(self) -> None:
        self._bitmap = bytearray(_MSRPM_SIZE)

    def intercept(self, msrs: Iterable[int]) -> None:
        """Make rdmsr/wrmsr of `msrs` exit (translated code needs no flush: the engine reads the
        map on every access)."""
        for msr in msrs:
            bit = _bit(msr)
            if bit is not None:
                self._bitmap[bit // 8] |= 3 << (bit % 8)

    def arm(self, raw: R.RawContext) -> None:
        """Make the CPU an SVM guest that exits on the mapped MSRs (an edit of a saved context)."""
        raw.set_u32(R.OFF_HFLAGS, raw.u32(R.OFF_HFLAGS) | R.HF_GUEST)
        raw.set_u64(R.OFF_VM_VMCB, layout.UNICORN_VMCB_ADDR)
        raw.set_u64(R.OFF_INTERCEPT, _INTERCEPT_MSR)

    # -- the tables, read by the engine through an MMIO mapping ------------------------------------
    def map_tables(self, uc: unicorn.Uc) -> None:
        uc.mmio_map(layout.UNICORN_VMCB_ADDR, layout.UNICORN_INTERCEPT_SIZE, self._read_tables, None,
                    self._ignore_write, None)  # fmt: skip

    def _read_tables(self, uc: unicorn.Uc, offset: int, size: int, _ud: object) -> int:
        addr = layout.UNICORN_VMCB_ADDR + offset
        if addr == layout.UNICORN_VMCB_ADDR + _VMCB_MSRPM_BASE:
            return layout.UNICORN_MSRPM_ADDR & (1 << 8 * size) - 1
        if addr == layout.UNICORN_VMCB_ADDR + _VMCB_MSRPM_BASE + 4:
            return layout.UNICORN_MSRPM_ADDR >> 32
        start = addr - layout.UNICORN_MSRPM_ADDR
        if start >= 0 and start + size <= _MSRPM_SIZE:
            return int.from_bytes(self._bitmap[start : start + size], "little")
        return 0

    def _ignore_write(self, uc: unicorn.Uc, offset: int, size: int, value: int, _ud: object) -> None:
        pass  # the exit code QEMU stores into the VMCB: emu decodes the instruction instead

    # -- an exit --------------------------------------------------------------------------------
    @staticmethod
    def access(uc: unicorn.Uc, write: bool, handlers: dict[int, MsrHandler]) -> bool:
        """Perform the intercepted rdmsr (`write` False) or wrmsr with the vCPU's `handlers`;
        False: the CPU raises #GP(0)."""
        msr = uc.reg_read(X.UC_X86_REG_ECX) & 0xFFFF_FFFF
        handler = handlers.get(msr)
        if write:
            value = (uc.reg_read(X.UC_X86_REG_EDX) & 0xFFFF_FFFF) << 32 | uc.reg_read(X.UC_X86_REG_EAX) & 0xFFFF_FFFF
            return handler.write_msr(msr, value) if handler is not None else True
        result = handler.read_msr(msr) if handler is not None else 0
        if result is None:
            return False
        uc.reg_write(X.UC_X86_REG_RAX, result & 0xFFFF_FFFF)
        uc.reg_write(X.UC_X86_REG_RDX, result >> 32 & 0xFFFF_FFFF)
        return True


@functools.cache
def self_test() -> None:
    """Check on a scratch engine that the intercept works on this Unicorn build: an rdmsr of an
    MSR outside the permission map's ranges must reach the interrupt hook as an MSR exit."""
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    uc.mem_map(0x1000, 0x1000)
    code = b"\xb9\x00\x4d\x56\x4b" + RDMSR + b"\xf4"  # mov ecx, 0x4b564d00; rdmsr; hlt
    uc.mem_write(0x1000, code)
    seen: list[int] = []

    def on_intr(uc: unicorn.Uc, intno: int, _ud: object) -> None:
        seen.append(intno)
        uc.emu_stop()

    intercept = MsrIntercept()
    intercept.map_tables(uc)
    uc.hook_add(unicorn.UC_HOOK_INTR, on_intr)
    raw = R.RawContext.save(uc)
    intercept.arm(raw)
    raw.restore(uc)
    try:
        uc.emu_start(0x1000, 0x1000 + len(code), count=3)
    except unicorn.UcError as e:
        raise BackendUnavailable(f"Unicorn's MSR intercept does not work on this build ({e})") from None
    if seen != [MSR_EXIT]:
        raise BackendUnavailable(f"Unicorn's MSR intercept does not work on this build (exits seen: {seen})")
