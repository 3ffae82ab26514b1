"""Where the CPU was when a run did not end by itself (--timeout, --expect-timeout, Ctrl-A x):
its mode and place, the instruction there and, under Unicorn, the last instructions it executed,
so that a hung run says where it hung."""

from __future__ import annotations

from emu.backends.base import TraceEntry
from emu.cpu.state import CpuState
from emu.memory import GuestMemory
from emu.report.build import code_at
from emu.report.trace import last_instructions

LAST_INSTRUCTIONS = 8


def where_lines(state: CpuState, memory: GuestMemory, trace: list[TraceEntry] | None, cpu: int | None) -> list[str]:
    """A few lines for stderr; `cpu`: the vCPU the state is of (None on a one-CPU machine)."""
    who = f"vCPU {cpu} " if cpu is not None else "the CPU "
    place = f"{state.cs.selector:04x}:{state.rip:#x}"
    code = code_at(state, memory)
    insn = code.instructions[0].text if code.instructions else (code.error or "?")
    out = [f"{who}was at {place} (linear {state.flat_pc:#x}, {state.mode.value}): {insn}"]
    if trace:
        insns = last_instructions(trace, state, memory, state.flat_pc, LAST_INSTRUCTIONS, include_pc=False)
        if insns:
            out.append("the last instructions it executed, oldest first:")
            out += [f"  {i.address}: {i.text}" + (f"  (x{i.repeat})" if i.repeat > 1 else "") for i in insns]
    return out
