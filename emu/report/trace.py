"""The last instructions executed, rebuilt from the block starts the Unicorn backend records
(Backend.block_trace) by disassembling each block in the mode it ran in."""

from __future__ import annotations

from emu.backends.base import TraceEntry
from emu.cpu.disasm import bits_from_hflags, code_bits, disassemble
from emu.cpu.linear import Fault, LinearMemory
from emu.cpu.state import CpuState
from emu.memory import GuestMemory
from emu.report.model import Instruction, hx


def last_instructions(
    entries: list[TraceEntry],
    state: CpuState,
    memory: GuestMemory,
    fault_pc: int | None,
    count: int,
    include_pc: bool = True,
) -> list[Instruction]:
    """Up to `count` instructions, oldest first, ending at `fault_pc`: with the instruction there
    when it faulted (`include_pc`), else with the one before it (an `int n` or a trap); the rest of
    the block never ran. Code is read through `state`'s paging."""
    lin = LinearMemory(memory, state)
    out: list[Instruction] = []
    for i, e in enumerate(entries):
        bits = bits_from_hflags(e.hflags) if e.hflags is not None else code_bits(state)
        try:
            code = lin.read(e.address, e.size)
        except Fault as f:
            out.append(Instruction(hx(e.address), "", f"(code not readable now: {f.reason})", e.repeat))
            continue
        insns = disassemble(code, e.address, bits)
        last_block = i == len(entries) - 1
        if last_block and fault_pc is not None and e.address <= fault_pc < e.address + e.size:
            insns = [x for x in insns if x.address < fault_pc or (include_pc and x.address == fault_pc)]
        out += [Instruction(hx(x.address), x.data.hex(" "), x.text, e.repeat) for x in insns]
    return out[-count:] if count else []
