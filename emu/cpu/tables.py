"""Descriptor tables read as the CPU reads them: IDT gates, GDT/LDT segment descriptors and
64-bit TSS stack pointers, at linear addresses through the guest's paging, decoded into words.
Fault reports list the entries a fault chain involved; the debugger shows whole tables."""

from __future__ import annotations

from dataclasses import dataclass

from emu.cpu import x86
from emu.cpu.linear import Fault, LinearMemory
from emu.cpu.state import CpuState, Mode
from emu.memory import GuestMemory


@dataclass
class Descriptor:
    """A decoded IDT/GDT/LDT entry or TSS field (a fault report lists them as they are here)."""

    table: str  # "IDT", "GDT", "LDT", "TSS"
    index: int  # vector for the IDT, descriptor index for GDT/LDT, byte offset for the TSS
    address: str | None  # linear address of the entry, hex (None when it lies beyond the table)
    raw: str | None  # the entry's bytes as a hex number (None when unreadable)
    text: str  # decoded, in words
    why: str  # why it was read (for a report: which event of the chain it matters to)


def _hx(value: int) -> str:
    return f"{value:#x}"


_SYSTEM_TYPES = {
    0x0: "reserved system type 0 (an empty entry)",
    0x1: "16-bit TSS (available)",
    0x2: "LDT",
    0x3: "16-bit TSS (busy)",
    0x4: "16-bit call gate",
    0x5: "task gate",
    0x6: "16-bit interrupt gate",
    0x7: "16-bit trap gate",
    0x9: "TSS (available)",
    0xB: "TSS (busy)",
    0xC: "call gate",
    0xE: "interrupt gate",
    0xF: "trap gate",
}


def segment_text(raw: int, long_mode: bool = False) -> str:
    """A segment descriptor in words, e.g. "code segment 32-bit, readable, base 0x0 limit
    0xffffffff, DPL 0, present"."""
    d = x86.decode_descriptor(raw)
    t = d["type"]
    if d["s"]:
        if t & 8:
            size = "64-bit" if d["l"] and not d["db"] else "32-bit" if d["db"] else "16-bit"
            kind = f"code segment {size}" + (", conforming" if t & 4 else "") + (", readable" if t & 2 else "")
        else:
            kind = "data segment " + ("read/write" if t & 2 else "read-only") + (", expand-down" if t & 4 else "")
    else:
        kind = _SYSTEM_TYPES.get(t, f"reserved system type {t:#x}")
        if long_mode and t in (0x9, 0xB):
            kind = "64-bit " + kind
    present = "present" if d["present"] else "NOT present"
    return f"{kind}, base {d['base']:#x} limit {d['limit']:#x}, DPL {d['dpl']}, {present}"


def gate_text(lo: int, hi: int, mode: Mode) -> str:
    gtype, dpl, present = (lo >> 40) & 0xF, (lo >> 45) & 3, (lo >> 47) & 1
    system = not (lo >> 44) & 1
    name = _SYSTEM_TYPES.get(gtype, f"type {gtype:#x}") if system else f"not a gate (S=1, type {gtype:#x})"
    if mode in (Mode.LONG, Mode.COMPAT) and gtype in (0xE, 0xF):
        name = "64-bit " + name
    selector = (lo >> 16) & 0xFFFF
    offset = (lo & 0xFFFF) | (((lo >> 48) & 0xFFFF) << 16)
    text = name
    if mode in (Mode.LONG, Mode.COMPAT):
        offset |= (hi & 0xFFFF_FFFF) << 32
        ist = (lo >> 32) & 7
        text += f", handler {selector:#x}:{offset:#x}, IST {ist if ist else 'none'}"
    elif gtype == x86.GATE_TASK:
        text += f", TSS selector {selector:#x}"
    else:
        if gtype in (x86.GATE_INT16, x86.GATE_TRAP16):
            offset &= 0xFFFF
        text += f", handler {selector:#x}:{offset:#x}"
    return text + f", DPL {dpl}, {'present' if present else 'NOT present'}"


class TableReader:
    """Reads descriptor-table entries as the state's CPU would (IDTR, GDTR, LDTR, TR)."""

    def __init__(self, state: CpuState, memory: GuestMemory) -> None:
        self.state = state
        self.lin = LinearMemory(memory, state)
        self.long_mode = state.mode in (Mode.LONG, Mode.COMPAT)

    def idt_entry(self, vector: int, why: str) -> Descriptor:
        s = self.state
        size = 4 if s.mode is Mode.REAL else 16 if self.long_mode else 8
        off = vector * size
        if off + size - 1 > s.idt.limit:
            text = f"beyond the IDT limit {s.idt.limit:#x} (IDT base {s.idt.base:#x})"
            return Descriptor("IDT", vector, None, None, text, why)
        addr = s.idt.base + off
        try:
            data = self.lin.read(addr, size)
        except Fault as f:
            return Descriptor("IDT", vector, _hx(addr), None, f"unreadable: {f.reason}", why)
        raw = int.from_bytes(data, "little")
        if s.mode is Mode.REAL:
            text = f"real-mode vector {raw >> 16:#06x}:{raw & 0xFFFF:#06x}"
        elif raw == 0:
            text = "all zero: no gate (not present)"
        else:
            text = gate_text(raw & (2**64 - 1), raw >> 64, s.mode)
        return Descriptor("IDT", vector, _hx(addr), _hx(raw), text, why)

    def gate_selector(self, vector: int) -> int | None:
        """The code selector of a present interrupt/trap gate, else None."""
        s = self.state
        size = 16 if self.long_mode else 8
        if s.mode is Mode.REAL or vector * size + size - 1 > s.idt.limit:
            return None
        try:
            lo = self.lin.u64(s.idt.base + vector * size)
        except Fault:
            return None
        if (lo >> 44) & 1 or not (lo >> 47) & 1 or (lo >> 40) & 0xF not in (6, 7, 0xE, 0xF):
            return None
        return (lo >> 16) & 0xFFFF

    def gate_ist(self, vector: int) -> int:
        if not self.long_mode or vector * 16 + 15 > self.state.idt.limit:
            return 0
        try:
            return (self.lin.u64(self.state.idt.base + vector * 16) >> 32) & 7
        except Fault:
            return 0

    def segment_entry(self, selector: int, why: str) -> Descriptor:
        s = self.state
        index = selector >> 3
        if selector & 4:
            table, base, limit = "LDT", s.ldt.base, s.ldt.limit
            if s.ldt.unusable or not s.ldt.present:
                text = f"selector {selector:#x} names the LDT; none is loaded"
                return Descriptor(table, index, None, None, text, why)
        else:
            table, base, limit = "GDT", s.gdt.base, s.gdt.limit
            if index == 0:
                return Descriptor(table, 0, _hx(base), None, f"selector {selector:#x} is the null selector", why)
        if index * 8 + 7 > limit:
            text = f"selector {selector:#x} is beyond the {table} limit {limit:#x} ({table} base {base:#x})"
            return Descriptor(table, index, None, None, text, why)
        addr = base + index * 8
        try:
            raw = self.lin.u64(addr)
        except Fault as f:
            return Descriptor(table, index, _hx(addr), None, f"unreadable: {f.reason}", why)
        text = f"selector {selector:#x}: {segment_text(raw, self.long_mode)}"
        return Descriptor(table, index, _hx(addr), _hx(raw), text, why)

    def tss_stack(self, ist: int, why: str) -> Descriptor:
        """The 64-bit TSS's ISTn (or RSP0 when ist is 0) pointer."""
        tr = self.state.tr
        off = x86.tss64_stack_offset(ist)
        name = f"IST{ist}" if ist else "RSP0"
        if off + 7 > tr.limit:
            return Descriptor("TSS", off, None, None, f"{name}: beyond the TSS limit {tr.limit:#x}", why)
        addr = tr.base + off
        try:
            value = self.lin.u64(addr)
        except Fault as f:
            return Descriptor("TSS", off, _hx(addr), None, f"{name}: unreadable: {f.reason}", why)
        text = f"{name} = {value:#x} (TR {tr.selector:#x}, TSS base {tr.base:#x})"
        return Descriptor("TSS", off, _hx(addr), _hx(value), text, why)
