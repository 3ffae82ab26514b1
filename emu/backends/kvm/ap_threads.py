"""The host threads of a KVM machine's application processors (--smp): each loops in KVM_RUN and
hands its I/O exits to the Bus under bus.lock; the pause handshake lets the backend read or
change an AP's state (see backend.py's docstring)."""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
import weakref
from collections.abc import Callable

from emu.backends.base import Exit, ExitKind
from emu.backends.kvm import api
from emu.backends.kvm.api import ffi, libc
from emu.backends.kvm.kicks import KICK_SIGNAL, KickMode, mask_kick_signal, send_kick
from emu.backends.kvm.vcpu_run import ZERO, KvmVcpu, dispatch_io, dispatch_mmio
from emu.bus import Bus

log = logging.getLogger("emu.kvm")

BUS_LOCK_POLL = 0.02  # seconds: how often an AP waiting for bus.lock looks whether it must park
AP_JOIN_TIMEOUT = 5.0  # seconds close() waits for each AP thread


class Aps:
    """The AP threads and what they share with the BSP's side. Every field is guarded by `cond`
    (the backend's lock). Holds the backend only weakly, so the AP threads never keep it alive."""

    def __init__(
        self, vcpus: list[KvmVcpu], bus: Bus, readonly: list[tuple[int, int]], cond: threading.Condition,
        kick_mode: KickMode, local: threading.local, wake_bsp: Callable[[], None],
    ) -> None:  # fmt: skip
        self.bus = bus
        self.readonly = readonly
        self.cond = cond
        self.kick_mode = kick_mode
        self.local = local  # the backend's thread-local: .cpu is the vCPU a thread runs
        self._wake_bsp = weakref.WeakMethod(wake_bsp)
        self.pause = True  # the APs must not run guest code (run() clears it)
        self.final = False  # after a final stop: stay paused until reset_platform()
        self.closing = False
        self.started = False
        self.exits: list[Exit | BaseException] = []  # for the BSP's run() to return (or raise), oldest first
        self.threads = [ApThread(self, v) for v in vcpus]

    def start(self) -> None:
        self.started = True
        for t in self.threads:
            t.thread.start()

    def all_parked(self) -> bool:
        return all(t.parked for t in self.threads)

    def request_pause(self) -> None:
        """Make every AP park soon (lock held; never blocks)."""
        self.pause = True
        me = threading.get_ident()
        for t in self.threads:
            if not t.parked:
                t.vcpu.run.immediate_exit = 1  # covers a kick landing outside KVM_RUN
                if t.tid is not None and t.tid != me:
                    send_kick(t.tid, self.kick_mode)

    def kick(self) -> None:
        """Make the running APs leave KVM_RUN once, to report whether they are halted (lock held)."""
        for t in self.threads:
            if not t.parked and t.tid is not None:
                send_kick(t.tid, self.kick_mode)

    def post(self, item: Exit | BaseException) -> None:
        """From an AP thread: an exit (or an exception) the machine must see. Every AP stops and
        the BSP's run() returns it."""
        with self.cond:
            if self.closing:
                return
            self.exits.append(item)
            self.request_pause()
            wake = self._wake_bsp()
            if wake is not None:
                wake()

    def shutdown(self) -> bool:
        """Stop and join the AP threads; False when one did not stop (its vCPU must stay mapped)."""
        with self.cond:
            self.closing = True
            self.request_pause()  # the running ones leave KVM_RUN
            self.cond.notify_all()  # the parked ones wake
        ok = True
        for t in self.threads:
            if t.thread is threading.current_thread() or not self.started:
                continue
            t.thread.join(AP_JOIN_TIMEOUT)
            if t.thread.is_alive():
                log.error("%s did not stop: its vCPU stays open", t.thread.name)
                ok = False
        return ok


class ApThread:
    """The host thread of one AP: KVM_RUN in a loop, I/O exits to the Bus, parked while paused."""

    def __init__(self, aps: Aps, vcpu: KvmVcpu) -> None:
        self.aps = aps
        self.vcpu = vcpu
        self.tid: int | None = None  # for pthread_kill, while the thread runs
        self.parked = True  # out of guest code, and looks at `pause` before it enters it again
        self.held = False  # parked before its last I/O exit reached the Bus (the lock was busy)
        self.halted: bool | None = None  # halted for good when last kicked (None: not since it resumed)
        self.thread = threading.Thread(target=self._main, name=f"vcpu{vcpu.index}", daemon=True)

    def _main(self) -> None:
        aps = self.aps
        aps.local.cpu = self.vcpu.index
        with aps.cond:
            self.tid = threading.get_ident()
        try:
            if aps.kick_mode is KickMode.MASKED:
                mask_kick_signal(self.vcpu.fd)
            self._loop()
        except BaseException as e:  # a failure here must reach the machine, not vanish with the thread
            aps.post(e)
        finally:
            with aps.cond:
                self.tid = None
                self.parked = True
                aps.cond.notify_all()

    def _park(self) -> None:
        """Wait while the APs are paused (lock held)."""
        aps = self.aps
        self.parked = True
        aps.cond.notify_all()
        while aps.pause and not aps.closing:
            aps.cond.wait()
        self.halted = None  # whoever paused us may have changed our state

    def _lock_bus(self) -> bool:
        """Take bus.lock; False when a pause came while it was busy (maybe held by the pauser)."""
        lock = self.aps.bus.lock
        while not lock.acquire(timeout=BUS_LOCK_POLL):
            if self.aps.pause:
                return False
        return True

    def _loop(self) -> None:
        aps, v = self.aps, self.vcpu
        run, fd, view, bus = v.run, v.fd, v.run_view, aps.bus
        masked = aps.kick_mode is KickMode.MASKED
        kvm_run = libc.ioctl
        pending = False  # KVM finishes the instruction behind the last I/O exit in the next KVM_RUN
        while True:
            with aps.cond:
                if aps.closing:
                    return
                if aps.pause:
                    if not pending:
                        self._park()
                        continue  # look again: closing, paused anew, or our held exit dropped
                    run.immediate_exit = 1  # finish that instruction first: a parked vCPU's state is whole
                self.parked = False
            if not self.held:
                ret = kvm_run(fd, api.KVM_RUN, ZERO)
                pending = False
                if ret < 0:
                    err = ffi.errno
                    if err == errno.EINTR:
                        if masked:
                            signal.sigtimedwait((KICK_SIGNAL,), 0)  # consume the pending kick
                        with aps.cond:
                            run.immediate_exit = 0
                        self.halted = v.halted_for_good()  # the BSP's halt check reads it
                    elif err != errno.EAGAIN:  # EAGAIN: woken by INIT, now waiting for SIPI
                        msg = f"KVM_RUN failed on vCPU {v.index}: {os.strerror(err)}"
                        aps.post(Exit(ExitKind.ERROR, msg, {"errno": err, "cpu": v.index}))
                    continue
                reason = run.exit_reason
                if reason != api.KVM_EXIT_IO and reason != api.KVM_EXIT_MMIO:
                    ex = v.exit_for(reason)
                    ex.detail["cpu"] = v.index
                    aps.post(ex)
                    continue
                self.halted = False
            if not self._lock_bus():
                self.held = True
                continue
            try:
                if run.exit_reason == api.KVM_EXIT_IO:
                    dispatch_io(view, bus)
                else:
                    dispatch_mmio(view, bus, aps.readonly)
                pending = True
            except BaseException as e:
                v.finish_io()  # the machine may look at this vCPU: its instruction must be done
                e.add_note(f"(in a Bus callback for CPU {v.index})")
                aps.post(e)
            finally:
                bus.lock.release()
            self.held = False
