"""The Unicorn backend: software emulation with every instruction observable.

One UC_MODE_64 engine runs every mode; the architectural state is read and written through
Unicorn's register API plus its raw CPUX86State (rawstate.py). Unicorn delivers no interrupt or
exception itself: its hooks hand them to emu/cpu/interrupts.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

import unicorn
from unicorn import x86_const as X

from emu import layout
from emu.backends.base import Backend, Exit, ExitKind
from emu.backends.unicorn import rawstate as R
from emu.bus import Bus
from emu.cpu import x86
from emu.cpu.interrupts import (
    ChainLink,
    Event,
    EventKind,
    TripleFault,
    Unsupported,
    deliver_with_escalation,
)
from emu.cpu.state import CpuState, FpuState
from emu.memory import GuestMemory

log = logging.getLogger("emu.unicorn")

# QEMU's regs[] order.
_RAW_GPRS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")  # fmt: skip
_FP_REGS = [getattr(X, f"UC_X86_REG_FP{i}") for i in range(8)]
_XMM_REGS = [getattr(X, f"UC_X86_REG_XMM{i}") for i in range(16)]
_UNTIL = 0xFFFF_FFFF_FFFF_FFFF  # a linear address code never reaches: run until stopped


class UnicornBackend(Backend):
    name = "unicorn"
    has_irqchip = False

    def __init__(self, memory: GuestMemory, bus: Bus) -> None:
        super().__init__(memory, bus)
        self.uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
        R.self_test(self.uc)
        self._stop_requested = False
        self._discard_io = False
        self._in_emu = False
        self._vcpu_thread: int | None = None
        self._pending: Exit | None = None
        self._intr_pending = False
        #: The recent delivered events (for fault reports): (chain, state before delivery).
        self.recent_events: deque[list[ChainLink]] = deque(maxlen=16)
        self._map_memory()
        self._add_hooks()
        self.set_state(CpuState())

    # -- set-up -----------------------------------------------------------------------------------
    def _map_memory(self) -> None:
        regions = sorted(self.memory.regions, key=lambda r: r.gpa)
        for r in regions:
            perms = unicorn.UC_PROT_READ | unicorn.UC_PROT_EXEC
            if not r.readonly:
                perms |= unicorn.UC_PROT_WRITE
            self.uc.mem_map_ptr(r.gpa, r.size, perms, r.host_address)
        # Everything else below layout.PHYS_ADDR_LIMIT is the bus: devices or all-ones.
        pos = 0
        for r in [*regions, None]:
            start = r.gpa if r is not None else layout.PHYS_ADDR_LIMIT
            if start > pos:
                self.uc.mmio_map(pos, start - pos, self._mmio_read, pos, self._mmio_write, pos)
            if r is not None:
                pos = r.end

    def _add_hooks(self) -> None:
        uc = self.uc
        uc.hook_add(unicorn.UC_HOOK_INSN, self._on_in, None, 1, 0, X.UC_X86_INS_IN)
        uc.hook_add(unicorn.UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT)
        uc.hook_add(unicorn.UC_HOOK_INTR, self._on_intr)
        uc.hook_add(unicorn.UC_HOOK_INSN_INVALID, self._on_invalid)

    # -- hooks ------------------------------------------------------------------------------------
    def _mmio_read(self, uc: unicorn.Uc, offset: int, size: int, base: int) -> int:
        return self.bus.mmio_read(base + offset, size)

    def _mmio_write(self, uc: unicorn.Uc, offset: int, size: int, value: int, base: int) -> None:
        self.bus.mmio_write(base + offset, size, value)

    # A stop requested from inside an I/O hook only lands at the end of the current translation
    # block: the instructions after the `out` in that block still run. For a final stop
    # (debug-exit, reset) their port I/O is dropped so nothing they do reaches a device.
    def _on_in(self, uc: unicorn.Uc, port: int, size: int, _ud: object) -> int:
        if self._discard_io:
            return (1 << (8 * size)) - 1
        return self.bus.pio_read(port, size)

    def _on_out(self, uc: unicorn.Uc, port: int, size: int, value: int, _ud: object) -> None:
        if not self._discard_io:
            self.bus.pio_write(port, size, value)

    def _on_intr(self, uc: unicorn.Uc, intno: int, _ud: object) -> None:
        raw = R.RawContext.save(uc)
        if raw.i32(R.OFF_EXCEPTION_IS_INT):
            # PC already points past `int n` / int3 / into.
            opcode = self._peek_byte_before(raw)
            kind = EventKind.SOFTWARE_EXC if opcode in (0xCC, 0xCE) else EventKind.SOFTWARE_INT
            ev = Event(intno, kind)
        else:
            err = raw.i32(R.OFF_ERROR_CODE) & 0xFFFF_FFFF if intno in x86.ERROR_CODE_VECTORS else None
            ev = Event(intno, EventKind.EXCEPTION, err, raw.cr(2) if intno == 14 else None)
        self._deliver(raw, ev)

    def _on_invalid(self, uc: unicorn.Uc, _ud: object) -> bool:
        self._deliver(R.RawContext.save(uc), Event(6, EventKind.EXCEPTION))
        return True

    def _peek_byte_before(self, raw: R.RawContext) -> int:
        try:
            return self.uc.mem_read(self._linear_pc(raw) - 1, 1)[0]
        except unicorn.UcError:
            return -1

    def _linear_pc(self, raw: R.RawContext) -> int:
        rip = raw.u64(R.OFF_EIP)
        if raw.u64(R.OFF_EFER) & x86.Efer.LMA and raw.segment("cs").l:
            return rip
        return (raw.segment("cs").base + rip) & 0xFFFF_FFFF

    def _deliver(self, raw: R.RawContext, ev: Event) -> None:
        raw.set_i32(R.OFF_OLD_EXCEPTION, -1)  # Unicorn bug #1883: a stale value fakes a #DF later
        rflags = self.uc.reg_read(X.UC_X86_REG_RFLAGS)
        state = self._state_from_raw(raw, rflags)
        try:
            chain = deliver_with_escalation(state, self.memory, ev)
        except TripleFault as tf:
            raw.restore(self.uc)
            # `raw` is still the state at the fault: re-read it rather than copy on every delivery.
            before = self._state_from_raw(raw, rflags)
            self._stop_with(Exit(ExitKind.SHUTDOWN, str(tf), {"chain": tf.chain, "state": before}))
            return
        except Unsupported as u:
            raw.restore(self.uc)
            before = self._state_from_raw(raw, rflags)
            self._stop_with(Exit(ExitKind.ERROR, f"cannot deliver {ev.describe()}: {u}", {"state": before}))
            return
        self.recent_events.append(chain)
        # Delivery changes CS, SS, RSP, RIP, RFLAGS (and CR2): write them back.
        raw.set_segment("cs", state.cs)
        raw.set_segment("ss", state.ss)
        raw.set_u64(R.OFF_REGS + 8 * 4, state.rsp)
        raw.set_u64(R.OFF_EIP, state.rip)
        raw.set_cr(2, state.cr2)
        raw.recompute_hflags(state.rflags)
        raw.restore(self.uc)
        self.uc.reg_write(X.UC_X86_REG_RFLAGS, state.rflags)
        self.uc.reg_write(X.UC_X86_REG_RIP, state.rip)

    def _stop_with(self, exit_: Exit) -> None:
        self._pending = exit_
        self.uc.emu_stop()

    # -- running ----------------------------------------------------------------------------------
    def run(self) -> Exit:
        self._vcpu_thread = threading.get_ident()
        self._discard_io = False
        self._in_emu = True
        try:
            if self._stop_requested:
                self._stop_requested = False
                return Exit(ExitKind.INTERRUPTED)
            rip = self.uc.reg_read(X.UC_X86_REG_RIP)
            try:
                self.uc.emu_start(rip, _UNTIL)
            except unicorn.UcError as e:
                return self._engine_error(e)
        finally:
            self._in_emu = False
        if self._pending is not None:
            exit_, self._pending = self._pending, None
            self._stop_requested = False
            return exit_
        if self._stop_requested:
            self._stop_requested = False
            return Exit(ExitKind.INTERRUPTED)
        return self._classify_return()

    def _classify_return(self) -> Exit:
        """emu_start returned on its own: hlt (RIP is just past it) or an engine quirk."""
        raw = R.RawContext.save(self.uc)
        try:
            if self.uc.mem_read(self._linear_pc(raw) - 1, 1)[0] == 0xF4:
                return Exit(ExitKind.HALT)
        except unicorn.UcError:
            pass
        return Exit(ExitKind.ERROR, f"emulation stopped unexpectedly at RIP {raw.u64(R.OFF_EIP):#x}")

    def _engine_error(self, e: unicorn.UcError) -> Exit:
        rip = self.uc.reg_read(X.UC_X86_REG_RIP)
        what = {
            unicorn.UC_ERR_READ_UNMAPPED: "read from a physical address beyond the machine's address space",
            unicorn.UC_ERR_WRITE_UNMAPPED: "write to a physical address beyond the machine's address space",
            unicorn.UC_ERR_FETCH_UNMAPPED: "instruction fetch from a non-RAM address",
            unicorn.UC_ERR_FETCH_PROT: "instruction fetch from a non-executable address",
            unicorn.UC_ERR_WRITE_PROT: "write to read-only memory",
        }.get(e.errno, str(e))
        return Exit(ExitKind.ERROR, f"unicorn: {what} (RIP {rip:#x})", {"errno": e.errno})

    def request_stop(self) -> None:
        self._stop_requested = True
        if threading.get_ident() == self._vcpu_thread:
            self.uc.emu_stop()
            return
        # From another thread: emu_stop is ignored if it lands before emu_start begins, so
        # repeat it until the run loop has seen the request.
        deadline = time.monotonic() + 2.0
        while self._in_emu and self._stop_requested and time.monotonic() < deadline:
            self.uc.emu_stop()
            time.sleep(0.001)

    def request_final_stop(self) -> None:
        self._discard_io = True
        self.request_stop()

    def set_intr(self, pending: bool) -> None:
        self._intr_pending = pending

    def step(self) -> Exit:
        rip = self.uc.reg_read(X.UC_X86_REG_RIP)
        try:
            self.uc.emu_start(rip, _UNTIL, count=1)
        except unicorn.UcError as e:
            return self._engine_error(e)
        if self._pending is not None:
            exit_, self._pending = self._pending, None
            return exit_
        return Exit(ExitKind.DEBUG, "step")

    def invalidate_code(self, paddr: int, size: int) -> None:
        # Unicorn's cache is indexed by virtual address; code written from Python may be mapped
        # anywhere, so drop everything (rare: firmware loads, not per-instruction).
        self.uc.ctl_flush_tb()

    def is_halted_for_good(self) -> bool:
        return not self.uc.reg_read(X.UC_X86_REG_RFLAGS) & x86.FLAG_IF and not self._intr_pending

    # -- state ------------------------------------------------------------------------------------
    def _state_from_raw(self, raw: R.RawContext, rflags: int) -> CpuState:
        s = CpuState()
        for i, name in enumerate(_RAW_GPRS):
            setattr(s, name, raw.u64(R.OFF_REGS + 8 * i))
        s.rip = raw.u64(R.OFF_EIP)
        s.rflags = rflags
        s.cr0, s.cr2, s.cr3, s.cr4 = raw.cr(0), raw.cr(2), raw.cr(3), raw.cr(4)
        s.efer = raw.u64(R.OFF_EFER)
        for name in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"):
            setattr(s, name, raw.segment(name))
        s.gdt, s.idt = raw.table("gdt"), raw.table("idt")
        return s

    def get_state(self) -> CpuState:
        uc = self.uc
        raw = R.RawContext.save(uc)
        s = self._state_from_raw(raw, uc.reg_read(X.UC_X86_REG_RFLAGS))
        s.cr8 = uc.reg_read(X.UC_X86_REG_CR8)
        s.dr0, s.dr1, s.dr2, s.dr3 = (raw.u64(R.OFF_DR + 8 * i) for i in range(4))
        s.dr6, s.dr7 = raw.u64(R.OFF_DR + 48), raw.u64(R.OFF_DR + 56)
        s.msrs = {m: uc.reg_read(X.UC_X86_REG_MSR, m) for m in x86.STATE_MSRS}
        full_tag = uc.reg_read(X.UC_X86_REG_FPTAG)
        s.fpu = FpuState(
            fcw=uc.reg_read(X.UC_X86_REG_FPCW),
            fsw=uc.reg_read(X.UC_X86_REG_FPSW),
            ftw=sum(1 << i for i in range(8) if (full_tag >> (2 * i)) & 3 != 3),
            st=[_fp_to_bytes(uc.reg_read(r)) for r in _FP_REGS],
            xmm=[uc.reg_read(r).to_bytes(16, "little") for r in _XMM_REGS],
            mxcsr=uc.reg_read(X.UC_X86_REG_MXCSR),
        )
        return s

    def set_state(self, state: CpuState) -> None:
        uc = self.uc
        raw = R.RawContext.save(uc)
        for i, name in enumerate(_RAW_GPRS):
            raw.set_u64(R.OFF_REGS + 8 * i, getattr(state, name))
        raw.set_u64(R.OFF_EIP, state.rip)
        for i, v in enumerate((state.cr0, 0, state.cr2, state.cr3, state.cr4)):
            raw.set_cr(i, v)
        raw.set_u64(R.OFF_EFER, state.efer)
        for name in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"):
            raw.set_segment(name, getattr(state, name))
        raw.set_table("gdt", state.gdt)
        raw.set_table("idt", state.idt)
        for i, v in enumerate((state.dr0, state.dr1, state.dr2, state.dr3)):
            raw.set_u64(R.OFF_DR + 8 * i, v)
        raw.set_u64(R.OFF_DR + 48, state.dr6)
        raw.set_u64(R.OFF_DR + 56, state.dr7)
        raw.set_i32(R.OFF_OLD_EXCEPTION, -1)
        raw.recompute_hflags(state.rflags)
        raw.restore(uc)
        uc.reg_write(X.UC_X86_REG_RFLAGS, state.rflags)
        uc.reg_write(X.UC_X86_REG_CR8, state.cr8)
        for m, v in state.msrs.items():
            uc.reg_write(X.UC_X86_REG_MSR, (m, v))
        f = state.fpu
        uc.reg_write(X.UC_X86_REG_FPCW, f.fcw)
        uc.reg_write(X.UC_X86_REG_FPSW, f.fsw)
        uc.reg_write(X.UC_X86_REG_FPTAG, sum((0 if f.ftw >> i & 1 else 3) << (2 * i) for i in range(8)))
        for r, b in zip(_FP_REGS, f.st, strict=True):
            uc.reg_write(r, _fp_from_bytes(b))
        for r, b in zip(_XMM_REGS, f.xmm, strict=True):
            uc.reg_write(r, int.from_bytes(b, "little"))
        uc.reg_write(X.UC_X86_REG_MXCSR, f.mxcsr)
        # Control registers changed behind QEMU's back: drop stale address translations. Translated
        # blocks need no flush: QEMU finds them by physical page and by the (recomputed) hflags.
        uc.ctl(unicorn.UC_CTL_TLB_FLUSH, unicorn.UC_CTL_IO_WRITE)

    def close(self) -> None:
        # Unicorn frees the engine when the object is collected; drop our references.
        self.recent_events.clear()


def _fp_to_bytes(v: tuple[int, int]) -> bytes:
    mantissa, exponent = v
    return mantissa.to_bytes(8, "little") + (exponent & 0xFFFF).to_bytes(2, "little")


def _fp_from_bytes(b: bytes) -> tuple[int, int]:
    return int.from_bytes(b[:8], "little"), int.from_bytes(b[8:10], "little")
