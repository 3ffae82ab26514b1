"""The KVM backend: guest code runs on the host CPU through Linux's /dev/kvm."""

from emu.backends.kvm.backend import KvmBackend

__all__ = ["KvmBackend"]
