"""The Unicorn backend: software emulation with every instruction observable.

One UC_MODE_64 engine runs every mode; the architectural state is read and written through
Unicorn's register API plus its raw CPUX86State (rawstate.py). Unicorn delivers no interrupt or
exception itself: its hooks hand them to emu/cpu/interrupts.py.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import unicorn
from unicorn import x86_const as X

from emu import layout
from emu.backends.base import (
    Backend,
    Capabilities,
    Exit,
    ExitKind,
    InstructionHooks,
    MsrRouter,
    TraceEntry,
    VirtualTime,
)
from emu.backends.unicorn import msr_intercept
from emu.backends.unicorn import rawstate as R
from emu.backends.unicorn.block_trace import block_trace
from emu.backends.unicorn.exact_stop import ExactStop
from emu.backends.unicorn.guest_tsc import UnicornTsc
from emu.backends.unicorn.msr_intercept import MSR_EXIT, RDMSR, WRMSR, MsrIntercept
from emu.backends.unicorn.native import NativeHooks
from emu.backends.unicorn.smp import Scheduler
from emu.backends.unicorn.vcpu import Vcpu, VcpuMsrs, VcpuPin
from emu.backends.unicorn.virtual_time import UnicornVirtualTime
from emu.bus import Bus
from emu.cpu import cpuid, paging, x86
from emu.cpu.interrupts import Event, EventKind, TripleFault, Unsupported, deliver_with_escalation
from emu.cpu.state import ALL_SEGMENT_NAMES, CpuState, FpuState, Segment
from emu.errors import GuestMemoryError
from emu.memory import GuestMemory
from emu.platform import GuestTsc, InterruptPin

log = logging.getLogger("emu.unicorn")
T = TypeVar("T")

_FP_REGS = [getattr(X, f"UC_X86_REG_FP{i}") for i in range(8)]
_XMM_REGS = [getattr(X, f"UC_X86_REG_XMM{i}") for i in range(16)]
_UNTIL = 0xFFFF_FFFF_FFFF_FFFF  # a linear address code never reaches: run until stopped
# While an interrupt waits for IF=1 (or the end of an interrupt shadow), the run is stopped this
# often to look again: Unicorn has no hook on sti/popf/iret.
INTR_WINDOW_POLL_S = 0.001
# With virtual time the same poll is measured in guest time, so it lands at the same point every run.
VIRTUAL_WINDOW_POLL_NS = 100_000
# SYSCALL, SYSENTER: Unicorn calls the hook and then adds the instruction length to RIP.
_SYSCALL_LEN = 2


@functools.cache
def host_tsc_khz() -> int:
    """The frequency of the TSC that Unicorn's rdtsc returns (the host's), measured once."""
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, b"\x0f\x31")  # rdtsc

    def sample() -> tuple[int, int]:
        """(host ns, TSC) from the tightest of a few bracketed reads: the ACPI PM timer lets Linux
        compare the two clocks, and its watchdog rejects a TSC more than ~0.03% off."""
        best = (1 << 62, 0, 0)
        for _ in range(8):
            before = time.monotonic_ns()
            uc.emu_start(0x1000, 0x1002)
            after = time.monotonic_ns()
            tsc = uc.reg_read(X.UC_X86_REG_RDX) << 32 | uc.reg_read(X.UC_X86_REG_RAX)
            best = min(best, (after - before, (before + after) // 2, tsc))
        return best[1], best[2]

    sample()  # the first run translates the block
    t0, c0 = sample()
    time.sleep(0.05)
    t1, c1 = sample()
    return max(1, round((c1 - c0) * 1_000_000 / (t1 - t0)))


class UnicornBackend(Backend):
    """`cpus` vCPUs on one Unicorn engine over the machine's memory and bus (vcpu.py, smp.py).
    Also the debugger's instruction hooks."""

    name = "unicorn"

    def __init__(self, memory: GuestMemory, bus: Bus, *, virtual_time: bool = False, local_apic: bool = False,
                 cpus: int = 1) -> None:  # fmt: skip
        """`local_apic`: CPUID shows the local APIC, x2APIC, TSC-deadline and kvmclock, which the
        machine then emulates (their MSRs come through `msr_routers()`). `cpus`: vCPU 0 is the
        bootstrap processor, the others start waiting for STARTUP."""
        super().__init__(memory, bus, cpus)
        self.uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
        R.self_test(self.uc)
        # No exit addresses at all (emu stops runs itself). With `until` in use, every return
        # from emu_start translates until-1 through the guest's page tables to drop its cached
        # code; under paging that faults silently and leaves CR2 = until-1, error_code and
        # old_exception = 14 behind (Linux then saw a page fault at 0xfffffffffffffffe).
        self.uc.ctl_exits_enabled(True)
        self._stop_requested = False
        self._discard_io = False
        self._in_emu = False
        self._in_mmio = False
        self._vcpu_thread: int | None = None
        self._pending: Exit | None = None
        self._window = threading.Event()  # set: an interrupt waits for the guest to allow it
        self._window_thread: threading.Thread | None = None
        self._closed = False
        msr_intercept.self_test()
        self._msrs = MsrIntercept()
        self._map_memory()
        self._msrs.map_tables(self.uc)
        self._add_hooks()
        self._native = NativeHooks(self.uc)
        self._kick = ExactStop(self._native)
        self._stepping = False  # the last run was a step (the count hook is installed)
        #: Called with every interrupt or exception before emu delivers it (the debugger).
        self.on_event: Callable[[Event], None] | None = None
        # Virtual time (--deterministic): runs end at timer deadlines and interrupt-window polls
        # measured in executed code, never by host-time threads.
        self._virtual = UnicornVirtualTime(self._native) if virtual_time else None
        self.tsc_khz = self._virtual.tsc_khz if self._virtual is not None else host_tsc_khz()
        self._tsc = UnicornTsc(self.tsc_khz, self._virtual)
        self._vcpus = [Vcpu(i, self._cpuid_table(i, local_apic)) for i in range(cpus)]
        self._v = self._vcpus[0]  # the vCPU whose state is in the engine
        self._pins = [VcpuPin(self, v) for v in self._vcpus]
        self._routers = [VcpuMsrs(self._msrs, v) for v in self._vcpus]
        self._scheduler = Scheduler(self, virtual=self._virtual) if cpus > 1 else None
        for v in reversed(self._vcpus):  # every vCPU at power-on, vCPU 0 left in the engine
            v.power_on()
            self._v = v
            self.set_state(CpuState(), v.index)
            if v.index:
                v.context = self.uc.context_save()

    # -- what this backend can do -----------------------------------------------------------------
    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(a20_mask=True, in_kernel_pit=False, data_breakpoints=True)

    def interrupt_pins(self) -> Sequence[InterruptPin]:
        return self._pins

    def current_cpu(self) -> int:
        return self._v.index

    def virtual_time(self) -> VirtualTime | None:
        return self._virtual

    def msr_routers(self) -> Sequence[MsrRouter]:
        return self._routers

    def guest_tsc(self) -> GuestTsc:
        return self._tsc

    def executed_code_bytes(self) -> int:
        return int(self._native.cell.code_bytes)

    def block_trace(self) -> list[TraceEntry]:
        """The translation blocks the guest started most recently, oldest first (kick.c's ring),
        for the fault report's "last instructions executed"."""
        return block_trace(self._native)

    def instruction_hooks(self) -> InstructionHooks:
        return self

    # -- set-up -----------------------------------------------------------------------------------
    def _cpuid_table(self, apic_id: int, local_apic: bool) -> dict[tuple[int, int], cpuid.Regs]:
        table = cpuid.unicorn_table(self.tsc_khz, local_apic=local_apic, apic_id=apic_id)
        if self._virtual is not None:
            # rdtscp would need TSC_AUX in ECX, which the native hook does not write: hide it.
            rdtscp = cpuid.Feature.RDTSCP
            regs = list(table[(rdtscp.leaf, 0)])
            regs[rdtscp.reg.value] &= ~rdtscp.mask
            table[(rdtscp.leaf, 0)] = (regs[0], regs[1], regs[2], regs[3])
        return table

    def _map_memory(self) -> None:
        regions = sorted(self.memory.regions, key=lambda r: r.gpa)
        for r in regions:
            perms = unicorn.UC_PROT_READ | unicorn.UC_PROT_EXEC
            if not r.readonly:
                perms |= unicorn.UC_PROT_WRITE
            self.uc.mem_map_ptr(r.gpa, r.size, perms, r.host_address)
        # Everything else below layout.PHYS_ADDR_LIMIT is the bus: devices or all-ones.
        pos = 0
        for region in [*regions, None]:
            start = region.gpa if region is not None else layout.PHYS_ADDR_LIMIT
            if start > pos:
                self.uc.mmio_map(pos, start - pos, self._mmio_read, pos, self._mmio_write, pos)
            if region is not None:
                pos = region.end

    def _add_hooks(self) -> None:
        uc = self.uc
        uc.hook_add(unicorn.UC_HOOK_INSN, self._on_in, None, 1, 0, X.UC_X86_INS_IN)
        uc.hook_add(unicorn.UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT)
        uc.hook_add(unicorn.UC_HOOK_INSN, self._on_cpuid, None, 1, 0, X.UC_X86_INS_CPUID)
        uc.hook_add(unicorn.UC_HOOK_INSN, self._on_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL)
        uc.hook_add(unicorn.UC_HOOK_INSN, self._on_sysenter, None, 1, 0, X.UC_X86_INS_SYSENTER)
        uc.hook_add(unicorn.UC_HOOK_INTR, self._on_intr)
        uc.hook_add(unicorn.UC_HOOK_INSN_INVALID, self._on_invalid)

    # -- hooks ------------------------------------------------------------------------------------
    # Unicorn replays an MMIO access that a uc_emu_stop() inside its callback interrupted (a
    # device would see an ICR or EOI write twice): stops requested meanwhile go through the kick.
    def _mmio_read(self, uc: unicorn.Uc, offset: int, size: int, base: int) -> int:
        self._in_mmio = True
        try:
            return self.bus.mmio_read(base + offset, size)
        finally:
            self._in_mmio = False

    def _mmio_write(self, uc: unicorn.Uc, offset: int, size: int, value: int, base: int) -> None:
        self._in_mmio = True
        try:
            self.bus.mmio_write(base + offset, size, value)
        finally:
            self._in_mmio = False

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
        if intno == MSR_EXIT:
            self._on_msr(raw)
            return
        if raw.i32(R.OFF_EXCEPTION_IS_INT):
            # PC already points past `int n` / int3 / into.
            opcode = self._peek_byte_before(raw)
            kind = EventKind.SOFTWARE_EXC if opcode in (0xCC, 0xCE) else EventKind.SOFTWARE_INT
            ev = Event(intno, kind)
        else:
            err = raw.u32(R.OFF_ERROR_CODE) if intno in x86.ERROR_CODE_VECTORS else None
            ev = Event(intno, EventKind.EXCEPTION, err, raw.cr(2) if intno == 14 else None)
        self._deliver(raw, ev)

    def _on_msr(self, raw: R.RawContext) -> None:
        """An intercepted rdmsr/wrmsr (msr_intercept.py): RIP is at the instruction."""
        rip = raw.u64(R.OFF_EIP)
        opcode = self._code_at(raw, 2)
        if opcode not in (RDMSR, WRMSR):  # EIP lost (see _deliver's exception_is_int): say so
            self._stop_with(Exit(ExitKind.ERROR, f"MSR exit at {rip:#x}, which holds {opcode.hex()}, not rdmsr/wrmsr"))
            return
        if not self._msrs.access(self.uc, opcode == WRMSR, self._v.handlers):
            self._deliver(R.RawContext.save(self.uc), Event(13, EventKind.EXCEPTION, 0))
            return
        raw = R.RawContext.save(self.uc)  # the handler wrote RAX/RDX
        raw.set_u64(R.OFF_EIP, rip + 2)
        raw.set_u64(R.OFF_EXCEPTION_NEXT_EIP, rip + 2)  # where Unicorn resumes after this hook
        raw.restore(self.uc)

    def _on_cpuid(self, uc: unicorn.Uc, _ud: object) -> bool:
        leaf = uc.reg_read(X.UC_X86_REG_EAX)
        sub = uc.reg_read(X.UC_X86_REG_ECX)
        # Nothing in the table is dynamic: OSXSAVE would mirror CR4, but the model has no XSAVE.
        a, b, c, d = cpuid.unicorn_lookup(self._v.cpuid, leaf, sub)
        uc.reg_write(X.UC_X86_REG_RAX, a)
        uc.reg_write(X.UC_X86_REG_RBX, b)
        uc.reg_write(X.UC_X86_REG_RCX, c)
        uc.reg_write(X.UC_X86_REG_RDX, d)
        return True  # skip Unicorn's own CPUID

    def _on_syscall(self, uc: unicorn.Uc, _ud: object) -> None:
        """SYSCALL (SDM vol. 2B): Unicorn only calls this hook, the semantics are emu's."""
        raw = R.RawContext.save(uc)
        rip = raw.u64(R.OFF_EIP)  # the syscall instruction itself
        efer = raw.u64(R.OFF_EFER)
        cs = raw.segment("cs")
        if not (efer & x86.Efer.SCE and efer & x86.Efer.LMA and cs.l):
            # Intel CPUs (the model's vendor) raise #UD outside 64-bit mode too.
            self._deliver(raw, Event(6, EventKind.EXCEPTION), rip_bias=_SYSCALL_LEN)
            return
        star = uc.reg_read(X.UC_X86_REG_MSR, x86.Msr.STAR)
        lstar = uc.reg_read(X.UC_X86_REG_MSR, x86.Msr.LSTAR)
        fmask = uc.reg_read(X.UC_X86_REG_MSR, x86.Msr.SFMASK)
        rflags = uc.reg_read(X.UC_X86_REG_RFLAGS)
        sel = (star >> 32) & 0xFFFC
        raw.set_u64(R.OFF_REGS + 8 * 1, rip + _SYSCALL_LEN)  # RCX
        raw.set_u64(R.OFF_REGS + 8 * 11, rflags & ~x86.FLAG_RF)  # R11
        raw.set_segment("cs", Segment.flat_code(sel, long=True))
        raw.set_segment("ss", Segment.flat_data(sel + 8))
        new_flags = rflags & ~fmask & ~x86.FLAG_RF | 2
        self._finish_fast_call(raw, lstar, new_flags)

    def _on_sysenter(self, uc: unicorn.Uc, _ud: object) -> None:
        """SYSENTER (SDM vol. 2B), for 32-bit code; Unicorn treats it like SYSCALL (hook only)."""
        raw = R.RawContext.save(uc)
        cs_sel = uc.reg_read(X.UC_X86_REG_MSR, x86.Msr.SYSENTER_CS) & 0xFFFC
        if not raw.cr(0) & x86.Cr0.PE or cs_sel == 0:
            self._deliver(raw, Event(13, EventKind.EXCEPTION, 0), rip_bias=_SYSCALL_LEN)
            return
        esp = uc.reg_read(X.UC_X86_REG_MSR, x86.Msr.SYSENTER_ESP)
        eip = uc.reg_read(X.UC_X86_REG_MSR, x86.Msr.SYSENTER_EIP)
        long_mode = bool(raw.u64(R.OFF_EFER) & x86.Efer.LMA)
        if not long_mode:
            esp, eip = esp & 0xFFFF_FFFF, eip & 0xFFFF_FFFF
        raw.set_segment("cs", Segment.flat_code(cs_sel, long=long_mode))
        raw.set_segment("ss", Segment.flat_data(cs_sel + 8))
        raw.set_u64(R.OFF_REGS + 8 * 4, esp)
        rflags = uc.reg_read(X.UC_X86_REG_RFLAGS)
        self._finish_fast_call(raw, eip, rflags & ~(x86.FLAG_IF | x86.FLAG_RF | x86.FLAG_VM) | 2)

    def _finish_fast_call(self, raw: R.RawContext, target: int, rflags: int) -> None:
        raw.set_u64(R.OFF_EIP, target - _SYSCALL_LEN)  # set_u64 wraps
        raw.commit(self.uc, rflags)

    def _on_invalid(self, uc: unicorn.Uc, _ud: object) -> bool:
        self._deliver(R.RawContext.save(uc), Event(6, EventKind.EXCEPTION))
        return True

    def _code_at(self, raw: R.RawContext, size: int, offset: int = 0) -> bytes:
        """`size` code bytes at RIP + `offset` through the guest's paging (empty when unmapped)."""
        linear = self._linear_pc(raw) + offset
        regs = paging.PagingRegs(raw.cr(0), raw.cr(3), raw.cr(4), raw.u64(R.OFF_EFER))
        try:
            return bytes(self.memory.read_u8(paging.translate(self.memory, regs, linear + i)) for i in range(size))
        except (paging.PageFault, GuestMemoryError):
            return b""

    def _peek_byte_before(self, raw: R.RawContext) -> int:
        """The code byte just before RIP (through the guest's paging), or -1."""
        code = self._code_at(raw, 1, offset=-1)
        return code[0] if code else -1

    def _linear_pc(self, raw: R.RawContext) -> int:
        rip, cs = raw.u64(R.OFF_EIP), raw.segment("cs")
        if raw.u64(R.OFF_EFER) & x86.Efer.LMA and cs.l:
            return rip
        return (cs.base + rip) & 0xFFFF_FFFF

    def _deliver(self, raw: R.RawContext, ev: Event, rip_bias: int = 0) -> None:
        """Deliver `ev` in Python. `rip_bias`: what Unicorn adds to RIP after the hook returns
        (SYSCALL/SYSENTER hooks). A triple fault or an unsupported path ends the run."""
        raw.set_i32(R.OFF_OLD_EXCEPTION, -1)  # Unicorn bug #1883: a stale value fakes a #DF later
        # Unicorn moves EIP to exception_next_eip before calling the interrupt hook whenever
        # exception_is_int is set, and an MSR exit (msr_intercept.py) never resets it: after an
        # `int n`, the next MSR exit would arrive with EIP clobbered. Delivered: clear it.
        raw.set_i32(R.OFF_EXCEPTION_IS_INT, 0)
        if self.on_event is not None:
            self.on_event(ev)  # the debugger's catchpoints (emu/debugger/unicorn_engine.py)
        rflags = self.uc.reg_read(X.UC_X86_REG_RFLAGS)
        state = self._state_from_raw(raw, rflags)
        try:
            deliver_with_escalation(state, self.memory, ev)
        except TripleFault as tf:
            raw.restore(self.uc)
            # `raw` is still the state at the fault: re-read it rather than copy on every delivery.
            before = self._state_from_raw(raw, rflags)
            # `state` is where the chain left the CPU (CR2 of its last #PF); for fault reports.
            detail = {"chain": tf.chain, "state": before, "final_state": state}
            self._stop_with(Exit(ExitKind.SHUTDOWN, str(tf), detail))
            return
        except Unsupported as u:
            raw.restore(self.uc)
            before = self._state_from_raw(raw, rflags)
            self._stop_with(Exit(ExitKind.ERROR, f"cannot deliver {ev.describe()}: {u}", {"state": before}))
            return
        # Delivery changes CS, SS, RSP, RIP, RFLAGS (and CR2): write them back.
        raw.set_segment("cs", state.cs)
        raw.set_segment("ss", state.ss)
        raw.set_u64(R.OFF_REGS + 8 * 4, state.rsp)
        # RIP goes in through the raw state only: after an INTR hook Unicorn resumes at
        # exception_next_eip, and a reg_write(RIP) inside a hook makes Unicorn restart the
        # handler's first block after a later stop (its instructions would run twice).
        raw.set_u64(R.OFF_EIP, state.rip - rip_bias)
        raw.set_u64(R.OFF_EXCEPTION_NEXT_EIP, state.rip)
        raw.set_cr(2, state.cr2)
        raw.commit(self.uc, state.rflags)

    def _stop_with(self, exit_: Exit) -> None:
        self._pending = exit_
        self.uc.emu_stop()

    def debug_stop(self, exit_: Exit) -> None:
        """From a hook the debugger added: end the run with `exit_` (a code hook's stop lands
        before the instruction it was called for)."""
        self._stop_with(exit_)

    # -- running ----------------------------------------------------------------------------------
    def run(self) -> Exit:
        self._vcpu_thread = threading.get_ident()
        if self._scheduler is not None:
            return self._scheduler.run()
        return self.run_current()

    def run_current(self) -> Exit:
        """Run the vCPU in the engine (`current_cpu()`) until something must be looked at."""
        self._vcpu_thread = threading.get_ident()
        self._discard_io = False
        v = self._v
        if v.init_pending:
            v.init_pending = v.nmi_pending = False
            self.set_state(CpuState(), v.index)  # the bootstrap processor: the reset vector
            if v.index != 0:  # an application processor: wait for STARTUP (SDM vol. 3A 8.4.1)
                v.wait_sipi, v.sipi_vector = True, None
        if v.wait_sipi:
            if v.sipi_vector is None:
                return Exit(ExitKind.HALT, "waiting for STARTUP")
            self._start_up(v.sipi_vector)
        v.halted = False
        if v.nmi_pending:
            v.nmi_pending = False
            self._deliver(R.RawContext.save(self.uc), Event(2, EventKind.NMI))
        if v.intr_pending and v.acknowledge is not None:
            self._inject_external()
        if self._pending is not None:
            exit_, self._pending = self._pending, None
            return exit_
        self._in_emu = True
        self._stepping = False
        try:
            if self._stop_requested:
                self._stop_requested = False
                self._kick.cancel()
                return Exit(ExitKind.INTERRUPTED)
            kicks = self._kick.taken
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
        # A `cli; hlt` that a stop request raced (the interrupt-window poll asks every 1 ms while
        # an interrupt waits for IF=1) is still the end of the guest: RIP is past the hlt, so
        # reporting an interruption would let the guest run on past it.
        if self._stop_requested and self._kick.taken == kicks and self._halted_with_interrupts_off():
            self._stop_requested = False
            self._v.halted, self._v.if_at_halt = True, False
            return Exit(ExitKind.HALT, detail={"for_good": True})
        # A kick armed just after the previous run ended can stop this one with no request
        # outstanding: that is an interruption too, not an engine quirk.
        if self._stop_requested or self._kick.taken != kicks:
            self._stop_requested = False
            self._kick.cancel()
            return Exit(ExitKind.INTERRUPTED)
        return self._classify_return()

    def _inject_external(self) -> None:
        """Take the pending external interrupt if the guest accepts one now; otherwise make the
        run stop again soon to retry (the window poll)."""
        rflags = self.uc.reg_read(X.UC_X86_REG_RFLAGS)
        raw = R.RawContext.save(self.uc)
        if not rflags & x86.FLAG_IF or raw.u32(R.OFF_HFLAGS) & R.HF_INHIBIT_IRQ:
            self._arm_window_poll()
            return
        self._window.clear()
        if self._virtual is not None:
            self._virtual.set_window_poll(None)
        acknowledge = self._v.acknowledge
        assert acknowledge is not None
        vector = acknowledge()  # the INTA cycle: the controller moves the line to in-service
        self._deliver(raw, Event(vector, EventKind.EXTERNAL))

    def _arm_window_poll(self) -> None:
        if self._virtual is not None:
            self._virtual.set_window_poll(self._virtual.now_ns() + VIRTUAL_WINDOW_POLL_NS)
            return
        self._window.set()
        if self._window_thread is None:
            self._window_thread = threading.Thread(target=self._window_poll, name="unicorn-intr-window", daemon=True)
            self._window_thread.start()

    def _window_poll(self) -> None:
        while not self._closed:
            if not self._window.wait(0.5):
                continue
            time.sleep(INTR_WINDOW_POLL_S)
            if self._window.is_set() and self._in_emu and not self._closed:
                self.request_stop()

    def _halted_with_interrupts_off(self) -> bool:
        """emu_start returned on a `hlt` executed with IF=0 (RIP is just past it)."""
        if self.uc.reg_read(X.UC_X86_REG_RFLAGS) & x86.FLAG_IF:
            return False
        return self._peek_byte_before(R.RawContext.save(self.uc)) == 0xF4

    def _classify_return(self) -> Exit:
        """emu_start returned on its own: hlt (RIP is just past it) or an engine quirk."""
        raw = R.RawContext.save(self.uc)
        if self._peek_byte_before(raw) == 0xF4:
            self._v.halted = True
            self._v.if_at_halt = bool(self.uc.reg_read(X.UC_X86_REG_RFLAGS) & x86.FLAG_IF)
            return Exit(ExitKind.HALT)
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
        """From any thread, never blocks. From one of our hooks the stop lands at the next
        memory access or block start (the instruction that made the request has finished);
        from elsewhere, at the start of the next translation block (see exact_stop.py)."""
        self._stop_requested = True
        if threading.get_ident() == self._vcpu_thread and self._in_emu and not self._in_mmio:
            self.uc.emu_stop()
        else:
            self._kick.request()

    def request_final_stop(self) -> None:
        self._discard_io = True
        self.request_stop()

    # -- vCPUs ------------------------------------------------------------------------------------
    def vcpu(self, index: int) -> Vcpu:
        return self._vcpus[index]

    def switch_to(self, index: int) -> None:
        """Put vCPU `index`'s state in the engine (between runs). Its translations stay valid (one
        cache for all vCPUs, found by physical page and CPU mode); the TLB and the jump cache,
        which are per address space, go."""
        v = self._vcpus[index]
        if v is self._v:
            return
        self._v.context = self.uc.context_save()
        assert v.context is not None
        self.uc.context_restore(v.context)
        v.context = None
        self._v = v
        self.uc.ctl(unicorn.UC_CTL_TLB_FLUSH, unicorn.UC_CTL_IO_WRITE)
        self.clear_window()  # the poll was for the previous vCPU's interrupt; run_current re-arms it

    def event_for(self, v: Vcpu) -> None:
        """An interrupt, NMI, INIT or STARTUP arrived for `v` (any thread, maybe under a device's
        lock: never blocks). The running vCPU's run stops so run() can deliver it; another
        vCPU's event makes the scheduler switch soon."""
        if v is not self._v and self._scheduler is not None:
            self._scheduler.wake(v.index)
        elif self._in_emu or threading.get_ident() != self._vcpu_thread:
            self.request_stop()

    def start_up(self, v: Vcpu, vector: int) -> None:
        """STARTUP starts an application processor waiting for it at vector:0000 in real mode;
        otherwise it is ignored (a running CPU, the bootstrap processor: SDM vol. 3A 8.4.4)."""
        if not v.wait_sipi or v.sipi_vector is not None:
            log.debug("STARTUP %#x to CPU %d, which does not wait for one: ignored", vector, v.index)
            return
        v.sipi_vector = vector
        self.event_for(v)

    def _start_up(self, vector: int) -> None:
        """Leave wait-for-SIPI: CS = vector << 8 (base vector << 12), IP = 0, the rest as INIT left it."""
        state = self.get_state(self._v.index)
        state.cs = Segment.real(vector << 8, code=True)
        state.rip = 0
        self.set_state(state, self._v.index)
        self._v.wait_sipi, self._v.sipi_vector = False, None

    def accepts_interrupt(self, v: Vcpu) -> bool:
        """`v` has an interrupt pending and accepts it (IF=1)."""
        if not v.intr_pending:
            return False
        if v is self._v:
            return bool(self.uc.reg_read(X.UC_X86_REG_RFLAGS) & x86.FLAG_IF)
        return not v.halted or v.if_at_halt

    def clear_window(self) -> None:
        self._window.clear()
        if self._virtual is not None:
            self._virtual.set_window_poll(None)

    def step(self, cpu: int = 0) -> Exit:
        self.switch_to(cpu)
        rip = self.uc.reg_read(X.UC_X86_REG_RIP)
        # `count` works through a code hook, which Unicorn only puts in blocks translated after
        # the hook was added: flush when stepping starts (a normal run removes the hook, and
        # Unicorn flushes again then).
        if not self._stepping:
            R.flush_translations(self.uc)
            self._stepping = True
        try:
            self.uc.emu_start(rip, _UNTIL, count=1)
        except unicorn.UcError as e:
            return self._engine_error(e)
        if self._pending is not None:
            exit_, self._pending = self._pending, None
            return exit_
        return Exit(ExitKind.DEBUG, "step")

    def set_a20(self, enabled: bool) -> None:
        """QEMU's a20_mask: every physical address (code, data, page-table reads) is ANDed with
        it. Called from I/O hooks or between runs; cached translations must go with it."""
        raw = R.RawContext.save(self.uc)
        mask = -1 if enabled else ~(1 << 20)
        for v in self._vcpus:  # one bus for all: the vCPUs switched out get it in their contexts
            if v.context is not None:
                R.RawContext.of(v.context).set_i32(R.OFF_A20_MASK, mask)
        if raw.i32(R.OFF_A20_MASK) != mask:
            raw.set_i32(R.OFF_A20_MASK, mask)
            raw.restore(self.uc)
            self.uc.ctl(unicorn.UC_CTL_TLB_FLUSH, unicorn.UC_CTL_IO_WRITE)

    def invalidate_code(self, paddr: int, size: int) -> None:
        # Unicorn invalidates by virtual address. With paging off that is the physical address
        # (BIOS disk reads: cheap, per range); with paging on the page may be mapped anywhere,
        # so everything goes (about 6 ms; host writes under paging are rare).
        if size <= 0:
            return
        if self.uc.reg_read(X.UC_X86_REG_CR0) & x86.Cr0.PG:
            R.flush_translations(self.uc)
        else:
            self.uc.ctl_remove_cache(paddr, paddr + size)

    def cpu_status(self, cpu: int) -> str:
        return self._vcpus[cpu].status()

    def is_halted_for_good(self) -> bool:
        # hlt with IF=0 (or waiting for STARTUP): only NMI, INIT or reset can wake it, and no
        # device here raises NMI.
        if self.cpus == 1:
            v = self._v
            return not (v.init_pending or v.nmi_pending) and not self.uc.reg_read(X.UC_X86_REG_RFLAGS) & x86.FLAG_IF
        return all(v.halted_for_good() for v in self._vcpus)

    def reset_platform(self) -> None:
        """Every application processor back to power-on, waiting for STARTUP; vCPU 0 in the engine."""
        if self.cpus == 1:
            self._v.power_on()
            return
        for v in reversed(self._vcpus):
            self.switch_to(v.index)
            v.power_on()
            self.set_state(CpuState(), v.index)
        assert self._scheduler is not None
        self._scheduler.reset()

    # -- state ------------------------------------------------------------------------------------
    def _state_from_raw(self, raw: R.RawContext, rflags: int) -> CpuState:
        s = CpuState()
        for i, name in enumerate(R.RAW_GPRS):
            setattr(s, name, raw.u64(R.OFF_REGS + 8 * i))
        s.rip = raw.u64(R.OFF_EIP)
        s.rflags = rflags
        s.cr0, s.cr2, s.cr3, s.cr4 = raw.cr(0), raw.cr(2), raw.cr(3), raw.cr(4)
        s.efer = raw.u64(R.OFF_EFER)
        for name in ALL_SEGMENT_NAMES:
            setattr(s, name, raw.segment(name))
        s.gdt, s.idt = raw.table("gdt"), raw.table("idt")
        return s

    def sample_state(self, cpu: int = 0) -> CpuState:
        if cpu != self._v.index:
            return self.get_state(cpu)
        return self._state_from_raw(R.RawContext.save(self.uc), self.uc.reg_read(X.UC_X86_REG_RFLAGS))

    def get_state(self, cpu: int = 0) -> CpuState:
        if cpu != self._v.index:
            return self._with_vcpu(cpu, lambda: self.get_state(cpu))
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

    def set_state(self, state: CpuState, cpu: int = 0) -> None:
        if cpu != self._v.index:
            self._with_vcpu(cpu, lambda: self.set_state(state, cpu))
            return
        uc = self.uc
        raw = R.RawContext.save(uc)
        for i, name in enumerate(R.RAW_GPRS):
            raw.set_u64(R.OFF_REGS + 8 * i, getattr(state, name))
        raw.set_u64(R.OFF_EIP, state.rip)
        for i, v in enumerate((state.cr0, 0, state.cr2, state.cr3, state.cr4)):
            raw.set_cr(i, v)
        raw.set_u64(R.OFF_EFER, state.efer)
        for name in ALL_SEGMENT_NAMES:
            raw.set_segment(name, getattr(state, name))
        raw.set_table("gdt", state.gdt)
        raw.set_table("idt", state.idt)
        for i, v in enumerate((state.dr0, state.dr1, state.dr2, state.dr3)):
            raw.set_u64(R.OFF_DR + 8 * i, v)
        raw.set_u64(R.OFF_DR + 48, state.dr6)
        raw.set_u64(R.OFF_DR + 56, state.dr7)
        raw.set_i32(R.OFF_OLD_EXCEPTION, -1)
        self._msrs.arm(raw)
        raw.commit(uc, state.rflags)
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

    def _with_vcpu(self, cpu: int, action: Callable[[], T]) -> T:
        """`action` with vCPU `cpu` in the engine (between runs), then the running one back."""
        current = self._v.index
        self.switch_to(cpu)
        try:
            return action()
        finally:
            self.switch_to(current)

    def close(self) -> None:
        if self._scheduler is not None:
            self._scheduler.close()
        # Unicorn frees the engine when the object is collected; only the window-poll thread ends.
        self._closed = True
        self._window.set()


def _fp_to_bytes(v: tuple[int, int]) -> bytes:
    mantissa, exponent = v
    return mantissa.to_bytes(8, "little") + (exponent & 0xFFFF).to_bytes(2, "little")


def _fp_from_bytes(b: bytes) -> tuple[int, int]:
    return int.from_bytes(b[:8], "little"), int.from_bytes(b[8:10], "little")
