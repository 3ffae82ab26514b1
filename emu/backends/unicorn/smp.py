"""When each vCPU of the Unicorn backend runs (`--smp N`).

All vCPUs share one engine and run one at a time on the one vCPU thread (backend.py switches
their CPU contexts), so a locked instruction, or any instruction, is atomic with respect to the
other vCPUs, memory is sequentially consistent, and a store by any vCPU to code that any of
them translated invalidates that translation, as for one CPU.

The running vCPU keeps the engine for a time slice while another one is ready (runnable, or
halted with an interrupt it accepts, or given an NMI, INIT or STARTUP). An event for a vCPU
that is not running (an IPI, an IOAPIC message, its APIC timer) ends the slice at once, so a CPU
waiting for an IPI's answer does not wait out the slice. A halted vCPU is never run; when none is
ready, run() returns HALT and the machine waits for an interrupt as it does for one CPU. Slices
are host time (a slicer thread ends them) or, with --deterministic, guest time: then the whole
run, the interleaving included, depends only on the guest. Guest time and the TSC are one clock
for every vCPU (the host's, or the engine's executed code).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

from emu.backends.base import Exit, ExitKind
from emu.backends.unicorn.vcpu import Vcpu
from emu.backends.unicorn.virtual_time import UnicornVirtualTime

SLICE_S = 0.002  # host time a vCPU keeps the engine while another is ready
SLICE_NS = 1_000_000  # the same in guest time (--deterministic)


class Engine(Protocol):
    """What the scheduler needs of the engine that runs the vCPUs (backend.py)."""

    cpus: int

    def current_cpu(self) -> int: ...
    def vcpu(self, index: int) -> Vcpu: ...
    def accepts_interrupt(self, v: Vcpu) -> bool: ...
    def switch_to(self, index: int) -> None: ...
    def run_current(self) -> Exit: ...
    def request_stop(self) -> None: ...


class _Slicer:
    """Ends the running vCPU's slice after SLICE_S of host time (a daemon thread)."""

    def __init__(self, backend: Engine) -> None:
        self._backend = backend
        self._cond = threading.Condition()
        self._armed = False
        self._deadline = 0.0
        self._closed = False
        self.expired = False
        self._thread = threading.Thread(target=self._main, name="unicorn-smp-slicer", daemon=True)
        self._thread.start()

    def arm(self) -> None:
        with self._cond:
            self._armed, self._deadline, self.expired = True, time.monotonic() + SLICE_S, False
            self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._armed, self.expired = False, False

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _main(self) -> None:
        with self._cond:
            while not self._closed:
                if not self._armed:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self._armed, self.expired = False, True
                self._backend.request_stop()


class Scheduler:
    """Round-robin slices over the backend's vCPUs (see the module's docstring)."""

    def __init__(self, backend: Engine, *, virtual: UnicornVirtualTime | None) -> None:
        self._backend = backend
        self._virtual = virtual
        self._slicer = _Slicer(backend) if virtual is None else None
        self._yield = False  # a vCPU that is not running got an event: end the slice
        self._sliced = False  # the running slice has an end (another vCPU was ready)
        self.switches = 0  # vCPU switches (benchmarks report them)

    def wake(self, cpu: int) -> None:
        """An event for vCPU `cpu`, which is not the one in the engine (any thread)."""
        self._yield = True
        self._backend.request_stop()

    def reset(self) -> None:
        self._yield = self._sliced = False
        self._backend.switch_to(0)

    def close(self) -> None:
        if self._slicer is not None:
            self._slicer.close()

    def _ready(self, cpu: int) -> bool:
        b = self._backend
        return b.vcpu(cpu).ready(b.accepts_interrupt(b.vcpu(cpu)))

    def _slice_over(self) -> bool:
        if self._yield:
            return True
        if not self._sliced:
            return False
        if self._virtual is not None:
            return self._virtual.slice_over()
        return self._slicer is not None and self._slicer.expired

    def _pick(self) -> int | None:
        """The vCPU to run next: the one in the engine until its slice is over, then the next
        ready one in round-robin order."""
        current, n = self._backend.current_cpu(), self._backend.cpus
        if self._ready(current) and not self._slice_over():
            return current
        for k in range(1, n + 1):  # the current one last
            cpu = (current + k) % n
            if self._ready(cpu):
                return cpu
        return None

    def _start_slice(self, cpu: int) -> None:
        n = self._backend.cpus
        others = any(self._ready(c) for c in range(n) if c != cpu)
        self._yield, self._sliced = False, others
        if self._virtual is not None:
            self._virtual.set_slice(SLICE_NS if others else None)
        elif self._slicer is not None:
            if others:
                self._slicer.arm()
            else:
                self._slicer.disarm()

    def run(self) -> Exit:
        b = self._backend
        while True:
            cpu = self._pick()
            if cpu is None:
                return Exit(ExitKind.HALT, "every vCPU waits", {"cpu": b.current_cpu()})
            if cpu != b.current_cpu():
                self.switches += 1
                b.switch_to(cpu)
                self._start_slice(cpu)
            elif not self._sliced or self._slice_over():
                self._start_slice(cpu)
            exit_ = b.run_current()
            if exit_.kind is ExitKind.HALT:
                # Another vCPU's turn, or every vCPU waits. A stop requested meanwhile ends the
                # next vCPU's run at once: the machine still sees it.
                continue
            # Everything else goes to the machine (for INTERRUPTED its timers may be due); the
            # slice survives that.
            exit_.detail.setdefault("cpu", cpu)
            return exit_
