"""The fault report as text, for stderr."""

from __future__ import annotations

from typing import Any

from emu.report.model import FaultReport, Instruction

_GPR_ROWS = (
    ("rax", "rbx", "rcx", "rdx"),
    ("rsi", "rdi", "rbp", "rsp"),
    ("r8", "r9", "r10", "r11"),
    ("r12", "r13", "r14", "r15"),
)
SERIAL_LINES = 10


def _insn_line(i: Instruction, mark: bool = False) -> str:
    rep = f"   (x{i.repeat})" if i.repeat > 1 else ""
    return f"  {'>' if mark else ' '} {int(i.address, 16):>16x}  {i.bytes:<30} {i.text}{rep}"


def _state_lines(s: dict[str, Any]) -> list[str]:
    lines = [f"    mode {s['mode']}, CPL {s['cpl']}, rip {s['rip']}, rflags {s['rflags']}"]
    for row in _GPR_ROWS:
        lines.append("    " + "  ".join(f"{r:>3}={int(s[r], 16):016x}" for r in row))
    for name in ("cs", "ss", "ds", "es", "fs", "gs", "tr"):
        seg = s[name]
        flags = f"type {seg['type']:#x} s{seg['s']} dpl{seg['dpl']} p{seg['present']} l{seg['l']} db{seg['db']}"
        lines.append(f"    {name}={seg['selector']:<6} base {seg['base']:<12} limit {seg['limit']:<11} {flags}")
    lines.append(
        f"    gdt {s['gdt']['base']}/{s['gdt']['limit']}  idt {s['idt']['base']}/{s['idt']['limit']}  "
        f"cr0 {s['cr0']} cr2 {s['cr2']} cr3 {s['cr3']} cr4 {s['cr4']} efer {s['efer']}"
    )
    return lines


def render(r: FaultReport) -> str:
    out = [
        f"emu: fault report: triple fault under {r.backend} (exit status {r.status})",
        "",
        f"what happened: {r.summary}",
        "",
    ]
    if r.chain:
        source = " (recovered by replaying the machine under Unicorn)" if r.chain_source == "replay" else ""
        out.append(f"exception chain{source}:")
        for n, c in enumerate(r.chain, 1):
            head = f"  {n}. {c.name}"
            if c.kind != "exception":
                head += f" ({c.kind})"
            head += f" at {c.cs}:{c.rip} ({c.mode})"
            if c.error_code is not None:
                head += f", error code {c.error_code}" + (f" = {c.error_code_text}" if c.error_code_text else "")
            if c.cr2 is not None:
                head += f", CR2 {c.cr2}"
            out.append(head)
            if c.delivery_failure:
                out.append(f"     delivering it faulted: {c.delivery_failure}")
        out.append("  -> triple fault: the CPU shut down")
        out.append("")
    if r.first_fault is not None:
        f = r.first_fault
        out += [f"first fault: {f.name} at {f.cs}:{f.rip} (linear {f.linear_pc}, {f.mode})", f"  cause: {f.cause}", ""]
    if r.replay is not None:
        p = r.replay
        verdict = "reproduced the fault" if p.reproduced else "did NOT reproduce the fault"
        out += [f"replay under {p.backend}: {verdict} (final RIP {p.original_rip}, replay {p.replay_rip}; "
                f"replay ended: {p.reason})", ""]  # fmt: skip
    if r.code is not None:
        out.append(f"code at {r.code.address} ({r.code.bits}-bit):")
        if r.code.error:
            out.append(f"    {r.code.error}")
        out += [_insn_line(i, n == 0) for n, i in enumerate(r.code.instructions)]
        out.append("")
    if r.trace.available:
        out.append(f"last {len(r.trace.instructions)} instructions executed ({r.trace.note}):")
        last = len(r.trace.instructions) - 1
        out += [_insn_line(i, n == last) for n, i in enumerate(r.trace.instructions)]
    else:
        out.append(f"last instructions executed: {r.trace.note}")
    out.append("")
    if r.descriptors:
        out.append("descriptors involved:")
        for d in r.descriptors:
            where = f" at {d.address}" if d.address else ""
            raw = f" [{d.raw}]" if d.raw else ""
            out.append(f"  {d.table}[{d.index:#x}]{where}{raw}: {d.text}")
            out.append(f"      ({d.why})")
        out.append("")
    first, final = r.states.get("first_fault"), r.states.get("final")
    if first is not None:
        out.append("CPU state at the first fault:")
        out += _state_lines(first)
    if final is not None:
        if first is not None and final == first:
            out.append("CPU state at the end: the same (no delivery of the chain completed)")
        else:
            out.append("CPU state at the end:")
            out += _state_lines(final)
    if r.cpus.count > 1:
        out.append(f"vCPU {r.cpus.faulted} of {r.cpus.count} faulted (the states above are its); the others:")
        for other in r.cpus.others:
            st = other.state
            where = f" at {st['cs']['selector']}:{st['rip']} ({st['mode']})" if st else ""
            out.append(f"  vCPU {other.index}: {other.status}{where}")
    out.append("")
    tail = r.serial_tail.splitlines()[-SERIAL_LINES:]
    out.append(f"serial console (last {len(tail)} lines):" if tail else "serial console: (no output)")
    out += [f"  | {line}" for line in tail]
    return "\n".join(out) + "\n"
