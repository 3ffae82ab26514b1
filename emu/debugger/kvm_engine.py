"""Running under the debugger with KVM, through KVM_SET_GUEST_DEBUG.

- Breakpoints and watchpoints are the CPU's four debug registers (linear addresses): at most four
  in all; a watchpoint covers 1, 2, 4 or 8 aligned bytes; physical addresses only while paging is
  off (then they equal linear ones); x86 has no read-only data breakpoint, so `rwatch` traps on
  writes too (the stop says so).
- Stepping, `until`, instruction counts and the mode/CR-write catches single-step the guest (one
  KVM_RUN per instruction) and compare the state after each step.
- Catching exceptions and interrupts is not possible: KVM delivers them inside the kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emu.backends.base import Backend, Exit, ExitKind, GuestDebug
from emu.backends.kvm import api
from emu.cpu.state import CpuState
from emu.debugger.engine import Evaluate, Hit, Points, RunPlan, cr_write_hit, mode_change_hit, no_stops
from emu.debugger.stops import AddrSpace, CatchKind, StopKind, Unsupported, WatchKind

if TYPE_CHECKING:
    from emu.debugger.history import HistoryEntry

#: What the debugger cannot do under KVM (engine.FEATURES names), with the reason.
KVM_LIMITS = {
    "catch exception": "KVM delivers exceptions inside the kernel: emu never sees them",
    "catch interrupt": "KVM delivers interrupts inside the kernel (in-kernel irqchip)",
    "reverse-stepi": "the execution history needs every instruction observed (Unicorn only)",
    "physical breakpoint with paging": "debug registers take linear addresses",
    "more than 4 breakpoints/watchpoints": "the CPU has four debug registers",
    "watchpoint ranges": "1, 2, 4 or 8 aligned bytes per debug register",
    "read-only watchpoint": "x86 data breakpoints trap on writes too",
}
MAX_HW = 4
_LEN = {1: 0b00, 2: 0b01, 4: 0b11, 8: 0b10}
_DR6_BS = 1 << 14


def _sig(state: CpuState) -> dict[str, Any]:
    return {"cr0": state.cr0, "cr3": state.cr3, "cr4": state.cr4, "efer": state.efer,
            "mode": state.mode, "paging": state.paging, "rip": state.rip}  # fmt: skip


class KvmEngine:
    """The Engine over KVM_SET_GUEST_DEBUG (`debug`); `backend` runs the vCPU and reads its state."""

    def __init__(self, backend: Backend, debug: GuestDebug, points: Points) -> None:
        self.backend = backend
        self.debug = debug
        self.points = points
        self.executed = 0
        self._plan = RunPlan()
        self._eval: Evaluate = no_stops
        caps = backend.capabilities
        self._limits = dict(KVM_LIMITS)
        if not caps.data_breakpoints:
            self._limits["watchpoint"] = caps.data_breakpoints_note or "data breakpoints do not fire on this host"
        self._slots: list[tuple[str, int, Any]] = []  # ("bp"|"watch"|"until", address, object)
        self._stepping = False
        self._step_over = False
        self._cpu = 0
        self._sig: dict[str, Any] = {}
        self._hit: Hit | None = None
        self._debug_on = False

    def limits(self) -> dict[str, str]:
        return dict(self._limits)

    def check_points(self, paging: bool) -> None:
        self.hw_slots(paging)

    def hw_slots(self, paging: bool, plan: RunPlan | None = None) -> list[tuple[str, int, Any]]:
        """The debug-register slots the points need; Unsupported when they cannot be had."""
        slots: list[tuple[str, int, Any]] = []
        if plan is None or plan.use_breakpoints:
            for b in self.points.breakpoints.values():
                if not b.enabled:
                    continue
                if b.space is AddrSpace.PHYSICAL and paging:
                    raise Unsupported(f"breakpoint {b.number}: KVM breakpoints use linear addresses; a physical "
                                      "one only works while paging is off")  # fmt: skip
                slots.append(("bp", b.address, b))
        for w in self.points.watchpoints.values():
            if not w.enabled:
                continue
            if paging:
                raise Unsupported(f"watchpoint {w.number}: KVM watches linear addresses; a physical range only "
                                  "works while paging is off")  # fmt: skip
            if w.size not in _LEN or w.address % w.size:
                raise Unsupported(f"watchpoint {w.number}: a KVM debug register covers 1, 2, 4 or 8 aligned bytes")
            slots.append(("watch", w.address, w))
        if plan is not None and plan.until is not None and not self._needs_steps(plan):
            slots.append(("until", plan.until, None))
        if len(slots) > MAX_HW:
            raise Unsupported(f"KVM has {MAX_HW} debug registers: {len(slots)} breakpoints/watchpoints are enabled")
        return slots

    def _needs_steps(self, plan: RunPlan) -> bool:
        catches = any(c.enabled and c.kind in (CatchKind.MODE, CatchKind.CR_WRITE)
                      for c in self.points.catchpoints.values())  # fmt: skip
        conditional_until = plan.until is not None and plan.until_sp is not None
        return plan.limit is not None or catches or conditional_until

    def _debugregs(self) -> list[int]:
        dr = [0] * 8
        dr7 = 1 << 10
        for i, (kind, addr, obj) in enumerate(self._slots):
            dr[i] = addr
            dr7 |= 1 << (2 * i)
            if kind == "watch":
                rw = 0b01 if obj.kind is WatchKind.WRITE else 0b11
                dr7 |= (rw | _LEN[obj.size] << 2) << (16 + 4 * i)
        dr[7] = dr7
        return dr

    def _arm(self, step: bool, bps: bool) -> None:
        control = api.KVM_GUESTDBG_SINGLESTEP if step else 0
        if bps and self._slots:
            control |= api.KVM_GUESTDBG_USE_HW_BP
        self.debug.set_guest_debug(control, self._debugregs() if control else None)
        self._debug_on = bool(control)

    def start(self, plan: RunPlan, evaluate: Evaluate) -> None:
        self._plan = plan
        self._eval = evaluate
        self.executed = 0
        self._hit = None
        # The vCPU the user sees (the one that stopped, or `cpu N`): stepping and stepping off a
        # breakpoint are its; breakpoints fire on every vCPU.
        self._cpu = plan.cpu
        state = self.backend.get_state(self._cpu)
        self._sig = _sig(state)
        self._slots = self.hw_slots(state.paging, plan)
        self._stepping = self._needs_steps(plan)
        pc = state.flat_pc
        # A hardware breakpoint at the current instruction would fire again at once: step off it.
        self._step_over = any(addr == pc for kind, addr, _ in self._slots if kind in ("bp", "until"))

    def run_once(self) -> Exit:
        if self._cpu != 0 and (self._step_over or self._stepping):
            self._arm(step=False, bps=True)
            return self.backend.step(self._cpu)  # an AP's instruction, the others standing still
        if self._step_over:
            self._arm(step=True, bps=False)
        else:
            self._arm(step=self._stepping, bps=True)
        return self.backend.run()

    def examine(self, exit_: Exit) -> Hit | None:
        if exit_.kind is not ExitKind.DEBUG:
            if exit_.kind is ExitKind.HALT and self._stepping:
                self.executed += 1
            return None
        dr6 = int(exit_.detail.get("dr6", 0))
        was_step_over, self._step_over = self._step_over, False
        state = self.backend.get_state(int(exit_.detail.get("cpu", 0)))
        if dr6 & _DR6_BS or was_step_over:
            self.executed += 1
            hit = self._after_step(state)
            if hit is not None:
                return hit
        for i, (kind, addr, obj) in enumerate(self._slots):
            if not dr6 >> i & 1:
                continue
            if kind == "until":
                return Hit(StopKind.UNTIL, "")
            if kind == "bp":
                if self._eval(obj):
                    return Hit(StopKind.BREAKPOINT, "", obj.number)
                self._step_over = True  # condition false: step off it and go on
                continue
            obj.hits += 1
            note = " (KVM: a read or a write; x86 has no read-only data breakpoint)"
            note = note if obj.kind is WatchKind.READ else ""
            detail = {"number": obj.number, "access": obj.kind.value, "physical": addr, "size": obj.size}
            return Hit(StopKind.WATCHPOINT, f"access to {addr:#x}{note}", obj.number, detail)
        if self._stepping or was_step_over:
            return self._check_position(state)
        return None

    def _after_step(self, state: CpuState) -> Hit | None:
        old, new = self._sig, _sig(state)
        self._sig = new
        for c in self.points.catchpoints.values():
            if not c.enabled:
                continue
            if c.kind is CatchKind.MODE:
                hit = mode_change_hit(c.number, (old["mode"], old["paging"]), (new["mode"], new["paging"]))
                if hit is not None:
                    return hit
            if c.kind is CatchKind.CR_WRITE:
                # Without the instruction stream only a changed value is visible under KVM.
                for reg in sorted(c.regs):
                    if old[reg] != new[reg]:
                        return cr_write_hit(c.number, reg, old[reg], new[reg])
        if self._plan.limit is not None and self.executed >= self._plan.limit:
            return Hit(self._plan.limit_kind, "")
        return None

    def _check_position(self, state: CpuState) -> Hit | None:
        """While single-stepping, the hardware breakpoints are checked by position."""
        pc = state.flat_pc
        plan = self._plan
        if plan.until == pc and (plan.until_sp is None or state.rsp >= plan.until_sp):
            return Hit(StopKind.UNTIL, "")
        for kind, addr, obj in self._slots:
            if kind == "bp" and addr == pc and self._eval(obj):
                return Hit(StopKind.BREAKPOINT, "", obj.number)
        return None

    def step_back(self) -> HistoryEntry | None:
        raise Unsupported(f"reverse-stepi: {KVM_LIMITS['reverse-stepi']}")

    def record_history(self, always: bool) -> None:
        raise Unsupported(f"reverse-stepi: {KVM_LIMITS['reverse-stepi']}")

    def disarm(self) -> None:
        if self._debug_on:
            self.debug.set_guest_debug(0)
            self._debug_on = False
