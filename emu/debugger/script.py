"""Headless debugger commands (`emu debug --script FILE|-`): gdb's names and short forms plus
Bochs-style extras, one command a line, results printed as text.

The first command that fails (unknown, bad argument, not supported by the backend) prints one
`emu: error: line N: ...` line and ends the script with status 2; see COMMANDS for the list.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterable
from typing import TextIO

from emu.debugger import render, views
from emu.debugger.session import DebugSession
from emu.debugger.stops import AddrSpace, CatchKind, Stop, Unsupported, WatchKind
from emu.errors import EmuError

COMMANDS = """\
stepi [N] | si [N]            execute N instructions (default 1)
nexti [N] | ni [N]            like stepi, stepping over call and int n
continue [N] | c [N]          run to a stop; with N, also stop after N instructions
until LOC | advance LOC       run to LOC (breakpoints still stop)
reverse-stepi [N] | rsi [N]   step back through the execution history (Unicorn)
break LOC [if COND] | b       breakpoint; LOC: 0x7c00 (linear), 0:7c00 (seg:off), phys 0x100000, a symbol
tbreak LOC [if COND]          one-shot breakpoint
lb ADDR | vb SEG:OFF | pb ADDR  Bochs: linear, seg:off, physical breakpoint
watch ADDR [LEN]              stop after writes to physical ADDR..ADDR+LEN (also rwatch, awatch)
catch mode|cr [REG..]|exception N|interrupt   stop on a mode change, CR0/CR3/CR4/EFER writes, a vector, any interrupt
delete [N] | d [N]            delete a point (all without N); disable N, enable N
x/FMT ADDR | xp/FMT ADDR      memory at a linear (x) or physical (xp) address; FMT = count, x d u o t c i s, b h w g
                              (the size before or after the format: x/4gx and x/4xg)
print EXPR | p[/FMT] EXPR     evaluate an expression (registers, $pc/$sp/$fp, byte/word/dword/qword [ADDR]);
                              FMT: x d u o t c
set $REG = VALUE              write a 64-bit register, rip or rflags
disas [LOC [N]]               disassemble (default: around the current instruction)
info registers|r|gdt|idt|ivt|tss|ldt|tab|mode|break|pic|apic|e820|boot|serial|vga|history|backend|cpus
cpu N                         choose the vCPU that commands show and change (--smp; a stop chooses the one that stopped)
creg | sreg | page ADDR | print-stack [N]   Bochs: control registers, segment registers, page walk, stack
echo TEXT | quit | q | help
"""
# gdb takes the size letter before or after the format letter (x/4xg and x/4gx).
_X = re.compile(r"^(\d*)([bhwg]?)([xduotcais]?)([bhwg]?)$")
# gdb's names for the program counter, stack and frame pointers.
_ALIASES = {"pc": "rip", "sp": "rsp", "fp": "rbp"}
_UNITS = {"b": 1, "h": 2, "w": 4, "g": 8}


class ScriptError(EmuError):
    """A script command that failed: printed with its line number, status 2."""


class ScriptRunner:
    def __init__(self, session: DebugSession, out: TextIO) -> None:
        self.s = session
        self.out = out
        self._x_fmt = ("x", 4)
        self.quit = False
        self._commands: dict[str, Callable[[str], None]] = {
            "stepi": self.cmd_stepi, "si": self.cmd_stepi, "nexti": self.cmd_nexti, "ni": self.cmd_nexti,
            "continue": self.cmd_continue, "c": self.cmd_continue, "cont": self.cmd_continue,
            "until": self.cmd_until, "u": self.cmd_until, "advance": self.cmd_until,
            "reverse-stepi": self.cmd_rsi, "rsi": self.cmd_rsi,
            "break": self.cmd_break, "b": self.cmd_break, "tbreak": self.cmd_tbreak,
            "lb": self.cmd_break, "lbreak": self.cmd_break, "vb": self.cmd_break, "vbreak": self.cmd_break,
            "pb": self.cmd_pbreak, "pbreak": self.cmd_pbreak,
            "watch": self.cmd_watch, "rwatch": self.cmd_rwatch, "awatch": self.cmd_awatch,
            "catch": self.cmd_catch, "delete": self.cmd_delete, "d": self.cmd_delete,
            "disable": self.cmd_disable, "enable": self.cmd_enable,
            "print": self.cmd_print, "p": self.cmd_print, "set": self.cmd_set,
            "disas": self.cmd_disas, "disassemble": self.cmd_disas,
            "info": self.cmd_info, "i": self.cmd_info, "creg": self.cmd_creg, "sreg": self.cmd_sreg,
            "page": self.cmd_page, "print-stack": self.cmd_stack, "echo": self.cmd_echo,
            "quit": self.cmd_quit, "q": self.cmd_quit, "help": self.cmd_help, "cpu": self.cmd_cpu,
        }  # fmt: skip

    # -- driving ----------------------------------------------------------------------------------
    def run(self, lines: Iterable[str]) -> None:
        """Run every line; raises ScriptError (with the line number) at the first failure."""
        for number, line in enumerate(lines, 1):
            if self.quit:
                return
            try:
                self.execute(line)
            except (EmuError, Unsupported) as e:
                raise ScriptError(f"line {number}: {line.strip()}: {e}") from None

    def execute(self, line: str) -> None:
        text = line.split("#", 1)[0].strip() if not line.strip().startswith("echo") else line.strip()
        if not text:
            return
        word, _, rest = text.partition(" ")
        if word.startswith(("x/", "xp/")) or word in ("x", "xp"):
            return self.cmd_x(word, rest.strip())
        if word.startswith(("p/", "print/")):
            return self.cmd_print(rest.strip(), word.partition("/")[2])
        handler = self._commands.get(word.lower())
        if handler is None:
            raise EmuError(f"unknown command {word!r} (try `help`)")
        handler(rest.strip())

    def write(self, text: str) -> None:
        self.out.write(text.rstrip("\n") + "\n")

    def _count(self, arg: str, default: int = 1) -> int:
        if not arg:
            return default
        try:
            n = int(arg, 0)
        except ValueError:
            raise EmuError(f"not a count: {arg!r}") from None
        if n < 1:
            raise EmuError("the count must be at least 1")
        return n

    def _show_stop(self, stop: Stop) -> None:
        self.write(render.stop_line(stop))
        if stop.finished:
            return
        lines = views.disassembly(self.s, count=1)
        self.write(render.where_line(stop.state, lines[0] if lines else None))

    # -- execution --------------------------------------------------------------------------------
    def cmd_stepi(self, arg: str) -> None:
        self._show_stop(self.s.stepi(self._count(arg)))

    def cmd_nexti(self, arg: str) -> None:
        self._show_stop(self.s.nexti(self._count(arg)))

    def cmd_continue(self, arg: str) -> None:
        self._show_stop(self.s.cont(self._count(arg) if arg else None))

    def cmd_until(self, arg: str) -> None:
        if not arg:
            raise EmuError("until needs a location")
        self._show_stop(self.s.until(arg))

    def cmd_rsi(self, arg: str) -> None:
        self._show_stop(self.s.step_back(self._count(arg)))

    # -- points -----------------------------------------------------------------------------------
    def _break(self, arg: str, temporary: bool) -> None:
        if not arg:
            raise EmuError("break needs a location")
        where, _, cond = arg.partition(" if ")
        bp = self.s.add_breakpoint(where, cond.strip() or None, temporary)
        kind = "temporary breakpoint" if temporary else "breakpoint"
        space = "physical" if bp.space is AddrSpace.PHYSICAL else "linear"
        tail = f" if {bp.condition.text}" if bp.condition else ""
        self.write(f"{kind} {bp.number} at {space} {bp.address:#x} ({bp.spec}){tail}")

    def cmd_break(self, arg: str) -> None:
        self._break(arg, False)

    def cmd_tbreak(self, arg: str) -> None:
        self._break(arg, True)

    def cmd_pbreak(self, arg: str) -> None:
        self._break("phys " + arg, False)

    def _watch(self, arg: str, kind: WatchKind) -> None:
        parts = arg.split()
        if not parts or len(parts) > 3:
            raise EmuError("watch needs ADDR [LEN] (a physical address)")
        if parts[0].lower() in ("phys", "p"):
            parts = parts[1:]
        size = self._count(parts[1]) if len(parts) > 1 else 1
        wp = self.s.add_watchpoint(parts[0], size, kind)
        name = {WatchKind.WRITE: "watchpoint", WatchKind.READ: "read watchpoint", WatchKind.ACCESS: "access watchpoint"}
        self.write(f"{name[kind]} {wp.number}: physical {wp.address:#x}, {wp.size} byte{'s' if size != 1 else ''}")

    def cmd_watch(self, arg: str) -> None:
        self._watch(arg, WatchKind.WRITE)

    def cmd_rwatch(self, arg: str) -> None:
        self._watch(arg, WatchKind.READ)

    def cmd_awatch(self, arg: str) -> None:
        self._watch(arg, WatchKind.ACCESS)

    def cmd_catch(self, arg: str) -> None:
        words = arg.lower().split()
        if not words:
            raise EmuError("catch mode | cr [cr0 cr3 cr4 efer] | exception N | interrupt")
        what = words[0]
        if what == "mode":
            cp = self.s.add_catch(CatchKind.MODE)
            self.write(f"catchpoint {cp.number}: CPU mode or paging changes")
        elif what in ("cr", "creg"):
            cp = self.s.add_catch(CatchKind.CR_WRITE, regs=frozenset(words[1:]) or None)
            self.write(f"catchpoint {cp.number}: writes to {', '.join(sorted(cp.regs)).upper()}")
        elif what in ("exception", "exc", "vector"):
            if len(words) != 2:
                raise EmuError("catch exception needs a vector number")
            try:
                vector = int(words[1], 0)
            except ValueError:
                raise EmuError(f"not a vector: {words[1]!r}") from None
            cp = self.s.add_catch(CatchKind.EXCEPTION, vector)
            self.write(f"catchpoint {cp.number}: exception vector {vector:#x}")
        elif what in ("interrupt", "int", "interrupts"):
            cp = self.s.add_catch(CatchKind.INTERRUPT)
            self.write(f"catchpoint {cp.number}: any interrupt or exception")
        else:
            raise EmuError(f"unknown catch {what!r}: mode, cr, exception N or interrupt")

    def _number_arg(self, arg: str) -> int:
        try:
            return int(arg, 0)
        except ValueError:
            raise EmuError(f"not a point number: {arg!r}") from None

    def cmd_delete(self, arg: str) -> None:
        self.s.delete(self._number_arg(arg) if arg else None)

    def cmd_disable(self, arg: str) -> None:
        self.s.enable(self._number_arg(arg), False)

    def cmd_enable(self, arg: str) -> None:
        self.s.enable(self._number_arg(arg), True)

    # -- data -------------------------------------------------------------------------------------
    def cmd_x(self, word: str, arg: str) -> None:
        phys = word.startswith("xp")
        fmt_text = word.partition("/")[2]
        m = _X.match(fmt_text)
        if m is None or (m.group(2) and m.group(4)):
            raise EmuError(f"bad format {fmt_text!r}: x/[COUNT][x|d|u|o|t|c|a|i|s][b|h|w|g]")
        count = int(m.group(1)) if m.group(1) else 1
        fmt = m.group(3) or self._x_fmt[0]
        size = m.group(2) or m.group(4)
        unit = _UNITS[size] if size else (1 if fmt == "c" else self._x_fmt[1])
        if not arg:
            raise EmuError("x needs an address")
        loc = self.s.parse_location(("phys " if phys else "") + arg)
        space = loc.space
        if count > 65536:
            raise EmuError("at most 65536 items at a time")
        if fmt == "i":
            if space is AddrSpace.PHYSICAL and self.s.state().paging:
                raise EmuError("x/i takes a linear address while paging is on")
            self.write(render.disassembly_text(views.disassembly(self.s, loc.address, count)))
            return
        if fmt == "s":
            data = self._read(loc.address, 256 * count, space)
            for piece in data.split(b"\0")[:count]:
                self.write(f"{loc.address:#x}: {piece.decode('latin-1')!r}")
            return
        self._x_fmt = (fmt, unit)
        view = views.memory_view(self.s, loc.address, count, unit, fmt, space)
        self.write(render.memory_text(view))

    def _read(self, addr: int, size: int, space: AddrSpace) -> bytes:
        return self.s.read_physical(addr, size) if space is AddrSpace.PHYSICAL else self.s.read_linear(addr, size)

    def cmd_print(self, arg: str, fmt: str = "") -> None:
        """print EXPR, or gdb's p/x, p/d, p/u, p/o, p/t, p/c."""
        if not arg:
            raise EmuError("print needs an expression")
        value = self.s.evaluate(_expression(arg))
        signed = value if value < 1 << 63 else value - (1 << 64)
        shown = {"": f"{value:#x} ({value})", "x": f"{value:#x}", "d": str(signed), "u": str(value),
                 "o": f"{value:#o}", "t": f"{value:b}", "c": repr(chr(value & 0xFF))}.get(fmt)  # fmt: skip
        if shown is None:
            raise EmuError(f"bad format /{fmt}: print/[x|d|u|o|t|c]")
        self.write(f"{arg} = {shown}")

    def cmd_set(self, arg: str) -> None:
        m = re.match(r"^\$?(\w+)\s*=\s*(.+)$", arg)
        if m is None:
            raise EmuError("set $REG = VALUE")
        value = self.s.evaluate(_expression(m.group(2)))
        self.s.set_register(_ALIASES.get(m.group(1).lower(), m.group(1)), value)
        self.write(f"{m.group(1)} = {value:#x}")

    def cmd_disas(self, arg: str) -> None:
        parts = shlex.split(arg)
        if parts:
            loc = self.s.parse_location(parts[0])
            count = self._count(parts[1]) if len(parts) > 1 else 10
            lines = views.disassembly(self.s, loc.address, count)
        else:
            lines = views.disassembly(self.s, count=6, before=4)
        self.write(render.disassembly_text(lines))

    def cmd_info(self, arg: str) -> None:
        what, _, rest = arg.partition(" ")
        what = what.lower()
        s = self.s
        if what in ("registers", "reg", "r", "all-registers"):
            self.write(render.registers_text(views.register_view(s.state())))
        elif what == "gdt":
            self.write(render.table_text("GDT", views.gdt_view(s)))
        elif what == "ldt":
            self.write(render.table_text("LDT", views.gdt_view(s, ldt=True)))
        elif what == "idt":
            self.write(render.table_text("IDT" if s.state().cr0 & 1 else "IDT (real mode: IVT)", views.idt_view(s)))
        elif what == "ivt":
            self.write(render.table_text("IVT", views.ivt_view(s, self._count(rest, 256) if rest else 32)))
        elif what == "tss":
            self.write(render.tss_text(views.tss_view(s)))
        elif what in ("tab", "pages"):
            maps = views.page_mappings(s)
            if not s.state().paging:
                self.write("paging is off: linear addresses are physical")
            for mp in maps:
                self.write(render.mapping_line(mp))
        elif what == "mode":
            st = s.state()
            paging_text = "paging on" if st.paging else "paging off"
            self.write(f"{st.mode.value} ({st.mode.bits}-bit code), {paging_text}, CPL {st.cpl}")
        elif what in ("break", "breakpoints", "b", "watch", "watchpoints"):
            self._info_points()
        elif what == "pic":
            self.write(render.pic_text(views.pic_view(s)))
        elif what in ("apic", "lapic", "ioapic"):
            self.write(render.apic_text(views.apic_view(s)))
        elif what in ("e820", "boot"):
            self.write(render.boot_text(views.boot_view(s)))
        elif what == "serial":
            self.write(views.serial_text(s) or "(no serial output yet)")
        elif what in ("vga", "screen"):
            self.write("\n".join(views.vga_text(s)) or "(the VGA text screen is blank)")
        elif what == "history":
            self.write(render.history_text(*views.history_view(s, self._count(rest, 16) if rest else 16)))
        elif what in ("cpus", "threads"):
            self.write(render.cpus_text(s.cpus()))
        elif what == "backend":
            self.write(f"backend {s.machine.cfg.backend.value}")
            for name, why in s.capabilities().items():
                self.write(f"  {name:<36} {'yes' if why is None else 'no: ' + why}")
        else:
            raise EmuError(f"unknown info {what!r}")

    def _info_points(self) -> None:
        p = self.s.points
        if not (p.breakpoints or p.watchpoints or p.catchpoints):
            self.write("no breakpoints, watchpoints or catchpoints")
            return
        for b in p.breakpoints.values():
            self.write(render.breakpoint_line(b) + ("" if b.enabled else " (disabled)"))
        for w in p.watchpoints.values():
            self.write(render.watchpoint_line(w) + ("" if w.enabled else " (disabled)"))
        for c in p.catchpoints.values():
            what = {CatchKind.MODE: "mode changes", CatchKind.INTERRUPT: "any interrupt",
                    CatchKind.EXCEPTION: f"exception {c.vector:#x}" if c.vector is not None else "exception",
                    CatchKind.CR_WRITE: "writes to " + ", ".join(sorted(c.regs)).upper()}[c.kind]  # fmt: skip
            self.write(f"{c.number:<3} catch   {what}" + ("" if c.enabled else " (disabled)"))

    def cmd_cpu(self, arg: str) -> None:
        try:
            cpu = int(arg, 0)
        except ValueError:
            raise EmuError(f"not a vCPU number: {arg!r}") from None
        self.s.select_cpu(cpu)
        st = self.s.state()
        self.write(f"vCPU {self.s.cpu} ({self.s.backend.cpu_status(self.s.cpu)}): {render.where_line(st, None)}")

    def cmd_creg(self, arg: str) -> None:
        self.write(render.cregs_text(views.register_view(self.s.state())))

    def cmd_sreg(self, arg: str) -> None:
        self.write(render.sregs_text(self.s.state()))

    def cmd_page(self, arg: str) -> None:
        if not arg:
            raise EmuError("page needs a linear address")
        loc = self.s.parse_location(arg)
        self.write(render.translate_text(views.translate_view(self.s, loc.address)))

    def cmd_stack(self, arg: str) -> None:
        self.write(render.stack_text(views.stack_view(self.s, self._count(arg, 16) if arg else 16)))

    def cmd_echo(self, arg: str) -> None:
        self.write(arg)

    def cmd_quit(self, arg: str) -> None:
        self.quit = True

    def cmd_help(self, arg: str) -> None:
        self.write(COMMANDS)


def _expression(text: str) -> str:
    """gdb's `$reg` and `$pc`/`$sp`/`$fp` as the expression language's register names."""
    return re.sub(r"\$(\w+)", lambda m: _ALIASES.get(m.group(1).lower(), m.group(1)), text)
