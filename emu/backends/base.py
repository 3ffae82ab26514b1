"""The interface both CPU backends implement, and the Exit they return."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from emu.bus import Bus
from emu.cpu.state import CpuState
from emu.memory import GuestMemory


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
    kind: ExitKind
    message: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


class BackendUnavailable(Exception):
    """The backend cannot run on this host (e.g. no usable /dev/kvm); the message says why."""


class Backend(abc.ABC):
    """A CPU that runs guest code against GuestMemory and dispatches port I/O and MMIO to a Bus.

    Port and MMIO accesses never surface as exits: the backend calls the Bus itself.
    Interrupt lines are raised with set_irq(); how they reach the CPU (in-kernel irqchip under
    KVM, emu's software PIC under Unicorn) is the backend's business.
    """

    name: str = "?"
    #: True when the backend owns the interrupt controllers (KVM's in-kernel irqchip).
    has_irqchip: bool = False

    def __init__(self, memory: GuestMemory, bus: Bus) -> None:
        self.memory = memory
        self.bus = bus
        #: INTA cycle of a software interrupt controller (backends without an irqchip): returns
        #: the vector of the interrupt the CPU takes.
        self.intr_ack: Callable[[], int] | None = None

    @abc.abstractmethod
    def run(self) -> Exit:
        """Run until something the machine must see happens."""

    @abc.abstractmethod
    def request_stop(self) -> None:
        """Make a run() in progress (in any thread) return INTERRUPTED soon. Thread-safe."""

    def set_a20(self, enabled: bool) -> bool:
        """The A20 gate changed. True when the backend masks physical address bit 20 while it is
        off (KVM cannot, like QEMU under KVM)."""
        return False

    def reset_platform(self) -> None:
        """A reboot: return what the backend emulates besides the CPU (KVM's in-kernel
        interrupt controllers and PIT) to its power-on state."""

    def request_final_stop(self) -> None:
        """Like request_stop, for a run that ends or reboots: no further guest effect matters."""
        self.request_stop()

    @abc.abstractmethod
    def get_state(self) -> CpuState: ...

    @abc.abstractmethod
    def set_state(self, state: CpuState) -> None: ...

    def step(self) -> Exit:
        """Execute exactly one instruction and return DEBUG (or the exit it caused)."""
        raise NotImplementedError(f"single-step is not available on the {self.name} backend yet")

    def set_irq(self, line: int, level: bool) -> None:
        """Drive an interrupt line (only for backends with has_irqchip)."""
        raise NotImplementedError

    def set_intr(self, pending: bool) -> None:
        """INTR pin from a software interrupt controller (backends without an irqchip)."""

    def interrupt_ready(self) -> bool:
        """INTR is pending and the CPU accepts it now (backends without an irqchip)."""
        return False

    def invalidate_code(self, paddr: int, size: int) -> None:
        """Guest memory at paddr was written from the host: drop any translated code there."""

    def is_halted_for_good(self) -> bool:
        """True when the vCPU sits in hlt with interrupts masked (nothing can wake it)."""
        return False

    def close(self) -> None:
        """Release host resources; the backend is unusable afterwards."""
