"""What each vCPU of the Unicorn backend has of its own: its saved CPU state, its CPUID, its
MSR handlers, and its pins (INTR, NMI, INIT, STARTUP) that emu's local APIC drives.

All vCPUs run on the backend's one engine, one at a time (backend.py switches CPU contexts;
smp.py decides when), so they share one translation cache: a store by any vCPU to code that any
vCPU translated invalidates it, exactly as for one CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from emu.platform import MsrHandler

if TYPE_CHECKING:
    from unicorn.unicorn_py3 import UcContext

    from emu.backends.unicorn.msr_intercept import MsrIntercept

log = logging.getLogger("emu.unicorn")

Regs = tuple[int, int, int, int]


@dataclass
class Vcpu:
    """One vCPU's state outside the engine (and, while another vCPU runs, inside `context`)."""

    index: int  # also its initial APIC ID
    cpuid: dict[tuple[int, int], Regs]
    context: UcContext | None = None  # the engine's CPU state while this vCPU is switched out
    intr_pending: bool = False
    nmi_pending: bool = False
    init_pending: bool = False
    wait_sipi: bool = False  # an application processor after power-on or INIT
    sipi_vector: int | None = None
    halted: bool = False  # its last run ended in hlt: it runs again only for an event
    if_at_halt: bool = False  # RFLAGS.IF when it halted (a halted vCPU's IF cannot change)
    acknowledge: Callable[[], int] | None = None  # the INTA cycle of its local APIC
    handlers: dict[int, MsrHandler] = field(default_factory=dict)

    def power_on(self) -> None:
        """Power-on or INIT: nothing pending; an application processor waits for STARTUP."""
        self.intr_pending = self.nmi_pending = self.init_pending = False
        self.halted = self.if_at_halt = False
        self.wait_sipi, self.sipi_vector = self.index != 0, None

    def ready(self, accepts_interrupt: bool) -> bool:
        """Running it now does something: not waiting for STARTUP, and not halted unless an NMI,
        an INIT or an interrupt it accepts (`accepts_interrupt`) arrived."""
        if self.init_pending or self.nmi_pending:
            return True
        if self.wait_sipi:
            return self.sipi_vector is not None
        return not self.halted or accepts_interrupt

    def halted_for_good(self) -> bool:
        """Halted with IF=0 or waiting for STARTUP, and nothing pending that could wake it."""
        if self.init_pending or self.nmi_pending:
            return False
        if self.wait_sipi:
            return self.sipi_vector is None
        return self.halted and not self.if_at_halt

    def status(self) -> str:
        if self.wait_sipi and self.sipi_vector is None and not self.init_pending:
            return "wait-for-sipi"
        return "halted" if self.halted else "running"


class VcpuMsrs:
    """One vCPU's MSR router (emu.platform.MsrRouter): its own handlers, the engine's shared
    intercept map (every vCPU intercepts the same MSRs)."""

    def __init__(self, intercept: MsrIntercept, vcpu: Vcpu) -> None:
        self._intercept = intercept
        self._vcpu = vcpu

    def route(self, msrs: Iterable[int], handler: MsrHandler) -> None:
        msrs = list(msrs)
        for msr in msrs:
            self._vcpu.handlers[msr] = handler
        self._intercept.intercept(msrs)


class VcpuEngine(Protocol):
    """What a vCPU's pins need of the engine that runs it (backend.py)."""

    def current_cpu(self) -> int: ...
    def event_for(self, v: Vcpu) -> None: ...
    def start_up(self, v: Vcpu, vector: int) -> None: ...
    def accepts_interrupt(self, v: Vcpu) -> bool: ...
    def clear_window(self) -> None: ...


class VcpuPin:
    """One vCPU's inputs from its local APIC (emu.platform.InterruptPin)."""

    def __init__(self, backend: VcpuEngine, vcpu: Vcpu) -> None:
        self._backend = backend
        self._v = vcpu

    def connect(self, acknowledge: Callable[[], int]) -> None:
        self._v.acknowledge = acknowledge

    def set_intr(self, pending: bool) -> None:
        """From any thread, possibly under the APIC's lock: never blocks."""
        self._v.intr_pending = pending
        if pending:
            self._backend.event_for(self._v)
        elif self._backend.current_cpu() == self._v.index:
            self._backend.clear_window()

    def nmi(self) -> None:
        # Delivered at the start of the vCPU's next run, whatever IF says. Not modelled: NMI
        # blocking until the handler's iret (a second NMI meanwhile is delivered at once).
        self._v.nmi_pending = True
        self._backend.event_for(self._v)

    def init(self) -> None:
        self._v.init_pending = True
        self._backend.event_for(self._v)

    def startup(self, vector: int) -> None:
        self._backend.start_up(self._v, vector)

    def accepts_interrupt(self) -> bool:
        return self._backend.accepts_interrupt(self._v)
