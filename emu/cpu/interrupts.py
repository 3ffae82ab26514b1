"""Software delivery of interrupts and exceptions, as the CPU does it, over CpuState + memory.

Unicorn never delivers an interrupt or exception through the IVT/IDT itself: emu does it here,
for real mode (IVT), protected mode (16/32-bit interrupt and trap gates, privilege change
through the TSS) and long mode (64-bit gates, IST, RSP0-2). A fault raised while delivering
escalates as on hardware (contributory/page-fault classes → #DF; a fault delivering #DF →
triple fault), and every step of the chain is recorded for fault reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from emu.cpu import x86
from emu.cpu.linear import Fault, LinearMemory
from emu.cpu.state import CpuState, Mode, Segment
from emu.cpu.x86 import vector_name
from emu.memory import GuestMemory

CONTRIBUTORY = frozenset({0, 10, 11, 12, 13})


class EventKind(Enum):
    EXCEPTION = "exception"  # a fault or trap raised by the CPU
    SOFTWARE_INT = "int n"  # int n: gate DPL is checked, no error code
    SOFTWARE_EXC = "int3/into"  # like int n for the DPL check
    EXTERNAL = "external interrupt"
    NMI = "nmi"


@dataclass
class Event:
    vector: int
    kind: EventKind
    error_code: int | None = None
    cr2: int | None = None

    @property
    def external(self) -> int:
        """The EXT bit of error codes raised while delivering this event."""
        return 0 if self.kind in (EventKind.SOFTWARE_INT, EventKind.SOFTWARE_EXC) else 1

    def describe(self) -> str:
        s = vector_name(self.vector)
        if self.kind is not EventKind.EXCEPTION:
            s += f" ({self.kind.value})"
        if self.error_code is not None:
            s += f" error code {self.error_code:#x}"
        if self.cr2 is not None:
            s += f" CR2 {self.cr2:#x}"
        return s


class Unsupported(Exception):
    """A delivery path emu does not implement (task gates, virtual-8086 mode)."""


@dataclass
class ChainLink:
    """One event of a delivery chain and, if delivering it failed, why."""

    event: Event
    rip: int
    cs: int
    mode: str
    failure: str | None = None


@dataclass
class TripleFault(Exception):
    chain: list[ChainLink] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            " -> ".join(
                link.event.describe() + (f" [delivery failed: {link.failure}]" if link.failure else "")
                for link in self.chain
            )
            + " -> triple fault"
        )


# -- descriptor helpers -----------------------------------------------------------------------
def load_descriptor(state: CpuState, lin: LinearMemory, selector: int, ext: int, vec: int = 13) -> int:
    """Read the 8-byte descriptor a selector names (GDT or LDT), faulting as the CPU would."""
    index = selector & ~7
    err = (selector & 0xFFFC) | ext
    if selector & 4:
        table = state.ldt
        if table.unusable or not table.present:
            raise Fault(vec, err, f"selector {selector:#x} refers to the LDT but none is loaded")
        base, limit = table.base, table.limit
    else:
        if index == 0:
            raise Fault(vec, ext, "null selector")
        base, limit = state.gdt.base, state.gdt.limit
    if index + 7 > limit:
        raise Fault(vec, err, f"selector {selector:#x} is beyond the descriptor table limit {limit:#x}")
    return lin.u64(base + index)


def _push_linear(lin: LinearMemory, ss: Segment, sp: int, values: list[int], width: int, stack_bits: int,
                 user: bool) -> int:  # fmt: skip
    """Push values (first pushed first) onto ss:sp; returns the new sp. Atomic on a fault."""
    data = b"".join(v.to_bytes(width, "little", signed=False) for v in reversed(values))
    mask = (1 << stack_bits) - 1
    new_sp = (sp - len(data)) & mask
    if stack_bits < 64 and not ss.type & 4 and new_sp + len(data) - 1 > ss.limit:
        raise Fault(12, 0, f"stack push at {new_sp:#x} is beyond the SS limit {ss.limit:#x}")
    linear = (ss.base + new_sp) & (0xFFFF_FFFF if stack_bits < 64 else mask)
    try:
        lin.write(linear, data, user=user)
    except Fault as f:
        if f.vector != 14:
            raise
        reason = f"pushing the frame at {linear:#x} (SS {ss.selector:#x}, SP {sp:#x}): {f.reason}"
        raise Fault(14, f.error_code, reason, cr2=f.cr2) from None
    return new_sp


# -- the three delivery paths -----------------------------------------------------------------
def _deliver_real(state: CpuState, lin: LinearMemory, ev: Event) -> None:
    v = ev.vector
    if v * 4 + 3 > state.idt.limit:
        raise Fault(13, None, f"IVT entry {v:#x} is beyond the IDT limit {state.idt.limit:#x}")
    entry = lin.u32(state.idt.base + v * 4)
    flags = state.rflags & 0xFFFF
    sp = _push_linear(lin, state.ss, state.rsp & 0xFFFF, [flags, state.cs.selector, state.rip & 0xFFFF], 2, 16, False)
    state.rsp = (state.rsp & ~0xFFFF) | sp
    state.rflags &= ~(x86.FLAG_IF | x86.FLAG_TF | x86.FLAG_AC | x86.FLAG_RF)
    cs = entry >> 16
    state.cs.selector, state.cs.base = cs, cs << 4
    state.rip = entry & 0xFFFF


def _gate_checks(state: CpuState, ev: Event, dpl: int, present: int, gate_ok: bool, gtype: int) -> None:
    err = ev.vector * 8 + 2 + ev.external
    if not gate_ok:
        raise Fault(13, err, f"IDT entry {ev.vector:#x} is not an interrupt or trap gate (type {gtype:#x})")
    if ev.kind in (EventKind.SOFTWARE_INT, EventKind.SOFTWARE_EXC) and dpl < state.cpl:
        raise Fault(13, ev.vector * 8 + 2, f"gate DPL {dpl} < CPL {state.cpl} for a software interrupt")
    if not present:
        raise Fault(11, err, f"IDT entry {ev.vector:#x} is not present")


def _code_segment(state: CpuState, lin: LinearMemory, selector: int, ev: Event) -> Segment:
    raw = load_descriptor(state, lin, selector, ev.external)
    seg = Segment.from_descriptor(selector, raw)
    err = (selector & 0xFFFC) | ev.external
    if not seg.s or not seg.type & 8:
        raise Fault(13, err, f"gate selector {selector:#x} is not a code segment")
    if seg.dpl > state.cpl:
        raise Fault(13, err, f"handler code segment DPL {seg.dpl} > CPL {state.cpl}")
    if not seg.present:
        raise Fault(11, err, f"handler code segment {selector:#x} is not present")
    return seg


def _error_code(ev: Event) -> list[int]:
    if ev.kind is EventKind.EXCEPTION and ev.vector in x86.ERROR_CODE_VECTORS:
        return [ev.error_code or 0]
    return []


def _deliver_protected(state: CpuState, lin: LinearMemory, ev: Event) -> None:
    if state.rflags & x86.FLAG_VM:
        raise Unsupported("interrupt delivery from virtual-8086 mode")
    v = ev.vector
    if v * 8 + 7 > state.idt.limit:
        raise Fault(13, v * 8 + 2 + ev.external,
                    f"IDT entry {v:#x} is beyond the IDT limit {state.idt.limit:#x}")  # fmt: skip
    raw = lin.u64(state.idt.base + v * 8)
    gtype, dpl, present = (raw >> 40) & 0xF, (raw >> 45) & 3, (raw >> 47) & 1
    if gtype == x86.GATE_TASK and present:
        raise Unsupported(f"IDT entry {v:#x} is a task gate (task switching is not emulated)")
    gate_ok = not (raw >> 44) & 1 and gtype in (x86.GATE_INT16, x86.GATE_TRAP16, x86.GATE_INT32,
                                                  x86.GATE_TRAP32)  # fmt: skip
    _gate_checks(state, ev, dpl, present, gate_ok, gtype)
    selector = (raw >> 16) & 0xFFFF
    gate32 = gtype in (x86.GATE_INT32, x86.GATE_TRAP32)
    offset = (raw & 0xFFFF) | ((((raw >> 48) & 0xFFFF) << 16) if gate32 else 0)
    cs = _code_segment(state, lin, selector, ev)
    width = 4 if gate32 else 2
    cpl = state.cpl
    conforming = bool(cs.type & 4)
    new_cpl = cpl if conforming else cs.dpl
    frame = [state.rflags & 0xFFFF_FFFF, state.cs.selector, state.rip & 0xFFFF_FFFF, *_error_code(ev)]
    if new_cpl < cpl:
        tr = state.tr
        if tr.type in (x86.SEG_TYPE_TSS32_AVAIL, x86.SEG_TYPE_TSS_BUSY):
            off = 4 + 8 * new_cpl
            if off + 5 > tr.limit:
                raise Fault(10, (tr.selector & 0xFFFC) | ev.external, "TSS too small for the ring stack")
            new_sp, new_ss = lin.u32(tr.base + off), lin.u16(tr.base + off + 4)
        else:
            off = 2 + 4 * new_cpl
            if off + 3 > tr.limit:
                raise Fault(10, (tr.selector & 0xFFFC) | ev.external, "TSS too small for the ring stack")
            new_sp, new_ss = lin.u16(tr.base + off), lin.u16(tr.base + off + 2)
        ss_raw = load_descriptor(state, lin, new_ss, ev.external, vec=10)
        ss = Segment.from_descriptor(new_ss, ss_raw)
        bad = (new_ss & 3) != new_cpl or ss.dpl != new_cpl or not ss.s or ss.type & 8 or not ss.type & 2
        if bad:
            raise Fault(10, (new_ss & 0xFFFC) | ev.external, f"TSS ring-{new_cpl} SS {new_ss:#x} is invalid")
        if not ss.present:
            raise Fault(12, (new_ss & 0xFFFC) | ev.external, f"TSS ring-{new_cpl} SS is not present")
        frame = [state.ss.selector, state.rsp & 0xFFFF_FFFF, *frame]
        bits = 32 if ss.db else 16
        sp = _push_linear(lin, ss, new_sp, frame, width, bits, False)
        state.ss = ss
    else:
        bits = 32 if state.ss.db else 16
        sp = _push_linear(lin, state.ss, state.rsp, frame, width, bits, new_cpl == 3)
    mask = 0xFFFF_FFFF if bits == 32 else 0xFFFF
    state.rsp = (state.rsp & ~mask) | sp
    cs.selector = (selector & 0xFFFC) | new_cpl
    state.cs = cs
    state.rip = offset
    state.rflags &= ~(x86.FLAG_TF | x86.FLAG_NT | x86.FLAG_RF | x86.FLAG_VM)
    if gtype in (x86.GATE_INT16, x86.GATE_INT32):
        state.rflags &= ~x86.FLAG_IF


def _deliver_long(state: CpuState, lin: LinearMemory, ev: Event) -> None:
    v = ev.vector
    if v * 16 + 15 > state.idt.limit:
        raise Fault(13, v * 8 + 2 + ev.external,
                    f"IDT entry {v:#x} is beyond the IDT limit {state.idt.limit:#x}")  # fmt: skip
    lo, hi = lin.u64(state.idt.base + v * 16), lin.u64(state.idt.base + v * 16 + 8)
    gtype, dpl, present = (lo >> 40) & 0xF, (lo >> 45) & 3, (lo >> 47) & 1
    gate_ok = not (lo >> 44) & 1 and gtype in (x86.GATE_INT32, x86.GATE_TRAP32)
    _gate_checks(state, ev, dpl, present, gate_ok, gtype)
    selector = (lo >> 16) & 0xFFFF
    offset = (lo & 0xFFFF) | (((lo >> 48) & 0xFFFF) << 16) | ((hi & 0xFFFF_FFFF) << 32)
    ist = (lo >> 32) & 7
    cs = _code_segment(state, lin, selector, ev)
    if not cs.l or cs.db:
        raise Fault(13, (selector & 0xFFFC) | ev.external, f"handler CS {selector:#x} is not a 64-bit segment")
    cpl = state.cpl
    new_cpl = cpl if cs.type & 4 else cs.dpl
    tr = state.tr
    frame = [state.ss.selector, state.rsp, state.rflags, state.cs.selector, state.rip, *_error_code(ev)]
    if ist or new_cpl < cpl:
        off = x86.tss64_stack_offset(ist, new_cpl)
        if off + 7 > tr.limit:
            raise Fault(10, (tr.selector & 0xFFFC) | ev.external,
                        f"TSS limit {tr.limit:#x} does not hold {'IST' + str(ist) if ist else 'RSP'}")  # fmt: skip
        rsp = lin.u64(tr.base + off)  # a zero IST pointer (the classic bug) faults on the push
    else:
        rsp = state.rsp
    if not x86.canonical(rsp):
        raise Fault(12, ev.external, f"new RSP {rsp:#x} is not canonical")
    top = rsp
    rsp &= ~0xF
    data = b"".join(x.to_bytes(8, "little") for x in reversed(frame))
    rsp = (rsp - len(data)) & 0xFFFF_FFFF_FFFF_FFFF
    try:
        lin.write(rsp, data, user=new_cpl == 3)
    except Fault as f:
        # Say which stack: a bad IST or RSPn pointer in the TSS is the usual cause.
        if ist:
            where = f"the IST{ist} stack (TSS.IST{ist} = {top:#x})"
        elif new_cpl < cpl:
            where = f"the ring-{new_cpl} stack (TSS.RSP{new_cpl} = {top:#x})"
        else:
            where = f"the current stack (RSP {top:#x})"
        reason = f"pushing the frame at {rsp:#x} on {where}: {f.reason}"
        if f.vector == 14:
            raise Fault(14, f.error_code, reason, cr2=f.cr2) from None
        raise Fault(12, ev.external, reason) from None
    if new_cpl < cpl:
        state.ss = Segment(selector=new_cpl, base=0, limit=0, type=0, s=0, dpl=new_cpl, present=0, unusable=1)
    state.rsp = rsp
    cs.selector = (selector & 0xFFFC) | new_cpl
    state.cs = cs
    state.rip = offset
    state.rflags &= ~(x86.FLAG_TF | x86.FLAG_NT | x86.FLAG_RF | x86.FLAG_VM)
    if gtype == x86.GATE_INT32:
        state.rflags &= ~x86.FLAG_IF


def deliver(state: CpuState, mem: GuestMemory, ev: Event) -> None:
    """Deliver one event, mutating state (and the guest stack); raises Fault if delivery faults."""
    lin = LinearMemory(mem, state)
    if ev.vector == 14 and ev.cr2 is not None:
        state.cr2 = ev.cr2
    mode = state.mode
    if mode is Mode.REAL:
        _deliver_real(state, lin, ev)
    elif mode in (Mode.LONG, Mode.COMPAT):
        _deliver_long(state, lin, ev)
    else:
        _deliver_protected(state, lin, ev)


def _escalates(first: Event, second: Fault) -> bool:
    """Intel SDM table 6-5: which exception pairs become a double fault."""
    if first.kind is not EventKind.EXCEPTION:
        return False
    if first.vector in CONTRIBUTORY:
        return second.vector in CONTRIBUTORY
    if first.vector == 14:
        return second.vector in CONTRIBUTORY or second.vector == 14
    return False


def deliver_with_escalation(state: CpuState, mem: GuestMemory, ev: Event) -> list[ChainLink]:
    """Deliver ev; a fault during delivery is delivered in turn (or as #DF, or is a triple fault).

    Returns the chain of events delivered (last one succeeded). Raises TripleFault with the chain.
    `state` is left at the point where the last successful delivery left it.
    """
    chain: list[ChainLink] = []
    current = ev
    while True:
        link = ChainLink(current, state.rip, state.cs.selector, state.mode.value)
        chain.append(link)
        try:
            deliver(state, mem, current)
            return chain
        except Fault as f:
            link.failure = f.reason
            if current.vector == 8 and current.kind is EventKind.EXCEPTION:
                raise TripleFault(chain) from None
            if _escalates(current, f):
                current = Event(8, EventKind.EXCEPTION, 0)
            else:
                current = Event(f.vector, EventKind.EXCEPTION, f.error_code, f.cr2)
