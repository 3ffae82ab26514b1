"""Conversions between CpuState and KVM's register structs (kvm_regs, kvm_sregs, kvm_fpu, ...)."""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

from emu.cpu.state import ALL_SEGMENT_NAMES, GPR_NAMES, CpuState, DescriptorTable, FpuState, Segment

# Segment is kvm_segment field for field (same names); kvm_sregs names its segments as CpuState.
_SEGMENT_FIELDS = tuple(f.name for f in dataclasses.fields(Segment))

CData = Any  # a cffi cdata object (cffi ships no type information)


def segment_from_kvm(k: CData) -> Segment:
    return Segment(**{f: int(getattr(k, f)) for f in _SEGMENT_FIELDS})


def segment_to_kvm(seg: Segment, k: CData) -> None:
    for f in _SEGMENT_FIELDS:
        setattr(k, f, getattr(seg, f))
    k.padding = 0


def regs_to_state(regs: CData, state: CpuState) -> None:
    for name in GPR_NAMES:
        setattr(state, name, int(getattr(regs, name)))
    state.rip = int(regs.rip)
    state.rflags = int(regs.rflags)


def state_to_regs(state: CpuState, regs: CData) -> None:
    for name in GPR_NAMES:
        setattr(regs, name, getattr(state, name))
    regs.rip = state.rip
    regs.rflags = state.rflags


def sregs_to_state(sregs: CData, state: CpuState) -> None:
    for name in ALL_SEGMENT_NAMES:
        setattr(state, name, segment_from_kvm(getattr(sregs, name)))
    state.gdt = DescriptorTable(int(sregs.gdt.base), int(sregs.gdt.limit))
    state.idt = DescriptorTable(int(sregs.idt.base), int(sregs.idt.limit))
    for name in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer"):
        setattr(state, name, int(getattr(sregs, name)))


def state_to_sregs(state: CpuState, sregs: CData) -> None:
    """Fill `sregs` from `state`; apic_base is left as the caller read it from KVM."""
    for name in ALL_SEGMENT_NAMES:
        segment_to_kvm(getattr(state, name), getattr(sregs, name))
    for name in ("gdt", "idt"):
        table, k = getattr(state, name), getattr(sregs, name)
        k.base, k.limit = table.base, table.limit
        k.padding = [0, 0, 0]
    for name in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer"):
        setattr(sregs, name, getattr(state, name))
    # A set bit here queues an interrupt on hosts without an in-kernel APIC: never wanted.
    sregs.interrupt_bitmap = [0, 0, 0, 0]


def fpu_to_state(fpu: CData) -> FpuState:
    """From kvm_fpu (the fallback for hosts without XSAVE; see KvmBackend._get_fpu)."""
    return FpuState(
        fcw=int(fpu.fcw), fsw=int(fpu.fsw), ftw=int(fpu.ftwx), fop=int(fpu.last_opcode),
        fip=int(fpu.last_ip), fdp=int(fpu.last_dp),
        st=[bytes(fpu.fpr[i])[:10] for i in range(8)],
        xmm=[bytes(fpu.xmm[i]) for i in range(16)],
        mxcsr=int(fpu.mxcsr),
    )  # fmt: skip


def state_to_fpu(f: FpuState, fpu: CData) -> None:
    if len(f.st) != 8 or len(f.xmm) != 16:
        raise ValueError("FpuState needs 8 x87 registers and 16 XMM registers")
    fpu.fcw, fpu.fsw, fpu.ftwx, fpu.pad1 = f.fcw, f.fsw, f.ftw, 0
    fpu.last_opcode, fpu.last_ip, fpu.last_dp = f.fop, f.fip, f.fdp
    for i, st in enumerate(f.st):
        if len(st) != 10:
            raise ValueError(f"ST({i}) must be 10 bytes (an 80-bit register), not {len(st)}")
        fpu.fpr[i] = list(st + bytes(6))  # FXSAVE layout: each register in a 16-byte slot
    for i, xmm in enumerate(f.xmm):
        if len(xmm) != 16:
            raise ValueError(f"XMM{i} must be 16 bytes, not {len(xmm)}")
        fpu.xmm[i] = list(xmm)
    fpu.mxcsr, fpu.pad2 = f.mxcsr, 0


# The FXSAVE image that opens every XSAVE buffer, and the XSAVE header right after it.
_FXSAVE_HEAD = struct.Struct("<HHBxHQQI")  # fcw, fsw, abridged ftw, fop, fip, fdp, mxcsr
_FXSAVE_ST = 32  # ST(0..7), 16 bytes apart
_FXSAVE_XMM = 160  # XMM0..15, 16 bytes each
_XSTATE_BV = struct.Struct("<Q")
_XSAVE_HEADER = 512
XFEATURE_X87_SSE = 0b11


def xsave_to_fpu(buf: memoryview) -> FpuState:
    """Read x87/SSE state from a KVM_GET_XSAVE buffer (KVM fills in init values where unused)."""
    fcw, fsw, ftw, fop, fip, fdp, mxcsr = _FXSAVE_HEAD.unpack_from(buf, 0)
    st = [bytes(buf[_FXSAVE_ST + 16 * i : _FXSAVE_ST + 16 * i + 10]) for i in range(8)]
    xmm = [bytes(buf[_FXSAVE_XMM + 16 * i : _FXSAVE_XMM + 16 * i + 16]) for i in range(16)]
    return FpuState(fcw=fcw, fsw=fsw, ftw=ftw, fop=fop, fip=fip, fdp=fdp, st=st, xmm=xmm, mxcsr=mxcsr)


def fpu_to_xsave(f: FpuState, buf: memoryview) -> None:
    """Write x87/SSE state into a buffer read with KVM_GET_XSAVE (other components are kept).

    Both components are marked in use in XSTATE_BV: otherwise the CPU's XRSTOR would load
    their init values instead of these.
    """
    if len(f.st) != 8 or len(f.xmm) != 16:
        raise ValueError("FpuState needs 8 x87 registers and 16 XMM registers")
    _FXSAVE_HEAD.pack_into(buf, 0, f.fcw, f.fsw, f.ftw, f.fop, f.fip, f.fdp, f.mxcsr)
    for i, st in enumerate(f.st):
        if len(st) != 10:
            raise ValueError(f"ST({i}) must be 10 bytes (an 80-bit register), not {len(st)}")
        buf[_FXSAVE_ST + 16 * i : _FXSAVE_ST + 16 * i + 16] = st + bytes(6)
    for i, xmm in enumerate(f.xmm):
        if len(xmm) != 16:
            raise ValueError(f"XMM{i} must be 16 bytes, not {len(xmm)}")
        buf[_FXSAVE_XMM + 16 * i : _FXSAVE_XMM + 16 * i + 16] = xmm
    (bv,) = _XSTATE_BV.unpack_from(buf, _XSAVE_HEADER)
    _XSTATE_BV.pack_into(buf, _XSAVE_HEADER, bv | XFEATURE_X87_SSE)


def debugregs_to_state(dr: CData, state: CpuState) -> None:
    state.dr0, state.dr1, state.dr2, state.dr3 = (int(dr.db[i]) for i in range(4))
    state.dr6, state.dr7 = int(dr.dr6), int(dr.dr7)


def state_to_debugregs(state: CpuState, dr: CData) -> None:
    dr.db = [state.dr0, state.dr1, state.dr2, state.dr3]
    dr.dr6, dr.dr7, dr.flags = state.dr6, state.dr7, 0
