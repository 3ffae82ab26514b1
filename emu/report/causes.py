"""Why an exception was raised, in words: error codes decoded, the page walk for a #PF, the
descriptor a bad selector names."""

from __future__ import annotations

from emu.cpu import paging
from emu.cpu.interrupts import Event, EventKind
from emu.cpu.state import CpuState
from emu.cpu.tables import TableReader
from emu.cpu.x86 import vector_name
from emu.errors import GuestMemoryError
from emu.memory import GuestMemory

SELECTOR_ERROR_VECTORS = frozenset({10, 11, 12, 13})
# How far below RSP a faulting write still counts as the stack growing into the page.
_STACK_REACH = 256


def error_code_text(vector: int, err: int | None) -> str | None:
    if err is None:
        return None
    if vector == 14:
        access = "instruction fetch" if err & paging.PF_I else "write" if err & paging.PF_W else "read"
        parts = [
            access,
            "protection violation (page present)" if err & paging.PF_P else "page not present",
            "from user mode" if err & paging.PF_U else "from supervisor mode",
        ]
        if err & paging.PF_RSVD:
            parts.append("reserved bit set in a paging entry")
        return ", ".join(parts)
    if vector in SELECTOR_ERROR_VECTORS or vector in (8, 17):
        if err == 0:
            return "0 (no selector involved)"
        ext = ", during delivery of an external event" if err & 1 else ""
        if err & 2:
            return f"IDT vector {err >> 3:#x}{ext}"
        table = "LDT" if err & 4 else "GDT"
        return f"{table} selector {err & 0xFFFC:#x} (index {err >> 3}){ext}"
    return f"{err:#x}"


def _page_fault_cause(ev: Event, state: CpuState, memory: GuestMemory) -> str:
    cr2 = ev.cr2 if ev.cr2 is not None else state.cr2
    err = ev.error_code or 0
    access = "instruction fetch from" if err & paging.PF_I else "write to" if err & paging.PF_W else "read of"
    regs = paging.PagingRegs(state.cr0, state.cr3, state.cr4, state.efer)
    try:
        walk = paging.walk(memory, regs, cr2)
    except GuestMemoryError:
        walk = None
    if walk is None:
        why = "the page tables lie outside guest RAM"
    elif walk.physical is None:
        why = "not mapped"
        if walk.steps:
            last = walk.steps[-1]
            width = 4 if last.level in ("PDE", "PTE") else 8  # 32-bit paging has 4-byte entries
            why = f"{last.level} entry {last.index} (at {last.table + width * last.index:#x}) not present"
    elif err & paging.PF_U and not walk.user:
        why = "a supervisor page accessed from user mode"
    elif err & paging.PF_W and not walk.writable:
        why = "the page is read-only"
    elif err & paging.PF_I and not walk.executable:
        why = "the page is not executable (NX)"
    else:
        why = f"mapped to {walk.physical:#x} now (the tables changed after the fault?)"
    text = f"{access} {cr2:#x}: {why}"
    rsp = state.rsp
    if err & paging.PF_W and rsp - _STACK_REACH <= cr2 < rsp:
        text += f"; just below RSP {rsp:#x}: the stack overflowed into an unmapped page"
    return text


def _selector_cause(ev: Event, state: CpuState, memory: GuestMemory, insn: str) -> str:
    err = ev.error_code or 0
    by = f"`{insn}`" if insn else "the instruction"
    if err & 2:
        return f"{by}: {vector_name(ev.vector)} for IDT vector {err >> 3:#x}"
    selector = err & 0xFFFC
    d = TableReader(state, memory).segment_entry(selector, "")
    rest = d.text.removeprefix(f"selector {selector:#x}").lstrip(": ")
    text = f"{by} loaded selector {selector:#x}, " + (rest.replace("is ", "which is ", 1) if rest.startswith("is ")
                                                      else f"a {rest}")  # fmt: skip
    mnemonic = insn.split(" ", 1)[0] if insn else ""
    if d.raw is not None:
        raw = int(d.raw, 16)
        code, data_w = (raw >> 43) & 1 and (raw >> 44) & 1, (raw >> 44) & 1 and not (raw >> 43) & 1 and (raw >> 41) & 1
        if mnemonic in ("ljmp", "lcall", "retf", "iret", "iretd", "iretq") and not code:
            text += ": CS can only hold a code segment"
        elif ("ss" in insn.split(",")[0] or mnemonic == "lss") and not data_w:
            text += ": SS can only hold a writable data segment"
        elif not (raw >> 47) & 1:
            text += ": the segment is not present"
    return text


def first_fault_cause(ev: Event, state: CpuState, memory: GuestMemory, insn: str) -> str:
    """Why `ev` was raised at `state` (the state at the fault), given the instruction there."""
    at = f"`{insn}`" if insn else "the instruction at RIP"
    if ev.kind is not EventKind.EXCEPTION:
        return f"{ev.kind.value} {vector_name(ev.vector)} raised by {at}"
    v = ev.vector
    if v == 14:
        return _page_fault_cause(ev, state, memory)
    if v in SELECTOR_ERROR_VECTORS and ev.error_code:
        return _selector_cause(ev, state, memory, insn)
    if v == 13:
        return f"general protection fault (error code 0) by {at}"
    if v == 6:
        return f"invalid opcode: {at} cannot run in this mode"
    if v == 0:
        return f"divide error: {at} divided by zero or its quotient overflowed"
    return f"{vector_name(v)} raised by {at}"
