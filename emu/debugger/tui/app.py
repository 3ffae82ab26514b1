"""DebuggerApp: the Textual front end of a DebugSession.

Every command line (typed, or sent by a key such as F7) goes through the same ScriptRunner as
`emu debug --script`, in one thread worker: the guest runs off the UI thread, which only redraws
once the command has returned (the session is never read while it runs). Esc/Ctrl-C call
`session.stop()`, the one session call that is safe from any thread.
"""

from __future__ import annotations

import io
import traceback
from collections.abc import Callable
from typing import ClassVar

from rich.console import Console
from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import OptionList, RichLog, Static, TabbedContent, TabPane
from textual.widgets.option_list import Option

from emu.cpu.state import CpuState
from emu.debugger import render, views
from emu.debugger.script import COMMANDS, ScriptRunner
from emu.debugger.session import DebugSession
from emu.debugger.stops import AddrSpace, Stop, Unsupported
from emu.debugger.tui import panes
from emu.debugger.tui.widgets import CommandLine, HelpScreen
from emu.errors import EmuError

#: Tab id -> title. The first is the command output.
TABS = {
    "output": "Output", "points": "Breakpoints", "gdt": "GDT", "ldt": "LDT", "idt": "IDT", "ivt": "IVT",
    "tss": "TSS", "walk": "Page walk", "boot": "Boot/e820", "serial": "Serial", "vga": "VGA", "pic": "PIC",
    "history": "History", "backend": "Backend",
}  # fmt: skip


class _Collect:
    """The ScriptRunner's `out`: collects what a command prints, shown when it returns."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass


class DebuggerApp(App[int]):
    TITLE = "emu debug"
    CSS = """
    #top { height: 1fr; }
    #left { width: 1fr; }
    #right { width: 74; }
    #disasm { height: 1fr; border: round $primary; text-wrap: nowrap; text-overflow: ellipsis; }
    #memory { height: 11; border: round $primary; padding: 0 1; }
    #regs { height: 1fr; border: round $primary; padding: 0 1; }
    #stack { height: 10; border: round $primary; padding: 0 1; }
    #tabs { height: 13; }
    #tabs TabPane { padding: 0 1; }
    #status { height: 1; background: $boost; }
    #cmd { height: 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f7", "command('stepi')", "stepi"),
        Binding("f8", "command('nexti')", "nexti"),
        Binding("f5", "command('continue')", "continue"),
        Binding("f9", "toggle_breakpoint", "breakpoint"),
        Binding("escape", "escape", "stop", show=False),
        Binding("ctrl+c", "stop", "stop", priority=True, show=False),
        Binding("f1,question_mark", "help", "help"),
        Binding("s", "command('stepi')", show=False),
        Binding("n", "command('nexti')", show=False),
        Binding("c", "command('continue')", show=False),
        Binding("q", "quit_debugger", "quit", show=False),
        Binding("p", "toggle_space", show=False),
        Binding("colon", "focus_command", show=False),
        *(Binding(k, f"view('{tab}')", show=False) for k, tab in (
            ("o", "output"), ("b", "points"), ("g", "gdt"), ("l", "ldt"), ("i", "idt"), ("v", "vga"),
            ("t", "tss"), ("e", "boot"), ("r", "serial"), ("w", "walk"))),
    ]  # fmt: skip

    def __init__(self, session: DebugSession) -> None:
        super().__init__()
        self.session = session
        self.out = _Collect()
        self.runner = ScriptRunner(session, self.out)  # type: ignore[arg-type]
        self.running = False
        self.changed: set[str] = set()
        self.mem_address: int | None = None  # None: follow the current instruction
        self.mem_space = AddrSpace.LINEAR
        self._lines: list[views.DisasmLine] = []
        self._quit_after_run = False
        self.exit_status = 0

    # -- layout -----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        with Horizontal(id="top"):
            with Vertical(id="left"):
                yield OptionList(id="disasm")
                yield Static(id="memory")
            with Vertical(id="right"):
                with VerticalScroll(id="regs"):
                    yield Static(id="regs-text")
                yield Static(id="stack")
        with TabbedContent(id="tabs"):
            for tab_id, title in TABS.items():
                with TabPane(title, id=tab_id):
                    if tab_id == "output":
                        yield RichLog(id="log", wrap=False, markup=False, max_lines=5000)
                    else:
                        with VerticalScroll():
                            yield Static(id=f"{tab_id}-text")
        yield Static(id="status")
        yield CommandLine(id="cmd", placeholder="command (help, si, c, b 0:7c00, x/8xb 0x7c00, info gdt...)",
                          compact=True)  # fmt: skip

    def on_mount(self) -> None:
        for wid, title in (("disasm", "disassembly"), ("memory", "memory"), ("stack", "stack"), ("regs", "registers")):
            self.query_one(f"#{wid}").border_title = title
        self.query_one("#disasm").focus()
        self.refresh_views()
        self.log_text(Text("emu debug: paused at the first instruction. F1 or ? for help.", "bold"))

    # -- running commands ---------------------------------------------------------------------------
    def run_command(self, line: str) -> None:
        """Run one command line in the worker (TUI commands first, then the ScriptRunner's)."""
        line = line.strip()
        if not line:
            return
        if self.running:
            self.log_text(Text("the guest is running: Esc or Ctrl-C stops it first", "yellow"))
            return
        self.log_text(Text(f"(emu) {line}", "bold cyan"))
        word, _, rest = line.partition(" ")
        tui: dict[str, Callable[[str], None]] = {"mem": self._cmd_mem, "view": self._cmd_view}
        if word in tui:
            try:
                tui[word](rest.strip())
            except EmuError as e:
                self.log_text(Text(f"error: {e}", "bold red"))
            return
        self.running = True
        self.update_status()
        before, before_stop = self.session.state(), self.session.last_stop
        self.run_worker(lambda: self._work(line, before, before_stop), thread=True, group="exec", exclusive=False)

    def _work(self, line: str, before: CpuState, before_stop: Stop) -> None:
        """Worker thread: the only place the session executes."""
        error: Text | None = None
        try:
            self.runner.execute(line)
        except (EmuError, Unsupported) as e:
            error = Text(f"error: {e}", "bold red")
        except Exception as e:  # a bug in emu: one line in the log, the UI lives on
            self.log.error(traceback.format_exc())
            error = Text(f"internal error: {type(e).__name__}: {e}", "bold white on red")
        self.call_from_thread(self._done, error, before, before_stop)

    def _done(self, error: Text | None, before: CpuState, before_stop: Stop) -> None:
        text = "".join(self.out.parts).rstrip("\n")
        self.out.parts.clear()
        if text:
            self.log_text(Text(text))
        if error is not None:
            self.log_text(error)
        self.running = False
        if self.session.last_stop is not before_stop:  # something executed: highlight what it changed
            self.changed = panes.changed_registers(before, self.session.state())
        if self.runner.quit or self._quit_after_run:
            self.exit(self.exit_status)
            return
        self.refresh_views()

    def log_text(self, text: Text) -> None:
        self.query_one("#log", RichLog).write(text)

    def _cmd_mem(self, arg: str) -> None:
        if not arg:
            raise EmuError("mem LOC | mem phys ADDR | mem rip (follow the current instruction)")
        if arg == "rip":
            self.mem_address, self.mem_space = None, AddrSpace.LINEAR
        else:
            loc = self.session.parse_location(arg)
            self.mem_address, self.mem_space = loc.address, loc.space
        self.refresh_views()

    def _cmd_view(self, arg: str) -> None:
        if arg not in TABS:
            raise EmuError(f"view takes one of: {' '.join(TABS)}")
        self.action_view(arg)

    # -- actions ------------------------------------------------------------------------------------
    def action_command(self, line: str) -> None:
        self.run_command(line)

    def action_stop(self) -> None:
        if self.running:
            self.session.stop()

    def action_escape(self) -> None:
        if self.running:
            self.session.stop()
        elif isinstance(self.focused, CommandLine):
            self.query_one("#disasm").focus()

    def action_quit_debugger(self) -> None:
        if self.running:  # let the worker return before the session closes
            self._quit_after_run = True
            self.session.stop()
        else:
            self.exit(self.exit_status)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(COMMANDS))

    def action_focus_command(self) -> None:
        self.query_one("#cmd").focus()

    def action_view(self, tab: str) -> None:
        self.query_one("#tabs", TabbedContent).active = tab
        self.refresh_tab(tab)

    def action_toggle_space(self) -> None:
        """Memory pane: the same bytes by linear or physical address (translated through paging)."""
        if self.running:
            return
        addr = self._mem_address()
        if self.mem_space is AddrSpace.LINEAR:
            walk = self.session.translate(addr)
            if walk.physical is None:
                self.log_text(Text(f"error: linear {addr:#x} is not mapped", "bold red"))
                return
            self.mem_address, self.mem_space = walk.physical, AddrSpace.PHYSICAL
        else:
            self.mem_address, self.mem_space = addr, AddrSpace.LINEAR  # the same number, now linear
        self.refresh_views()

    def action_toggle_breakpoint(self) -> None:
        """F9: a breakpoint at the selected disassembly line, or delete the one there."""
        if self.running:
            return
        index = self.query_one("#disasm", OptionList).highlighted
        if index is None or index >= len(self._lines):
            return
        address = self._lines[index].address
        for bp in self.session.points.breakpoints.values():
            if bp.space is AddrSpace.LINEAR and bp.address == address:
                self.run_command(f"delete {bp.number}")
                return
        self.run_command(f"break *{address:#x}")

    @on(CommandLine.Submitted, "#cmd")
    def _submitted(self, event: CommandLine.Submitted) -> None:
        cmd = self.query_one("#cmd", CommandLine)
        cmd.remember(event.value)
        cmd.value = ""
        self.run_command(event.value)

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id:
            self.refresh_tab(event.pane.id)

    # -- drawing ------------------------------------------------------------------------------------
    def _mem_address(self) -> int:
        return self.session.state().flat_pc if self.mem_address is None else self.mem_address

    def update_status(self) -> None:
        self.query_one("#status", Static).update(panes.status_line(self.session, self.session.last_stop, self.running))

    def refresh_views(self) -> None:
        """Redraw every pane from the paused session (never called while the worker runs)."""
        if self.running:
            return
        s = self.session
        state = s.state()
        self.update_status()
        self.query_one("#regs-text", Static).update(panes.registers_pane(state, self.changed))
        paging_text = "paging on" if state.paging else "paging off"
        cpu = f"vCPU {s.cpu}, " if s.backend.cpus > 1 else ""
        self.query_one("#regs").border_subtitle = f"{cpu}{state.mode.value}, CPL {state.cpl}, {paging_text}"
        self._draw_disassembly(state)
        mem = self.query_one("#memory", Static)
        mem.border_title = f"memory ({self.mem_space.value}{', follows rip' if self.mem_address is None else ''}; p)"
        rows = max(1, mem.size.height - 1) if mem.size.height else 8
        mem.update(panes.memory_pane(s, self._mem_address(), self.mem_space, rows))
        stack = self.query_one("#stack", Static)
        stack.update(panes.safe(panes.stack_pane, s, max(1, stack.size.height) if stack.size.height else 8))
        self.refresh_tab(self.query_one("#tabs", TabbedContent).active)

    def _draw_disassembly(self, state: CpuState) -> None:
        ol = self.query_one("#disasm", OptionList)
        height = ol.size.height - 2 if ol.size.height > 4 else 20
        try:
            self._lines = views.disassembly(self.session, count=max(4, height - height // 3), before=height // 3)
        except EmuError as e:
            self._lines = []
            ol.clear_options()
            ol.add_option(Option(Text(str(e), "red"), disabled=True))
            return
        ol.clear_options()
        ol.add_options(Option(panes.disasm_prompt(line, state)) for line in self._lines)
        current = next((i for i, line in enumerate(self._lines) if line.current), None)
        if current is not None:
            ol.highlighted = current
        ol.border_title = f"disassembly ({state.mode.bits}-bit, {state.mode.value}; F9 toggles a breakpoint)"

    def refresh_tab(self, tab: str) -> None:
        """Draw the tab that is showing (the others are drawn when opened)."""
        if self.running or tab in ("", "output"):
            return
        s = self.session
        draw: dict[str, Callable[[], Text]] = {
            "points": lambda: panes.points_pane(s),
            "gdt": lambda: Text(render.table_text("GDT", views.gdt_view(s))),
            "ldt": lambda: Text(render.table_text("LDT", views.gdt_view(s, ldt=True))),
            "idt": lambda: Text(render.table_text("IDT", views.idt_view(s))),
            "ivt": lambda: Text(render.table_text("IVT", views.ivt_view(s))),
            "tss": lambda: Text(render.tss_text(views.tss_view(s))),
            "walk": self._walk_text,
            "boot": lambda: Text(render.boot_text(views.boot_view(s))),
            "serial": lambda: Text(views.serial_text(s) or "(no serial output yet)"),
            "vga": lambda: Text("\n".join(views.vga_text(s)) or "(the VGA text screen is blank)"),
            "pic": lambda: Text(render.pic_text(views.pic_view(s))),
            "history": self._history_text,
            "backend": lambda: panes.backend_pane(s),
        }
        self.query_one(f"#{tab}-text", Static).update(panes.safe(draw[tab]))

    def _walk_text(self) -> Text:
        s = self.session
        addr = self._mem_address()
        if self.mem_space is AddrSpace.PHYSICAL:
            return Text(f"physical {addr:#x}: no walk (the memory pane shows a physical address; p toggles)")
        text = Text(render.translate_text(views.translate_view(s, addr)) + "\n\n")
        maps = views.page_mappings(s, limit=64)
        text.append("mappings (info tab):\n" if maps else "paging is off: linear addresses are physical\n", "bold")
        for mp in maps:
            text.append(render.mapping_line(mp) + "\n")
        return text

    def screen_text(self) -> str:
        """The screen as plain text (what export_screenshot draws, without styles): for tests and
        the screenshot script's checks."""
        console = Console(width=self.size.width, height=self.size.height, file=io.StringIO(), record=True,
                          force_terminal=True, legacy_windows=False, safe_box=False)  # fmt: skip
        console.print(self.screen._compositor.render_update(full=True))
        return console.export_text()

    def _history_text(self) -> Text:
        s = self.session
        why = s.capabilities()["reverse-stepi"]
        if why is not None:
            return Text(f"no history: {why}", panes.GREY)
        return Text(render.history_text(*views.history_view(s, 16)))
