"""The contracts between the CPU side (backends) and the platform side (devices).

Backends never import devices and devices never import backends; both import this module. It
holds what crosses that line: an interrupt line, the machine's interrupt controller (one object
chosen once per machine: KVM's in-kernel one or emu's own), the CPU's INTR pin that emu's own
controller drives, and the event-fd registrations a backend may offer to device threads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

#: One interrupt line as a device sees it: call with True to raise it, False to lower it.
#: Any thread may call it; it never blocks.
IrqLine = Callable[[bool], None]


class IrqChip(Protocol):
    """The platform's interrupt controllers behind one interface (crosvm's IrqChip is the model).

    Devices raise and lower numbered lines (GSIs: 0-15 are the ISA IRQs, above them PCI and
    virtio lines); the vCPU loop asks whether an interrupt can be taken now. Whether the 8259s,
    IOAPIC and local APICs live in the kernel (KVM) or in emu (Unicorn) matters to no device and
    not to the Machine.
    """

    #: Who implements it, for views and logs ("KVM in-kernel irqchip", "emu's 8259A pair").
    name: str
    #: Each vCPU has a local APIC (and there is an IOAPIC): ACPI gets a MADT.
    local_apic: bool

    def set_irq(self, gsi: int, level: bool) -> None:
        """Drive interrupt line `gsi` (any thread, never blocks)."""

    def interrupt_ready(self) -> bool:
        """A halted vCPU could take an interrupt now, so its wait in `hlt` should end. An
        in-kernel controller wakes the vCPU inside the kernel: always True."""

    def reset(self) -> None:
        """A reboot: every controller back to its power-on state."""

    def describe(self) -> dict[str, Any]:
        """The controllers' state for the debugger (the 8259 pair at least)."""


class CpuSignals(Protocol):
    """What an interrupt controller (a local APIC) signals to its CPU. Called from any thread,
    possibly under the controller's lock: never blocks."""

    def set_intr(self, pending: bool) -> None:
        """An interrupt is deliverable (or no longer is): the CPU runs the INTA cycle when it
        takes it (IF=1, at an instruction boundary)."""

    def nmi(self) -> None:
        """An NMI for this CPU."""

    def init(self) -> None:
        """INIT: the CPU resets; a bootstrap processor starts again at the reset vector, an
        application processor waits for STARTUP."""

    def startup(self, vector: int) -> None:
        """STARTUP (SIPI): a CPU waiting for it starts in real mode at vector << 12."""


class InterruptPin(CpuSignals, Protocol):
    """The INTR input (and NMI/INIT/STARTUP) of a CPU that has no interrupt controller of its own
    (Unicorn): emu's controller drives it, and the CPU runs the INTA cycle through `acknowledge`
    when it takes the interrupt."""

    def connect(self, acknowledge: Callable[[], int]) -> None:
        """The INTA cycle: returns the vector of the interrupt the CPU takes now."""

    def accepts_interrupt(self) -> bool:
        """INTR is pending and the CPU would take it now (IF=1)."""


class MsrHandler(Protocol):
    """A device that owns model-specific registers a backend does not implement itself (under
    Unicorn: the local APIC's and kvmclock's)."""

    def read_msr(self, msr: int) -> int | None:
        """The value, or None when the access raises #GP."""

    def write_msr(self, msr: int, value: int) -> bool:
        """False when the access raises #GP."""


class MsrRouter(Protocol):
    """MSRs a backend does not implement, sent to emu's devices (Unicorn: the local APIC's and
    kvmclock's; KVM implements them in the kernel)."""

    def route(self, msrs: Iterable[int], handler: MsrHandler) -> None: ...


class GuestTsc(Protocol):
    """The TSC the guest reads, for devices that convert between it and time (kvmclock, the
    local APIC's TSC-deadline timer)."""

    #: Its rate.
    khz: int

    def read(self) -> int:
        """The guest's TSC now."""


class EventFds(Protocol):
    """Registrations a backend offers so that device threads bypass the vCPU (KVM: ioeventfd
    for a guest's queue notify, resampling irqfd for the device's interrupt line)."""

    def add_ioeventfd(self, fd: int, addr: int, length: int, *, pio: bool, datamatch: int | None) -> None: ...
    def remove_ioeventfd(self, fd: int, addr: int, length: int, *, pio: bool, datamatch: int | None) -> None: ...
    def add_irqfd(self, fd: int, gsi: int, resample_fd: int) -> None: ...
    def remove_irqfd(self, fd: int, gsi: int) -> None: ...
