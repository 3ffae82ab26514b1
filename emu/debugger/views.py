"""The debugger's views as data (dataclasses and lists), computed from a paused DebugSession.

The TUI draws them as widgets; render.py turns them into the text `emu debug --script` prints.
Guest tables are read as the CPU reads them (linear addresses through the guest's paging) with
the decoders the fault reports use (emu/cpu/tables.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from emu import layout
from emu.cpu import paging, x86
from emu.cpu.disasm import code_bits, disassemble
from emu.cpu.state import CpuState, Mode, Segment
from emu.cpu.tables import gate_text, segment_text
from emu.debugger import registers
from emu.debugger.history import HistoryView
from emu.debugger.stops import AddrSpace
from emu.errors import EmuError

if TYPE_CHECKING:
    from emu.debugger.session import DebugSession


# -- registers ------------------------------------------------------------------------------------
@dataclass
class RegisterView:
    state: CpuState
    mode: str
    cpl: int
    flags: list[str]
    cr0: list[str]
    cr4: list[str]
    efer: list[str]


def register_view(state: CpuState) -> RegisterView:
    return RegisterView(
        state, state.mode.value, state.cpl, registers.flag_names(state.rflags),
        registers.bit_names(state.cr0, registers.CR0_BITS), registers.bit_names(state.cr4, registers.CR4_BITS),
        registers.bit_names(state.efer, registers.EFER_BITS),
    )  # fmt: skip


def segment_words(seg: Segment) -> str:
    """The hidden cache of a segment register in words."""
    if seg.unusable or not seg.present:
        return "unusable" if seg.unusable else "not present"
    if seg.s:
        if seg.type & 8:
            size = "64-bit" if seg.l else "32-bit" if seg.db else "16-bit"
            kind = f"code {size}" + (" readable" if seg.type & 2 else "") + (" conforming" if seg.type & 4 else "")
        else:
            kind = "data " + ("rw" if seg.type & 2 else "ro") + (" expand-down" if seg.type & 4 else "")
            kind += " big" if seg.db else ""
    else:
        kind = {0x2: "LDT", 0x3: "TSS16 busy", 0x9: "TSS avail", 0xB: "TSS busy", 0x1: "TSS16 avail"}.get(
            seg.type, f"system type {seg.type:#x}"
        )
    return f"{kind}, dpl {seg.dpl}" + (", G" if seg.g else "")


# -- disassembly ----------------------------------------------------------------------------------
@dataclass
class DisasmLine:
    address: int  # linear
    data: bytes
    text: str
    current: bool = False
    target: int | None = None  # branch/call target (linear within the same CS)
    symbol: str | None = None  # the symbol at this address
    target_symbol: str | None = None
    breakpoint: bool = False


_BRANCHES = ("j", "call", "loop", "jmp", "jcxz", "jecxz", "jrcxz", "xbegin")


def disassembly(
    session: DebugSession, address: int | None = None, count: int = 10, before: int = 0
) -> list[DisasmLine]:
    """`count` instructions from `address` (default: the current one), plus up to `before`
    instructions leading to it (found by decoding from a little earlier until it lines up)."""
    s = session.state()
    bits = code_bits(s)
    pc = s.flat_pc
    start = pc if address is None else address
    lines: list[DisasmLine] = []
    if before:
        lines = _before(session, start, bits, before)
    try:
        code = session.read_linear(start, 15 * count)
    except EmuError:
        code = b""
        for i in range(15 * count):  # up to the first unreadable byte
            try:
                code += session.read_linear(start + i, 1)
            except EmuError:
                break
    lines += [_line(session, i, pc, s) for i in disassemble(code, start, bits, count)]
    return lines


def _before(session: DebugSession, address: int, bits: int, want: int) -> list[DisasmLine]:
    s = session.state()
    for back in range(min(15 * want, 60), 0, -1):
        try:
            code = session.read_linear(address - back, back)
        except EmuError:
            continue
        insns = disassemble(code, address - back, bits)
        if insns and insns[-1].address + len(insns[-1].data) == address and all(i.text != "(bad)" for i in insns):
            return [_line(session, i, s.flat_pc, s) for i in insns[-want:]]
    return []


def _line(session: DebugSession, insn: Any, pc: int, s: CpuState) -> DisasmLine:
    target = None
    mnemonic, _, ops = insn.text.partition(" ")
    if mnemonic.startswith(_BRANCHES) and ops.startswith("0x"):
        try:
            target = int(ops, 16) + (s.cs.base if s.mode is not Mode.LONG else 0)
        except ValueError:
            target = None
    bps = session.points.breakpoints.values()
    return DisasmLine(
        insn.address, insn.data, insn.text, insn.address == pc, target,
        session.symbols.describe(insn.address, 0) if len(session.symbols) else None,
        session.symbols.describe(target) if target is not None and len(session.symbols) else None,
        any(b.space is AddrSpace.LINEAR and b.address == insn.address and b.enabled for b in bps),
    )  # fmt: skip


def history_view(session: DebugSession, count: int) -> tuple[list[HistoryView], dict[int, str]]:
    """The last `count` instructions of the history ring and each address's instruction text
    (a loop's addresses are decoded once)."""
    hv = session.history_views(count)
    addresses = {v.address for v in hv}
    return hv, {line.address: line.text for a in addresses for line in disassembly(session, a, 1)}


# -- memory, translation, stack ------------------------------------------------------------------
@dataclass
class MemoryView:
    address: int
    space: AddrSpace
    unit: int  # bytes per item
    fmt: str  # x d u o t c a s i
    data: bytes


def memory_view(session: DebugSession, address: int, count: int, unit: int, fmt: str, space: AddrSpace) -> MemoryView:
    size = count * unit
    data = session.read_physical(address, size) if space is AddrSpace.PHYSICAL else session.read_linear(address, size)
    return MemoryView(address, space, unit, fmt, data)


@dataclass
class TranslateView:
    linear: int
    walk: paging.Walk
    paging_mode: str


def translate_view(session: DebugSession, linear: int) -> TranslateView:
    s = session.state()
    if not s.paging:
        mode = "paging off (physical = linear)"
    elif s.cr4 & x86.Cr4.PAE:
        mode = "4-level paging" if s.efer & x86.Efer.LMA else "PAE paging"
    else:
        mode = "32-bit paging"
    return TranslateView(linear, session.translate(linear), mode)


@dataclass
class StackView:
    address: int  # linear of the top
    unit: int
    values: list[int | None]


def stack_view(session: DebugSession, count: int = 16) -> StackView:
    s = session.state()
    unit = 8 if s.mode is Mode.LONG else 4 if s.ss.db else 2
    sp = s.rsp if unit == 8 else s.rsp & (0xFFFF_FFFF if unit == 4 else 0xFFFF)
    base = sp + (0 if s.mode is Mode.LONG else s.ss.base)
    values: list[int | None] = []
    for i in range(count):
        try:
            values.append(int.from_bytes(session.read_linear(base + i * unit, unit), "little"))
        except EmuError:
            values.append(None)
    return StackView(base, unit, values)


# -- descriptor tables -----------------------------------------------------------------------------
@dataclass
class TableEntry:
    index: int
    address: int | None
    raw: int | None
    text: str


_SYSTEM_16_BYTES = (x86.SEG_TYPE_LDT, x86.SEG_TYPE_TSS32_AVAIL, x86.SEG_TYPE_TSS_BUSY)


def gdt_view(session: DebugSession, ldt: bool = False, limit: int = 64) -> list[TableEntry]:
    s = session.state()
    table = s.ldt if ldt else s.gdt
    if ldt and (s.ldt.unusable or not s.ldt.present or s.ldt.selector == 0):
        return []
    long_mode = s.mode in (Mode.LONG, Mode.COMPAT)
    out: list[TableEntry] = []
    i = 0
    while i * 8 + 7 <= table.limit and len(out) < limit:
        addr = table.base + i * 8
        try:
            raw = int.from_bytes(session.read_linear(addr, 8), "little")
        except EmuError as e:
            out.append(TableEntry(i, addr, None, str(e)))
            break
        text = ("null" if i == 0 and not ldt else "empty") if raw == 0 else segment_text(raw, long_mode)
        out.append(TableEntry(i, addr, raw, text))
        d = x86.decode_descriptor(raw)
        # A 64-bit system descriptor (TSS, LDT) takes two slots.
        i += 2 if long_mode and raw and not d["s"] and d["type"] in _SYSTEM_16_BYTES else 1
    return out


def idt_view(session: DebugSession, limit: int = 256) -> list[TableEntry]:
    s = session.state()
    if s.mode is Mode.REAL:
        return ivt_view(session, min(limit, (s.idt.limit + 1) // 4))
    size = 16 if s.mode in (Mode.LONG, Mode.COMPAT) else 8
    out: list[TableEntry] = []
    for v in range(min(limit, (s.idt.limit + 1) // size)):
        addr = s.idt.base + v * size
        try:
            raw = int.from_bytes(session.read_linear(addr, size), "little")
        except EmuError as e:
            out.append(TableEntry(v, addr, None, str(e)))
            break
        text = "empty" if raw == 0 else gate_text(raw & (2**64 - 1), raw >> 64, s.mode)
        out.append(TableEntry(v, addr, raw, text))
    return out


def ivt_view(session: DebugSession, count: int = 256) -> list[TableEntry]:
    """The real-mode interrupt vector table at physical 0 (whatever the current mode)."""
    out: list[TableEntry] = []
    data = session.read_physical(0, 4 * count)
    for v in range(count):
        raw = int.from_bytes(data[4 * v : 4 * v + 4], "little")
        seg, off = raw >> 16, raw & 0xFFFF
        out.append(TableEntry(v, 4 * v, raw, f"{seg:04x}:{off:04x} (linear {(seg << 4) + off:#x})"))
    return out


@dataclass
class TssView:
    selector: int
    base: int
    limit: int
    kind: str
    fields: dict[str, int] = field(default_factory=dict)
    error: str | None = None


def tss_view(session: DebugSession) -> TssView:
    s = session.state()
    tr = s.tr
    long_mode = s.mode in (Mode.LONG, Mode.COMPAT)
    view = TssView(tr.selector, tr.base, tr.limit, "64-bit TSS" if long_mode else "32-bit TSS")
    if tr.selector == 0 and tr.base == 0:
        view.error = "no TSS loaded (TR is 0)"
        return view
    if long_mode:
        layout_ = [(f"rsp{i}", x86.tss64_stack_offset(cpl=i), 8) for i in range(3)]
        layout_ += [(f"ist{i}", x86.tss64_stack_offset(ist=i), 8) for i in range(1, 8)] + [("iomap_base", 0x66, 2)]
    else:
        layout_ = [("link", 0, 2), ("esp0", 4, 4), ("ss0", 8, 2), ("esp1", 12, 4), ("ss1", 16, 2), ("esp2", 20, 4),
                   ("ss2", 24, 2), ("cr3", 28, 4), ("eip", 32, 4), ("eflags", 36, 4), ("esp", 56, 4),
                   ("cs", 76, 2), ("ss", 80, 2), ("ds", 84, 2), ("ldt", 96, 2), ("iomap_base", 102, 2)]  # fmt: skip
    for name, off, size in layout_:
        if off + size - 1 > tr.limit:
            continue
        try:
            view.fields[name] = int.from_bytes(session.read_linear(tr.base + off, size), "little")
        except EmuError as e:
            view.error = str(e)
            break
    return view


# -- boot structures, consoles, interrupt controllers -------------------------------------------
@dataclass
class BootView:
    e820: list[tuple[int, int, str]]  # (start, size, type) as the firmware/loader reports it
    structures: list[tuple[str, int, dict[str, Any]]]  # (name, address, fields)


def boot_view(session: DebugSession) -> BootView:
    from emu.firmware.boot import multiboot, pvh, zeropage
    from emu.firmware.tables.e820 import e820_map

    e820 = [(e.addr, e.size, e.type.name) for e in e820_map(session.memory)]
    structs: list[tuple[str, int, dict[str, Any]]] = []
    mem = session.read_physical

    def u32(addr: int) -> int:
        return int.from_bytes(mem(addr, 4), "little")

    zp = layout.ZERO_PAGE_ADDR
    if mem(zp + zeropage.HEADER, 4) == zeropage.HDRS:
        fields: dict[str, Any] = {
            "protocol": int.from_bytes(mem(zp + zeropage.VERSION, 2), "little"),
            "cmd_line_ptr": u32(zp + zeropage.CMD_LINE_PTR),
            "ramdisk_image": u32(zp + zeropage.RAMDISK_IMAGE),
            "ramdisk_size": u32(zp + zeropage.RAMDISK_SIZE),
            "e820_entries": mem(zp + zeropage.E820_ENTRIES, 1)[0],
        }
        ptr = fields["cmd_line_ptr"]
        if ptr:
            fields["cmdline"] = mem(ptr, layout.CMDLINE_MAX).split(b"\0")[0].decode(errors="replace")
        structs.append(("Linux zero page (boot_params)", zp, fields))
    info = layout.BOOT_INFO_ADDR
    start = pvh.START_INFO.unpack(mem(info, pvh.START_INFO.size))
    if start[0] == pvh.START_MAGIC:
        f = {"version": start[1], "nr_modules": start[3], "cmdline_paddr": start[5], "memmap_entries": start[8]}
        structs.append(("PVH hvm_start_info", info, f))
    elif session.state().rax & 0xFFFF_FFFF == multiboot.BOOTLOADER_MAGIC:  # a flags word alone proves nothing
        f = {"flags": u32(info), "mem_lower_kib": u32(info + 4), "mem_upper_kib": u32(info + 8),
             "cmdline": u32(info + 16), "mods_count": u32(info + 20), "mmap_length": u32(info + 44)}  # fmt: skip
        structs.append(("multiboot information", info, f))
    return BootView(e820, structs)


def serial_text(session: DebugSession, tail: int = 4096) -> str:
    return bytes(session.machine.serial_out.buf[-tail:]).decode("utf-8", errors="replace")


def vga_text(session: DebugSession, columns: int = 80, rows: int = 25) -> list[str]:
    """The VGA text screen at 0xB8000 (characters only; attribute bytes dropped)."""
    data = session.read_physical(layout.VGA_TEXT, columns * rows * 2)
    lines = []
    for r in range(rows):
        row = data[r * columns * 2 : (r + 1) * columns * 2 : 2]
        lines.append("".join(chr(c) if 32 <= c < 127 else " " for c in row).rstrip())
    while lines and not lines[-1]:
        lines.pop()
    return lines


def pic_view(session: DebugSession) -> dict[str, Any]:
    """The 8259 pair of the machine's interrupt controllers (emu's own or KVM's in-kernel one)."""
    return session.machine.irqchip.describe()


def apic_view(session: DebugSession) -> dict[str, Any]:
    """The interrupt controllers with the selected vCPU's local APIC as "lapic" (--smp)."""
    view = dict(session.machine.irqchip.describe())
    lapics = view.get("lapics")
    if lapics:
        view["lapic"] = lapics[session.cpu]
    return view


@dataclass
class Mapping:
    linear: int
    physical: int
    size: int
    writable: bool
    user: bool


def page_mappings(session: DebugSession, limit: int = 256) -> list[Mapping]:
    """Every present mapping of the current page tables, contiguous runs merged (Bochs `info tab`)."""
    s = session.state()
    if not s.paging:
        return []
    mem = session.memory
    out: list[Mapping] = []

    def add(linear: int, phys: int, size: int, w: bool, u: bool) -> None:
        last = out[-1] if out else None
        if last and last.linear + last.size == linear and last.physical + last.size == phys and (
            last.writable, last.user) == (w, u):  # fmt: skip
            last.size += size
        elif len(out) < limit:
            out.append(Mapping(linear, phys, size, w, u))

    def read(addr: int, size: int) -> int:
        try:
            return int.from_bytes(mem.read(addr, size), "little")
        except Exception:
            return 0

    if s.cr4 & x86.Cr4.PAE:
        long_mode = bool(s.efer & x86.Efer.LMA)
        shifts = [39, 30, 21, 12] if long_mode else [30, 21, 12]
        root = s.cr3 & (paging.ADDR_MASK if long_mode else 0xFFFF_FFE0)

        def walk(table: int, level: int, base: int, w: bool, u: bool) -> None:
            shift = shifts[level]
            n = 4 if not long_mode and level == 0 else 512
            for i in range(n):
                e = read(table + 8 * i, 8)
                if not e & paging.PTE_P:
                    continue
                lin = base | (i << shift)
                ww = w and bool(e & paging.PTE_W) if (long_mode or level) else w
                uu = u and bool(e & paging.PTE_U) if (long_mode or level) else u
                if shift == 12 or (shift in (21, 30) and e & paging.PTE_PS and (long_mode or shift == 21)):
                    size = 1 << shift
                    add(_canonical(lin), e & paging.ADDR_MASK & ~(size - 1), size, ww, uu)
                else:
                    walk(e & paging.ADDR_MASK, level + 1, lin, ww, uu)
                if len(out) >= limit:
                    return

        walk(root, 0, 0, True, True)
        return out
    pd = s.cr3 & 0xFFFF_F000
    for i in range(1024):
        pde = read(pd + 4 * i, 4)
        if not pde & paging.PTE_P:
            continue
        if pde & paging.PTE_PS and s.cr4 & x86.Cr4.PSE:
            add(i << 22, pde & 0xFFC0_0000, 4 << 20, bool(pde & 2), bool(pde & 4))
            continue
        for j in range(1024):
            pte = read((pde & 0xFFFF_F000) + 4 * j, 4)
            if pte & paging.PTE_P:
                add(i << 22 | j << 12, pte & 0xFFFF_F000, 4096, bool(pde & pte & 2), bool(pde & pte & 4))
    return out


def _canonical(addr: int) -> int:
    return addr | 0xFFFF_0000_0000_0000 if addr >> 47 & 1 else addr
