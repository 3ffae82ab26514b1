"""The TSC a guest reads under Unicorn: the host's (Unicorn's rdtsc), or virtual time's."""

from __future__ import annotations

from emu.backends.unicorn.native import host_rdtsc
from emu.backends.unicorn.virtual_time import UnicornVirtualTime


class UnicornTsc:
    """emu.platform.GuestTsc for the Unicorn backend."""

    def __init__(self, khz: int, virtual: UnicornVirtualTime | None) -> None:
        self.khz = khz
        self._virtual = virtual

    def read(self) -> int:
        return self._virtual.tsc() if self._virtual is not None else host_rdtsc()
