"""The Engine: how the session runs the guest under one backend's debugging interface (Unicorn's
instruction hooks, KVM's guest debug), what it asks an engine to do in one run and what an
engine reports back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from emu.backends.base import Exit
from emu.cpu.state import Mode
from emu.debugger.stops import Breakpoint, Catchpoint, StopKind, Watchpoint

if TYPE_CHECKING:
    from emu.debugger.history import HistoryEntry

#: Every debugger feature by name; an engine's `limits()` names those it lacks (the TUI greys
#: them out with the reason).
FEATURES = (
    "stepi", "nexti", "continue", "until", "breakpoint", "conditional breakpoint", "physical breakpoint with paging",
    "watchpoint",
    "watchpoint ranges", "read-only watchpoint", "more than 4 breakpoints/watchpoints", "catch mode",
    "catch cr", "catch exception", "catch interrupt", "reverse-stepi",
)  # fmt: skip

#: The session's check of a breakpoint's condition (True: stop there); it counts the hit.
Evaluate = Callable[[Breakpoint], bool]


def no_stops(_bp: Breakpoint) -> bool:
    """The Evaluate of an engine no command has armed yet."""
    return False


@dataclass
class Points:
    """The session's breakpoints, watchpoints and catchpoints, by number (engines read them)."""

    breakpoints: dict[int, Breakpoint] = field(default_factory=dict)
    watchpoints: dict[int, Watchpoint] = field(default_factory=dict)
    catchpoints: dict[int, Catchpoint] = field(default_factory=dict)

    def tables(self) -> tuple[dict[int, Breakpoint], dict[int, Watchpoint], dict[int, Catchpoint]]:
        return self.breakpoints, self.watchpoints, self.catchpoints


@dataclass
class RunPlan:
    limit: int | None = None  # stop after this many instructions
    limit_kind: StopKind = StopKind.STEP  # STEP for stepi, COUNT for `continue N`
    until: int | None = None  # linear address to stop at before executing it
    until_sp: int | None = None  # nexti: only stop at `until` when RSP is at least this again
    use_breakpoints: bool = True  # stepi ignores breakpoints between its steps
    cpu: int = 0  # the vCPU the user sees: stepping is its (breakpoints are every vCPU's)


@dataclass
class Hit:
    """A stop an engine found; the session turns it into a Stop with the CPU state."""

    kind: StopKind
    message: str
    number: int | None = None
    detail: dict[str, object] = field(default_factory=dict)


class Engine(Protocol):
    """Runs the guest for the session under one backend's debugging interface. One command (stepi,
    continue, ...) is `start`, then `run_once`/`examine` in the machine's loop until a stop."""

    #: Instructions the current command has executed (an interrupt or exception taken counts).
    executed: int

    def limits(self) -> dict[str, str]:
        """The FEATURES this engine lacks, each with the reason."""

    def check_points(self, paging: bool) -> None:
        """Raise Unsupported when the enabled points cannot all be armed (`paging`: as now)."""

    def start(self, plan: RunPlan, evaluate: Evaluate) -> None:
        """Arm for one command; Unsupported when the points and plan cannot be armed."""

    def run_once(self) -> Exit:
        """Run the guest until the backend returns."""

    def examine(self, exit_: Exit) -> Hit | None:
        """The stop this exit means for the command, or None (the machine handles the exit)."""

    def step_back(self) -> HistoryEntry | None:
        """Undo the last recorded instruction (None: nothing recorded). Unsupported without
        a history."""

    def record_history(self, always: bool) -> None:
        """Also record the history during `continue` (slower). Unsupported without a history."""

    def disarm(self) -> None:
        """Remove everything the engine armed (the session is closing)."""


def mode_change_hit(number: int, old: tuple[Mode, bool], new: tuple[Mode, bool]) -> Hit | None:
    """Catchpoint `number`'s stop when the (mode, paging) pair changed, else None."""
    (old_mode, old_paging), (new_mode, new_paging) = old, new
    parts = []
    if old_mode != new_mode:
        parts.append(f"mode {old_mode.value} -> {new_mode.value}")
    if old_paging != new_paging:
        parts.append("paging " + ("on" if new_paging else "off"))
    if not parts:
        return None
    detail: dict[str, object] = {"old_mode": old_mode.value, "new_mode": new_mode.value, "paging": new_paging}
    return Hit(StopKind.MODE_CHANGE, ", ".join(parts), number, detail)


def cr_write_hit(number: int, register: str, old: int, new: int) -> Hit:
    """Catchpoint `number`'s stop for a write of `register` (cr0, cr3, cr4, efer)."""
    detail: dict[str, object] = {"register": register, "old": old, "new": new}
    return Hit(StopKind.CR_WRITE, f"{register.upper()} written: {old:#x} -> {new:#x}", number, detail)


# Opcode classes whose effect the careful engines check after the instruction (see classify()).
_PREFIXES = frozenset({0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3})
_MODE_0F = frozenset({0x05, 0x07, 0x34, 0x35, 0xAA})  # syscall sysret sysenter sysexit rsm
_MODE_1 = frozenset({0xEA, 0x9A, 0xCA, 0xCB, 0xCF})  # far jmp/call, retf, iret


def classify(code: bytes, bits: int) -> str | None:
    """What an instruction may change that the debugger watches: "cr0".."cr8" (mov to CRn, lmsw,
    clts), "wrmsr", "mode" (far transfers, iret, syscall family), "invlpg", or None. Every such
    instruction ends a translation block in QEMU, and they are rare, so checking after them is
    cheap."""
    i, rex = 0, 0
    while i < len(code) and (code[i] in _PREFIXES or (bits == 64 and 0x40 <= code[i] <= 0x4F)):
        if 0x40 <= code[i] <= 0x4F:
            rex = code[i]
        i += 1
    op = code[i : i + 3]
    if not op:
        return None
    if op[0] == 0x0F and len(op) >= 2:
        b1 = op[1]
        if b1 == 0x22 and len(op) == 3:
            return f"cr{(op[2] >> 3 & 7) | (8 if rex & 4 else 0)}"
        if b1 == 0x06:
            return "cr0"  # clts
        if b1 == 0x01 and len(op) == 3:
            reg = op[2] >> 3 & 7
            if reg == 6:
                return "cr0"  # lmsw
            if reg == 7 and op[2] >> 6 != 3:
                return "invlpg"
        if b1 == 0x30:
            return "wrmsr"
        if b1 in _MODE_0F:
            return "mode"
        return None
    if op[0] in _MODE_1 and not (bits == 64 and op[0] in (0xEA, 0x9A)):
        return "mode"
    if op[0] == 0xFF and len(op) >= 2 and (op[1] >> 3 & 7) in (3, 5):
        return "mode"
    return None


def call_length(code: bytes, bits: int) -> int | None:
    """The length of a `call` or `int n`/`int3`/`into` at the start of `code` (what nexti steps
    over), else None; decoded with capstone in the given code size."""
    from emu.cpu.disasm import disassemble

    insns = disassemble(code, 0, bits, 1)
    if not insns or insns[0].text == "(bad)":
        return None
    mnemonic = insns[0].text.split()[0]
    if mnemonic in ("call", "lcall", "int", "int3", "into", "int1"):
        return len(insns[0].data)
    return None
