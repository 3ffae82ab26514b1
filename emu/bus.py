"""Port I/O and MMIO range maps that dispatch guest accesses to devices."""

from __future__ import annotations

import bisect
import logging
import threading
from dataclasses import dataclass
from typing import Protocol

from emu.errors import EmuError

log = logging.getLogger("emu.bus")

_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: 0xFFFF_FFFF_FFFF_FFFF}


class PortDevice(Protocol):
    def io_read(self, offset: int, size: int) -> int: ...
    def io_write(self, offset: int, size: int, value: int) -> None: ...


class MmioDevice(Protocol):
    def mmio_read(self, offset: int, size: int) -> int: ...
    def mmio_write(self, offset: int, size: int, value: int) -> None: ...


@dataclass(frozen=True)
class Range:
    base: int
    size: int
    name: str

    @property
    def end(self) -> int:
        return self.base + self.size

    def overlaps(self, other: Range) -> bool:
        return self.base < other.end and other.base < self.end


class Bus:
    """Dispatch table for port I/O (64 Ki ports) and MMIO (sorted, non-overlapping ranges).

    Unclaimed ports and MMIO read as all-ones and ignore writes, as on a PC; each unclaimed
    port or page is logged once at debug level.
    """

    def __init__(self) -> None:
        self._ports: list[tuple[PortDevice, int] | None] = [None] * 0x10000
        self._port_ranges: list[Range] = []
        self._mmio_starts: list[int] = []
        self._mmio: list[tuple[Range, MmioDevice]] = []
        self._logged: set[tuple[str, int]] = set()
        #: The devices' lock (QEMU's big lock): held by a vCPU thread while a device handles its
        #: access and by the machine while timers run, wherever several threads run vCPUs (KVM --smp).
        self.lock = threading.RLock()

    # -- registration -------------------------------------------------------------------------
    def register_pio(self, base: int, size: int, dev: PortDevice, name: str) -> None:
        new = Range(base, size, name)
        if base < 0 or size <= 0 or new.end > 0x10000:
            raise ValueError(f"port range {base:#x}+{size} out of the I/O space")
        for r in self._port_ranges:
            if r.overlaps(new):
                raise EmuError(f"I/O ports {base:#x}-{new.end - 1:#x} ({name}) overlap {r.name}")
        self._port_ranges.append(new)
        for p in range(base, new.end):
            self._ports[p] = (dev, base)

    def unregister_pio(self, base: int) -> None:
        for r in self._port_ranges:
            if r.base == base:
                self._port_ranges.remove(r)
                for p in range(r.base, r.end):
                    self._ports[p] = None
                return

    def register_mmio(self, base: int, size: int, dev: MmioDevice, name: str) -> None:
        new = Range(base, size, name)
        if base < 0 or size <= 0:
            raise ValueError(f"MMIO range {base:#x}+{size} is invalid")
        for r, _ in self._mmio:
            if r.overlaps(new):
                raise EmuError(f"MMIO {base:#x}-{new.end - 1:#x} ({name}) overlaps {r.name}")
        i = bisect.bisect(self._mmio_starts, base)
        self._mmio_starts.insert(i, base)
        self._mmio.insert(i, (new, dev))

    def unregister_mmio(self, base: int) -> None:
        i = bisect.bisect_left(self._mmio_starts, base)
        if i < len(self._mmio_starts) and self._mmio_starts[i] == base:
            del self._mmio_starts[i]
            del self._mmio[i]

    # -- dispatch -----------------------------------------------------------------------------
    def _unclaimed(self, kind: str, addr: int, write: bool, size: int, value: int = 0) -> None:
        key = (kind, addr if kind == "port" else addr >> 12)
        if key not in self._logged:
            self._logged.add(key)
            what = f"write {value:#x}" if write else "read"
            log.debug("unclaimed %s %#x: %s (size %d), further accesses not logged", kind, addr, what, size)

    def pio_read(self, port: int, size: int) -> int:
        entry = self._ports[port & 0xFFFF]
        if entry is None:
            self._unclaimed("port", port, False, size)
            return _ONES[size]
        dev, base = entry
        return dev.io_read(port - base, size) & _ONES[size]

    def pio_write(self, port: int, size: int, value: int) -> None:
        entry = self._ports[port & 0xFFFF]
        if entry is None:
            self._unclaimed("port", port, True, size, value)
            return
        dev, base = entry
        dev.io_write(port - base, size, value & _ONES[size])

    def _find_mmio(self, addr: int) -> tuple[Range, MmioDevice] | None:
        i = bisect.bisect_right(self._mmio_starts, addr) - 1
        if i >= 0:
            r, dev = self._mmio[i]
            if addr < r.end:
                return r, dev
        return None

    def mmio_read(self, addr: int, size: int) -> int:
        hit = self._find_mmio(addr)
        if hit is None:
            self._unclaimed("mmio", addr, False, size)
            return _ONES[size]
        r, dev = hit
        return dev.mmio_read(addr - r.base, size) & _ONES[size]

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        hit = self._find_mmio(addr)
        if hit is None:
            self._unclaimed("mmio", addr, True, size, value)
            return
        r, dev = hit
        dev.mmio_write(addr - r.base, size, value & _ONES[size])
