"""The interface both CPU backends implement, what each declares it can do, and the Exit they return.

Optional features are declared, never probed: `capabilities` lists the plain facts, and each
optional interface is an accessor returning a typed object or None (`virtual_time()`,
`event_fds()`, `block_trace()`, `kernel_irqchip()`, `interrupt_pins()`, `instruction_hooks()`,
`guest_debug()`). Callers use only these; nothing outside a backend's package names a concrete
backend class.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from emu.bus import Bus
from emu.cpu.state import CpuState
from emu.memory import GuestMemory
from emu.platform import EventFds, GuestTsc, InterruptPin, IrqChip, MsrRouter

if TYPE_CHECKING:
    import unicorn

    from emu.cpu.interrupts import Event


class ExitKind(Enum):
    HALT = "halt"  # hlt: waiting for an interrupt (the machine decides whether one can come)
    SHUTDOWN = "shutdown"  # triple fault
    RESET = "reset"  # the guest asked for a reset (reported by the machine, not a backend)
    POWEROFF = "poweroff"
    DEBUG = "debug"  # breakpoint, watchpoint, single step, mode change
    INTERRUPTED = "interrupted"  # request_stop() from another thread, or a device asked to stop
    ERROR = "error"


@dataclass
class Exit:
    """Why run() returned. `detail["cpu"]`: the vCPU it concerns (absent: CPU 0)."""

    kind: ExitKind
    message: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


class BackendUnavailable(Exception):
    """The backend cannot run on this host (e.g. no usable /dev/kvm); the message says why."""


@dataclass(frozen=True)
class Capabilities:
    """Plain facts about a backend that have no interface object of their own."""

    #: Masks physical address bit 20 while the A20 gate is off (KVM cannot, like QEMU under KVM).
    a20_mask: bool
    #: The 8254 PIT (and nothing else of port 0x61) is emulated in the kernel.
    in_kernel_pit: bool
    #: Data breakpoints (debug-register watchpoints) fire. False on a host whose KVM ignores DR7.
    data_breakpoints: bool
    #: Why data breakpoints do not fire (None when they do).
    data_breakpoints_note: str | None = None


@dataclass(frozen=True)
class TraceEntry:
    """One translation block the guest started, for a fault report's "last instructions"."""

    address: int  # linear address of its first instruction
    size: int  # bytes of code
    repeat: int  # times it ran back to back
    hflags: int | None  # QEMU hflags at its start (None: not recorded on this build)


class VirtualTime(Protocol):
    """Guest time taken from the code the guest executes (--deterministic)."""

    #: The TSC rate guests see in virtual time (CPUID leaf 0x15 reports it).
    tsc_khz: int
    #: Bytes of guest code executed per nanosecond of guest time.
    code_bytes_per_ns: int

    def now_ns(self) -> int:
        """Guest time: executed code plus time skipped while halted."""

    def skip_to(self, ns: int) -> None:
        """A halted CPU waits for a timer: guest time jumps to `ns`."""

    def set_deadline(self, ns: int | None) -> None:
        """End runs when guest time reaches `ns` (the machine's next timer), also while the
        guest runs (from an I/O hook on the vCPU thread)."""


class InstructionHooks(Protocol):
    """A backend whose every instruction is observable (Unicorn): the debugger hooks the engine
    itself, sees every interrupt and exception before delivery, and ends runs from its hooks."""

    @property
    def uc(self) -> unicorn.Uc: ...

    #: Called with every interrupt or exception before emu delivers it (None: nobody listens).
    on_event: Callable[[Event], None] | None

    def debug_stop(self, exit_: Exit) -> None:
        """From a hook: end the run with `exit_` (a code hook's stop lands before its instruction)."""


class GuestDebug(Protocol):
    """Hardware-assisted debugging (KVM_SET_GUEST_DEBUG): single-step and the four debug registers."""

    def set_guest_debug(self, control: int, debugreg: list[int] | None = None) -> None: ...


class Backend(abc.ABC):
    """A CPU that runs guest code against GuestMemory and dispatches port I/O and MMIO to a Bus.

    Port and MMIO accesses never surface as exits: the backend calls the Bus itself. Interrupts
    reach the CPU either through the backend's own in-kernel controllers (`kernel_irqchip()`)
    or through their INTR pins driven by emu's controllers (`interrupt_pins()`); exactly one of
    the two is not None.

    Several CPUs (`cpus` > 1): CPU 0 is the bootstrap processor and starts at the state given
    to set_state; the others wait for INIT-SIPI-SIPI. run() runs them all and returns when the
    machine must look (an exit names its vCPU in `detail["cpu"]`); HALT only when every vCPU
    waits. State accessors take the vCPU's index and are called while run() is not in progress.
    """

    name: str = "?"

    def __init__(self, memory: GuestMemory, bus: Bus, cpus: int = 1) -> None:
        self.memory = memory
        self.bus = bus
        self.cpus = cpus

    # -- what the backend can do ------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def capabilities(self) -> Capabilities: ...

    def kernel_irqchip(self) -> IrqChip | None:
        """The interrupt controllers the backend emulates itself (KVM's in-kernel irqchip)."""
        return None

    def interrupt_pins(self) -> Sequence[InterruptPin] | None:
        """Each vCPU's INTR input (and INIT, STARTUP, NMI), for a backend without interrupt
        controllers of its own (Unicorn)."""
        return None

    def current_cpu(self) -> int:
        """The vCPU whose access a device is handling (its local APIC page and MSRs are its own)."""
        return 0

    def virtual_time(self) -> VirtualTime | None:
        """Guest time from executed code (--deterministic), where the backend can count it."""
        return None

    def msr_routers(self) -> Sequence[MsrRouter] | None:
        """Per vCPU: where emu's devices take over MSRs the backend lacks (Unicorn)."""
        return None

    def guest_tsc(self) -> GuestTsc | None:
        """The TSC the guest reads, for emu's own devices that need it (Unicorn)."""
        return None

    def event_fds(self) -> EventFds | None:
        """ioeventfd/irqfd registrations for device threads (KVM with the capabilities)."""
        return None

    def executed_code_bytes(self) -> int | None:
        """Bytes of guest code executed so far (translation blocks started; None: not counted)."""
        return None

    def block_trace(self) -> list[TraceEntry] | None:
        """The blocks the guest started most recently, oldest first (None: not recorded)."""
        return None

    def instruction_hooks(self) -> InstructionHooks | None:
        """Per-instruction observation for the debugger (Unicorn)."""
        return None

    def guest_debug(self) -> GuestDebug | None:
        """Debug registers and hardware single-step for the debugger (KVM)."""
        return None

    # -- running ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def run(self) -> Exit:
        """Run until something the machine must see happens."""

    @abc.abstractmethod
    def request_stop(self) -> None:
        """Make a run() in progress (in any thread) return INTERRUPTED soon. Thread-safe."""

    def request_final_stop(self) -> None:
        """Like request_stop, for a run that ends or reboots: no further guest effect matters."""
        self.request_stop()

    @abc.abstractmethod
    def step(self, cpu: int = 0) -> Exit:
        """Execute exactly one instruction of vCPU `cpu` (the others stand still) and return
        DEBUG (or the exit it caused)."""

    @abc.abstractmethod
    def get_state(self, cpu: int = 0) -> CpuState: ...

    @abc.abstractmethod
    def set_state(self, state: CpuState, cpu: int = 0) -> None: ...

    def sample_state(self, cpu: int = 0) -> CpuState:
        """vCPU `cpu`'s registers, segments, control registers and RFLAGS, where a backend can read
        them more cheaply than get_state() (no FPU, MSRs or debug registers): for frequent samples."""
        return self.get_state(cpu)

    def cpu_status(self, cpu: int) -> str:
        """What vCPU `cpu` is doing, for `info cpus`: "running", "halted", "wait-for-sipi"."""
        return "running"

    def set_a20(self, enabled: bool) -> None:
        """The A20 gate changed (masked only where `capabilities.a20_mask`)."""

    def reset_platform(self) -> None:
        """A reboot: return what the backend emulates besides the bootstrap CPU's registers (KVM's
        in-kernel interrupt controllers and PIT, the other vCPUs back to wait-for-SIPI) to its
        power-on state."""

    def invalidate_code(self, paddr: int, size: int) -> None:
        """Guest memory at paddr was written from the host: drop any translated code there."""

    @abc.abstractmethod
    def is_halted_for_good(self) -> bool:
        """True when every vCPU sits in hlt with interrupts masked or waits for a STARTUP that
        no running CPU can send (nothing can wake the machine)."""

    def close(self) -> None:
        """Release host resources; the backend is unusable afterwards."""
