"""Kicking a vCPU thread out of KVM_RUN: SIGUSR1 sent with pthread_kill makes KVM_RUN return EINTR.

Two ways to keep that signal from killing the process:
- handler mode (the usual one): a no-op Python handler for SIGUSR1, installed by the first
  backend created in the main thread. A stop request also sets kvm_run.immediate_exit, so a
  signal that lands while the thread is outside KVM_RUN is not lost.
- masked mode (when no handler can be installed: the backend was created in another thread, or
  SIGUSR1 belongs to someone else): each vCPU thread blocks SIGUSR1 and KVM_SET_SIGNAL_MASK
  unblocks it only inside KVM_RUN; the pending signal is consumed with sigtimedwait afterwards.
"""

from __future__ import annotations

import signal
import threading
import time
import weakref
from collections.abc import Callable
from enum import Enum

from emu.backends.kvm import api
from emu.backends.kvm.api import ffi, ioctl

KICK_SIGNAL = signal.SIGUSR1


class KickMode(Enum):
    HANDLER = "handler"
    MASKED = "masked"


def ignore_signal(signum: int, frame: object) -> None:
    """SIGUSR1 only exists to make KVM_RUN return EINTR: nothing to do here."""


def choose_kick_mode() -> KickMode:
    current = signal.getsignal(KICK_SIGNAL)
    if current is ignore_signal:
        return KickMode.HANDLER
    if current in (signal.SIG_DFL, signal.SIG_IGN, None) and threading.current_thread() is threading.main_thread():
        signal.signal(KICK_SIGNAL, ignore_signal)
        return KickMode.HANDLER
    return KickMode.MASKED


def send_kick(tid: int, mode: KickMode) -> None:
    """Interrupt thread `tid`'s KVM_RUN (the caller makes sure the thread is alive)."""
    # Never deliver SIGUSR1 without our handler or the mask: the default action kills.
    if mode is KickMode.HANDLER and signal.getsignal(KICK_SIGNAL) is not ignore_signal:
        return
    signal.pthread_kill(tid, KICK_SIGNAL)


def mask_kick_signal(fd: int) -> None:
    """Masked mode: block SIGUSR1 in this thread, and let KVM unblock it inside vCPU `fd`'s KVM_RUN."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {KICK_SIGNAL})
    bits = 0
    for sig in old - {KICK_SIGNAL}:
        bits |= 1 << (int(sig) - 1)
    size = api.KERNEL_SIGSET_BYTES
    mask = ffi.new("struct kvm_signal_mask *", {"len": size, "sigset": list(bits.to_bytes(size, "little"))})
    ioctl(fd, api.KVM_SET_SIGNAL_MASK, mask, name="KVM_SET_SIGNAL_MASK")


class Kicker:
    """A daemon thread calling kick() every `interval` seconds while active, and idle() once when
    it has been inactive for `interval` seconds.

    It holds the backend only weakly so that a forgotten backend can still be collected.
    """

    def __init__(self, kick: Callable[[], None], interval: float, idle: Callable[[], None] | None = None) -> None:
        self._kick = weakref.WeakMethod(kick)
        self._idle = weakref.WeakMethod(idle) if idle is not None else None
        self._interval = interval
        self._cond = threading.Condition()
        self._active = False
        self._closed = False
        self._deadline = 0.0
        self._idle_at: float | None = None
        self._thread = threading.Thread(target=self._main, name="kvm-kicker", daemon=True)
        self._thread.start()

    def set_active(self, active: bool) -> None:
        with self._cond:
            now = time.monotonic()
            # Keep a running deadline: frequent short run() calls must not postpone the kick.
            if active and not self._active and self._deadline <= now:
                self._deadline = now + self._interval
            if self._idle is not None:
                self._idle_at = None if active else now + self._interval
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
                now = time.monotonic()
                if not self._active:
                    if self._idle_at is None:
                        self._cond.wait()
                    elif now < self._idle_at:
                        self._cond.wait(self._idle_at - now)
                    else:
                        self._idle_at = None
                        idle = self._idle() if self._idle is not None else None
                        if idle is not None:
                            idle()
                        del idle
                    continue
                if now < self._deadline:
                    self._cond.wait(self._deadline - now)
                    continue
                self._deadline = now + self._interval
                kick = self._kick()
                if kick is None:
                    return
                kick()
                del kick
