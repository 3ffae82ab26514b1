"""Plain-text renderings of the debugger's views and stops (what `emu debug --script` prints)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from emu.cpu import paging
from emu.cpu.state import ALL_SEGMENT_NAMES, GPR_NAMES, CpuState
from emu.debugger.history import HistoryView
from emu.debugger.stops import Breakpoint, CpuLine, Stop, Watchpoint
from emu.debugger.views import (
    BootView,
    DisasmLine,
    Mapping,
    MemoryView,
    RegisterView,
    StackView,
    TableEntry,
    TranslateView,
    TssView,
    segment_words,
)


def stop_line(stop: Stop) -> str:
    n = stop.executed
    count = f", {n} instruction{'s' if n != 1 else ''}" if n > 0 else ""
    status = f", exit status {stop.exit_status}" if stop.exit_status is not None else ""
    cpu = f" on vCPU {stop.detail['cpu']}" if "cpu" in stop.detail else ""
    return f"stopped ({stop.kind.value}{count}{status}){cpu}: {stop.message}"


def cpus_text(cpus: Sequence[CpuLine]) -> str:
    """`info cpus`: one line a vCPU, the selected one marked, as gdb marks its current thread."""
    return "\n".join(
        f"{'*' if c.selected else ' '} {c.index:<3} {c.status:<14} {c.mode:<10} {c.cs:04x}:{c.rip:#x}" for c in cpus
    )


def breakpoint_line(b: Breakpoint) -> str:
    """A breakpoint as `info break` and the TUI's Breakpoints tab list it."""
    cond = f" if {b.condition.text}" if b.condition else ""
    kind = "tbreak" if b.temporary else "break"
    return f"{b.number:<3} {kind:<7} {b.space.value} {b.address:#x} ({b.spec}){cond}, hit {b.hits}"


def watchpoint_line(w: Watchpoint) -> str:
    return f"{w.number:<3} {w.kind.value:<7} physical {w.address:#x}+{w.size}, hit {w.hits}"


def where_line(state: CpuState, line: DisasmLine | None) -> str:
    cs = state.cs.selector
    where = f"{cs:04x}:{state.rip:x}" if state.mode.value in ("real", "vm86", "protected16") else f"{state.rip:#x}"
    text = f"=> {where} [{state.mode.value}]"
    if line is not None:
        text += "  " + disasm_text(line).lstrip("=> ").lstrip()
    return text


def disasm_text(line: DisasmLine) -> str:
    mark = "=>" if line.current else ("b " if line.breakpoint else "  ")
    sym = f" <{line.symbol}>" if line.symbol else ""
    text = line.text
    if line.target is not None and line.target_symbol:
        text += f" <{line.target_symbol}>"
    return f"{mark} {line.address:#x}{sym}: {line.data.hex(' '):<24} {text}"


def disassembly_text(lines: list[DisasmLine]) -> str:
    return "\n".join(disasm_text(line) for line in lines)


def registers_text(view: RegisterView) -> str:
    s = view.state
    out = []
    names = list(GPR_NAMES)
    for i in range(0, len(names), 4):
        out.append("  ".join(f"{n:<3} {getattr(s, n):#018x}" for n in names[i : i + 4]))
    out.append(f"rip {s.rip:#018x}  rflags {s.rflags:#010x} [{' '.join(view.flags)}]")
    out.append(f"mode {view.mode}, CPL {view.cpl}")
    out.append(sregs_text(s))
    out.append(cregs_text(view))
    return "\n".join(out)


def sregs_text(s: CpuState) -> str:
    rows = []
    for name in ALL_SEGMENT_NAMES:
        seg = getattr(s, name)
        words = segment_words(seg)
        rows.append(f"{name:<3} {seg.selector:#06x}  base {seg.base:#018x} limit {seg.limit:#010x}  {words}")
    rows.append(f"gdtr base {s.gdt.base:#018x} limit {s.gdt.limit:#06x}")
    rows.append(f"idtr base {s.idt.base:#018x} limit {s.idt.limit:#06x}")
    return "\n".join(rows)


def cregs_text(view: RegisterView) -> str:
    s = view.state
    return "\n".join(
        [
            f"cr0 {s.cr0:#010x} [{' '.join(view.cr0)}]",
            f"cr2 {s.cr2:#018x}  cr3 {s.cr3:#018x}  cr8 {s.cr8:#x}",
            f"cr4 {s.cr4:#010x} [{' '.join(view.cr4)}]",
            f"efer {s.efer:#x} [{' '.join(view.efer)}]",
        ]
    )


def memory_text(view: MemoryView) -> str:
    """gdb's x output: 16 bytes (or fewer items) a line, the address first."""
    data, unit = view.data, view.unit
    per_line = max(1, 16 // unit) if view.fmt not in ("c",) else 8
    items = [int.from_bytes(data[i : i + unit], "little") for i in range(0, len(data) - unit + 1, unit)]
    rows = []
    tag = "p:" if view.space.value == "physical" else ""
    for i in range(0, len(items), per_line):
        cells = [_fmt(v, unit, view.fmt) for v in items[i : i + per_line]]
        rows.append(f"{tag}{view.address + i * unit:#x}:  " + "  ".join(cells))
    return "\n".join(rows)


def _fmt(v: int, unit: int, fmt: str) -> str:
    bits = unit * 8
    if fmt == "x" or fmt == "a":
        return f"{v:#0{unit * 2 + 2}x}"
    if fmt == "d":
        return str(v - (1 << bits) if v >> (bits - 1) else v)
    if fmt == "u":
        return str(v)
    if fmt == "o":
        return f"{v:#o}"
    if fmt == "t":
        return f"{v:0{bits}b}"
    if fmt == "c":
        c = v & 0xFF
        return f"{c:3d} {chr(c)!r}" if 32 <= c < 127 else f"{c:3d} '\\x{c:02x}'"
    return f"{v:#x}"


def translate_text(view: TranslateView) -> str:
    w = view.walk
    rows = [f"linear {view.linear:#x} ({view.paging_mode})"]
    for st in w.steps:
        bits = _pte_bits(st.entry)
        rows.append(f"  {st.level:<5} table {st.table:#x} [{st.index:3d}] = {st.entry:#018x} {bits}")
    if w.physical is None:
        rows.append("  -> not mapped: " + (f"{w.steps[-1].level} entry not present" if w.steps else "no tables"))
    else:
        rows.append(f"  -> physical {w.physical:#x} ({w.page_size // 1024} KiB page, {rights(w)})")
    return "\n".join(rows)


def rights(page: paging.Walk | Mapping) -> str:
    """R/W and S/U, then X/NX for a walk (a merged mapping has no NX), as Bochs writes them."""
    text = ("W" if page.writable else "R") + ("U" if page.user else "S")
    return text + ("X" if page.executable else "NX") if isinstance(page, paging.Walk) else text


def mapping_line(mp: Mapping) -> str:
    """One line of `info tab`: a run of contiguous mappings."""
    return f"  {mp.linear:#018x}-{mp.linear + mp.size - 1:#018x} -> {mp.physical:#x} {rights(mp)}"


def _pte_bits(entry: int) -> str:
    names = [(paging.PTE_P, "P"), (paging.PTE_W, "W"), (paging.PTE_U, "U"), (1 << 5, "A"), (1 << 6, "D"),
             (paging.PTE_PS, "PS"), (paging.PTE_NX, "NX")]  # fmt: skip
    return "[" + " ".join(n for bit, n in names if entry & bit) + "]"


def table_text(name: str, entries: list[TableEntry]) -> str:
    if not entries:
        return f"{name}: empty"
    rows = [f"{name}:"]
    empty = 0
    for e in entries:
        if e.text == "empty":  # all-zero entries: counted, not listed
            empty += 1
            continue
        raw = f"{e.raw:#018x}" if e.raw is not None and e.raw < 2**64 else (f"{e.raw:#034x}" if e.raw else "-")
        addr = f"{e.address:#x}" if e.address is not None else "-"
        rows.append(f"  [{e.index:#04x}] {addr:>10} {raw}  {e.text}")
    if empty:
        rows.append(f"  ({empty} all-zero entr{'ies' if empty != 1 else 'y'} not shown)")
    return "\n".join(rows)


def tss_text(view: TssView) -> str:
    head = f"TR {view.selector:#06x}: {view.kind} at {view.base:#x}, limit {view.limit:#x}"
    if view.error:
        return head + f"\n  {view.error}"
    return head + "\n" + "\n".join(f"  {k:<10} {v:#x}" for k, v in view.fields.items())


def stack_text(view: StackView) -> str:
    rows = []
    for i, v in enumerate(view.values):
        val = "(unreadable)" if v is None else f"{v:#0{view.unit * 2 + 2}x}"
        rows.append(f"  {view.address + i * view.unit:#x}  {val}")
    return "stack:\n" + "\n".join(rows)


def boot_text(view: BootView) -> str:
    rows = ["e820 map:"]
    for start, size, kind in view.e820:
        rows.append(f"  {start:#014x}-{start + size - 1:#014x}  {kind.lower()}")
    for name, addr, fields in view.structures:
        rows.append(f"{name} at {addr:#x}:")
        rows += [f"  {k:<15} {v:#x}" if isinstance(v, int) else f"  {k:<15} {v}" for k, v in fields.items()]
    if not view.structures:
        rows.append("no zero page, hvm_start_info or multiboot information in memory")
    return "\n".join(rows)


def pic_text(view: dict[str, Any]) -> str:
    rows = [view.get("source", "PIC")]
    for name in ("master", "slave"):
        chip = view.get(name, {})
        if not chip:
            continue
        base = chip.get("vector_base", chip.get("irq_base", 0))
        bits = f"IRR {chip.get('irr', 0):08b} IMR {chip.get('imr', 0):08b} ISR {chip.get('isr', 0):08b}"
        rows.append(f"  {name:<6} {bits}  vector base {base:#04x}  ELCR {chip.get('elcr', 0):08b}")
    if "intr" in view:
        rows.append(f"  INTR to the CPU: {'asserted' if view['intr'] else 'low'}")
    return "\n".join(rows)


def apic_text(view: dict[str, Any]) -> str:
    """The local APIC and IOAPIC of emu's own interrupt controllers (Unicorn); KVM's in-kernel
    ones are not decoded."""
    lapic, ioapic = view.get("lapic"), view.get("ioapic")
    if lapic is None or ioapic is None:
        return f"{view.get('source', 'interrupt controllers')}: the local APIC and IOAPIC are not decoded here"
    enabled = "enabled" if lapic["software_enabled"] else "software-disabled"
    rows = [
        f"local APIC {lapic['id']} ({lapic['mode']}, {enabled}, base {lapic['apic_base'] & ~0xFFF:#x}"
        f"{', BSP' if lapic['bsp'] else ''}): TPR {lapic['tpr']:#04x} PPR {lapic['ppr']:#04x} "
        f"spurious {lapic['spurious_vector']:#04x} ESR {lapic['esr']:#x}",
        f"  IRR {_vector_list(lapic['irr'])}  ISR {_vector_list(lapic['isr'])}  TMR {_vector_list(lapic['tmr'])}",
    ]
    for name, lvt in lapic["lvt"].items():
        what = lvt.get("timer_mode") or lvt.get("delivery", "fixed")
        rows.append(f"  LVT {name:<8} {what:<10} vector {lvt['vector']:#04x}{'  masked' if lvt['masked'] else ''}")
    t = lapic["timer"]
    rows.append(f"  timer: {t['mode']}, divide {t['divide']}, initial {t['initial_count']}, current "
                f"{t['current_count']}, {t['hz']} Hz, fired {t['fired']}")  # fmt: skip
    rows.append(f"IOAPIC {ioapic['id']} (version {ioapic['version']:#04x}):")
    for e in ioapic["entries"]:
        if e["masked"] and not e["vector"]:
            continue  # never programmed
        flags = f"{e['trigger']}, {e['polarity']}" + (", remote IRR" if e["remote_irr"] else "")
        state = ("  masked" if e["masked"] else "") + ("  line high" if e["line"] else "")
        target = f"{e['delivery'].lower()} to {e['dest_mode']} {e['dest']}"
        rows.append(f"  pin {e['pin']:>2}: vector {e['vector']:#04x} {target} ({flags}){state}")
    return "\n".join(rows)


def _vector_list(vectors: list[int]) -> str:
    return ",".join(f"{v:#04x}" for v in vectors) or "-"


def history_text(views: list[HistoryView], lines: dict[int, str]) -> str:
    if not views:
        return "history: empty (it records while stepping under Unicorn)"
    rows = [f"history (last {len(views)}, oldest first):"]
    for v in views:
        changes = " ".join(f"{k}={b:#x}->{a:#x}" for k, (b, a) in v.changes.items())
        writes = " ".join(f"[{a:#x}]/{n}" for a, n in v.writes)
        rows.append(f"  {v.address:#x}: {lines.get(v.address, ''):<28} {changes} {writes}".rstrip())
    return "\n".join(rows)
