"""KvmBackend: one vCPU under Linux KVM, with KVM's in-kernel PIC, IOAPIC, LAPIC and PIT.

Threads. run() may be called from any one thread at a time (the "vCPU thread"); every other
method except request_stop() must be called while run() is not in progress. Two things
interrupt a KVM_RUN in progress: request_stop() and a kicker thread that pokes the vCPU every
KICK_INTERVAL seconds so that run() can notice a guest sitting in `cli; hlt` (with the in-kernel
irqchip HLT never reaches userspace, so nothing else would ever end that run()).

Kicking is a SIGUSR1 sent to the vCPU thread with pthread_kill, which makes KVM_RUN return
EINTR. Two ways to keep that signal from killing the process:
- handler mode (the usual one): a no-op Python handler for SIGUSR1, installed by the first
  backend created in the main thread. A stop request also sets kvm_run.immediate_exit, so a
  signal that lands while the thread is outside KVM_RUN is not lost.
- masked mode (when no handler can be installed: the backend was created in another thread, or
  SIGUSR1 belongs to someone else): the vCPU thread blocks SIGUSR1 and KVM_SET_SIGNAL_MASK
  unblocks it only inside KVM_RUN; the pending signal is consumed with sigtimedwait afterwards.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import signal
import struct
import threading
import time
import weakref
from collections.abc import Callable
from enum import Enum
from typing import Any

from emu import layout
from emu.backends.base import Backend, BackendUnavailable, Capabilities, Exit, ExitKind, GuestDebug
from emu.backends.kvm import api
from emu.backends.kvm import convert as conv
from emu.backends.kvm.api import KvmError, ffi, ioctl, libc
from emu.backends.kvm.eventfds import KvmEventfds
from emu.backends.kvm.irqchip import KvmIrqChip
from emu.bus import Bus
from emu.cpu import x86
from emu.cpu.cpuid import CpuidEntry, shape_kvm
from emu.cpu.state import CpuState, FpuState
from emu.memory import GuestMemory
from emu.platform import EventFds, IrqChip

log = logging.getLogger("emu.kvm")

KICK_INTERVAL = 0.2  # seconds between kicks while run() is in progress
KICK_SIGNAL = signal.SIGUSR1

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

_PIO_FORMATS = {1: struct.Struct("<B"), 2: struct.Struct("<H"), 4: struct.Struct("<I")}
_ZERO = ffi.cast("unsigned long", 0)

# kvm_run offsets read on every exit (a memoryview on the mapping is cheaper than cffi there).
_RUN_IO = ffi.offsetof("struct kvm_run", "io")
_RUN_MMIO = ffi.offsetof("struct kvm_run", "mmio")
_IO_LAYOUT = struct.Struct("<BBHIQ")  # direction, size, port, count, data_offset
_MMIO_LAYOUT = struct.Struct("<Q8sIB")  # phys_addr, data, len, is_write


PVM_NO_DATA_BREAKPOINTS = "this host's KVM (PVM) never reports data breakpoints (measured)"


def host_is_pvm() -> bool:
    """The host's KVM is PVM (kvm_pvm, software-assisted): its instruction emulator runs guest
    ring 0 and ignores DR7 data breakpoints."""
    return os.path.exists("/sys/module/kvm_pvm")


class KickMode(Enum):
    HANDLER = "handler"
    MASKED = "masked"


def _ignore_signal(signum: int, frame: object) -> None:
    """SIGUSR1 only exists to make KVM_RUN return EINTR: nothing to do here."""


def _choose_kick_mode() -> KickMode:
    current = signal.getsignal(KICK_SIGNAL)
    if current is _ignore_signal:
        return KickMode.HANDLER
    if current in (signal.SIG_DFL, signal.SIG_IGN, None) and threading.current_thread() is threading.main_thread():
        signal.signal(KICK_SIGNAL, _ignore_signal)
        return KickMode.HANDLER
    return KickMode.MASKED


class _Kicker:
    """A daemon thread calling kick() every `interval` seconds while active.

    It holds the backend only weakly so that a forgotten backend can still be collected.
    """

    def __init__(self, kick: Callable[[], None], interval: float) -> None:
        self._kick = weakref.WeakMethod(kick)
        self._interval = interval
        self._cond = threading.Condition()
        self._active = False
        self._closed = False
        self._deadline = 0.0
        self._thread = threading.Thread(target=self._main, name="kvm-kicker", daemon=True)
        self._thread.start()

    def set_active(self, active: bool) -> None:
        with self._cond:
            now = time.monotonic()
            # Keep a running deadline: frequent short run() calls must not postpone the kick.
            if active and not self._active and self._deadline <= now:
                self._deadline = now + self._interval
            self._active = active
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _main(self) -> None:
        with self._cond:
            while not self._closed:
                if not self._active:
                    self._cond.wait()
                    continue
                now = time.monotonic()
                if now < self._deadline:
                    self._cond.wait(self._deadline - now)
                    continue
                self._deadline = now + self._interval
                kick = self._kick()
                if kick is None:
                    return
                kick()
                del kick


class _Handles:
    """Host resources of one backend, released exactly once (by close() or at collection)."""

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.run_map: mmap.mmap | None = None
        self.run_view: memoryview | None = None
        self.run_ptr: Any = None
        self.kicker: _Kicker | None = None

    def release(self) -> None:
        if self.kicker is not None:
            self.kicker.close()
            self.kicker = None
        if self.run_ptr is not None:
            ffi.release(self.run_ptr)
            self.run_ptr = None
        if self.run_view is not None:
            self.run_view.release()
            self.run_view = None
        if self.run_map is not None:
            self.run_map.close()
            self.run_map = None
        # vCPU first, then VM, then /dev/kvm: the reverse of creation.
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

    def __init__(self, memory: GuestMemory, bus: Bus, *, device: str = "/dev/kvm") -> None:
        super().__init__(memory, bus)
        self.device = device
        self._h = _Handles()
        self._finalizer = weakref.finalize(self, self._h.release)
        self._closed = False
        self._lock = threading.RLock()  # guards the stop/kick handshake with the vCPU thread
        self._stop_requested = False
        self._kicked = False
        self._vcpu_tid: int | None = None  # thread inside run(), for pthread_kill
        self._thread_local = threading.local()  # .masked: SIGUSR1 blocked in this thread (masked mode)
        self._readonly: list[tuple[int, int]] = []  # ROM ranges: guest writes there are dropped
        self._bad_msrs: set[int] = set()
        self._guest_debug_flags = 0
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        self._kick_mode = _choose_kick_mode()

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

    # -- set-up ---------------------------------------------------------------------------------
    def _setup(self) -> None:
        self._kvm_fd = self._open_device()
        self._check_api()
        try:
            self._create_vm()
            self._create_vcpu()
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

    def _create_vcpu(self) -> None:
        self._vcpu_fd = ioctl(self._vm_fd, api.KVM_CREATE_VCPU, 0, name="KVM_CREATE_VCPU")
        self._h.fds.append(self._vcpu_fd)
        size = ioctl(self._kvm_fd, api.KVM_GET_VCPU_MMAP_SIZE, 0, name="KVM_GET_VCPU_MMAP_SIZE")
        h = self._h
        h.run_map = mmap.mmap(self._vcpu_fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        h.run_view = memoryview(h.run_map)
        h.run_ptr = ffi.from_buffer("struct kvm_run *", h.run_map)
        self._run_ptr = h.run_ptr
        self._run_view = h.run_view

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
        for i, entry in enumerate(shaped):
            for f in fields:
                setattr(cpuid.entries[i], f, getattr(entry, f))
        cpuid.nent = len(shaped)
        ioctl(self._vcpu_fd, api.KVM_SET_CPUID2, cpuid, name="KVM_SET_CPUID2")

    def _setup_lapic(self) -> None:
        """LINT0 = ExtINT (the 8259's output reaches the CPU through the LAPIC, as in virtual wire
        mode) and LINT1 = NMI, as a PC BIOS programs them and the MP table says."""
        lapic = ffi.new("struct kvm_lapic_state *")
        ioctl(self._vcpu_fd, api.KVM_GET_LAPIC, lapic, name="KVM_GET_LAPIC")
        regs = ffi.buffer(lapic.regs)
        for offset, mode in ((LAPIC_LVT_LINT0, LVT_DELIVERY_EXTINT), (LAPIC_LVT_LINT1, LVT_DELIVERY_NMI)):
            value = int.from_bytes(regs[offset : offset + 4], "little")
            value = (value & ~LVT_DELIVERY_MASK) | mode
            regs[offset : offset + 4] = value.to_bytes(4, "little")
        ioctl(self._vcpu_fd, api.KVM_SET_LAPIC, lapic, name="KVM_SET_LAPIC")

    def _save_platform(self) -> tuple[Any, Any]:
        """The in-kernel PIT and LAPIC as they are now (at power-on); the irqchip keeps its own."""
        self._irqchip.save_power_on()
        pit = ffi.new("struct kvm_pit_state2 *")
        ioctl(self._vm_fd, api.KVM_GET_PIT2, pit, name="KVM_GET_PIT2")
        lapic = ffi.new("struct kvm_lapic_state *")
        ioctl(self._vcpu_fd, api.KVM_GET_LAPIC, lapic, name="KVM_GET_LAPIC")
        return pit, lapic

    def reset_platform(self) -> None:
        self._check_open()
        pit, lapic = self._power_on
        ioctl(self._vm_fd, api.KVM_SET_PIT2, pit, name="KVM_SET_PIT2")
        ioctl(self._vcpu_fd, api.KVM_SET_LAPIC, lapic, name="KVM_SET_LAPIC")

    def _setup_msrs(self) -> None:
        """The MSR values a VMM sets before the first instruction (as Firecracker does): fast
        strings on, MTRRs on with write-back as the default type. Best effort: an MSR this host
        refuses is logged and skipped."""
        for index, value in BOOT_MSRS.items():
            try:
                self._set_msrs({index: value})
            except (ValueError, KvmError) as e:
                log.info("KVM refused boot MSR %#x: %s", index, e)

    # -- running --------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the KVM backend is closed")

    def run(self) -> Exit:
        self._check_open()
        tid = threading.get_ident()
        # (Per thread object, not per ident: a later thread may reuse the ident of an exited one.)
        if self._kick_mode is KickMode.MASKED and not getattr(self._thread_local, "masked", False):
            self._mask_kick_signal()
            self._thread_local.masked = True
        if self._h.kicker is None:
            self._h.kicker = _Kicker(self._kick, KICK_INTERVAL)
        kicker = self._h.kicker
        with self._lock:
            self._vcpu_tid = tid
        kicker.set_active(True)
        try:
            return self._run_loop()
        finally:
            kicker.set_active(False)
            with self._lock:
                self._vcpu_tid = None

    def _run_loop(self) -> Exit:
        run = self._run_ptr
        fd = self._vcpu_fd
        kvm_run = libc.ioctl
        while True:
            if kvm_run(fd, api.KVM_RUN, _ZERO) < 0:
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
                    self._do_io()
                    continue
                if reason == api.KVM_EXIT_MMIO:
                    self._do_mmio()
                    continue
            except BaseException:
                self._complete_pending_io()
                raise  # a Bus callback failed: the machine decides what happens next
            if reason == api.KVM_EXIT_INTR:
                ex = self._on_interrupted()
                if ex is not None:
                    return ex
                continue
            return self._exit_for(reason)

    def _complete_pending_io(self) -> None:
        """Finish the guest instruction behind an I/O exit whose Bus callback raised.

        KVM completes an exit's instruction only on the next KVM_RUN; without this the
        machine, which may look at the CPU state after the exception, would see it half done.
        """
        run = self._run_ptr
        if run.exit_reason == api.KVM_EXIT_IO and run.io.direction == api.KVM_EXIT_IO_IN:
            n = run.io.size * run.io.count
            off = run.io.data_offset
            self._run_view[off : off + n] = b"\xff" * n  # the failed read returns all-ones
        elif run.exit_reason == api.KVM_EXIT_MMIO and not run.mmio.is_write:
            run.mmio.data = [0xFF] * 8
        with self._lock:
            run.immediate_exit = 1
        libc.ioctl(self._vcpu_fd, api.KVM_RUN, _ZERO)  # returns EINTR once the instruction is done
        with self._lock:
            run.immediate_exit = 1 if self._stop_requested else 0

    def _do_io(self) -> None:
        view = self._run_view
        direction, size, port, count, off = _IO_LAYOUT.unpack_from(view, _RUN_IO)
        fmt = _PIO_FORMATS[size]
        bus = self.bus
        if direction == api.KVM_EXIT_IO_OUT:
            if count == 1:
                bus.pio_write(port, size, fmt.unpack_from(view, off)[0])
            else:  # string I/O: `count` elements of `size` bytes each
                for (value,) in fmt.iter_unpack(view[off : off + size * count]):
                    bus.pio_write(port, size, value)
        else:
            for i in range(count):
                fmt.pack_into(view, off + i * size, bus.pio_read(port, size))

    def _do_mmio(self) -> None:
        view = self._run_view
        addr, data, length, is_write = _MMIO_LAYOUT.unpack_from(view, _RUN_MMIO)
        bus = self.bus
        if is_write:
            if any(start <= addr < end for start, end in self._readonly):
                return  # a write to ROM: dropped, as on real hardware
            if length in (1, 2, 4, 8):
                bus.mmio_write(addr, length, int.from_bytes(data[:length], "little"))
            else:  # odd sizes (page-crossing pieces): byte by byte
                for i in range(length):
                    bus.mmio_write(addr + i, 1, data[i])
        else:
            if length in (1, 2, 4, 8):
                value = bus.mmio_read(addr, length).to_bytes(length, "little")
            else:
                value = bytes(bus.mmio_read(addr + i, 1) for i in range(length))
            start = _RUN_MMIO + 8
            view[start : start + length] = value

    def _on_interrupted(self) -> Exit | None:
        """KVM_RUN returned EINTR: a stop request, a kick, or some other signal."""
        if self._kick_mode is KickMode.MASKED:
            signal.sigtimedwait((KICK_SIGNAL,), 0)  # consume the pending kick
        run = self._run_ptr
        with self._lock:
            run.immediate_exit = 0
            if self._stop_requested:
                self._stop_requested = False
                self._kicked = False
                return Exit(ExitKind.INTERRUPTED, "stop requested")
            kicked, self._kicked = self._kicked, False
        if kicked and self._halted_with_interrupts_off():
            return Exit(ExitKind.HALT, "hlt with interrupts disabled", {"for_good": True})
        return None

    def _exit_for(self, reason: int) -> Exit:
        run = self._run_ptr
        if reason == api.KVM_EXIT_HLT:  # only without an in-kernel APIC
            for_good = not self._get_regs().rflags & x86.FLAG_IF
            return Exit(ExitKind.HALT, "hlt", {"for_good": for_good})
        if reason == api.KVM_EXIT_SHUTDOWN:
            return Exit(ExitKind.SHUTDOWN, "triple fault")
        if reason == api.KVM_EXIT_DEBUG:
            arch = run.debug.arch
            detail = {"exception": arch.exception, "pc": arch.pc, "dr6": arch.dr6, "dr7": arch.dr7}
            if arch.exception == x86.Vector.DB and arch.dr6 & (1 << 14):  # DR6.BS
                what = "single step"
            elif arch.exception == x86.Vector.BP:
                what = "breakpoint"
            else:
                what = f"debug exception {arch.exception}"
            return Exit(ExitKind.DEBUG, what, detail)
        if reason == api.KVM_EXIT_FAIL_ENTRY:
            code = run.fail_entry.hardware_entry_failure_reason
            cpu = run.fail_entry.cpu
            return Exit(
                ExitKind.ERROR,
                f"KVM could not enter the guest: hardware entry failure reason {code:#x} (host cpu {cpu})",
                {"exit_reason": reason, "hardware_entry_failure_reason": code, "cpu": cpu},
            )
        if reason == api.KVM_EXIT_INTERNAL_ERROR:
            sub = run.internal.suberror
            data = [int(run.internal.data[i]) for i in range(min(run.internal.ndata, 16))]
            what = api.INTERNAL_ERROR_NAMES.get(sub, "unknown")
            words = " ".join(f"{d:#x}" for d in data)
            return Exit(
                ExitKind.ERROR,
                f"KVM internal error: suberror {sub} ({what}), data [{words}]",
                {"exit_reason": reason, "suberror": sub, "data": data},
            )
        if reason == api.KVM_EXIT_UNKNOWN:
            hw = run.hw.hardware_exit_reason
            return Exit(
                ExitKind.ERROR,
                f"KVM exit with unknown reason: hardware exit reason {hw:#x}",
                {"exit_reason": reason, "hardware_exit_reason": hw},
            )
        name = api.EXIT_NAMES.get(reason, "?")
        return Exit(ExitKind.ERROR, f"unexpected KVM exit reason {reason} ({name})", {"exit_reason": reason})

    # -- stopping and kicking -------------------------------------------------------------------
    def request_stop(self) -> None:
        with self._lock:
            self._stop_requested = True
            if not self._closed:
                self._run_ptr.immediate_exit = 1  # covers a signal landing outside KVM_RUN
            self._signal_vcpu()

    def _kick(self) -> None:
        with self._lock:
            if self._vcpu_tid is not None:
                self._kicked = True
                self._signal_vcpu()

    def _signal_vcpu(self) -> None:
        """Interrupt the thread inside run(), if any (called with the lock held)."""
        tid = self._vcpu_tid
        if tid is None:
            return
        # Never deliver SIGUSR1 without our handler or the mask: the default action kills.
        if self._kick_mode is KickMode.HANDLER and signal.getsignal(KICK_SIGNAL) is not _ignore_signal:
            return
        signal.pthread_kill(tid, KICK_SIGNAL)

    def _mask_kick_signal(self) -> None:
        """Masked mode: block SIGUSR1 in this thread, and let KVM unblock it inside KVM_RUN."""
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {KICK_SIGNAL})
        bits = 0
        for sig in old - {KICK_SIGNAL}:
            bits |= 1 << (int(sig) - 1)
        size = api.KERNEL_SIGSET_BYTES
        mask = ffi.new("struct kvm_signal_mask *", {"len": size, "sigset": list(bits.to_bytes(size, "little"))})
        ioctl(self._vcpu_fd, api.KVM_SET_SIGNAL_MASK, mask, name="KVM_SET_SIGNAL_MASK")

    # -- halt -----------------------------------------------------------------------------------
    def _halted_with_interrupts_off(self) -> bool:
        mp = ffi.new("struct kvm_mp_state *")
        ioctl(self._vcpu_fd, api.KVM_GET_MP_STATE, mp, name="KVM_GET_MP_STATE")
        if mp.mp_state != api.KVM_MP_STATE_HALTED:
            return False
        return not self._get_regs().rflags & x86.FLAG_IF

    def is_halted_for_good(self) -> bool:
        self._check_open()
        return self._halted_with_interrupts_off()

    # -- interrupts and single-step -------------------------------------------------------------
    def set_guest_debug(self, control: int, debugreg: list[int] | None = None) -> None:
        """KVM_SET_GUEST_DEBUG: `control` is KVM_GUESTDBG_* bits (ENABLE added when any is set),
        `debugreg` DR0-DR7 for hardware breakpoints (the debugger, emu/debugger/kvm_engine.py)."""
        self._check_open()
        dbg = ffi.new("struct kvm_guest_debug *")
        dbg.control = control | api.KVM_GUESTDBG_ENABLE | self._guest_debug_flags if control else 0
        for i, v in enumerate(debugreg or []):
            dbg.arch.debugreg[i] = v
        ioctl(self._vcpu_fd, api.KVM_SET_GUEST_DEBUG, dbg, name="KVM_SET_GUEST_DEBUG")

    def step(self) -> Exit:
        self.set_guest_debug(api.KVM_GUESTDBG_SINGLESTEP)
        try:
            return self.run()
        finally:
            self.set_guest_debug(0)

    # -- state ----------------------------------------------------------------------------------
    def _get_regs(self) -> Any:
        regs = ffi.new("struct kvm_regs *")
        ioctl(self._vcpu_fd, api.KVM_GET_REGS, regs, name="KVM_GET_REGS")
        return regs

    def _get_sregs(self) -> Any:
        sregs = ffi.new("struct kvm_sregs *")
        ioctl(self._vcpu_fd, api.KVM_GET_SREGS, sregs, name="KVM_GET_SREGS")
        return sregs

    def get_state(self) -> CpuState:
        self._check_open()
        fd = self._vcpu_fd
        state = CpuState()
        conv.regs_to_state(self._get_regs(), state)
        conv.sregs_to_state(self._get_sregs(), state)
        state.fpu = self._get_fpu()
        dr = ffi.new("struct kvm_debugregs *")
        ioctl(fd, api.KVM_GET_DEBUGREGS, dr, name="KVM_GET_DEBUGREGS")
        conv.debugregs_to_state(dr, state)
        state.msrs = self._get_msrs(x86.STATE_MSRS)
        return state

    def set_state(self, state: CpuState) -> None:
        self._check_open()
        fd = self._vcpu_fd
        sregs = self._get_sregs()  # for apic_base, which CpuState does not carry
        conv.state_to_sregs(state, sregs)
        ioctl(fd, api.KVM_SET_SREGS, sregs, name="KVM_SET_SREGS")
        regs = ffi.new("struct kvm_regs *")
        conv.state_to_regs(state, regs)
        ioctl(fd, api.KVM_SET_REGS, regs, name="KVM_SET_REGS")
        self._set_msrs({i: state.msrs[i] for i in x86.STATE_MSRS if i in state.msrs})
        self._set_fpu(state.fpu)
        dr = ffi.new("struct kvm_debugregs *")
        conv.state_to_debugregs(state, dr)
        ioctl(fd, api.KVM_SET_DEBUGREGS, dr, name="KVM_SET_DEBUGREGS")
        # A CPU given a new state runs it: wake a vCPU left halted (e.g. by `cli; hlt`).
        mp = ffi.new("struct kvm_mp_state *", {"mp_state": api.KVM_MP_STATE_RUNNABLE})
        ioctl(fd, api.KVM_SET_MP_STATE, mp, name="KVM_SET_MP_STATE")

    # x87/SSE state goes through XSAVE where KVM has it: KVM_SET_FPU ignores MXCSR and does not
    # mark x87/SSE as in use in the XSAVE header, so the guest would get init values instead.
    def _get_xsave(self) -> Any:
        buf = ffi.new("uint8_t[]", self._xsave_size)
        ioctl(self._vcpu_fd, self._xsave_get, ffi.cast("struct kvm_xsave *", buf), name="KVM_GET_XSAVE")
        return buf

    def _get_fpu(self) -> FpuState:
        if self._xsave_size:
            return conv.xsave_to_fpu(memoryview(ffi.buffer(self._get_xsave())))
        fpu = ffi.new("struct kvm_fpu *")
        ioctl(self._vcpu_fd, api.KVM_GET_FPU, fpu, name="KVM_GET_FPU")
        return conv.fpu_to_state(fpu)

    def _set_fpu(self, f: FpuState) -> None:
        if self._xsave_size:
            buf = self._get_xsave()
            conv.fpu_to_xsave(f, memoryview(ffi.buffer(buf)))
            ioctl(self._vcpu_fd, api.KVM_SET_XSAVE, ffi.cast("struct kvm_xsave *", buf), name="KVM_SET_XSAVE")
            return
        fpu = ffi.new("struct kvm_fpu *")
        conv.state_to_fpu(f, fpu)
        ioctl(self._vcpu_fd, api.KVM_SET_FPU, fpu, name="KVM_SET_FPU")

    def _get_msrs(self, indices: tuple[int, ...]) -> dict[int, int]:
        wanted = [i for i in indices if i not in self._bad_msrs]
        while True:
            msrs = ffi.new("struct kvm_msrs *", {"nmsrs": len(wanted), "entries": [{"index": i} for i in wanted]})
            done = ioctl(self._vcpu_fd, api.KVM_GET_MSRS, msrs, name="KVM_GET_MSRS")
            if done == len(wanted):
                break
            # KVM stops at the first MSR it cannot read: remember it and ask again without it.
            bad = wanted.pop(done)
            self._bad_msrs.add(bad)
            log.warning("KVM cannot read MSR %#x on this host: it reads as 0", bad)
        values = {int(msrs.entries[k].index): int(msrs.entries[k].data) for k in range(len(wanted))}
        return {i: values.get(i, 0) for i in indices}

    def _set_msrs(self, values: dict[int, int]) -> None:
        items = [(i, v) for i, v in values.items() if i not in self._bad_msrs]
        entries = [{"index": i, "data": v} for i, v in items]
        msrs = ffi.new("struct kvm_msrs *", {"nmsrs": len(entries), "entries": entries})
        done = ioctl(self._vcpu_fd, api.KVM_SET_MSRS, msrs, name="KVM_SET_MSRS")
        if done != len(entries):
            index, value = items[done]
            raise ValueError(f"KVM refused MSR {index:#x} = {value:#x}")

    # -- teardown -------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._finalizer()
