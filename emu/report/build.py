"""Building the fault report of a run that ended in a triple fault."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emu import __version__
from emu.cpu.disasm import code_bits, disassemble
from emu.cpu.interrupts import ChainLink, EventKind
from emu.cpu.linear import Fault, LinearMemory
from emu.cpu.state import ALL_SEGMENT_NAMES, CpuState
from emu.cpu.tables import Descriptor, TableReader
from emu.cpu.x86 import vector_name
from emu.memory import GuestMemory
from emu.report.causes import SELECTOR_ERROR_VECTORS, error_code_text, first_fault_cause
from emu.report.model import (
    ChainEntry,
    Code,
    Cpus,
    FaultReport,
    FirstFault,
    Instruction,
    Replay,
    Trace,
    hx,
)
from emu.report.trace import last_instructions

if TYPE_CHECKING:
    from emu.backends.base import TraceEntry
    from emu.machine import RunResult

TRACE_LENGTH = 32  # instructions in "the last instructions executed"
SERIAL_TAIL = 2048  # bytes of serial output kept in the report
CODE_INSNS = 4  # instructions shown from the faulting RIP on
_CODE_BYTES = 15 * CODE_INSNS


def state_dict(s: CpuState) -> dict[str, Any]:
    d: dict[str, Any] = {"mode": s.mode.value, "cpl": s.cpl}
    d.update({name: hx(v) for name, v in s.gprs().items()})
    d["rip"], d["rflags"] = hx(s.rip), hx(s.rflags)
    for name in ALL_SEGMENT_NAMES:
        seg = getattr(s, name)
        d[name] = {
            "selector": hx(seg.selector), "base": hx(seg.base), "limit": hx(seg.limit), "type": seg.type,
            "s": seg.s, "dpl": seg.dpl, "present": seg.present, "l": seg.l, "db": seg.db, "g": seg.g,
            "unusable": seg.unusable,
        }  # fmt: skip
    d["gdt"] = {"base": hx(s.gdt.base), "limit": hx(s.gdt.limit)}
    d["idt"] = {"base": hx(s.idt.base), "limit": hx(s.idt.limit)}
    for reg in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer"):
        d[reg] = hx(getattr(s, reg))
    return d


def code_at(state: CpuState, memory: GuestMemory) -> Code:
    """The instructions from the state's RIP on, read through its paging."""
    pc, bits = state.flat_pc, code_bits(state)
    lin = LinearMemory(memory, state)
    try:
        data = lin.read(pc, _CODE_BYTES)
    except Fault:
        try:  # the code may end at a page boundary with nothing mapped after it
            data = lin.read(pc, 0x1000 - (pc & 0xFFF))
        except Fault as f:
            return Code(hx(pc), bits, [], f"cannot read code at {pc:#x}: {f.reason}")
    insns = disassemble(data, pc, bits, CODE_INSNS)
    return Code(hx(pc), bits, [Instruction(hx(x.address), x.data.hex(" "), x.text) for x in insns])


def chain_entries(chain: list[ChainLink]) -> list[ChainEntry]:
    out = []
    for link in chain:
        ev = link.event
        err = ev.error_code
        out.append(ChainEntry(
            vector=ev.vector, name=vector_name(ev.vector), kind=ev.kind.value,
            error_code=hx(err) if err is not None else None, error_code_text=error_code_text(ev.vector, err),
            cr2=hx(ev.cr2) if ev.cr2 is not None else None, cs=hx(link.cs), rip=hx(link.rip), mode=link.mode,
            delivery_failure=link.failure,
        ))  # fmt: skip
    return out


def summary_line(chain: list[ChainEntry], first: FirstFault | None) -> str:
    parts = []
    for i, c in enumerate(chain):
        head = c.name if c.kind == EventKind.EXCEPTION.value else f"{c.name} ({c.kind})"
        if i == 0 and first is not None:
            head += f" at RIP {first.rip} ({first.cause})"
        elif c.error_code is not None and c.vector != 8:
            head += f" (error code {c.error_code})"
        parts.append(head)
        if c.delivery_failure:
            parts.append(f"delivering it faulted: {c.delivery_failure}")
    return " -> ".join([*parts, "triple fault (shutdown)"])


def involved_descriptors(state: CpuState, memory: GuestMemory, chain: list[ChainLink]) -> list[Descriptor]:
    tables = TableReader(state, memory)
    out: list[Descriptor] = []
    seen: set[tuple[str, int]] = set()

    def add(d: Descriptor) -> None:
        if (d.table, d.index) not in seen:
            seen.add((d.table, d.index))
            out.append(d)

    # Without a chain (KVM reports only the end) the #DF gate is still involved: a triple fault
    # is a fault while delivering a #DF.
    vectors = [link.event.vector for link in chain] or [8]
    for v in vectors:
        name = vector_name(v)
        add(tables.idt_entry(v, f"the gate for {name}"))
        selector = tables.gate_selector(v)
        if selector is not None:
            add(tables.segment_entry(selector, f"the code segment of the {name} gate"))
        ist = tables.gate_ist(v)
        if ist:
            add(tables.tss_stack(ist, f"the stack of the {name} gate"))
    if chain:
        ev = chain[0].event
        if ev.kind is EventKind.EXCEPTION and ev.vector in SELECTOR_ERROR_VECTORS and ev.error_code:
            if ev.error_code & 2:
                add(tables.idt_entry(ev.error_code >> 3, f"named by the {vector_name(ev.vector)} error code"))
            else:
                add(tables.segment_entry(ev.error_code & 0xFFFC, f"named by the {vector_name(ev.vector)} error code"))
    return out


def build_report(
    result: RunResult,
    memory: GuestMemory,
    backend: str,
    trace: list[TraceEntry] | None,
    rerun: dict[str, Any],
    trace_length: int = TRACE_LENGTH,
    cpus: Cpus | None = None,
) -> FaultReport:
    """The report of `result` (a run that ended in a triple fault), reading guest memory as the
    run left it. `trace` is the backend's block history (None where it records none: KVM)."""
    detail = result.exit.detail if result.exit is not None else {}
    chain: list[ChainLink] = list(detail.get("chain") or [])
    first_state: CpuState | None = detail.get("state")
    final_state: CpuState | None = detail.get("final_state") or result.state
    at = first_state or final_state
    code = code_at(at, memory) if at is not None else None
    entries = chain_entries(chain)
    first = None
    if chain and first_state is not None:
        ev = chain[0].event
        insn = code.instructions[0].text if code and code.instructions else ""
        # RIP is already past an `int n`/int3/into (the report's code starts after it).
        if ev.kind is EventKind.SOFTWARE_INT:
            insn = f"int {ev.vector:#x}"
        elif ev.kind is EventKind.SOFTWARE_EXC:
            insn = "int3" if ev.vector == 3 else "into"
        first = FirstFault(
            vector=ev.vector, name=vector_name(ev.vector), rip=hx(first_state.rip), cs=hx(first_state.cs.selector),
            linear_pc=hx(first_state.flat_pc), mode=first_state.mode.value,
            error_code=hx(ev.error_code) if ev.error_code is not None else None,
            cr2=hx(ev.cr2) if ev.cr2 is not None else None,
            cause=first_fault_cause(ev, first_state, memory, insn),
        )  # fmt: skip
    if chain:
        summary, source = summary_line(entries, first), "unicorn"
    else:
        rip = f" at RIP {final_state.rip:#x}" if final_state is not None else ""
        summary = (
            f"triple fault{rip}: {backend} reports only the final state "
            "(--on-triple-fault replay reruns the machine under Unicorn to recover the chain)"
        )
        source = "none"
    if trace is not None and at is not None:
        pc = first_state.flat_pc if first_state is not None else None
        # A fault's RIP is the faulting instruction; for int n, traps and interrupts it is the next one.
        ran_pc = bool(chain) and chain[0].event.kind is EventKind.EXCEPTION
        insns = last_instructions(trace, at, memory, pc, trace_length, include_pc=ran_pc)
        tr = Trace(True, "oldest first, ending with the faulting instruction; repeat: times its block ran back to "
                   "back", insns)  # fmt: skip
    else:
        tr = Trace(False, f"not recorded: the {backend} backend runs guest code in hardware")
    return FaultReport(
        backend=backend, status=result.status, reason=result.reason, summary=summary, chain_source=source,
        chain=entries, first_fault=first,
        states={"first_fault": state_dict(first_state) if first_state else None,
                "final": state_dict(final_state) if final_state else None},
        descriptors=involved_descriptors(at, memory, chain) if at is not None else [],
        code=code, trace=tr, serial_tail=result.serial[-SERIAL_TAIL:].decode("utf-8", "replace"),
        replay=None, rerun=rerun, emu_version=__version__, cpus=cpus or Cpus(1, 0, []),
    )  # fmt: skip


def with_replay(original: FaultReport, replayed: FaultReport, final_rip: int | None) -> FaultReport:
    """A KVM report completed with the chain a Unicorn replay of the same machine found."""
    replay_rip = replayed.states["first_fault"]["rip"] if replayed.states["first_fault"] else None
    if replay_rip is None and replayed.states["final"] is not None:
        replay_rip = replayed.states["final"]["rip"]
    same = replayed.chain_source == "unicorn" and final_rip is not None and replay_rip == hx(final_rip)
    original.replay = Replay(
        backend=replayed.backend, status=replayed.status, reason=replayed.reason, reproduced=same,
        original_rip=hx(final_rip) if final_rip is not None else "unknown", replay_rip=replay_rip,
    )  # fmt: skip
    if replayed.chain_source == "unicorn":
        original.chain, original.first_fault = replayed.chain, replayed.first_fault
        original.chain_source = "replay"
        original.summary = replayed.summary + (
            "" if same else f" [the replay faulted at RIP {replay_rip}, not at {original.replay.original_rip}]"
        )
        original.states["first_fault"] = replayed.states["first_fault"]
        original.descriptors, original.trace = replayed.descriptors, replayed.trace
    return original
