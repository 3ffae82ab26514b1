"""Running under the debugger with Unicorn: every stop kind is exact.

Two ways to run, chosen per run:
- careful: one Python code hook on every instruction (about 1 µs each) counts instructions,
  checks breakpoints (linear, physical, conditional), records the history ring and, after the
  rare instructions that can change the CPU mode or a control register (engine.classify), compares
  the state. Watchpoints and history add a memory hook on every access. A stop from a code hook
  lands before that instruction, so a watchpoint or CR write is reported after the instruction
  that did it, never halfway (stopping inside a memory hook would replay the instruction).
- fast: only 1-byte code hooks at the enabled linear breakpoints, so `continue` runs at full
  speed; used when nothing needs per-instruction attention.
Code hooks only reach blocks translated after they were added: every change flushes Unicorn's
translation cache (~6 ms, once per command, never per step).
"""

from __future__ import annotations

import contextlib
from typing import Any

import unicorn
from unicorn import x86_const as X

from emu.backends.base import Backend, Exit, ExitKind, InstructionHooks
from emu.backends.unicorn import rawstate as R
from emu.cpu import paging, x86
from emu.cpu.interrupts import Event, EventKind
from emu.cpu.state import CpuState, Mode
from emu.debugger.engine import Evaluate, Hit, Points, RunPlan, classify, cr_write_hit, mode_change_hit, no_stops
from emu.debugger.history import History, HistoryEntry
from emu.debugger.stops import AddrSpace, Breakpoint, CatchKind, StopKind, WatchKind
from emu.errors import GuestMemoryError
from emu.memory import GuestMemory

_ALL = (1, 0)  # Unicorn's "every address" hook range
_EVENT_NAMES = {EventKind.EXTERNAL: "external interrupt", EventKind.SOFTWARE_INT: "software interrupt",
                EventKind.SOFTWARE_EXC: "software exception", EventKind.EXCEPTION: "exception"}  # fmt: skip


class _Sig:
    """The part of the CPU state the careful hook compares after a tagged instruction."""

    def __init__(self, uc: unicorn.Uc) -> None:
        raw = R.RawContext.save(uc)
        s = CpuState()
        s.cr0, s.cr3, s.cr4, s.efer = raw.cr(0), raw.cr(3), raw.cr(4), raw.u64(R.OFF_EFER)
        s.cs = raw.segment("cs")
        s.rflags = uc.reg_read(X.UC_X86_REG_RFLAGS)
        self.state = s
        self.regs = {"cr0": s.cr0, "cr3": s.cr3, "cr4": s.cr4, "efer": s.efer}
        self.mode = s.mode
        self.paging = s.paging
        self.bits = s.mode.bits
        self.pregs = paging.PagingRegs(s.cr0, s.cr3, s.cr4, s.efer)


class UnicornEngine:
    """The Engine over Unicorn's instruction hooks (`hooks`); `backend` runs the guest."""

    def __init__(
        self, backend: Backend, hooks: InstructionHooks, memory: GuestMemory, points: Points, history: History
    ) -> None:
        self.backend = backend
        self.hooks = hooks
        self.uc = hooks.uc
        self.memory = memory
        self.points = points
        self.history = history
        self.history_on = True
        self.careful_always = False  # history must cover `continue` too (record_history)
        self._code_hook: int | None = None
        self._mem_hook: int | None = None
        self._bp_hooks: list[int] = []
        self._careful = False
        self._hit: Hit | None = None
        self._plan = RunPlan()
        self.executed = 0
        self._inflight = False
        self._inflight_addr = -1
        self._tag: str | None = None
        self._tag_pre: dict[str, Any] = {}
        self._events: list[Event] = []
        self._watch_hits: list[dict[str, Any]] = []
        self._entry: HistoryEntry | None = None
        self._tags: dict[tuple[int, int], str | None] = {}
        self._pages: dict[int, int | None] = {}
        self._sig: _Sig | None = None
        self._linear_bps: dict[int, list[Breakpoint]] = {}
        self._phys_bps: dict[int, list[Breakpoint]] = {}
        self._first = True
        self._skip_pc: int | None = None
        self._eval: Evaluate = no_stops
        hooks.on_event = self._on_event

    def limits(self) -> dict[str, str]:
        return {}  # every instruction and access is observed: every stop is exact

    def check_points(self, paging: bool) -> None:
        """Any set of points can be armed."""

    def record_history(self, always: bool) -> None:
        self.careful_always = always

    # -- arming -------------------------------------------------------------------------------------
    def start(self, plan: RunPlan, evaluate: Evaluate) -> None:
        self._plan = plan
        self._eval = evaluate
        self.executed = 0
        self._hit = None
        self._inflight = False
        self._first = True
        self._events.clear()
        self._watch_hits.clear()
        self._refresh()
        bps = [b for b in self.points.breakpoints.values() if b.enabled] if plan.use_breakpoints else []
        self._linear_bps, self._phys_bps = {}, {}
        for b in bps:
            table = self._linear_bps if b.space is AddrSpace.LINEAR else self._phys_bps
            table.setdefault(b.address, []).append(b)
        watches = any(w.enabled for w in self.points.watchpoints.values())
        catches = any(c.enabled for c in self.points.catchpoints.values())
        careful = (
            plan.limit is not None or plan.until is not None or watches or catches or self.careful_always
            or any(b.condition is not None for b in bps) or (self._phys_bps and self._sig and self._sig.paging)
        )  # fmt: skip
        self._set_hooks(bool(careful), watches or (self.history_on and bool(careful)))
        # Resuming at a breakpoint must not hit it again before the instruction ran (fast mode;
        # the careful hook skips its first instruction for the same reason).
        pc = self._linear_pc()
        self._skip_pc = pc if pc in self._linear_bps or pc in self._phys_bps else None
        if not careful:
            self.history.clear()  # a fast run leaves a gap: the ring would lie about the past

    def _set_hooks(self, careful: bool, mem: bool) -> None:
        uc = self.uc
        changed = bool(self._bp_hooks)
        for h in self._bp_hooks:
            uc.hook_del(h)
        self._bp_hooks = []
        if careful and self._code_hook is None:
            self._code_hook = uc.hook_add(unicorn.UC_HOOK_CODE, self._on_code, None, *_ALL)
            changed = True
        elif not careful and self._code_hook is not None:
            uc.hook_del(self._code_hook)
            self._code_hook = None
            changed = True
        if mem and self._mem_hook is None:
            kinds = unicorn.UC_HOOK_MEM_READ | unicorn.UC_HOOK_MEM_WRITE
            self._mem_hook = uc.hook_add(kinds, self._on_mem, None, *_ALL)
            changed = True
        elif not mem and self._mem_hook is not None:
            uc.hook_del(self._mem_hook)
            self._mem_hook = None
            changed = True
        if not careful:
            addrs = set(self._linear_bps)
            if self._sig is not None and not self._sig.paging:
                addrs |= set(self._phys_bps)  # paging off: physical = linear
            for a in sorted(addrs):
                self._bp_hooks.append(uc.hook_add(unicorn.UC_HOOK_CODE, self._on_bp, None, a, a))
            changed = changed or bool(addrs)
        self._careful = careful
        if changed:
            R.flush_translations(uc)

    def disarm(self) -> None:
        """Back to no debugger hooks (the session is closing)."""
        self._linear_bps, self._phys_bps = {}, {}
        self._set_hooks(False, False)
        self.hooks.on_event = None

    def _refresh(self) -> None:
        self._sig = _Sig(self.uc)
        self._tags.clear()
        self._pages.clear()

    # -- running ------------------------------------------------------------------------------------
    def run_once(self) -> Exit:
        return self.backend.run()

    def examine(self, exit_: Exit) -> Hit | None:
        """The backend returned: a stop from our hooks, or the end of the last instruction."""
        if self._hit is not None:
            found, self._hit = self._hit, None
            return found
        if self._careful and self._inflight and exit_.kind in (ExitKind.HALT, ExitKind.INTERRUPTED):
            self._inflight = False
            if exit_.kind is ExitKind.INTERRUPTED and self._linear_pc() == self._inflight_addr:
                # A stop requested from an I/O hook lands at the next memory access and Unicorn
                # restarts that instruction: it has not completed, and it will be hooked again.
                self._tag = None
                if self._entry is not None and self.history.entries and self.history.entries[-1] is self._entry:
                    self.history.entries.pop()
                self._entry = None
                return None
            self.executed += 1
            self._entry = None
            hit = self._after_insn()
            if hit is None and self._plan.limit is not None and self.executed >= self._plan.limit:
                hit = Hit(self._plan.limit_kind, "")
            return hit
        if exit_.kind in (ExitKind.SHUTDOWN, ExitKind.ERROR):
            self._inflight = False
        return None

    # -- hooks ----------------------------------------------------------------------------------------
    def _stop(self, hit: Hit) -> None:
        self._hit = hit
        self.hooks.debug_stop(Exit(ExitKind.DEBUG, hit.kind.value))

    def _on_bp(self, uc: unicorn.Uc, address: int, size: int, _ud: object) -> None:
        skip, self._skip_pc = self._skip_pc, None
        if address == skip:
            return
        hits = self._linear_bps.get(address) or self._phys_bps.get(address) or []
        for b in hits:
            if self._eval(b):
                self._stop(Hit(StopKind.BREAKPOINT, "", b.number))
                return

    def _on_code(self, uc: unicorn.Uc, address: int, size: int, _ud: object) -> None:
        if self._inflight:
            self.executed += 1
            self._inflight = False
        if self._tag is not None or self._events or self._watch_hits:
            hit = self._after_insn()
            if hit is not None:
                return self._stop(hit)
        plan = self._plan
        if plan.limit is not None and self.executed >= plan.limit:
            return self._stop(Hit(plan.limit_kind, ""))
        first, self._first = self._first, False
        if (address == plan.until and not first
                and (plan.until_sp is None or uc.reg_read(X.UC_X86_REG_RSP) >= plan.until_sp)):  # fmt: skip
            return self._stop(Hit(StopKind.UNTIL, ""))
        if not first:
            bps = self._linear_bps.get(address)
            if self._phys_bps:
                phys = self._phys(address)
                if phys is not None and phys in self._phys_bps:
                    bps = [*(bps or []), *self._phys_bps[phys]]
            if bps:
                for b in bps:
                    if self._eval(b):
                        return self._stop(Hit(StopKind.BREAKPOINT, "", b.number))
        if self.history_on:
            self._entry = self.history.record(address, R.RawContext.save(uc))
        sig = self._sig
        assert sig is not None
        key = (address, sig.bits)
        tag = self._tags.get(key, "?")
        if tag == "?":
            tag = self._classify(address, sig.bits)
            self._tags[key] = tag
        if tag is not None:
            self._tag = tag
            if tag == "wrmsr":
                self._tag_pre = {"ecx": uc.reg_read(X.UC_X86_REG_ECX)}
        self._inflight = True
        self._inflight_addr = address

    def _linear_pc(self) -> int:
        rip = self.uc.reg_read(X.UC_X86_REG_RIP)
        sig = self._sig
        if sig is None or sig.mode is Mode.LONG:
            return rip
        return (sig.state.cs.base + rip) & 0xFFFF_FFFF

    def _classify(self, address: int, bits: int) -> str | None:
        code = b""
        for i in range(15):
            phys = self._phys(address + i)
            if phys is None:
                break
            try:
                code += self.memory.read(phys, 1)
            except GuestMemoryError:
                break
        return classify(code, bits)

    def _after_insn(self) -> Hit | None:
        """Checks after an instruction completed (or an interrupt was delivered)."""
        hit = None
        if self._watch_hits:
            w = self._watch_hits[0]
            self._watch_hits.clear()
            hit = Hit(StopKind.WATCHPOINT, "", w["number"], w)
        tag, self._tag = self._tag, None
        events, self._events = list(self._events), []
        if tag is None and not events:
            return hit
        old = self._sig
        assert old is not None
        self._refresh()
        new = self._sig
        assert new is not None
        written = None
        if tag and tag.startswith("cr"):
            written = tag
        elif tag == "wrmsr" and self._tag_pre.get("ecx") == x86.Msr.EFER:
            written = "efer"
        for c in self.points.catchpoints.values():
            if not c.enabled or hit is not None:
                continue
            if c.kind is CatchKind.CR_WRITE and written in c.regs:
                hit = cr_write_hit(c.number, written, old.regs.get(written, 0), new.regs.get(written, 0))
            elif c.kind is CatchKind.MODE:
                hit = mode_change_hit(c.number, (old.mode, old.paging), (new.mode, new.paging))
            elif c.kind in (CatchKind.EXCEPTION, CatchKind.INTERRUPT):
                for ev in events:
                    exc = ev.kind in (EventKind.EXCEPTION, EventKind.SOFTWARE_EXC)
                    if c.kind is CatchKind.INTERRUPT or (exc and ev.vector == c.vector):
                        what = _EVENT_NAMES[ev.kind]
                        known = exc and ev.vector in x86.Vector._value2member_map_
                        name = f" ({x86.Vector(ev.vector).name})" if known else ""
                        msg = f"{what} {ev.vector:#x}{name} delivered"
                        if ev.error_code is not None:
                            msg += f" (error code {ev.error_code:#x})"
                        kind = StopKind.EXCEPTION if c.kind is CatchKind.EXCEPTION else StopKind.INTERRUPT
                        hit = Hit(kind, msg, c.number, {"vector": ev.vector, "event": ev.kind.value})
                        break
        return hit

    def _on_event(self, ev: Event) -> None:
        if self._careful:
            self._events.append(ev)

    def _on_mem(self, uc: unicorn.Uc, access: int, address: int, size: int, value: int, _ud: object) -> None:
        phys = self._phys(address)
        if phys is None:
            return
        write = access == unicorn.UC_MEM_WRITE
        if write and self._entry is not None:
            # MMIO (outside RAM) is not recorded: device side effects cannot be undone.
            with contextlib.suppress(GuestMemoryError):
                self._entry.writes.append((phys, self.memory.read(phys, size)))
        for w in self.points.watchpoints.values():
            if not w.enabled or phys + size <= w.address or phys >= w.address + w.size:
                continue
            if (w.kind is WatchKind.WRITE and not write) or (w.kind is WatchKind.READ and write):
                continue
            hit: dict[str, Any] = {"number": w.number, "access": "write" if write else "read",
                                   "linear": address, "physical": phys, "size": size}  # fmt: skip
            if write:
                with contextlib.suppress(GuestMemoryError):
                    hit["old"] = int.from_bytes(self.memory.read(phys, size), "little")
                hit["new"] = value & ((1 << (8 * size)) - 1)
            else:
                with contextlib.suppress(GuestMemoryError):
                    hit["value"] = int.from_bytes(self.memory.read(phys, size), "little")
            w.hits += 1
            self._watch_hits.append(hit)
            return

    def _phys(self, linear: int) -> int | None:
        sig = self._sig
        if sig is None or not sig.paging:
            return linear & 0xFFFF_FFFF
        page = linear >> 12
        base = self._pages.get(page, -1)
        if base == -1:
            try:
                walk = paging.walk(self.memory, sig.pregs, page << 12)
            except GuestMemoryError:
                walk = None
            base = None if walk is None or walk.physical is None else walk.physical >> 12
            self._pages[page] = base
        return None if base is None else base << 12 | (linear & 0xFFF)

    # -- history ------------------------------------------------------------------------------------
    def step_back(self) -> HistoryEntry | None:
        """Undo the last recorded instruction: its RAM writes, then the whole CPU context."""
        entry = self.history.pop()
        if entry is None:
            return None
        for phys, old in reversed(entry.writes):
            self.memory.write(phys, old)
            self.backend.invalidate_code(phys, len(old))
        entry.raw.restore(self.uc)
        self.uc.ctl(unicorn.UC_CTL_TLB_FLUSH, unicorn.UC_CTL_IO_WRITE)
        self._inflight = False
        self._tag = None
        self._refresh()
        return entry
