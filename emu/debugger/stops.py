"""What the debugger can stop on (breakpoints, watchpoints, catchpoints) and why it stopped."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from emu.cpu.state import CpuState
from emu.debugger.expr import Expr


class StopKind(Enum):
    """Why a run of the debug session ended (the TUI colours and the script prints these)."""

    STEP = "step"  # the requested number of instructions ran
    BREAKPOINT = "breakpoint"
    WATCHPOINT = "watchpoint"
    MODE_CHANGE = "mode-change"  # real/protected/long, or paging switched on/off
    CR_WRITE = "cr-write"  # CR0/CR3/CR4 or EFER written
    EXCEPTION = "exception"  # a catch on an exception vector
    INTERRUPT = "interrupt"  # a catch on any interrupt (external, software, exception)
    UNTIL = "until"  # run-to-address reached (until/advance)
    COUNT = "count"  # the `after N instructions` limit
    USER = "user"  # stop() from another thread
    HALTED = "halted"  # hlt with interrupts disabled: nothing can wake the CPU
    EXITED = "exited"  # the machine ended (debug-exit port, power-off, --no-reboot reset...)
    TRIPLE_FAULT = "triple-fault"
    ERROR = "error"


class AddrSpace(Enum):
    LINEAR = "linear"
    PHYSICAL = "physical"


@dataclass
class Breakpoint:
    number: int
    space: AddrSpace
    address: int  # linear or physical
    spec: str  # as the user wrote it ("0x7c00", "0:7c00", "phys 0x100000")
    condition: Expr | None = None
    temporary: bool = False  # tbreak: deleted when hit
    enabled: bool = True
    hits: int = 0


class WatchKind(Enum):
    WRITE = "write"  # watch
    READ = "read"  # rwatch
    ACCESS = "access"  # awatch


@dataclass
class Watchpoint:
    number: int
    kind: WatchKind
    address: int  # physical
    size: int
    enabled: bool = True
    hits: int = 0


class CatchKind(Enum):
    MODE = "mode"  # any change of CpuState.mode or of paging
    CR_WRITE = "cr"  # writes to CR0, CR3, CR4, EFER (`regs` narrows it)
    EXCEPTION = "exception"  # a given vector
    INTERRUPT = "interrupt"  # any interrupt or exception delivered


@dataclass
class Catchpoint:
    number: int
    kind: CatchKind
    vector: int | None = None
    regs: frozenset[str] = frozenset({"cr0", "cr3", "cr4", "efer"})
    enabled: bool = True
    hits: int = 0


@dataclass
class Stop:
    """One stop, as data: the kind, a sentence, what it concerns and where the CPU is now."""

    kind: StopKind
    message: str
    state: CpuState
    executed: int = 0  # instructions completed in this run
    number: int | None = None  # the breakpoint/watchpoint/catchpoint that stopped it
    detail: dict[str, object] = field(default_factory=dict)
    exit_status: int | None = None  # for EXITED/HALTED/TRIPLE_FAULT: what `emu run` would exit with

    @property
    def finished(self) -> bool:
        """The machine cannot run on from here."""
        return self.kind in (StopKind.HALTED, StopKind.EXITED, StopKind.TRIPLE_FAULT, StopKind.ERROR)


class Unsupported(Exception):
    """The backend cannot do this (e.g. catch exceptions under KVM); the message says why."""


@dataclass(frozen=True)
class CpuLine:
    """One vCPU in `info cpus`."""

    index: int
    status: str  # running, halted, wait-for-sipi
    mode: str
    cs: int
    rip: int
    selected: bool
