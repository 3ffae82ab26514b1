"""Register names as a debugger user types them (rax, eax, ax, al, ah, rip, cs, cr0, zf, ...), read
from a CpuState, and the decoded bit names of RFLAGS, CR0, CR4 and EFER."""

from __future__ import annotations

from emu.cpu import x86
from emu.cpu.state import SEGMENT_NAMES, CpuState

_LEGACY = ("ax", "bx", "cx", "dx", "si", "di", "sp", "bp")
_SEGS = SEGMENT_NAMES
FLAG_BITS = {
    "cf": 0, "pf": 2, "af": 4, "zf": 6, "sf": 7, "tf": 8, "if": 9, "df": 10, "of": 11,
    "nt": 14, "rf": 16, "vm": 17, "ac": 18, "vif": 19, "vip": 20, "id": 21,
}  # fmt: skip
CR0_BITS = {f.name: f.value for f in x86.Cr0 if f.name}
CR4_BITS = {f.name: f.value for f in x86.Cr4 if f.name}
EFER_BITS = {f.name: f.value for f in x86.Efer if f.name}


def _table() -> dict[str, tuple[str, int, int]]:
    """name -> (CpuState field, shift, width in bits)."""
    t: dict[str, tuple[str, int, int]] = {}
    for r in _LEGACY:
        full = "r" + r
        t[full] = (full, 0, 64)
        t["e" + r] = (full, 0, 32)
        t[r] = (full, 0, 16)
        if r[1] == "x":
            t[r[0] + "l"] = (full, 0, 8)
            t[r[0] + "h"] = (full, 8, 8)
        else:
            t[r + "l"] = (full, 0, 8)
    for i in range(8, 16):
        t[f"r{i}"] = (f"r{i}", 0, 64)
        t[f"r{i}d"] = (f"r{i}", 0, 32)
        t[f"r{i}w"] = (f"r{i}", 0, 16)
        t[f"r{i}b"] = (f"r{i}", 0, 8)
    t["rip"], t["eip"], t["ip"] = ("rip", 0, 64), ("rip", 0, 32), ("rip", 0, 16)
    t["rflags"], t["eflags"], t["flags"] = ("rflags", 0, 64), ("rflags", 0, 32), ("rflags", 0, 16)
    for name, bit in FLAG_BITS.items():
        t[name] = ("rflags", bit, 1)
    t["iopl"] = ("rflags", 12, 2)
    for cr in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "dr0", "dr1", "dr2", "dr3", "dr6", "dr7"):
        t[cr] = (cr, 0, 64)
    return t


REGISTERS = _table()


def known(name: str) -> bool:
    name = name.lower()
    return name in REGISTERS or name in _SEGS or (name.endswith("_base") and name[:-5] in _SEGS) or name == "cpl"


def read_register(state: CpuState, name: str) -> int:
    """The value of `name` in `state`; segment names give the selector, `cs_base` the base."""
    name = name.lower()
    if name in _SEGS:
        return getattr(state, name).selector
    if name.endswith("_base") and name[:-5] in _SEGS:
        return getattr(state, name[:-5]).base
    if name == "cpl":
        return state.cpl
    try:
        field, shift, width = REGISTERS[name]
    except KeyError:
        raise KeyError(f"unknown register {name!r}") from None
    return (getattr(state, field) >> shift) & ((1 << width) - 1)


def bit_names(value: int, bits: dict[str, int]) -> list[str]:
    """The names of the set bits (multi-bit masks count when fully set), low bits first."""
    return [name for name, mask in sorted(bits.items(), key=lambda kv: kv[1]) if value & mask == mask]


def flag_names(rflags: int) -> list[str]:
    names = [n.upper() for n, bit in FLAG_BITS.items() if rflags >> bit & 1]
    return [*names, f"IOPL={rflags >> 12 & 3}"]
