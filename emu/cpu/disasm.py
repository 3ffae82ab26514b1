"""x86 disassembly with capstone, in the code size the CPU was using (16, 32 or 64 bits)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import capstone

from emu.cpu.state import CpuState, Mode

# QEMU hflags bits that give the code size of a translation block (see unicorn/rawstate.py).
_HF_CS32 = 1 << 4
_HF_CS64 = 1 << 15


@dataclass(frozen=True)
class Insn:
    address: int  # linear
    data: bytes
    text: str  # "mnemonic operands"


@functools.cache
def _engine(bits: int) -> capstone.Cs:
    mode = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}[bits]
    return capstone.Cs(capstone.CS_ARCH_X86, mode)


def code_bits(state: CpuState) -> int:
    """The default operand/address size of the code CS selects: 16, 32 or 64."""
    mode = state.mode
    if mode is Mode.LONG:
        return 64
    if mode in (Mode.REAL, Mode.VM86):
        return 16
    return 32 if state.cs.db else 16


def bits_from_hflags(hflags: int) -> int:
    if hflags & _HF_CS64:
        return 64
    return 32 if hflags & _HF_CS32 else 16


def disassemble(code: bytes, address: int, bits: int, count: int = 0) -> list[Insn]:
    """Decode `code` as if it sat at linear `address`; stops at the first undecodable byte
    (which is returned as a `(bad)` pseudo-instruction so the reader sees where decoding ended)."""
    out: list[Insn] = []
    pos = 0
    for insn in _engine(bits).disasm(code, address, count):
        out.append(Insn(insn.address, bytes(insn.bytes), f"{insn.mnemonic} {insn.op_str}".strip()))
        pos += insn.size
        if count and len(out) >= count:
            return out
    if pos < len(code) and (not count or len(out) < count):
        out.append(Insn(address + pos, code[pos : pos + 1], "(bad)"))
    return out
