"""DebugSession: the UI-free debugger over one Machine, used by `emu debug --script`, the TUI and
the tests.

A session starts paused at the machine's first instruction. Execution commands (stepi, nexti,
cont, until, step_back) block until the guest stops and return a `Stop` (data: kind, message,
state, instructions executed). Call them from one thread only (the session's vCPU thread: a
TUI runs them in a worker); `stop()` may be called from any thread and makes a running command
return a USER stop. Everything else (points, views, memory reads) is for a paused session.

The session runs the guest through an Engine (engine.py) chosen for the debugging interface the
backend declares; what that engine cannot do raises `Unsupported` with the reason (see
`capabilities()`). Execution commands run the machine's own loop (Machine.loop) with the
engine's run and stop checks in it.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from emu.backends.base import Backend, Exit, ExitKind
from emu.config import MachineConfig
from emu.cpu import paging, x86
from emu.cpu.disasm import code_bits
from emu.cpu.linear import Fault, LinearMemory
from emu.cpu.state import CpuState, Mode
from emu.cpu.tables import TableReader
from emu.debugger import expr, registers
from emu.debugger.engine import FEATURES, Engine, Hit, Points, RunPlan, call_length
from emu.debugger.history import DEFAULT_SIZE, History, HistoryView
from emu.debugger.stops import (
    AddrSpace,
    Breakpoint,
    CatchKind,
    Catchpoint,
    CpuLine,
    Stop,
    StopKind,
    Unsupported,
    WatchKind,
    Watchpoint,
)
from emu.debugger.symbols import Symbols
from emu.errors import EmuError, ExitStatus, GuestMemoryError
from emu.machine import Machine, RunResult
from emu.memory import GuestMemory
from emu.timers import PausableClock

_P = TypeVar("_P", Breakpoint, Watchpoint)

# How a finished machine's exit status shows as a stop (a guest's own status is any int).
_FINISHED_KINDS: dict[int, StopKind] = {
    ExitStatus.TRIPLE_FAULT: StopKind.TRIPLE_FAULT, ExitStatus.SOFTWARE: StopKind.ERROR,
}  # fmt: skip


class _Driver:
    """The session's part in Machine.loop (RunDriver): the engine runs the guest and finds the
    stops; `stop` is the user's request (DebugSession.stop)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.stop = threading.Event()

    def run_once(self) -> Exit:
        return self.engine.run_once()

    def examine(self, exit_: Exit) -> Hit | None:
        return self.engine.examine(exit_)

    def stopped(self, in_hlt: bool) -> Hit:
        return Hit(StopKind.USER, "stopped by request while the CPU waited in hlt" if in_hlt else "stopped by request")


class _Ctx:
    """The expression evaluator's view of a paused CPU."""

    def __init__(self, session: DebugSession, state: CpuState) -> None:
        self.s = session
        self.state = state

    def register(self, name: str) -> int:
        return registers.read_register(self.state, name)

    def read_linear(self, addr: int, size: int) -> bytes:
        return self.s.read_linear(addr, size, self.state)

    def read_physical(self, addr: int, size: int) -> bytes:
        return self.s.read_physical(addr, size)


@dataclass(frozen=True)
class Location:
    space: AddrSpace
    address: int
    spec: str


def make_engine(backend: Backend, memory: GuestMemory, points: Points, history: History) -> Engine:
    """The engine for the debugging interface `backend` declares."""
    hooks = backend.instruction_hooks()
    if hooks is not None:
        from emu.debugger.unicorn_engine import UnicornEngine

        return UnicornEngine(backend, hooks, memory, points, history)
    debug = backend.guest_debug()
    if debug is not None:
        from emu.debugger.kvm_engine import KvmEngine

        return KvmEngine(backend, debug, points)
    raise EmuError(f"the {backend.name} backend offers no debugging interface")


class DebugSession:
    def __init__(self, machine: Machine, *, history_size: int = DEFAULT_SIZE, symbols: Symbols | None = None) -> None:
        """A session on `machine`, before anything ran. Guest time stands still while the session
        holds the guest when the machine was built with a PausableClock (`open` does that);
        virtual time (--deterministic) moves only with the guest anyway."""
        self.machine = machine
        self.backend = machine.backend
        self.memory = machine.memory
        self.points = Points()
        self.history = History(history_size)
        self.symbols = symbols or Symbols.empty()
        self._numbers = 1
        self._state: CpuState | None = None
        self._cpu: int | None = None  # the vCPU chosen with `cpu N` (None: the one that stopped)
        self.finished: Stop | None = None
        self._condition_error: str | None = None
        self.engine: Engine = make_engine(self.backend, self.memory, self.points, self.history)
        self._driver = _Driver(self.engine)
        clock = machine.clock
        self._clock = clock if isinstance(clock, PausableClock) else None
        machine.start_timers()
        self.last_stop = Stop(StopKind.STEP, "paused at the first instruction", self.state(), 0)

    @classmethod
    def open(cls, cfg: MachineConfig, *, history_size: int = DEFAULT_SIZE,
             symbol_files: Sequence[str] = ()) -> DebugSession:  # fmt: skip
        """Build the machine for `cfg` (serial output captured, not printed) on a clock the
        session pauses while it holds the guest, and a session on it. `symbol_files`:
        --symbols FILE[@OFFSET] specs, added to the --kernel ELF's own symbols."""
        symbols = Symbols.empty()
        for spec in symbol_files:  # read first: a bad file is one line before anything starts
            symbols = symbols.merged(Symbols.load(spec))
        machine = Machine(cfg, clock=PausableClock())
        try:
            if cfg.kernel is not None:
                symbols = symbols.merged(Symbols.from_elf(cfg.kernel))
            return cls(machine, history_size=history_size, symbols=symbols)
        except BaseException:
            machine.close()
            raise

    def close(self) -> None:
        try:
            self.engine.disarm()
        finally:
            self.machine.close()

    def __enter__(self) -> DebugSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state and memory -------------------------------------------------------------------------
    def state(self) -> CpuState:
        """The selected vCPU's state in the paused guest (cached until the next execution
        command or `cpu N`)."""
        if self._state is None:
            self._state = self.backend.get_state(self.cpu)
        return self._state

    # -- vCPUs (--smp) -----------------------------------------------------------------------------
    @property
    def cpu(self) -> int:
        """The vCPU that commands show and change: the one chosen with `cpu N`, else the one
        that ran last (after every stop: the one that stopped, as gdb switches threads)."""
        return self._cpu if self._cpu is not None else self.backend.current_cpu()

    def select_cpu(self, cpu: int) -> None:
        if not 0 <= cpu < self.backend.cpus:
            raise EmuError(f"no vCPU {cpu}: the machine has {self.backend.cpus} (0 to {self.backend.cpus - 1})")
        self._cpu = cpu
        self._state = None

    def cpus(self) -> list[CpuLine]:
        """Every vCPU: its index, what it does, its mode and where it is (`info cpus`)."""
        out = []
        for cpu in range(self.backend.cpus):
            st = self.backend.get_state(cpu)
            out.append(CpuLine(cpu, self.backend.cpu_status(cpu), st.mode.value, st.cs.selector, st.rip,
                               cpu == self.cpu))  # fmt: skip
        return out

    def read_physical(self, addr: int, size: int) -> bytes:
        """Guest-physical bytes; outside RAM (the MMIO hole, beyond memory) reads 0xff as a PC bus."""
        try:
            return self.memory.read(addr, size)
        except GuestMemoryError:
            pass
        out = bytearray()
        for a in range(addr, addr + size):
            try:
                out += self.memory.read(a, 1)
            except GuestMemoryError:
                out += b"\xff"
        return bytes(out)

    def read_linear(self, addr: int, size: int, state: CpuState | None = None) -> bytes:
        """Linear bytes through the guest's paging; EmuError names the first unmapped page."""
        try:
            return LinearMemory(self.memory, state or self.state()).read(addr, size)
        except Fault as f:
            raise EmuError(f"cannot read {size} bytes at linear {addr:#x}: {f.reason}") from None

    def translate(self, linear: int) -> paging.Walk:
        s = self.state()
        return paging.walk(self.memory, paging.PagingRegs(s.cr0, s.cr3, s.cr4, s.efer), linear)

    def evaluate(self, text: str) -> int:
        """An expression (registers, byte/word/dword/qword [ADDR]) on the paused CPU."""
        return expr.parse(text, registers.known).evaluate(_Ctx(self, self.state()))

    def set_register(self, name: str, value: int) -> None:
        """Write a full register (rax..r15, rip, rflags) of the paused CPU."""
        s = self.state().copy()
        name = name.lower()
        if name not in registers.REGISTERS or registers.REGISTERS[name][1:] != (0, 64):
            raise EmuError(f"only 64-bit registers and rip/rflags can be set, not {name!r}")
        setattr(s, registers.REGISTERS[name][0], value & (2**64 - 1))
        self.backend.set_state(s, self.cpu)
        self._state = None

    # -- locations -------------------------------------------------------------------------------
    def parse_location(self, text: str) -> Location:
        """`0x7c00` or `*0x7c00` (linear), `SEG:OFF` (real mode: SEG*16+OFF, else the selector's
        base), `phys 0x100000` / `p:0x100000` (physical), or a symbol of the --kernel ELF."""
        spec = text.strip()
        low = spec.lower()
        for prefix in ("phys ", "p:", "physical "):
            if low.startswith(prefix):
                return Location(AddrSpace.PHYSICAL, self._number(spec[len(prefix) :]), spec)
        body = spec[1:].strip() if spec.startswith("*") else spec
        if ":" in body:
            seg_text, off_text = body.split(":", 1)
            seg, off = self._number(seg_text, True), self._number(off_text, True)
            return Location(AddrSpace.LINEAR, self._segment_base(seg) + off, spec)
        try:
            return Location(AddrSpace.LINEAR, self._number(body), spec)
        except EmuError:
            addr = self.symbols.address(body)
            if addr is None and not self.symbols and self.machine.cfg.kernel is not None:
                raise EmuError(f"no symbol {spec!r}: the kernel has no symbols; give them with --symbols FILE "
                               "(an ELF with its symbol table, a System.map or a kallsyms copy; FILE@OFFSET "
                               "for a relocated or KASLR kernel)") from None  # fmt: skip
            if addr is None:
                raise EmuError(f"no symbol or address {spec!r}") from None
            return Location(AddrSpace.LINEAR, addr, spec)

    def _number(self, text: str, hex_default: bool = False) -> int:
        """A number (0x.. hex, else decimal; hex with `hex_default`, as in SEG:OFF) or $register."""
        t = text.strip()
        if t.startswith("$"):  # gdb's $rip, $eax
            try:
                return registers.read_register(self.state(), t[1:])
            except KeyError:
                raise EmuError(f"unknown register {t!r}") from None
        try:
            return int(t, 16) if hex_default and not t.lower().startswith("0x") else int(t, 0)
        except ValueError:
            raise EmuError(f"not a number: {t!r}") from None

    def _segment_base(self, selector: int) -> int:
        s = self.state()
        if s.mode in (Mode.REAL, Mode.VM86):
            return (selector & 0xFFFF) << 4
        d = TableReader(s, self.memory).segment_entry(selector, "breakpoint")
        if d.raw is None:
            raise EmuError(f"selector {selector:#x}: {d.text}")
        return x86.decode_descriptor(int(d.raw, 16))["base"]

    # -- points ------------------------------------------------------------------------------------
    def _take_number(self) -> int:
        n = self._numbers
        self._numbers += 1
        return n

    def add_breakpoint(self, where: str, condition: str | None = None, temporary: bool = False) -> Breakpoint:
        loc = self.parse_location(where)
        cond = expr.parse(condition, registers.known) if condition else None
        bp = Breakpoint(self._take_number(), loc.space, loc.address, loc.spec, cond, temporary)
        return self._insert(self.points.breakpoints, bp)

    def add_watchpoint(self, where: str, size: int = 1, kind: WatchKind = WatchKind.WRITE) -> Watchpoint:
        """A watchpoint on a physical range (a `phys`/`p:` prefix is accepted and changes nothing)."""
        self._require("watchpoint", "watchpoints")
        loc = self.parse_location(where)
        if size < 1 or size > 1 << 20:
            raise EmuError(f"watch size {size} is out of range (1 to 1 MiB)")
        wp = Watchpoint(self._take_number(), kind, loc.address, size)
        return self._insert(self.points.watchpoints, wp)

    def _insert(self, table: dict[int, _P], point: _P) -> _P:
        """Add a point; one the backend cannot arm with the others is taken out again."""
        table[point.number] = point
        try:
            self._check_points()
        except Unsupported:
            del table[point.number]
            raise
        return point

    def add_catch(self, kind: CatchKind, vector: int | None = None, regs: frozenset[str] | None = None) -> Catchpoint:
        self._require(f"catch {kind.value}")
        if kind is CatchKind.EXCEPTION and (vector is None or not 0 <= vector <= 255):
            raise EmuError("catch exception needs a vector 0-255")
        cp = Catchpoint(self._take_number(), kind, vector)
        if regs:
            bad = regs - {"cr0", "cr3", "cr4", "efer"}
            if bad:
                raise EmuError(f"catch cr takes cr0, cr3, cr4 and efer, not {', '.join(sorted(bad))}")
            cp.regs = regs
        self.points.catchpoints[cp.number] = cp
        return cp

    def delete(self, number: int | None = None) -> None:
        """Delete one point by number, or all of them."""
        tables = self.points.tables()
        if number is None:
            for t in tables:
                t.clear()
            return
        for t in tables:
            if number in t:
                del t[number]
                return
        raise EmuError(f"no breakpoint, watchpoint or catchpoint number {number}")

    def enable(self, number: int, enabled: bool = True) -> None:
        for t in self.points.tables():
            if number in t:
                t[number].enabled = enabled
                if enabled:
                    self._check_points()
                return
        raise EmuError(f"no breakpoint, watchpoint or catchpoint number {number}")

    def _check_points(self) -> None:
        self.engine.check_points(self.state().paging)

    def capabilities(self) -> dict[str, str | None]:
        """Every debugger feature -> None when this backend supports it, else why not."""
        limits = self.engine.limits()
        return {name: limits.get(name) for name in FEATURES}

    def _require(self, feature: str, label: str | None = None) -> None:
        """Unsupported ("label: reason") when the engine lacks `feature`."""
        why = self.engine.limits().get(feature)
        if why is not None:
            raise Unsupported(f"{label or feature}: {why}")

    # -- execution ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """Make a running command return a USER stop soon. Thread-safe, never blocks."""
        self._driver.stop.set()
        self.machine.wake()
        self.backend.request_stop()

    def stepi(self, count: int = 1) -> Stop:
        """Execute exactly `count` instructions (an interrupt or exception taken counts as the
        instruction that led to it); breakpoints between do not stop it, catchpoints and
        watchpoints do."""
        if count < 1:
            raise EmuError("the step count must be at least 1")
        return self._run(RunPlan(limit=count, use_breakpoints=False))

    def nexti(self, count: int = 1) -> Stop:
        """Like stepi, but a `call` or `int n` runs until it returns to the next instruction."""
        stop = self.last_stop
        for _ in range(count):
            s = self.state()
            try:
                code = self.read_linear(s.flat_pc, 16)
            except EmuError:
                code = b""
            length = call_length(code, code_bits(s)) if code else None
            if length is None:
                stop = self._run(RunPlan(limit=1, use_breakpoints=False))
            else:
                ret = (s.flat_pc + length) & (2**64 - 1 if s.mode is Mode.LONG else 0xFFFF_FFFF)
                stop = self._run(RunPlan(until=ret, until_sp=s.rsp))
                if stop.kind is StopKind.UNTIL:
                    stop.kind, stop.message = StopKind.STEP, f"stepped over the call to {ret:#x}"
            if stop.kind is not StopKind.STEP:
                break
        return stop

    def cont(self, max_instructions: int | None = None) -> Stop:
        """Run until a breakpoint, watchpoint, catchpoint, stop() or the end of the machine;
        with `max_instructions`, also stop (COUNT) after that many instructions."""
        return self._run(RunPlan(limit=max_instructions, limit_kind=StopKind.COUNT))

    def until(self, where: str) -> Stop:
        """Run to a location (breakpoints on the way still stop)."""
        loc = self.parse_location(where)
        address = loc.address
        if loc.space is AddrSpace.PHYSICAL and self.state().paging:
            raise EmuError("until: a physical address needs paging off; give a linear one")
        return self._run(RunPlan(until=address))

    def step_back(self, count: int = 1) -> Stop:
        """Undo the last `count` instructions from the history ring (Unicorn)."""
        self._require("reverse-stepi")
        if self.finished is not None:
            raise EmuError(f"the machine has ended ({self.finished.message})")
        done = 0
        for _ in range(count):
            if self.engine.step_back() is None:
                break
            done += 1
        self._state = None
        if done == 0:
            raise EmuError("no execution history to step back through (it records while stepping)")
        msg = f"stepped back {done} instruction{'s' if done != 1 else ''}"
        if done < count:
            msg += " (the start of the recorded history)"
        self.last_stop = Stop(StopKind.STEP, msg, self.state(), -done)
        return self.last_stop

    def record_history_always(self, always: bool = True) -> None:
        """Unicorn: also record the history during `continue` (every run goes through the
        per-instruction hook, ~1 µs an instruction, instead of full speed)."""
        self._require("reverse-stepi")
        self.engine.record_history(always)

    def history_views(self, count: int = 32) -> list[HistoryView]:
        now = self.state()
        regs = {**now.gprs(), "rip": now.rip}
        return self.history.views(regs, count)

    def _evaluate(self, bp: Breakpoint) -> bool:
        if bp.condition is not None:
            state = self.backend.get_state(self.backend.current_cpu())  # the vCPU at the breakpoint
            try:
                if not bp.condition.evaluate(_Ctx(self, state)):
                    return False
            except EmuError as e:
                self._condition_error = f"condition of breakpoint {bp.number} failed: {e}"
        bp.hits += 1
        return True

    def _run(self, plan: RunPlan) -> Stop:
        if self.finished is not None:
            raise EmuError(f"the machine has ended ({self.finished.message}); nothing can run")
        self._driver.stop.clear()
        self._condition_error = None
        plan = dataclasses.replace(plan, cpu=self.cpu)
        self._state = None
        self._cpu = None  # after the run: the vCPU that stopped
        try:
            self.engine.start(plan, self._evaluate)
        except Unsupported as u:
            raise EmuError(str(u)) from None
        if self._clock is not None:
            self._clock.resume()
        try:
            out = self.machine.loop(self._driver)
        finally:
            if self._clock is not None:
                self._clock.pause()
        self._state = None
        if isinstance(out, RunResult):
            return self._finish(out)
        self.last_stop = self._make_stop(out)
        return self.last_stop

    def _finish(self, result: RunResult) -> Stop:
        # ExitStatus is an IntEnum: the plain int status finds its member.
        kind = _FINISHED_KINDS.get(result.status, StopKind.EXITED)
        if result.reason.startswith("guest halted"):
            kind = StopKind.HALTED
        state = result.state or self.state()
        stop = Stop(kind, result.reason, state, self.engine.executed, exit_status=result.status)
        if result.exit is not None and result.exit.kind is ExitKind.SHUTDOWN:
            stop.detail["exit"] = result.exit
        self.finished = stop
        self.last_stop = stop
        return stop

    def _make_stop(self, hit: Hit) -> Stop:
        state = self.state()
        msg = hit.message
        if hit.kind is StopKind.BREAKPOINT and hit.number is not None:
            bp = self.points.breakpoints.get(hit.number)
            if bp is not None:
                msg = f"breakpoint {bp.number} at {bp.spec}" + (f" if {bp.condition.text}" if bp.condition else "")
                if bp.temporary:
                    del self.points.breakpoints[bp.number]
                    msg = "temporary " + msg
        elif hit.kind is StopKind.WATCHPOINT:
            msg = _watch_message(hit) if not msg else f"watchpoint {hit.number}: {msg}"
        elif hit.kind in (StopKind.STEP, StopKind.COUNT) and not msg:
            n = self.engine.executed
            msg = f"{n} instruction{'s' if n != 1 else ''} executed"
        elif hit.kind is StopKind.UNTIL and not msg:
            msg = f"reached {state.flat_pc:#x}"
        elif hit.number is not None:
            msg = f"catchpoint {hit.number}: {msg}"
        if self._condition_error:
            msg += f" ({self._condition_error})"
        detail = dict(hit.detail)
        if self.backend.cpus > 1:
            detail["cpu"] = self.cpu
        return Stop(hit.kind, msg, state, self.engine.executed, hit.number, detail)


def _watch_message(hit: Hit) -> str:
    d = hit.detail
    if d.get("access") == "write" and "new" in d:
        what = f"write of {d['new']:#x} over {d.get('old', 0):#x}"
    elif "value" in d:
        what = f"read of {d['value']:#x}"
    else:
        what = str(d.get("access", "access"))
    where = f"physical {d['physical']:#x}"
    if "linear" in d and d["linear"] != d["physical"]:
        where += f" (linear {d['linear']:#x})"
    return f"watchpoint {hit.number}: {what} ({d.get('size')} bytes) at {where}"
