"""KVM_IOEVENTFD and KVM_IRQFD on one VM (Documentation/virt/kvm/api.rst 4.59, 4.75).

An ioeventfd makes a guest write to an address (with `datamatch`, only of that value) signal an
eventfd inside KVM: the vCPU goes straight back into the guest, no exit reaches emu. An irqfd
raises a GSI when its eventfd is signalled; with a resample fd it is level-triggered: KVM keeps
the line asserted until the guest EOIs it, then de-asserts it and signals the resample fd so the
device can assert it again if it still needs service (what VFIO does for INTx).

These are VM ioctls: any thread may call them, also while the vCPU is inside KVM_RUN.
"""

from __future__ import annotations

import threading

from emu.backends.kvm import api
from emu.backends.kvm.api import ffi, ioctl


class KvmEventfds:
    """Registers and removes ioeventfds and irqfds on a VM fd, counting what is registered."""

    def __init__(self, vm_fd: int) -> None:
        self._vm_fd = vm_fd
        self._lock = threading.Lock()
        self.ioeventfds = 0  # registered now (for tests)
        self.irqfds = 0

    def _ioeventfd(self, fd: int, addr: int, length: int, pio: bool, datamatch: int | None, flags: int) -> None:
        req = ffi.new("struct kvm_ioeventfd *")
        req.addr, req.len, req.fd = addr, length, fd
        req.flags = flags | (api.KVM_IOEVENTFD_FLAG_PIO if pio else 0)
        if datamatch is not None:
            req.flags |= api.KVM_IOEVENTFD_FLAG_DATAMATCH
            req.datamatch = datamatch
        ioctl(self._vm_fd, api.KVM_IOEVENTFD, req, name="KVM_IOEVENTFD")

    def add_ioeventfd(self, fd: int, addr: int, length: int, *, pio: bool, datamatch: int | None) -> None:
        self._ioeventfd(fd, addr, length, pio, datamatch, 0)
        with self._lock:
            self.ioeventfds += 1

    def remove_ioeventfd(self, fd: int, addr: int, length: int, *, pio: bool, datamatch: int | None) -> None:
        """Removal must name the registration exactly (address, length, fd, flags, datamatch)."""
        self._ioeventfd(fd, addr, length, pio, datamatch, api.KVM_IOEVENTFD_FLAG_DEASSIGN)
        with self._lock:
            self.ioeventfds -= 1

    def add_irqfd(self, fd: int, gsi: int, resample_fd: int) -> None:
        req = ffi.new("struct kvm_irqfd *", {"fd": fd, "gsi": gsi, "flags": api.KVM_IRQFD_FLAG_RESAMPLE,
                                             "resamplefd": resample_fd})  # fmt: skip
        ioctl(self._vm_fd, api.KVM_IRQFD, req, name="KVM_IRQFD")
        with self._lock:
            self.irqfds += 1

    def remove_irqfd(self, fd: int, gsi: int) -> None:
        """KVM de-asserts the line when the last resampling irqfd of a GSI goes."""
        req = ffi.new("struct kvm_irqfd *", {"fd": fd, "gsi": gsi, "flags": api.KVM_IRQFD_FLAG_DEASSIGN})
        ioctl(self._vm_fd, api.KVM_IRQFD, req, name="KVM_IRQFD (deassign)")
        with self._lock:
            self.irqfds -= 1
