"""The TUI's own widgets: the command line with history, the help screen."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Static

KEYS = """\
F7 / s        stepi                      F8 / n      nexti (steps over call and int n)
F5 / c        continue                   Esc, Ctrl-C stop a running continue
F9            toggle a breakpoint at the selected disassembly line (click or arrows select)
p             memory pane: linear <-> physical          :   focus the command line
o b g l i v   tabs: output, points, GDT, LDT, IDT, VGA  w   page walk of the memory address
t e r         tabs: TSS, boot/e820, serial               F1 / ?  this help    q  quit
Up / Down     command history (in the command line)      Tab  next pane

TUI commands (besides the script commands below):
mem LOC | mem phys ADDR       show LOC in the memory pane (and its page walk in the Walk tab)
view TAB                      open a tab: output points gdt ldt idt ivt tss walk boot serial vga pic
                              history backend
"""


class CommandLine(Input):
    """An Input that remembers its commands: Up/Down walk the history as in a shell."""

    BINDINGS = [
        Binding("up", "history(-1)", "previous command", show=False),
        Binding("down", "history(1)", "next command", show=False),
    ]

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.history: list[str] = []
        self._pos = 0

    def remember(self, line: str) -> None:
        if line and (not self.history or self.history[-1] != line):
            self.history.append(line)
        self._pos = len(self.history)

    def action_history(self, delta: int) -> None:
        if not self.history:
            return
        self._pos = max(0, min(len(self.history), self._pos + delta))
        self.value = self.history[self._pos] if self._pos < len(self.history) else ""
        self.cursor_position = len(self.value)


class HelpScreen(ModalScreen[None]):
    """Keys, TUI commands and the script commands (the same text `help` prints)."""

    BINDINGS = [Binding("escape,q,f1,question_mark", "app.pop_screen", "close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 110; height: 90%; border: thick $accent; background: $surface; padding: 0 1;
    }
    """

    def __init__(self, commands: str) -> None:
        super().__init__()
        self.commands = commands

    def compose(self) -> ComposeResult:
        with VerticalScroll() as v:
            v.border_title = "emu debug: help (Esc closes)"
            yield Static(Text("Keys\n", "bold") + Text(KEYS) + Text("\nCommands\n", "bold") + Text(self.commands))
