"""KvmBackend: vCPUs under Linux KVM, with KVM's in-kernel PIC, IOAPIC, local APICs and PIT.

Threads. run() may be called from any one thread at a time (the "vCPU thread"); it runs vCPU 0,
the bootstrap processor (BSP). Every other method except request_stop(), request_final_stop()
and current_cpu() must be called while run() is not in progress. Two things interrupt a KVM_RUN
in progress: request_stop() and a kicker thread that pokes the vCPUs every KICK_INTERVAL seconds
so that run() can notice a guest sitting in `cli; hlt` (with the in-kernel irqchip HLT never
reaches userspace, so nothing else would ever end that run()). A kick is a SIGUSR1 to the vCPU's
thread (kicks.py).

Several vCPUs (`cpus` > 1). Each application processor (AP) gets a host thread ("vcpu1", ...,
ap_threads.py), started by the first run(), that loops in KVM_RUN and hands its port and MMIO exits to the Bus
under `bus.lock` (the BSP then takes it too). The rest happens in the kernel: an AP waits for
INIT-SIPI-SIPI inside KVM_RUN, and IPIs go from LAPIC to LAPIC. An AP exit the machine must see
(a triple fault, an error, a Bus callback that raised) is queued, the BSP's KVM_RUN is
interrupted, and run() returns it with detail["cpu"] naming the AP (BSP exits carry 0).

Pausing. A vCPU ioctl waits for the vCPU's mutex, which KVM_RUN holds (an AP waiting for SIPI
never leaves KVM_RUN by itself), so whatever needs an AP (get_state, set_state, step,
cpu_status, reset_platform, the final halt check) first pauses them all: a flag, then
immediate_exit and a kick for each AP thread, which finishes the instruction behind its last I/O
exit (KVM completes it only in the next KVM_RUN) and parks; the caller waits until every AP has.
Pausing is lazy, so that run()'s frequent returns (timer kicks, stop requests) cost nothing:
run() returning INTERRUPTED or HALT leaves the APs running. They stop when run() returns any
other exit (a fault or breakpoint stops every vCPU), at a final stop (the run ends or reboots:
nothing they do matters any more), and when run() has not been called again for KICK_INTERVAL
(the machine or the debugger is holding the guest). The next run() resumes them. An AP still
waiting for bus.lock when a pause comes parks with its I/O exit undelivered (the pauser may hold
the lock): it is delivered when the AP resumes, or dropped (reads all-ones) if the AP is given a
new state first. step(cpu) runs one instruction of that vCPU in the caller's thread while every
other vCPU stands still; set_guest_debug (the debugger's breakpoints and steps) is the BSP's.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
import weakref
from typing import Any

from emu import layout
from emu.backends.base import Backend, BackendUnavailable, Capabilities, Exit, ExitKind, GuestDebug
from emu.backends.kvm import api
from emu.backends.kvm import convert as conv
from emu.backends.kvm.ap_threads import Aps, ApThread
from emu.backends.kvm.api import KvmError, ffi, ioctl, libc
from emu.backends.kvm.eventfds import KvmEventfds
from emu.backends.kvm.irqchip import KvmIrqChip
from emu.backends.kvm.kicks import KICK_SIGNAL, Kicker, KickMode, choose_kick_mode, mask_kick_signal, send_kick
from emu.backends.kvm.vcpu_run import WAIT_FOR_SIPI, ZERO, KvmVcpu, dispatch_io, dispatch_mmio
from emu.bus import Bus
from emu.cpu import x86
from emu.cpu.cpuid import CpuidEntry, kvm_vcpu_cpuid, shape_kvm
from emu.cpu.state import CpuState, FpuState
from emu.errors import EmuError
from emu.memory import GuestMemory
from emu.platform import EventFds, IrqChip

log = logging.getLogger("emu.kvm")

KICK_INTERVAL = 0.2  # seconds between kicks while run() is in progress
PAUSE_WARN_AFTER = 5.0  # seconds: an AP that has not parked by then is reported (and kicked again)

# Capabilities emu cannot do without, and what each is for (used in the error message).
REQUIRED_CAPS: dict[int, tuple[str, str]] = {
    api.KVM_CAP_USER_MEMORY: ("KVM_CAP_USER_MEMORY", "guest RAM"),
    api.KVM_CAP_SET_TSS_ADDR: ("KVM_CAP_SET_TSS_ADDR", "real-mode guests"),
    api.KVM_CAP_SET_IDENTITY_MAP_ADDR: ("KVM_CAP_SET_IDENTITY_MAP_ADDR", "real-mode guests"),
    api.KVM_CAP_IRQCHIP: ("KVM_CAP_IRQCHIP", "the in-kernel interrupt controllers"),
    api.KVM_CAP_PIT2: ("KVM_CAP_PIT2", "the in-kernel timer"),
    api.KVM_CAP_EXT_CPUID: ("KVM_CAP_EXT_CPUID", "CPUID setup"),
    api.KVM_CAP_MP_STATE: ("KVM_CAP_MP_STATE", "halt detection"),
    api.KVM_CAP_IMMEDIATE_EXIT: ("KVM_CAP_IMMEDIATE_EXIT", "stopping the vCPU"),
    api.KVM_CAP_DEBUGREGS: ("KVM_CAP_DEBUGREGS", "debug registers"),
}

PVM_NO_DATA_BREAKPOINTS = "this host's KVM (PVM) never reports data breakpoints (measured)"


def host_is_pvm() -> bool:
    """The host's KVM is PVM (kvm_pvm, software-assisted): its instruction emulator runs guest
    ring 0 and ignores DR7 data breakpoints."""
    return os.path.exists("/sys/module/kvm_pvm")


class _Handles:
    """Host resources of one backend, released exactly once (by close() or at collection)."""

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.vcpus: list[KvmVcpu] = []
        self.aps: Aps | None = None
        self.kicker: Kicker | None = None

    def release(self) -> None:
        stopped = self.aps is None or self.aps.shutdown()
        if self.kicker is not None:
            self.kicker.close()
            self.kicker = None
        if not stopped:
            return  # an AP thread may still touch its kvm_run page: leave everything mapped and open
        for v in self.vcpus:
            v.release()
        self.vcpus.clear()
        # vCPUs first, then VM, then /dev/kvm: the reverse of creation.
        for fd in reversed(self.fds):
            os.close(fd)
        self.fds.clear()


# Local APIC registers (SDM vol. 3A, 11.5.1) and the MSRs set at creation.
LAPIC_LVT_LINT0 = 0x350
LAPIC_LVT_LINT1 = 0x360
LVT_DELIVERY_MASK = 0x700
LVT_DELIVERY_EXTINT = 0x700
LVT_DELIVERY_NMI = 0x400
BOOT_MSRS = {
    x86.Msr.MISC_ENABLE: 1,  # fast-string operations enabled
    x86.Msr.MTRR_DEF_TYPE: (1 << 11) | 6,  # MTRRs enabled, default type write-back
}


class KvmBackend(Backend):
    name = "kvm"
    use_eventfds = True  # False: virtio stays on the synchronous exit path (benchmarks compare)

    def __init__(self, memory: GuestMemory, bus: Bus, *, cpus: int = 1, device: str = "/dev/kvm") -> None:
        if cpus < 1:
            raise ValueError(f"a machine has at least one vCPU, not {cpus}")
        super().__init__(memory, bus, cpus)
        self.device = device
        self._h = _Handles()
        self._finalizer = weakref.finalize(self, self._h.release)
        self._closed = False
        self._lock = threading.RLock()  # guards the stop/kick handshake and the AP pause
        self._cond = threading.Condition(self._lock)  # AP threads park and pausers wait on it
        self._stop_requested = False
        self._kicked = False
        self._vcpu_tid: int | None = None  # thread inside run() or step(), for pthread_kill
        # .masked: SIGUSR1 blocked in this thread (masked mode); .cpu: the vCPU this thread runs.
        self._thread_local = threading.local()
        self._readonly: list[tuple[int, int]] = []  # ROM ranges: guest writes there are dropped
        self._bad_msrs: set[int] = set()
        self._guest_debug_flags = 0
        self._last_cpu = 0  # the vCPU of the last exit run() or step() returned
        self._ap_debug: tuple[int, tuple[int, ...]] = (0, ())  # guest-debug control and DRs on the APs
        self._vcpus: list[KvmVcpu] = []
        self._aps: Aps | None = None
        self._taking_ap_exits = False  # run() (not step()) is in progress: AP exits end it
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        self._bsp = self._vcpus[0]
        self._active = self._bsp  # the vCPU run() or step() runs: request_stop() ends its KVM_RUN
        self._kick_mode = choose_kick_mode()
        if cpus > 1:
            self._aps = self._h.aps = Aps(
                self._vcpus[1:], bus, self._readonly, self._cond, self._kick_mode, self._thread_local,
                self._wake_for_ap,
            )  # fmt: skip

    # -- what this backend can do -----------------------------------------------------------------
    @property
    def capabilities(self) -> Capabilities:
        pvm = host_is_pvm()
        return Capabilities(
            a20_mask=False, in_kernel_pit=True, data_breakpoints=not pvm,
            data_breakpoints_note=PVM_NO_DATA_BREAKPOINTS if pvm else None,
        )  # fmt: skip

    def kernel_irqchip(self) -> IrqChip:
        return self._irqchip

    def event_fds(self) -> EventFds | None:
        return self._eventfds

    def guest_debug(self) -> GuestDebug:
        return self

    def current_cpu(self) -> int:
        """In a vCPU's thread, that vCPU; elsewhere the vCPU whose exit run() or step() returned
        last (the debugger shows the vCPU that stopped)."""
        return int(getattr(self._thread_local, "cpu", self._last_cpu))

    # -- set-up ---------------------------------------------------------------------------------
    def _setup(self) -> None:
        self._kvm_fd = self._open_device()
        self._check_api()
        try:
            self._create_vm()
            self._create_vcpus()
            self._setup_cpuid()
            self._setup_lapic()
            self._setup_msrs()
            self._power_on = self._save_platform()
        except KvmError as e:
            raise BackendUnavailable(f"KVM could not set up the virtual machine ({e}): use --backend unicorn") from e

    def _open_device(self) -> int:
        dev = self.device
        try:
            fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BackendUnavailable(
                f"{dev} does not exist: enable virtualization and load the kvm module, or use --backend unicorn"
            ) from None
        except PermissionError:
            raise BackendUnavailable(
                f"{dev} is not accessible (permission denied): add your user to the kvm group or use --backend unicorn"
            ) from None
        except OSError as e:
            raise BackendUnavailable(f"{dev} cannot be opened ({e.strerror}): use --backend unicorn") from None
        self._h.fds.append(fd)
        return fd

    def _check_api(self) -> None:
        try:
            version = ioctl(self._kvm_fd, api.KVM_GET_API_VERSION, name="KVM_GET_API_VERSION")
        except KvmError as e:
            raise BackendUnavailable(
                f"{self.device} is not a KVM device ({e.strerror}): use --backend unicorn"
            ) from None
        if version != api.KVM_API_VERSION:
            raise BackendUnavailable(
                f"{self.device} speaks KVM API version {version}, emu needs {api.KVM_API_VERSION}: "
                "use --backend unicorn"
            )
        for cap, (cap_name, purpose) in REQUIRED_CAPS.items():
            if self._check_extension(cap) <= 0:
                raise BackendUnavailable(
                    f"KVM on this host lacks {cap_name}, which emu needs for {purpose}: "
                    "use a newer host kernel or --backend unicorn"
                )

    def _check_extension(self, cap: int, fd: int | None = None) -> int:
        ret: int = libc.ioctl(self._kvm_fd if fd is None else fd, api.KVM_CHECK_EXTENSION, ffi.cast("long", cap))
        return ret

    def _create_vm(self) -> None:
        self._vm_fd = ioctl(self._kvm_fd, api.KVM_CREATE_VM, 0, name="KVM_CREATE_VM")
        self._h.fds.append(self._vm_fd)
        vm = self._vm_fd
        ioctl(vm, api.KVM_SET_TSS_ADDR, layout.KVM_TSS_ADDR, name="KVM_SET_TSS_ADDR")
        ident = ffi.new("uint64_t *", layout.KVM_IDENTITY_MAP_ADDR)
        ioctl(vm, api.KVM_SET_IDENTITY_MAP_ADDR, ident, name="KVM_SET_IDENTITY_MAP_ADDR")
        self._irqchip = KvmIrqChip(vm)
        pit = ffi.new("struct kvm_pit_config *")  # flags 0: port 0x61 stays with emu's devices
        ioctl(vm, api.KVM_CREATE_PIT2, pit, name="KVM_CREATE_PIT2")
        # virtio notifications and interrupts off the vCPU thread (emu/devices/virtio/device_thread.py);
        # without all three capabilities virtio keeps the synchronous exit path.
        self._eventfds: KvmEventfds | None = None
        caps = (api.KVM_CAP_IOEVENTFD, api.KVM_CAP_IRQFD, api.KVM_CAP_IRQFD_RESAMPLE)
        if self.use_eventfds and all(self._check_extension(c, vm) > 0 for c in caps):
            self._eventfds = KvmEventfds(vm)
        readonly_ok = self._check_extension(api.KVM_CAP_READONLY_MEM, vm) > 0
        for slot, region in enumerate(self.memory.regions):
            flags = 0
            if region.readonly:
                if readonly_ok:
                    flags = api.KVM_MEM_READONLY
                    self._readonly.append((region.gpa, region.end))
                else:
                    log.warning("KVM lacks read-only memory slots: the guest can write to %s", region.name)
            mr = ffi.new(
                "struct kvm_userspace_memory_region *",
                {"slot": slot, "flags": flags, "guest_phys_addr": region.gpa,
                 "memory_size": region.size, "userspace_addr": region.host_address},
            )  # fmt: skip
            ioctl(vm, api.KVM_SET_USER_MEMORY_REGION, mr, name=f"KVM_SET_USER_MEMORY_REGION ({region.name})")
        self._xsave_size = 0
        self._xsave_get = api.KVM_GET_XSAVE
        if self._check_extension(api.KVM_CAP_XSAVE, vm) > 0:
            # KVM_GET_XSAVE2 exists for buffers larger than 4 KiB (dynamic features such as AMX).
            size = self._check_extension(api.KVM_CAP_XSAVE2, vm)
            if size > 0:
                self._xsave_get = api.KVM_GET_XSAVE2
            self._xsave_size = max(size, ffi.sizeof("struct kvm_xsave"))
        debug_caps = self._check_extension(api.KVM_CAP_SET_GUEST_DEBUG2, vm)
        # Without BLOCKIRQ a single step may land in an interrupt handler instead.
        if debug_caps > 0 and debug_caps & api.KVM_GUESTDBG_BLOCKIRQ:
            self._guest_debug_flags = api.KVM_GUESTDBG_BLOCKIRQ

    def _create_vcpus(self) -> None:
        """vCPUs 0..cpus-1 (after the in-kernel irqchip, so each gets a local APIC whose ID is its
        index; KVM makes vCPU 0 the BSP and leaves the others waiting for INIT)."""
        vm = self._vm_fd
        # The KVM API's fallbacks: without MAX_VCPUS the limit is NR_VCPUS, without that 4.
        limit = self._check_extension(api.KVM_CAP_MAX_VCPUS, vm)
        if limit <= 0:
            limit = self._check_extension(api.KVM_CAP_NR_VCPUS, vm)
        if limit <= 0:
            limit = 4
        if self.cpus > limit:
            raise BackendUnavailable(f"KVM on this host runs at most {limit} vCPUs in a machine, not {self.cpus}")
        size = ioctl(self._kvm_fd, api.KVM_GET_VCPU_MMAP_SIZE, 0, name="KVM_GET_VCPU_MMAP_SIZE")
        for i in range(self.cpus):
            fd = ioctl(vm, api.KVM_CREATE_VCPU, i, name=f"KVM_CREATE_VCPU ({i})")
            self._h.fds.append(fd)
            self._h.vcpus.append(KvmVcpu(i, fd, size))
        self._vcpus = self._h.vcpus

    def _setup_cpuid(self) -> None:
        """The emu CPU model (emu/cpu/cpuid.py) cut to what KVM supports on this host."""
        n = api.KVM_MAX_CPUID_ENTRIES
        while True:
            cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": n, "entries": n})
            try:
                ioctl(self._kvm_fd, api.KVM_GET_SUPPORTED_CPUID, cpuid, name="KVM_GET_SUPPORTED_CPUID")
                break
            except KvmError as e:
                if e.errno != errno.E2BIG or n >= 4096:
                    raise
                n *= 2
        fields = ("function", "index", "flags", "eax", "ebx", "ecx", "edx")
        supported = [CpuidEntry(*(int(getattr(cpuid.entries[i], f)) for f in fields)) for i in range(cpuid.nent)]
        shaped = shape_kvm(supported)
        for v in self._vcpus:
            entries = kvm_vcpu_cpuid(shaped, v.index)
            cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": len(entries), "entries": len(entries)})
            for i, entry in enumerate(entries):
                for f in fields:
                    setattr(cpuid.entries[i], f, getattr(entry, f))
            ioctl(v.fd, api.KVM_SET_CPUID2, cpuid, name="KVM_SET_CPUID2")

    def _setup_lapic(self) -> None:
        """On the BSP: LINT0 = ExtINT (the 8259's output reaches the CPU through the LAPIC, as in
        virtual wire mode) and LINT1 = NMI, as a PC BIOS programs them and the MP table says. The
        APs' LINTs stay masked, as KVM creates them and as firmware leaves them."""
        bsp = self._vcpus[0]
        lapic = bsp.get_lapic()
        regs = ffi.buffer(lapic.regs)
        for offset, mode in ((LAPIC_LVT_LINT0, LVT_DELIVERY_EXTINT), (LAPIC_LVT_LINT1, LVT_DELIVERY_NMI)):
            value = int.from_bytes(regs[offset : offset + 4], "little")
            value = (value & ~LVT_DELIVERY_MASK) | mode
            regs[offset : offset + 4] = value.to_bytes(4, "little")
        ioctl(bsp.fd, api.KVM_SET_LAPIC, lapic, name="KVM_SET_LAPIC")

    def _save_platform(self) -> tuple[Any, list[tuple[Any, int]]]:
        """The in-kernel PIT, and each vCPU's LAPIC and IA32_APIC_BASE, as they are now (at
        power-on); the irqchip keeps its own."""
        self._irqchip.save_power_on()
        pit = ffi.new("struct kvm_pit_state2 *")
        ioctl(self._vm_fd, api.KVM_GET_PIT2, pit, name="KVM_GET_PIT2")
        return pit, [(v.get_lapic(), int(v.get_sregs().apic_base)) for v in self._vcpus]

    def reset_platform(self) -> None:
        self._check_open()
        pit, lapics = self._power_on
        ioctl(self._vm_fd, api.KVM_SET_PIT2, pit, name="KVM_SET_PIT2")
        self._pause_aps()
        aps = self._aps
        if aps is not None:
            with self._lock:
                aps.exits.clear()
                aps.final = False
        for v in self._vcpus:
            lapic, apic_base = lapics[v.index]
            # IA32_APIC_BASE first: the guest may have left x2APIC mode on, in which KVM_SET_LAPIC
            # would read the saved xAPIC ID register differently.
            sregs = v.get_sregs()
            sregs.apic_base = apic_base
            ioctl(v.fd, api.KVM_SET_SREGS, sregs, name="KVM_SET_SREGS")
            ioctl(v.fd, api.KVM_SET_LAPIC, lapic, name="KVM_SET_LAPIC")
        if aps is None:
            return
        for t in aps.threads:  # back to power-on: reset registers, waiting for INIT
            self._drop_held_io(t, warn=False)
            self._put_state(t.vcpu, CpuState())
            t.vcpu.set_mp_state(api.KVM_MP_STATE_UNINITIALIZED)

    def _setup_msrs(self) -> None:
        """The MSR values a VMM sets before the first instruction (as Firecracker does): fast
        strings on, MTRRs on with write-back as the default type. Best effort: an MSR this host
        refuses is logged and skipped."""
        for v in self._vcpus:
            for index, value in BOOT_MSRS.items():
                try:
                    self._set_msrs({index: value}, v.fd)
                except (ValueError, KvmError) as e:
                    if v.index == 0:
                        log.info("KVM refused boot MSR %#x: %s", index, e)

    # -- running --------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the KVM backend is closed")

    def _vcpu(self, cpu: int) -> KvmVcpu:
        """vCPU `cpu`, out of KVM_RUN (the APs paused) so that its ioctls can run."""
        self._check_open()
        if not 0 <= cpu < self.cpus:
            raise EmuError(f"there is no CPU {cpu}: the machine has {self.cpus}")
        if cpu:
            self._pause_aps()
        return self._vcpus[cpu]

    def _prepare_thread(self) -> None:
        # (Per thread object, not per ident: a later thread may reuse the ident of an exited one.)
        if self._kick_mode is KickMode.MASKED and not getattr(self._thread_local, "masked", False):
            mask_kick_signal(self._bsp.fd)
            self._thread_local.masked = True

    def run(self) -> Exit:
        if self._aps is None:
            return self._run_vcpu(self._bsp)
        ex = self._run_all(self._aps)
        self._last_cpu = int(ex.detail.get("cpu", 0))
        return ex

    def _run_all(self, aps: Aps) -> Exit:
        """run() with APs: their threads run on while this one runs the BSP."""
        self._check_open()
        with self._lock:
            queued = aps.exits.pop(0) if aps.exits else None
        if queued is not None:  # an AP exit that a previous run() did not return: APs stay paused
            self._pause_aps()
            return _exit_or_raise(queued)
        self._prepare_thread()  # first: AP threads inherit this thread's signal mask
        if not aps.started:
            aps.start()
        self._taking_ap_exits = True
        try:
            ex = self._run_vcpu(self._bsp, resume_aps=True)
        except BaseException:
            self._pause_aps()
            raise
        finally:
            self._taking_ap_exits = False
        ex.detail.setdefault("cpu", 0)
        if ex.kind not in (ExitKind.INTERRUPTED, ExitKind.HALT):
            self._pause_aps()  # a fault or breakpoint stops every vCPU
        return ex

    def _run_vcpu(self, v: KvmVcpu, resume_aps: bool = False) -> Exit:
        """Run vCPU `v` in this thread until an exit the machine must see."""
        self._check_open()
        self._prepare_thread()
        if self._h.kicker is None:
            self._h.kicker = Kicker(self._kick, KICK_INTERVAL, self._idle if self._aps is not None else None)
        kicker = self._h.kicker
        with self._lock:
            self._vcpu_tid = threading.get_ident()
            self._active = v
            if v is not self._bsp and self._stop_requested:
                v.run.immediate_exit = 1
            if resume_aps:  # under the lock, with _vcpu_tid set: _idle() cannot pause them again
                self._resume_aps()
        kicker.set_active(True)
        try:
            return self._run_loop(v)
        finally:
            kicker.set_active(False)
            with self._lock:
                self._vcpu_tid = None
                if v is not self._bsp:
                    v.run.immediate_exit = 0
                    self._active = self._bsp
                    if self._stop_requested:
                        self._bsp.run.immediate_exit = 1

    def _run_loop(self, v: KvmVcpu) -> Exit:
        run, fd, view, bus, readonly = v.run, v.fd, v.run_view, self.bus, self._readonly
        lock = bus.lock if self._aps is not None else None  # other vCPU threads: devices under the big lock
        kvm_run = libc.ioctl
        while True:
            if kvm_run(fd, api.KVM_RUN, ZERO) < 0:
                err = ffi.errno
                if err == errno.EAGAIN:
                    continue
                if err != errno.EINTR:
                    return Exit(ExitKind.ERROR, f"KVM_RUN failed: {os.strerror(err)}", {"errno": err})
                reason = api.KVM_EXIT_INTR
            else:
                reason = run.exit_reason
            try:
                if reason == api.KVM_EXIT_IO:
                    if lock is None:
                        dispatch_io(view, bus)
                    else:
                        with lock:
                            dispatch_io(view, bus)
                    continue
                if reason == api.KVM_EXIT_MMIO:
                    if lock is None:
                        dispatch_mmio(view, bus, readonly)
                    else:
                        with lock:
                            dispatch_mmio(view, bus, readonly)
                    continue
            except BaseException:
                self._finish_io(v)
                raise  # a Bus callback failed: the machine decides what happens next
            if reason == api.KVM_EXIT_INTR:
                ex = self._on_interrupted(v)
                if ex is not None:
                    return ex
                continue
            return v.exit_for(reason)

    def _finish_io(self, v: KvmVcpu) -> None:
        """Finish the guest instruction behind an I/O exit whose Bus callback raised: without
        this the machine, which may look at the CPU state after the exception, would see it
        half done."""
        with self._lock:
            v.run.immediate_exit = 1
        v.finish_io()
        with self._lock:
            v.run.immediate_exit = 1 if self._stop_requested else 0

    def _on_interrupted(self, v: KvmVcpu) -> Exit | None:
        """KVM_RUN returned EINTR: a stop request, an AP's exit, a kick, or some other signal."""
        if self._kick_mode is KickMode.MASKED:
            signal.sigtimedwait((KICK_SIGNAL,), 0)  # consume the pending kick
        run = v.run
        aps = self._aps
        with self._lock:
            run.immediate_exit = 0
            if aps is not None and aps.exits and self._taking_ap_exits:
                item = aps.exits.pop(0)
                if aps.exits or self._stop_requested:
                    run.immediate_exit = 1  # the next run() returns those
                return _exit_or_raise(item)
            if self._stop_requested:
                self._stop_requested = False
                self._kicked = False
                return Exit(ExitKind.INTERRUPTED, "stop requested")
            kicked, self._kicked = self._kicked, False
        if kicked and v.halted_for_good() and self._others_halted_for_good(v):
            return Exit(ExitKind.HALT, "hlt with interrupts disabled", {"for_good": True})
        return None

    # -- stopping, kicking and pausing --------------------------------------------------------------
    def request_stop(self) -> None:
        with self._lock:
            self._stop_requested = True
            if not self._closed:
                self._active.run.immediate_exit = 1  # covers a signal landing outside KVM_RUN
            self._signal_vcpu()

    def request_final_stop(self) -> None:
        self.request_stop()
        with self._lock:
            if self._aps is not None and not self._closed:
                self._aps.final = True
                self._aps.request_pause()

    def _wake_for_ap(self) -> None:
        """An AP queued an exit: end the BSP's KVM_RUN so that run() returns it."""
        with self._lock:
            if self._closed:
                return
            self._bsp.run.immediate_exit = 1
            if self._active is self._bsp:
                self._signal_vcpu()

    def _kick(self) -> None:
        with self._lock:
            if self._vcpu_tid is not None:
                self._kicked = True
                self._signal_vcpu()
                if self._aps is not None and not self._aps.pause:
                    self._aps.kick()

    def _idle(self) -> None:
        """run() has not been called again for KICK_INTERVAL: the machine or the debugger holds
        the guest, so the APs stop too (the next run() resumes them)."""
        with self._lock:
            aps = self._aps
            if aps is not None and self._vcpu_tid is None and not aps.pause and not self._closed:
                aps.request_pause()

    def _signal_vcpu(self) -> None:
        """Interrupt the thread inside run() or step(), if any (called with the lock held)."""
        if self._vcpu_tid is not None:
            send_kick(self._vcpu_tid, self._kick_mode)

    def _pause_aps(self) -> None:
        """Park every AP thread, so that the APs' vCPU ioctls can run (no-op with one vCPU).
        The caller must not hold bus.lock for long: an AP finishing an I/O exit waits for it."""
        aps = self._aps
        if aps is None:
            return
        if any(t.thread is threading.current_thread() for t in aps.threads):
            raise RuntimeError("an AP's own thread cannot pause the APs (a device asked for CPU state?)")
        with self._cond:
            if aps.pause and aps.all_parked():
                return
            aps.request_pause()
            while not aps.all_parked():
                if not self._cond.wait(PAUSE_WARN_AFTER):
                    running = ", ".join(t.thread.name for t in aps.threads if not t.parked)
                    log.warning("%s still running %g s after a pause request", running, PAUSE_WARN_AFTER)
                    aps.request_pause()

    def _resume_aps(self) -> None:
        """Let the APs run again, unless a final stop or an AP exit keeps them paused (lock held)."""
        aps = self._aps
        if aps is not None and aps.pause and not aps.final and not aps.exits:
            aps.pause = False
            self._cond.notify_all()

    def _drop_held_io(self, t: ApThread, warn: bool = True) -> None:
        """A paused AP whose I/O exit never reached the Bus gets a new state: finish its
        instruction without the Bus first, or KVM would complete it on top of the new state."""
        if t.held:
            if warn:
                log.warning("CPU %d: an I/O access is dropped (its state was replaced while it waited for bus.lock)",
                            t.vcpu.index)  # fmt: skip
            t.vcpu.finish_io()
            t.vcpu.run.immediate_exit = 0
            t.held = False

    # -- halt -----------------------------------------------------------------------------------
    def _others_halted_for_good(self, running: KvmVcpu) -> bool:
        """Every vCPU but `running`, which the caller checked (it runs in this thread), is
        halted for good (called during run() or step())."""
        if running is not self._bsp and not self._bsp.halted_for_good():
            return False
        return self._aps_halted_for_good(in_run=True)

    def _aps_halted_for_good(self, in_run: bool) -> bool:
        aps = self._aps
        if aps is None:
            return True
        with self._lock:
            # A running AP reports at each kick: one seen running is a no without stopping anyone.
            if any(not t.parked and t.halted is False for t in aps.threads):
                return False
            was_paused = aps.pause
        # The reports may be stale (an IPI may have woken one since): look at every AP itself.
        self._pause_aps()
        halted = all(not t.held and t.vcpu.halted_for_good() for t in aps.threads)
        if not halted and in_run and not was_paused:
            with self._lock:
                self._resume_aps()
        return halted

    def is_halted_for_good(self) -> bool:
        self._check_open()
        return self._bsp.halted_for_good() and self._aps_halted_for_good(in_run=False)

    def cpu_status(self, cpu: int) -> str:
        mp = self._vcpu(cpu).mp_state()
        if mp == api.KVM_MP_STATE_HALTED:
            return "halted"
        if mp in WAIT_FOR_SIPI:
            return "wait-for-sipi"
        return "running"

    # -- interrupts and single-step -------------------------------------------------------------
    def set_guest_debug(self, control: int, debugreg: list[int] | None = None) -> None:
        """KVM_SET_GUEST_DEBUG: `control` is KVM_GUESTDBG_* bits (ENABLE added when any is set),
        `debugreg` DR0-DR7 for hardware breakpoints (the debugger, emu/debugger/kvm_engine.py).
        Single-stepping is the BSP's (step(cpu) steps an AP); breakpoints are every vCPU's, set
        on the APs (which means pausing them) only when they change."""
        self._check_open()
        self._set_guest_debug(self._bsp, control, debugreg)
        if self._aps is None:
            return
        ap_control = control & ~api.KVM_GUESTDBG_SINGLESTEP
        wanted = (ap_control, tuple(debugreg or ()) if ap_control else ())
        if wanted != self._ap_debug:
            self._pause_aps()
            for t in self._aps.threads:
                self._set_guest_debug(t.vcpu, wanted[0], list(wanted[1]) or None)
            self._ap_debug = wanted

    def _set_guest_debug(self, v: KvmVcpu, control: int, debugreg: list[int] | None = None) -> None:
        dbg = ffi.new("struct kvm_guest_debug *")
        dbg.control = control | api.KVM_GUESTDBG_ENABLE | self._guest_debug_flags if control else 0
        for i, value in enumerate(debugreg or []):
            dbg.arch.debugreg[i] = value
        ioctl(v.fd, api.KVM_SET_GUEST_DEBUG, dbg, name="KVM_SET_GUEST_DEBUG")

    def step(self, cpu: int = 0) -> Exit:
        v = self._vcpu(cpu)
        self._pause_aps()  # the others stand still
        if cpu == 0:
            self._set_guest_debug(v, api.KVM_GUESTDBG_SINGLESTEP)
            try:
                ex = self._run_vcpu(v)
            finally:
                self._set_guest_debug(v, 0)
        else:
            ex = self._step_ap(v)
        if self._aps is not None:
            ex.detail.setdefault("cpu", cpu)
            self._last_cpu = cpu
        return ex

    def _step_ap(self, v: KvmVcpu) -> Exit:
        """One instruction of a paused AP, run from this thread (KVM allows any thread of the
        process; its own thread stays parked)."""
        assert self._aps is not None
        t = self._aps.threads[v.index - 1]
        if not t.held and v.mp_state() in WAIT_FOR_SIPI:
            return Exit(ExitKind.HALT, f"CPU {v.index} waits for INIT-SIPI-SIPI", {"for_good": False})
        if self._kick_mode is KickMode.MASKED:
            mask_kick_signal(v.fd)  # its KVM_RUN now runs in this thread, with this thread's mask
        self._thread_local.cpu = v.index
        self._set_guest_debug(v, api.KVM_GUESTDBG_SINGLESTEP)
        try:
            if t.held:  # the instruction behind the held exit is the one to step: finish it
                with self.bus.lock:
                    if v.run.exit_reason == api.KVM_EXIT_IO:
                        dispatch_io(v.run_view, self.bus)
                    else:
                        dispatch_mmio(v.run_view, self.bus, self._readonly)
                t.held = False
            return self._run_vcpu(v)
        finally:
            control, debugreg = self._ap_debug  # its breakpoints, as set_guest_debug left them
            self._set_guest_debug(v, control, list(debugreg) or None)
            del self._thread_local.cpu

    # -- state ----------------------------------------------------------------------------------
    def get_state(self, cpu: int = 0) -> CpuState:
        v = self._vcpu(cpu)
        fd = v.fd
        state = CpuState()
        conv.regs_to_state(v.get_regs(), state)
        conv.sregs_to_state(v.get_sregs(), state)
        state.fpu = self._get_fpu(fd)
        dr = ffi.new("struct kvm_debugregs *")
        ioctl(fd, api.KVM_GET_DEBUGREGS, dr, name="KVM_GET_DEBUGREGS")
        conv.debugregs_to_state(dr, state)
        state.msrs = self._get_msrs(x86.STATE_MSRS, fd)
        return state

    def set_state(self, state: CpuState, cpu: int = 0) -> None:
        v = self._vcpu(cpu)
        if self._aps is not None and cpu:
            self._drop_held_io(self._aps.threads[cpu - 1])
        self._put_state(v, state)
        # A CPU given a new state runs it: wake a vCPU left halted (e.g. by `cli; hlt`). An AP
        # waiting for INIT-SIPI keeps waiting: only STARTUP starts it.
        if cpu == 0 or v.mp_state() == api.KVM_MP_STATE_HALTED:
            v.set_mp_state(api.KVM_MP_STATE_RUNNABLE)

    def _put_state(self, v: KvmVcpu, state: CpuState) -> None:
        fd = v.fd
        sregs = v.get_sregs()  # for apic_base, which CpuState does not carry
        conv.state_to_sregs(state, sregs)
        ioctl(fd, api.KVM_SET_SREGS, sregs, name="KVM_SET_SREGS")
        regs = ffi.new("struct kvm_regs *")
        conv.state_to_regs(state, regs)
        ioctl(fd, api.KVM_SET_REGS, regs, name="KVM_SET_REGS")
        self._set_msrs({i: state.msrs[i] for i in x86.STATE_MSRS if i in state.msrs}, fd)
        self._set_fpu(state.fpu, fd)
        dr = ffi.new("struct kvm_debugregs *")
        conv.state_to_debugregs(state, dr)
        ioctl(fd, api.KVM_SET_DEBUGREGS, dr, name="KVM_SET_DEBUGREGS")

    # x87/SSE state goes through XSAVE where KVM has it: KVM_SET_FPU ignores MXCSR and does not
    # mark x87/SSE as in use in the XSAVE header, so the guest would get init values instead.
    def _get_xsave(self, fd: int) -> Any:
        buf = ffi.new("uint8_t[]", self._xsave_size)
        ioctl(fd, self._xsave_get, ffi.cast("struct kvm_xsave *", buf), name="KVM_GET_XSAVE")
        return buf

    def _get_fpu(self, fd: int) -> FpuState:
        if self._xsave_size:
            return conv.xsave_to_fpu(memoryview(ffi.buffer(self._get_xsave(fd))))
        fpu = ffi.new("struct kvm_fpu *")
        ioctl(fd, api.KVM_GET_FPU, fpu, name="KVM_GET_FPU")
        return conv.fpu_to_state(fpu)

    def _set_fpu(self, f: FpuState, fd: int) -> None:
        if self._xsave_size:
            buf = self._get_xsave(fd)
            conv.fpu_to_xsave(f, memoryview(ffi.buffer(buf)))
            ioctl(fd, api.KVM_SET_XSAVE, ffi.cast("struct kvm_xsave *", buf), name="KVM_SET_XSAVE")
            return
        fpu = ffi.new("struct kvm_fpu *")
        conv.state_to_fpu(f, fpu)
        ioctl(fd, api.KVM_SET_FPU, fpu, name="KVM_SET_FPU")

    def _get_msrs(self, indices: tuple[int, ...], fd: int) -> dict[int, int]:
        wanted = [i for i in indices if i not in self._bad_msrs]
        while True:
            msrs = ffi.new("struct kvm_msrs *", {"nmsrs": len(wanted), "entries": [{"index": i} for i in wanted]})
            done = ioctl(fd, api.KVM_GET_MSRS, msrs, name="KVM_GET_MSRS")
            if done == len(wanted):
                break
            # KVM stops at the first MSR it cannot read: remember it and ask again without it.
            bad = wanted.pop(done)
            self._bad_msrs.add(bad)
            log.warning("KVM cannot read MSR %#x on this host: it reads as 0", bad)
        values = {int(msrs.entries[k].index): int(msrs.entries[k].data) for k in range(len(wanted))}
        return {i: values.get(i, 0) for i in indices}

    def _set_msrs(self, values: dict[int, int], fd: int) -> None:
        items = [(i, v) for i, v in values.items() if i not in self._bad_msrs]
        entries = [{"index": i, "data": v} for i, v in items]
        msrs = ffi.new("struct kvm_msrs *", {"nmsrs": len(entries), "entries": entries})
        done = ioctl(fd, api.KVM_SET_MSRS, msrs, name="KVM_SET_MSRS")
        if done != len(entries):
            index, value = items[done]
            raise ValueError(f"KVM refused MSR {index:#x} = {value:#x}")

    # -- teardown -------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop and join the AP threads, then release the vCPUs, the VM and /dev/kvm."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._finalizer()


def _exit_or_raise(item: Exit | BaseException) -> Exit:
    """An AP's queued exit, or the exception its Bus callback raised (raised here, in run())."""
    if isinstance(item, BaseException):
        raise item
    return item
