"""Machine: the only place that wires memory, bus, devices, boot and a CPU backend together."""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol, TypeVar

from emu import layout
from emu.backends.base import Backend, BackendUnavailable, Exit, ExitKind
from emu.boot_profile import BootProfile
from emu.bus import Bus
from emu.config import BackendName, MachineConfig, TripleFaultPolicy, validate
from emu.cpu.state import CpuState, Mode
from emu.deterministic import FIXED_EPOCH, VirtualClock
from emu.devices.acpi_pm import AcpiPm
from emu.devices.boot_timer import BootTimer
from emu.devices.cmos import Cmos
from emu.devices.debugport import DebugConsole, DebugExit, PostCodes
from emu.devices.hpet import Hpet
from emu.devices.i8042 import I8042, SystemControlA
from emu.devices.irqchip import EmuIrqChip
from emu.devices.kvmclock import MSRS as KVMCLOCK_MSRS
from emu.devices.kvmclock import KvmClock
from emu.devices.pci.host import PciHost
from emu.devices.pit import Pit
from emu.devices.serial import Serial16550A
from emu.devices.virtio.attach import Transport, VirtioBoard, attach_virtio, close_virtio
from emu.devices.virtio.cmdline import kernel_cmdline
from emu.devices.virtio.config_devices import requested_devices
from emu.devices.virtio.serving import Worker
from emu.devices.virtio.transport.mmio import VirtioMmio
from emu.errors import EmuError, ExitStatus, HostError
from emu.firmware.bios import BIOS_ROM, Bios, BiosHost
from emu.firmware.boot import flat
from emu.firmware.boot.inputs import KernelInputs
from emu.firmware.boot.kernel import load_kernel, read_inputs
from emu.firmware.tables.acpi import AcpiConfig, MmioDevice, write_acpi
from emu.memory import GuestMemory
from emu.platform import IrqChip, IrqLine
from emu.roms import rom_path
from emu.timers import Clock, HostClock, ProcessStart, TimerQueue, TimerThread

log = logging.getLogger("emu.machine")

Sink = Callable[[bytes], object]  # a file's write() returns a count: ignored


class Device(Protocol):
    """What the machine asks of every device it keeps: back to power-on state on a reboot."""

    def reset(self) -> None: ...


SERIAL_CAPTURE_LIMIT = 16 << 20  # bytes of serial output kept for RunResult (the tail)
#: How the reasons of runs that emu ended, not the guest, begin (the CLI then says where the CPU was).
ENDED_BY_EMU = ("timeout:", "quit by the user", "--expect-timeout expired")


class Action(Enum):
    """Why the machine asked the backend to stop."""

    DEBUG_EXIT = "debug-exit"
    RESET = "reset"
    TIMEOUT = "timeout"
    QUIT = "quit"
    EXPECT_TIMEOUT = "expect-timeout"  # --expect markers still missing after --expect-timeout
    POWER_OFF = "power-off"  # ACPI S5


@dataclass
class RunResult:
    status: int
    reason: str
    exit_kind: ExitKind | None = None
    serial: bytes = b""
    debugcon: bytes = b""
    state: CpuState | None = None
    exit: Exit | None = None
    resets: int = 0
    details: dict[str, object] = field(default_factory=dict)


class OutputTap:
    """Keeps the tail of an output stream and forwards every byte to optional sinks."""

    def __init__(self, sinks: list[Sink] | None = None, on_first: Callable[[], None] | None = None) -> None:
        self.buf = bytearray()
        self.sinks = sinks or []
        self._on_first = on_first  # the stream's first byte (the boot profile's milestone)

    def __call__(self, data: bytes) -> None:
        if self._on_first is not None and data:
            on_first, self._on_first = self._on_first, None
            on_first()
        self.buf += data
        if len(self.buf) > SERIAL_CAPTURE_LIMIT:
            del self.buf[: len(self.buf) - SERIAL_CAPTURE_LIMIT]
        for sink in self.sinks:
            sink(data)


H = TypeVar("H")
H_co = TypeVar("H_co", covariant=True)


class RunDriver(Protocol[H_co]):
    """What a debugger adds to the machine's run loop (Machine.loop): its own way to run the
    guest once, a look at every exit for its stops, and a user's stop request."""

    #: Set from any thread: the loop ends soon with `stopped()`; a wait in `hlt` ends too.
    stop: threading.Event

    def run_once(self) -> Exit: ...

    def examine(self, exit_: Exit) -> H_co | None:
        """The debugger's stop for this exit, or None to let the machine handle it."""

    def stopped(self, in_hlt: bool) -> H_co:
        """The stop to return when `stop` was set (`in_hlt`: while the CPU waited in hlt)."""


def make_backend(name: BackendName, memory: GuestMemory, bus: Bus, *, virtual_time: bool = False,
                 cpus: int = 1) -> Backend:  # fmt: skip
    """The backend `name` with `cpus` vCPUs; `virtual_time`: guest time from executed code
    (--deterministic)."""
    if name is BackendName.KVM:
        if virtual_time:
            raise EmuError("--deterministic needs --backend unicorn (KVM runs on host time)")
        try:
            from emu.backends.kvm import KvmBackend
        except ImportError as e:
            raise HostError(f"the KVM backend cannot load: {e}") from None
        try:
            return KvmBackend(memory, bus, cpus=cpus)
        except BackendUnavailable as e:
            raise HostError(str(e)) from None
    from emu.backends.unicorn import UnicornBackend

    try:
        # emu emulates a local APIC (and kvmclock) for it: CPUID says so.
        return UnicornBackend(memory, bus, virtual_time=virtual_time, local_apic=True, cpus=cpus)
    except BackendUnavailable as e:
        raise HostError(str(e)) from None


class Machine:
    """A PC: RAM, port/MMIO bus, legacy devices, a boot source and one CPU backend.

    Where things come from, decided once here: the interrupt controllers (the backend's own or
    emu's, `irqchip`), time (`clock`: the host's, the one given, or the backend's virtual time
    with --deterministic), each device's interrupt line (`irq_line`).
    """

    def __init__(
        self,
        cfg: MachineConfig,
        serial_sinks: list[Sink] | None = None,
        debugcon_sinks: list[Sink] | None = None,
        *,
        clock: Clock | None = None,
        messages: Callable[[str], None] | None = None,
        started: ProcessStart | None = None,
        profile: BootProfile | None = None,
    ) -> None:
        """`clock`: host time for the machine's devices (default: the host's monotonic clock;
        the debugger gives one that stands still while it holds the guest). --deterministic
        replaces it with the backend's virtual time. `messages`: where lines for the user go
        while the guest runs (the boot timer's; default: the log). `started`: when the VMM
        started, for the boot timer (default: now)."""
        self._messages = messages or log.info
        self._started = started or ProcessStart.now()
        self.profile = profile
        validate(cfg)
        self.cfg = cfg
        self._boot_data, self._kernel, rom_size = self._read_boot_source(cfg)
        self.memory = GuestMemory(cfg.mem, firmware_size=rom_size)
        self.bus = Bus()
        self.serial_out = OutputTap(serial_sinks, self._milestone_once("first byte on COM1"))
        self.debugcon_out = OutputTap(debugcon_sinks, self._milestone_once("first byte on the debug console"))
        self._action: Action | None = None
        self._exit_code = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._running = threading.Event()  # clear: paused (Firecracker's PATCH /vm Paused)
        self._running.set()
        self.resets = 0
        self.a20 = True
        self.devices: list[Device] = []
        self.virtio: list[Transport] = []
        self.virtio_threads: list[Worker] = []
        self.bios: Bios | None = None
        self._timer_thread: TimerThread | None = None
        try:
            self.backend = make_backend(cfg.backend, self.memory, self.bus, virtual_time=cfg.deterministic,
                                        cpus=cfg.smp)  # fmt: skip
        except BaseException:
            self.memory.close()
            raise
        try:
            self._build(clock)
        except BaseException:
            self.close()
            raise

    # -- construction -----------------------------------------------------------------------------
    @staticmethod
    def _read_boot_source(cfg: MachineConfig) -> tuple[bytes, KernelInputs | None, int]:
        """(firmware or flat image bytes, the kernel's inputs, the ROM size), read once."""
        if cfg.kernel is not None:
            return b"", read_inputs(cfg.kernel, cfg.initrd, cfg.modules, cfg.cmdline), 0
        if cfg.image is not None:
            return flat.read_image(cfg.image, "image"), None, 0
        # --bios, or the bundled BIOS booting the disks
        data = flat.read_image(cfg.bios or rom_path(BIOS_ROM), "firmware image")
        return data, None, flat.firmware_rom_size(len(data))

    def _milestone_once(self, name: str) -> Callable[[], None] | None:
        profile = self.profile
        return None if profile is None else lambda: profile.mark(name, once=True)

    def _build(self, clock: Clock | None) -> None:
        virtual = self.backend.virtual_time()
        self._virtual = VirtualClock(virtual) if virtual is not None else None
        self.clock: Clock = self._virtual or clock or HostClock()
        if self.profile is not None:
            self.profile.attach(self.clock.now_ns, self.backend.executed_code_bytes, self.backend.name)
        self.timers = TimerQueue(self.clock)
        if self._virtual is not None:
            self._virtual.follow(self.timers)  # runs end at timer deadlines: no timer thread
        else:
            self._timer_thread = TimerThread(self.timers, self._kick_for_timers)
        self.irqchip = self._make_irqchip()
        self._add_devices()
        self._boot()

    def _make_irqchip(self) -> IrqChip:
        """The backend's in-kernel controllers, else emu's own on the CPU's INTR pin."""
        chip = self.backend.kernel_irqchip()
        if chip is not None:
            return chip
        pins, msrs = self.backend.interrupt_pins(), self.backend.msr_routers()
        if pins is None or msrs is None:
            raise HostError(f"the {self.backend.name} backend has neither interrupt controllers nor an INTR pin")
        return EmuIrqChip(self.bus, pins, self.timers, msrs, self.backend.guest_tsc(), self.backend.current_cpu)

    def irq_line(self, gsi: int) -> IrqLine:
        """Interrupt line `gsi` of the machine's controllers, for a device to raise and lower."""
        return functools.partial(self.set_irq, gsi)

    def _legacy_timer_line(self, gsi: int) -> IrqLine:
        """The PIT's IRQ 0 or the RTC's IRQ 8: cut off while the HPET's legacy replacement
        routes its own timers there (IA-PC HPET spec 2.4)."""

        def line(level: bool) -> None:
            if not self._hpet_legacy:
                self.set_irq(gsi, level)

        return line

    def _set_hpet_legacy(self, enabled: bool) -> None:
        self._hpet_legacy = enabled
        if enabled and self.backend.capabilities.in_kernel_pit:
            log.debug("HPET legacy replacement: KVM's in-kernel PIT is not cut off from IRQ 0")
        elif enabled:
            # The PIT and the RTC are cut off: a line they left high would hide the HPET's edges.
            self.set_irq(layout.IRQ_PIT, False)
            self.set_irq(layout.IRQ_RTC, False)

    def _add_devices(self) -> None:
        self._hpet_legacy = False
        if not self.backend.capabilities.in_kernel_pit:
            pit = Pit(self.timers, irq0=self._legacy_timer_line(layout.IRQ_PIT))
            pit.register(self.bus)  # with port 0x61
            self.devices.append(pit)
        # The RTC and the HPET are never in the kernel.
        epoch = FIXED_EPOCH if self._virtual is not None else None
        self.cmos = Cmos(self.timers, irq8=self._legacy_timer_line(layout.IRQ_RTC), memory_size=self.cfg.mem,
                         epoch=epoch)  # fmt: skip
        self.cmos.register(self.bus)
        self.hpet = Hpet(self.timers, self.irq_line, on_legacy=self._set_hpet_legacy)
        self.hpet.register(self.bus)
        self.devices += [self.cmos, self.hpet]
        routers, tsc = self.backend.msr_routers(), self.backend.guest_tsc()
        if routers is not None and tsc is not None:  # a backend without KVM's own kvmclock
            kvmclock = KvmClock(self.memory, self.clock, tsc, epoch=epoch, cpus=len(routers))
            for cpu, router in enumerate(routers):
                router.route(KVMCLOCK_MSRS, kvmclock.handler(cpu))
            self.devices.append(kvmclock)
        self.serial = Serial16550A(irq=self.irq_line(layout.IRQ_COM1), output=self.serial_out)
        self.serial.register(self.bus)
        self.i8042 = I8042(
            on_reset=self.request_reset,
            on_a20=self._set_a20,
            irq1=self.irq_line(layout.IRQ_I8042),
            # Linux's probe loops a byte back through the aux channel and waits 250 ms for IRQ 12.
            irq12=self.irq_line(layout.IRQ_I8042_AUX),
        )
        self.i8042.register(self.bus)
        self.sysctl = SystemControlA(on_reset=self.request_reset, on_a20=self._set_a20)
        self.sysctl.register(self.bus)
        self.debug_exit = DebugExit(on_exit=self.request_debug_exit)
        self.debug_exit.register(self.bus)
        self.debugcon = DebugConsole(output=self.debugcon_out)
        self.debugcon.register(self.bus)
        self.post = PostCodes()
        self.post.register(self.bus)
        self.boot_timer: BootTimer | None = None
        if self.cfg.boot_timer:
            self.boot_timer = BootTimer(self._started, self._boot_time)
            self.boot_timer.register(self.bus)
            self.devices.append(self.boot_timer)
        self.devices += [self.serial, self.i8042, self.sysctl, self.debug_exit, self.debugcon, self.post]
        if self.cfg.firmware_boot:  # BIOS services
            self.bios = Bios(self.memory, self.bus, self.cfg.bios_disks(), self.cfg.snapshot, BiosHost(
                console=self.serial_out.sinks,
                serial_used=lambda: bool(self.serial_out.buf),
                set_a20=self._set_a20, a20=lambda: self.a20,
                invalidate_code=lambda addr, size: self.backend.invalidate_code(addr, size),
                milestone=self.profile.mark if self.profile is not None else None,
            ))  # fmt: skip
            self.bios.register(self.bus)
            self.devices.append(self.bios)

        # PCI bus 0 (host bridge on 0xCF8/0xCFC) and virtio devices (issue 5); Linux learns of
        # virtio-mmio ones from its command line. emu assigns the PCI BARs as firmware would.
        self.pci = PciHost(self.bus, self.irq_line)
        self.pci.register()
        self.devices.append(self.pci)
        # Under KVM each virtio device gets a thread fed by ioeventfds and raising irqfds.
        board = VirtioBoard(self.bus, self.pci, self.irq_line, self.backend.event_fds())
        # A virtio-pci disk the BIOS also boots is one open image for both (a qcow2 has one writer).
        opened = {id(d.spec): d for d in self.bios.disks} if self.bios is not None else {}
        attached = attach_virtio(requested_devices(self.cfg, self.memory, self._defer, opened), board)
        self.virtio, self.virtio_threads = attached.transports, attached.threads
        self.pci.assign()
        self.devices += self.virtio
        if self._kernel is not None and self.cfg.acpi:
            # --acpi on: the DSDT announces the virtio-mmio devices; the FADT's registers live here.
            acpi_pm = AcpiPm(layout.PORT_ACPI_PM_BASE, self.clock, on_power_off=self.request_power_off)
            acpi_pm.register(self.bus)
            self.devices.append(acpi_pm)
        if self._kernel is not None and self.virtio and (not self.cfg.acpi or self.cfg.virtio_cmdline_too):
            self._kernel = dataclasses.replace(self._kernel, cmdline=kernel_cmdline(self._kernel.cmdline, self.virtio))
            if not self.cfg.acpi and any(isinstance(d, VirtioMmio) for d in self.virtio):
                # Never a device silently invisible: many kernels (Debian's) cannot read these words.
                log.warning("the virtio-mmio devices are announced on the kernel command line only: a kernel "
                            "without CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES (Debian's) will not see them; "
                            "--acpi on lists them in ACPI too")  # fmt: skip

    def _boot_time(self, line: str) -> None:
        self._messages(line)
        if self.profile is not None:
            self.profile.mark("boot timer", line.removeprefix("Guest-boot-time = "))

    def _defer(self, work: Callable[[], None]) -> None:
        """Run `work` on the vCPU thread soon (any thread): host data for virtio devices (tap
        frames, console input) arrives through the timer queue, so device models stay
        single-threaded."""
        self.timers.add(self.clock.now_ns(), lambda _now: work())

    def _boot(self) -> None:
        if self._kernel is not None:
            rsdp = write_acpi(self.memory, self._acpi_config()) if self.cfg.acpi else 0
            state = load_kernel(self.memory, self._kernel, self.cfg.boot, rsdp, pci=self.pci.routes(),
                                cpus=self.cfg.smp)  # fmt: skip
        elif self.cfg.image is None:  # --bios, or the bundled BIOS booting --disk
            state = flat.load_firmware(self.memory, self._boot_data)
        else:
            state = flat.load_flat(self.memory, self._boot_data, self.cfg.load_addr)
        self.backend.set_state(state)
        self.backend.invalidate_code(0, self.memory.size)

    def _acpi_config(self) -> AcpiConfig:
        slot = layout.VIRTIO_MMIO_SLOT_SIZE
        mmio = [MmioDevice(d.base, slot, d.irq) for d in self.virtio if isinstance(d, VirtioMmio)]
        return AcpiConfig(cpus=self.cfg.smp, lapic=self.irqchip.local_apic, hpet=True, mmio_devices=tuple(mmio),
                          pci_intx=tuple(self.pci.routes()))  # fmt: skip

    def _reboot(self) -> None:
        self.resets += 1
        for r in self.memory.ram_regions:
            r.view[:] = bytes(r.size)
        self.timers.clear()
        self.irqchip.reset()
        for dev in self.devices:
            dev.reset()
        self.backend.reset_platform()
        self._set_a20(True)
        self._boot()

    # -- requests from devices and other threads ----------------------------------------------
    def set_irq(self, gsi: int, level: bool) -> None:
        """Interrupt line `gsi` changed (any thread); a wait in `hlt` looks again."""
        self.irqchip.set_irq(gsi, level)
        self._wake.set()

    def _kick_for_timers(self) -> None:
        """From the timer thread: a deadline passed; make the vCPU thread run the timers."""
        self._wake.set()
        self.backend.request_stop()

    def _run_timers(self) -> None:
        with self.bus.lock:  # the devices' lock: other vCPU threads (KVM --smp) use them too
            due = self.timers.run_due()
        if due and self._timer_thread is not None:
            self._timer_thread.notify()

    def _set_a20(self, enabled: bool) -> None:
        # Port 0x92, the i8042 output port and int 15h 24xx all land here; the last change wins.
        if enabled != self.a20:
            self.backend.set_a20(enabled)
            if not enabled and not self.backend.capabilities.a20_mask:
                log.info("A20 gate off: %s cannot mask address bit 20, so memory does not wrap", self.backend.name)
        self.a20 = enabled

    def _request(self, action: Action) -> None:
        with self._lock:
            # The first reason to stop wins (a timeout must not hide a debug-exit already asked).
            if self._action is None:
                self._action = action
        self._wake.set()
        self.backend.request_final_stop()

    def request_debug_exit(self, status: int) -> None:
        self._exit_code = status
        self._request(Action.DEBUG_EXIT)

    def request_reset(self) -> None:
        self._request(Action.RESET)

    def request_power_off(self) -> None:
        self._request(Action.POWER_OFF)

    def request_quit(self) -> None:
        self._request(Action.QUIT)

    def request_expect_timeout(self) -> None:
        self._request(Action.EXPECT_TIMEOUT)

    def pause(self) -> None:
        """Hold every vCPU until resume() (any thread); requests to end the run still work."""
        self._running.clear()
        self._wake.set()
        self.backend.request_stop()

    def resume(self) -> None:
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def _hold(self) -> Action | None:
        """While paused: wait for resume() or a request that ends the run (returned)."""
        while not self._running.is_set():
            action = self._take_action()
            if action is not None:
                return action
            self._running.wait(0.05)
        return None

    # -- running ------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Run the guest to its end in a vCPU thread; this thread stays free for signals."""
        box: list[RunResult] = []

        def vcpu() -> None:
            try:
                box.append(self._run_loop())
            except Exception as e:  # a bug in emu: report it, never hang
                log.debug("internal error\n%s", traceback.format_exc())
                box.append(self._result(ExitStatus.SOFTWARE, f"internal error: {type(e).__name__}: {e}"))

        timer = None
        if self.cfg.timeout is not None:
            timer = threading.Timer(self.cfg.timeout, self._request, (Action.TIMEOUT,))
            timer.daemon = True
            timer.start()
        thread = threading.Thread(target=vcpu, name="vcpu0", daemon=True)
        self.start_timers()
        thread.start()
        try:
            while thread.is_alive():
                thread.join(0.1)
        except KeyboardInterrupt:
            self.request_quit()
            thread.join(5)
        finally:
            if timer is not None:
                timer.cancel()
            if self._timer_thread is not None:
                self._timer_thread.stop()
        if not box:
            box.append(self._result(ExitStatus.SOFTWARE, "the vCPU did not stop"))
        if self.profile is not None:
            self.profile.mark("end", box[0].reason)
        return box[0]

    def _result(self, status: int, reason: str, exit_: Exit | None = None) -> RunResult:
        try:
            state = self.backend.get_state(exit_.detail.get("cpu", 0) if exit_ is not None else 0)
        except Exception:
            state = None
        return RunResult(
            status=int(status), reason=reason, exit_kind=exit_.kind if exit_ else None,
            serial=bytes(self.serial_out.buf), debugcon=bytes(self.debugcon_out.buf),
            state=state, exit=exit_, resets=self.resets,
        )  # fmt: skip

    def _take_action(self) -> Action | None:
        with self._lock:
            action, self._action = self._action, None
        return action

    def _run_loop(self) -> RunResult:
        return self.loop(None)

    # -- the run loop, shared with the debugger ---------------------------------------------------
    def start_timers(self) -> None:
        """Start kicking the vCPU at timer deadlines (virtual time needs no thread: runs end there)."""
        if self._timer_thread is not None:
            self._timer_thread.start()

    def wake(self) -> None:
        """End a wait in `hlt` early, so the waiter looks at its stop conditions (any thread)."""
        self._wake.set()

    def loop(self, driver: RunDriver[H] | None) -> RunResult | H:
        """Run the guest until the machine ends (its RunResult) or, with a `driver` (the
        debugger), until the driver finds a stop in an exit or its `stop` is set. Each turn: one
        run, the timers due, then a request (debug-exit, reset, timeout, quit) before the exit."""
        run = driver.run_once if driver is not None else self.backend.run
        stop = driver.stop if driver is not None else None
        mode = self._profile_mode(None) if self.profile is not None else None
        while stop is None or not stop.is_set():
            if not self._running.is_set() and (held := self._hold()) is not None:
                result = self._handle_action(held, Exit(ExitKind.INTERRUPTED, "paused"))
                if result is not None:
                    return result
            if self._virtual is not None:
                self._virtual.set_deadline(self.timers.next_deadline())
            exit_ = run()
            if mode is not None:
                mode = self._profile_mode(mode)
            self._run_timers()
            action = self._take_action()
            if action is not None:
                result = self._handle_action(action, exit_)
                if result is not None:
                    return result
                continue  # a reboot: the guest runs on from the reset vector
            if driver is not None and (hit := driver.examine(exit_)) is not None:
                return hit
            result = self._handle_exit(exit_, stop)
            if result is not None:
                return result
            if exit_.kind is ExitKind.HALT and stop is not None and stop.is_set():
                assert driver is not None
                return driver.stopped(in_hlt=True)
        assert driver is not None
        return driver.stopped(in_hlt=False)

    def _profile_mode(self, previous: Mode | None) -> Mode:
        """The boot profile's CPU milestones: the entry, then each mode change vCPU 0 shows."""
        assert self.profile is not None
        st = self.backend.sample_state(0)  # after every run: the cheap read
        where = f"{st.cs.selector:04x}:{st.rip:#x}"
        if previous is None:
            what = "kernel entry" if self._kernel is not None else "first instruction"
            self.profile.mark(what, f"{st.mode.value} at {where}")
        elif st.mode is not previous:
            self.profile.mark("mode change", f"{previous.value} -> {st.mode.value} (by {where})")
        return st.mode

    def _handle_exit(self, exit_: Exit, stop: threading.Event | None) -> RunResult | None:
        """What an exit means for the machine: its result when the run ends, else None (the
        guest runs on). A `hlt` with interrupts enabled waits here, until `stop` is set too."""
        kind = exit_.kind
        if kind is ExitKind.HALT:
            if exit_.detail.get("for_good") or self.backend.is_halted_for_good():
                return self._result(ExitStatus.OK, "guest halted with interrupts disabled", exit_)
            return self._wait_for_interrupt(stop)
        if kind is ExitKind.SHUTDOWN:
            if self.cfg.triple_fault is TripleFaultPolicy.EXIT0:
                reason = "guest shut down by a triple fault (--triple-fault=exit0)"
                return self._result(ExitStatus.OK, reason, exit_)
            if self.cfg.triple_fault is TripleFaultPolicy.RESET:
                log.info("triple fault (%s): resetting (--triple-fault=reset)", exit_.message)
                if self.cfg.no_reboot:
                    return self._result(ExitStatus.OK, "guest reset by a triple fault (--no-reboot)", exit_)
                self._reboot()
                return None
            return self._result(ExitStatus.TRIPLE_FAULT, f"triple fault: {exit_.message}", exit_)
        if kind is ExitKind.RESET:
            self._reboot()
        elif kind is ExitKind.POWEROFF:
            return self._result(ExitStatus.OK, "guest powered off", exit_)
        elif kind is ExitKind.ERROR:
            return self._result(ExitStatus.SOFTWARE, exit_.message, exit_)
        return None  # INTERRUPTED, DEBUG: run on

    def _handle_action(self, action: Action, exit_: Exit) -> RunResult | None:
        if action is Action.DEBUG_EXIT:
            return self._result(
                self._exit_code, f"guest wrote to the debug-exit port (status {self._exit_code})", exit_
            )
        if action is Action.TIMEOUT:
            return self._result(ExitStatus.TIMEOUT, f"timeout: the guest ran for {self.cfg.timeout:g} s", exit_)
        if action is Action.QUIT:
            return self._result(ExitStatus.OK, "quit by the user", exit_)
        if action is Action.POWER_OFF:
            return self._result(ExitStatus.OK, "guest powered off (ACPI S5)", exit_)
        if action is Action.EXPECT_TIMEOUT:
            return self._result(ExitStatus.EXPECT_MISSING, "--expect-timeout expired", exit_)
        if action is Action.RESET:
            if self.cfg.no_reboot:
                return self._result(ExitStatus.OK, "guest requested a reset (--no-reboot)", exit_)
            log.info("guest requested a reset: rebooting")
            self._reboot()
        return None

    def _wait_for_interrupt(self, stop: threading.Event | None = None) -> RunResult | None:
        """hlt with interrupts enabled: sleep until an interrupt can be taken, `stop` is set or
        we must stop. Timers run here too (this is the vCPU thread)."""
        while (stop is None or not stop.is_set()) and self._running.is_set():
            action = self._take_action()
            if action is not None:
                return self._handle_action(action, Exit(ExitKind.HALT))
            self._run_timers()
            if self.backend.is_halted_for_good():
                return self._result(ExitStatus.OK, "guest halted with interrupts disabled", Exit(ExitKind.HALT))
            if self.irqchip.interrupt_ready():
                return None
            if self._virtual is not None and (deadline := self.timers.next_deadline()) is not None:
                self._virtual.skip_to(deadline)  # nothing runs until the next timer: jump there
                continue
            timeout = 0.05
            deadline = self.timers.next_deadline()
            if deadline is not None:
                timeout = min(timeout, max(0.0, (deadline - self.clock.now_ns()) / 1e9))
            self._wake.wait(timeout)
            self._wake.clear()
        return None

    def close(self) -> None:
        """Release everything; also on a machine whose construction failed half-way."""
        if self.bios is not None:
            self.bios.close()
        close_virtio(self.virtio, self.virtio_threads)
        if self._timer_thread is not None:
            self._timer_thread.stop()
        self.backend.close()
        self.memory.close()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_machine(cfg: MachineConfig, **kwargs: object) -> RunResult:
    """Build, run and tear down a machine (convenience for tests and scripts)."""
    m = Machine(cfg, **kwargs)  # type: ignore[arg-type]
    try:
        return m.run()
    finally:
        m.close()
