"""DebugSession: the UI-free debugger over one Machine, used by `emu debug --script`, the TUI and
the tests.

A session starts paused at the machine's first instruction. Execution commands (stepi, nexti,
cont, until, step_back) block until the guest stops and return a `Stop` (data: kind, message,
state, instructions executed). Call them from one thread only (the session's vCPU thread: a
TUI runs them in a worker); `stop()` may be called from any thread and makes a running command
return a USER stop. Everything else (points, views, memory reads) is for a paused session.

What a backend cannot do raises `Unsupported` with the reason (see `capabilities()`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from emu.backends.base import Exit, ExitKind
from emu.config import BackendName, MachineConfig
from emu.cpu import paging
from emu.cpu.interrupts import Fault, LinearMemory
from emu.cpu.state import CpuState, Mode
from emu.debugger import expr, registers
from emu.debugger.engine import Hit, Points, RunPlan, call_length
from emu.debugger.history import History, HistoryView
from emu.debugger.stops import (
    AddrSpace,
    Breakpoint,
    CatchKind,
    Catchpoint,
    Stop,
    StopKind,
    Unsupported,
    WatchKind,
    Watchpoint,
)
from emu.debugger.symbols import Symbols
from emu.errors import EmuError, ExitStatus, GuestMemoryError
from emu.machine import Machine, RunResult
from emu.timers import HostClock

if TYPE_CHECKING:
    from emu.debugger.kvm_engine import KvmEngine
    from emu.debugger.unicorn_engine import UnicornEngine

_P = TypeVar("_P", Breakpoint, Watchpoint)

#: What each backend cannot do (None: supported). The TUI greys these out with the reason.
KVM_LIMITS = {
    "catch exception": "KVM delivers exceptions inside the kernel: emu never sees them",
    "catch interrupt": "KVM delivers interrupts inside the kernel (in-kernel irqchip)",
    "reverse-stepi": "the execution history needs every instruction observed (Unicorn only)",
    "physical breakpoint with paging": "debug registers take linear addresses",
    "more than 4 breakpoints/watchpoints": "the CPU has four debug registers",
    "watchpoint ranges": "1, 2, 4 or 8 aligned bytes per debug register",
    "read-only watchpoint": "x86 data breakpoints trap on writes too",
}
PVM_NO_DATA_BREAKPOINTS = "this host's KVM (PVM) never reports data breakpoints (measured)"
CAPABILITIES = (
    "stepi", "nexti", "continue", "until", "breakpoint", "conditional breakpoint", "physical breakpoint with paging",
    "watchpoint",
    "watchpoint ranges", "read-only watchpoint", "more than 4 breakpoints/watchpoints", "catch mode",
    "catch cr", "catch exception", "catch interrupt", "reverse-stepi",
)  # fmt: skip


class _PausedHostClock(HostClock):
    """Host time that stands still while the session is paused (as QEMU stops its virtual clock
    when the VM stops): otherwise every pause longer than a PIT period leaves a timer interrupt
    pending, and each `continue` from a breakpoint with IF=1 would run the handler and stop at
    the same breakpoint again."""

    def __init__(self) -> None:
        self._offset = 0  # host time spent paused
        self._paused_at: int | None = time.monotonic_ns()

    def now_ns(self) -> int:
        at = self._paused_at
        return (time.monotonic_ns() if at is None else at) - self._offset

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = time.monotonic_ns()

    def resume(self) -> None:
        if self._paused_at is not None:
            self._offset += time.monotonic_ns() - self._paused_at
            self._paused_at = None


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


class DebugSession:
    def __init__(self, machine: Machine, *, history_size: int = 4096, symbols: Symbols | None = None) -> None:
        self.machine = machine
        self.backend = machine.backend
        self.memory = machine.memory
        self.kvm = machine.cfg.backend is BackendName.KVM
        self.points = Points()
        self.history = History(history_size)
        self.symbols = symbols or Symbols.empty()
        self._numbers = 1
        self._user_stop = threading.Event()
        self._state: CpuState | None = None
        self.finished: Stop | None = None
        self._condition_error: str | None = None
        self.engine: UnicornEngine | KvmEngine
        if self.kvm:
            from emu.backends.kvm.backend import KvmBackend
            from emu.debugger.kvm_engine import KvmEngine

            assert isinstance(self.backend, KvmBackend)
            self.engine = KvmEngine(self.backend, self.memory, self.points)
        else:
            from emu.backends.unicorn.backend import UnicornBackend
            from emu.debugger.unicorn_engine import UnicornEngine

            assert isinstance(self.backend, UnicornBackend)
            self.engine = UnicornEngine(self.backend, self.memory, self.points, self.history)
        self._clock: _PausedHostClock | None = None
        if type(machine.clock) is HostClock:  # host time and nothing has run yet: make it pausable
            self._clock = _PausedHostClock()
            machine.clock = machine.timers.clock = self._clock
        machine.start_timers()
        self.last_stop = Stop(StopKind.STEP, "paused at the first instruction", self.state(), 0)

    @classmethod
    def open(cls, cfg: MachineConfig, **kwargs: object) -> DebugSession:
        """Build the machine for `cfg` (serial output captured, not printed) and a session on it."""
        machine = Machine(cfg)
        try:
            symbols = Symbols.from_elf(cfg.kernel) if cfg.kernel is not None else None
            return cls(machine, symbols=symbols, **kwargs)  # type: ignore[arg-type]
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
        """The CPU state of the paused guest (cached until the next execution command)."""
        if self._state is None:
            self._state = self.backend.get_state()
        return self._state

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
        self.backend.set_state(s)
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
        from emu.report.descriptors import TableReader

        d = TableReader(s, self.memory).segment_entry(selector, "breakpoint")
        if d.raw is None:
            raise EmuError(f"selector {selector:#x}: {d.text}")
        from emu.cpu import x86

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
        if self.kvm and _kvm_is_pvm():
            raise Unsupported(f"watchpoints: {PVM_NO_DATA_BREAKPOINTS}")
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
        if self.kvm and kind in (CatchKind.EXCEPTION, CatchKind.INTERRUPT):
            raise Unsupported(f"catch {kind.value}: {KVM_LIMITS['catch ' + kind.value]}")
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
        if self.kvm:
            from emu.debugger.kvm_engine import KvmEngine

            assert isinstance(self.engine, KvmEngine)
            self.engine.hw_slots(self.state().paging)

    def capabilities(self) -> dict[str, str | None]:
        """Every debugger feature -> None when this backend supports it, else why not."""
        limits = dict(KVM_LIMITS) if self.kvm else {}
        if self.kvm and _kvm_is_pvm():
            limits["watchpoint"] = PVM_NO_DATA_BREAKPOINTS
        return {name: limits.get(name) for name in CAPABILITIES}

    # -- execution ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """Make a running command return a USER stop soon. Thread-safe, never blocks."""
        self._user_stop.set()
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
            from emu.cpu.disasm import code_bits

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
        if self.kvm:
            raise Unsupported(f"reverse-stepi: {KVM_LIMITS['reverse-stepi']}")
        if self.finished is not None:
            raise EmuError(f"the machine has ended ({self.finished.message})")
        from emu.debugger.unicorn_engine import UnicornEngine

        assert isinstance(self.engine, UnicornEngine)
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
        if self.kvm:
            raise Unsupported(f"reverse-stepi: {KVM_LIMITS['reverse-stepi']}")
        self.engine.careful_always = always

    def history_views(self, count: int = 32) -> list[HistoryView]:
        now = self.state()
        regs = {**now.gprs(), "rip": now.rip}
        return self.history.views(regs, count)

    def _evaluate(self, bp: Breakpoint) -> bool:
        if bp.condition is not None:
            state = self.backend.get_state()
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
        self._user_stop.clear()
        self._condition_error = None
        self._state = None
        try:
            self.engine.start(plan, self._evaluate)
        except Unsupported as u:
            raise EmuError(str(u)) from None
        if self._clock is not None:
            self._clock.resume()
        try:
            hit, result = self._loop()
        finally:
            if self._clock is not None:
                self._clock.pause()
        self._state = None
        if result is not None:
            return self._finish(result)
        assert hit is not None
        self.last_stop = self._make_stop(hit)
        return self.last_stop

    def _loop(self) -> tuple[Hit | None, RunResult | None]:
        """Machine.run's loop with the engine's run and checks in it; a hlt waits until stop()."""
        m, eng = self.machine, self.engine
        while not self._user_stop.is_set():
            out = m.run_backend(eng.run_once)
            if not isinstance(out, Exit):
                if out is not None:
                    return None, out
                continue  # a request was handled (a reboot): run on from the reset vector
            hit = eng.after_exit(out)
            if hit is not None:
                return hit, None
            result = m.handle_exit(out, self._user_stop)
            if result is not None:
                return None, result
            if out.kind is ExitKind.HALT and self._user_stop.is_set():
                return Hit(StopKind.USER, "stopped by request while the CPU waited in hlt"), None
        return Hit(StopKind.USER, "stopped by request"), None

    def _finish(self, result: RunResult) -> Stop:
        # ExitStatus is an IntEnum: the plain int status finds its member.
        kind = {ExitStatus.TRIPLE_FAULT: StopKind.TRIPLE_FAULT, ExitStatus.SOFTWARE: StopKind.ERROR}.get(
            result.status, StopKind.EXITED
        )
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
        return Stop(hit.kind, msg, state, self.engine.executed, hit.number, dict(hit.detail))


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


def _kvm_is_pvm() -> bool:
    """The KVM here is PVM (kvm_pvm, software-assisted): its instruction emulator runs guest ring 0
    and ignores DR7 data breakpoints."""
    return Path("/sys/module/kvm_pvm").exists()
