"""The TUI's panes as Rich text, drawn from the session's views (emu/debugger/views.py).

Pure functions of a paused session: the app calls them on the UI thread only while no command
runs, so they never race the worker that executes the guest.
"""

from __future__ import annotations

from rich.text import Text

from emu.cpu.state import ALL_SEGMENT_NAMES, GPR_NAMES, CpuState, Mode
from emu.debugger import render, views
from emu.debugger.session import DebugSession
from emu.debugger.stops import AddrSpace, Stop, StopKind
from emu.errors import EmuError

CHANGED = "bold black on yellow"
GREY = "grey50"
_SEGS = ALL_SEGMENT_NAMES

# Stop kinds a user should notice at a glance (the status line's colour).
STOP_STYLE = {
    StopKind.BREAKPOINT: "bold red", StopKind.WATCHPOINT: "bold magenta", StopKind.MODE_CHANGE: "bold cyan",
    StopKind.CR_WRITE: "bold cyan", StopKind.EXCEPTION: "bold red", StopKind.INTERRUPT: "bold magenta",
    StopKind.TRIPLE_FAULT: "bold white on red", StopKind.ERROR: "bold white on red", StopKind.HALTED: "bold yellow",
    StopKind.EXITED: "bold yellow", StopKind.USER: "bold yellow",
}  # fmt: skip


def register_values(s: CpuState) -> dict[str, int]:
    """Everything the register pane shows, flattened for comparing before and after a run."""
    out = {n: getattr(s, n) for n in GPR_NAMES}
    out |= {"rip": s.rip, "rflags": s.rflags, "cr0": s.cr0, "cr2": s.cr2, "cr3": s.cr3, "cr4": s.cr4, "efer": s.efer}
    for name in _SEGS:
        seg = getattr(s, name)
        out |= {name: seg.selector, f"{name}.base": seg.base, f"{name}.limit": seg.limit}
    out |= {"gdtr": s.gdt.base << 32 | s.gdt.limit, "idtr": s.idt.base << 32 | s.idt.limit}
    return out


def changed_registers(before: CpuState, after: CpuState) -> set[str]:
    a, b = register_values(before), register_values(after)
    return {k for k, v in b.items() if a.get(k) != v}


def _val(text: Text, name: str, value: str, changed: set[str]) -> None:
    text.append(value, CHANGED if name in changed else "")


def registers_pane(s: CpuState, changed: set[str]) -> Text:
    v = views.register_view(s)
    t = Text()
    long_mode = s.mode in (Mode.LONG, Mode.COMPAT)
    width = 16 if long_mode else 8
    names = list(GPR_NAMES) if long_mode else list(GPR_NAMES[:8])
    for i in range(0, len(names), 2):
        for j, n in enumerate(names[i : i + 2]):
            t.append(f"{n:<4}", "bold")
            _val(t, n, f"{getattr(s, n) & (2 ** (width * 4) - 1):0{width}x}", changed)
            t.append("   " if j == 0 else "")
        t.append("\n")
    t.append("rip ", "bold")
    _val(t, "rip", f"{s.rip:0{width}x}", changed)
    t.append("   rflags ", "bold")
    _val(t, "rflags", f"{s.rflags:08x}", changed)
    t.append("\n     " + " ".join(v.flags) + "\n", "cyan")
    t.append("seg  sel   base             limit     cache\n", "bold underline")
    for name in _SEGS:
        seg = getattr(s, name)
        t.append(f"{name:<4} ", "bold")
        _val(t, name, f"{seg.selector:04x}", changed)
        t.append("  ")
        _val(t, f"{name}.base", f"{seg.base:016x}", changed)
        t.append(" ")
        _val(t, f"{name}.limit", f"{seg.limit:08x}", changed)
        t.append(f"  {views.segment_words(seg)}\n", GREY)
    t.append("gdtr ", "bold")
    _val(t, "gdtr", f"{s.gdt.base:x}/{s.gdt.limit:x}", changed)
    t.append("  idtr ", "bold")
    _val(t, "idtr", f"{s.idt.base:x}/{s.idt.limit:x}", changed)
    t.append("  cr2 ", "bold")
    _val(t, "cr2", f"{s.cr2:x}", changed)
    t.append("  cr3 ", "bold")
    _val(t, "cr3", f"{s.cr3:x}", changed)
    for name, value, bits in (("cr0", s.cr0, v.cr0), ("cr4", s.cr4, v.cr4), ("efer", s.efer, v.efer)):
        t.append(f"\n{name:<4} ", "bold")
        _val(t, name, f"{value:08x}", changed)
        t.append(f" {' '.join(bits)}", "cyan")
    return t


def disasm_prompt(line: views.DisasmLine, s: CpuState) -> Text:
    """One disassembly line: breakpoint dot, current-instruction arrow, address, bytes, text, target."""
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append("●" if line.breakpoint else " ", "bold red")
    t.append("▶ " if line.current else "  ", "bold yellow")
    if s.mode in (Mode.REAL, Mode.VM86):  # seg:off as the CPU fetches it (blank outside CS)
        off = line.address - s.cs.base
        t.append(f"{s.cs.selector:04x}:{off:04x} " if 0 <= off < 0x10000 else " " * 10, GREY)
    t.append(f"{line.address:#010x}", "bold" if line.current else "")
    if line.symbol:
        t.append(f" <{line.symbol}>", "magenta")
    data = line.data.hex(" ") if len(line.data) <= 8 else line.data[:7].hex(" ") + " …"
    t.append(f"  {data:<24} ", GREY)
    t.append(line.text, "bold yellow" if line.current else "")
    if line.target is not None:
        t.append(f"  → {line.target:#x}", "green")
        if line.target_symbol:
            t.append(f" <{line.target_symbol}>", "magenta")
    return t


def memory_pane(session: DebugSession, address: int, space: AddrSpace, rows: int) -> Text:
    t = Text(no_wrap=True)
    try:
        data = views.memory_view(session, address, rows * 16, 1, "x", space).data
    except EmuError as e:
        return Text(str(e), "red")
    tag = "p:" if space is AddrSpace.PHYSICAL else ""
    for r in range(rows):
        chunk = data[r * 16 : r * 16 + 16]
        t.append(f"{tag}{address + r * 16:010x} ", "bold")
        t.append(chunk[:8].hex(" ") + "  " + chunk[8:].hex(" "))
        t.append("  " + "".join(chr(b) if 32 <= b < 127 else "." for b in chunk) + "\n", GREY)
    if space is AddrSpace.LINEAR:
        t.append(_translation_line(session, address))
    return t


def _translation_line(session: DebugSession, linear: int) -> Text:
    s = session.state()
    if not s.paging:
        return Text("paging off: physical = linear", GREY)
    walk = session.translate(linear)
    if walk.physical is None:
        return Text(f"{linear:#x} is not mapped (w for the page walk)", "red")
    size = walk.page_size // 1024
    return Text(f"{linear:#x} -> physical {walk.physical:#x}, {size} KiB page {render.rights(walk)}", "green")


def stack_pane(session: DebugSession, rows: int) -> Text:
    view = views.stack_view(session, rows)
    t = Text(no_wrap=True)
    for i, value in enumerate(view.values):
        t.append(f"{view.address + i * view.unit:010x} ", "bold yellow" if i == 0 else "bold")
        t.append("(unreadable)" if value is None else f"{value:0{view.unit * 2}x}", GREY if value is None else "")
        t.append("  ← sp\n" if i == 0 else "\n", "yellow")
    return t


def points_pane(session: DebugSession) -> Text:
    p = session.points
    t = Text()
    if not (p.breakpoints or p.watchpoints or p.catchpoints):
        return Text("no breakpoints, watchpoints or catchpoints (F9 on a disassembly line, or `break LOC`)", GREY)
    for b in p.breakpoints.values():
        t.append(render.breakpoint_line(b), "" if b.enabled else GREY)
        t.append("\n" if b.enabled else " (disabled)\n", GREY)
    for w in p.watchpoints.values():
        t.append(render.watchpoint_line(w) + "\n", "" if w.enabled else GREY)
    for c in p.catchpoints.values():
        what = f"{c.kind.value} {c.vector:#x}" if c.vector is not None else c.kind.value
        if c.kind.value == "cr":
            what += " " + ",".join(sorted(c.regs))
        t.append(f"{c.number:<3} catch   {what}, hit {c.hits}\n", "" if c.enabled else GREY)
    return t


def backend_pane(session: DebugSession) -> Text:
    """Every feature, the unsupported ones greyed out with the reason (never hidden)."""
    t = Text(f"backend {session.machine.cfg.backend.value}\n", "bold")
    for name, why in session.capabilities().items():
        if why is None:
            t.append(f"  ✓ {name}\n", "green")
        else:
            t.append(f"  ✗ {name}: {why}\n", GREY)
    return t


def status_line(session: DebugSession, stop: Stop, running: bool) -> Text:
    t = Text(no_wrap=True, overflow="ellipsis")
    backend = session.machine.cfg.backend.value
    if running:
        t.append(" RUNNING ", "bold black on green")
        t.append("  Esc or Ctrl-C stops it", "bold")
    else:
        s = session.state()
        if session.backend.cpus > 1:  # whose state every pane shows
            t.append(f" vCPU {session.cpu}/{session.backend.cpus} ", "bold black on yellow")
        t.append(f" {s.mode.value} ", "bold black on cyan")
        t.append(f" paging {'on' if s.paging else 'off'}, CPL {s.cpl} ", "bold")
        t.append(render.stop_line(stop), STOP_STYLE.get(stop.kind, ""))
    limits = [n for n, why in session.capabilities().items() if why is not None]
    t.append(f"  │ {backend}: ", GREY)
    t.append(f"{len(limits)} features unavailable (Backend tab)" if limits else "every feature", GREY)
    return t


def safe(fn: object, *args: object) -> Text:
    """Draw a view; a guest table that cannot be read becomes its error, never an exception."""
    try:
        out = fn(*args)  # type: ignore[operator]
    except EmuError as e:
        return Text(str(e), "red")
    return out if isinstance(out, Text) else Text(str(out))
