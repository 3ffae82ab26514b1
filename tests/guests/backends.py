"""Which CPU backends the machine-level tests can run on this host."""

from __future__ import annotations

import functools

import pytest

from emu import layout
from emu.backends.base import BackendUnavailable
from emu.bus import Bus
from emu.config import BackendName
from emu.memory import GuestMemory


@functools.cache
def kvm_unavailable_reason() -> str | None:
    """None when the KVM backend works here, else why not (for a skip message)."""
    try:
        from emu.backends.kvm import KvmBackend
    except ImportError as e:
        return f"the KVM backend cannot be imported: {e}"
    memory = GuestMemory(layout.MIN_MEMORY)
    try:
        KvmBackend(memory, Bus()).close()
    except BackendUnavailable as e:
        return f"KVM is not usable on this host: {e}"
    finally:
        memory.close()
    return None


def require(backend: BackendName) -> None:
    """Skip the calling test when `backend` cannot run on this host."""
    if backend is BackendName.KVM:
        reason = kvm_unavailable_reason()
        if reason is not None:
            pytest.skip(reason)


#: pytest parameters for "every backend"; tests call require() to skip the unavailable ones.
BACKEND_PARAMS = [pytest.param(b, id=b.value) for b in (BackendName.UNICORN, BackendName.KVM)]


def kvm_is_pvm() -> bool:
    """This host's KVM is PVM (kvm_pvm): a software-assisted KVM that runs guest ring 0 in host
    ring 3. Some guest-visible behaviour differs from hardware KVM there (see docs/architecture.md,
    "Host KVM quirks"): a ring-3 `int n` raises #UD, and SYSCALL arrives with PVM's own selectors
    and flags."""
    from emu.backends.kvm.backend import host_is_pvm

    return host_is_pvm()
