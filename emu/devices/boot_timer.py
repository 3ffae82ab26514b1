"""Firecracker's boot timer (its --boot-timer): a guest that writes the byte 123 to it gets the
time since the VMM started, printed in Firecracker's format.

Where it is: current Firecracker (since v1.1) puts it at the first page of its 32-bit MMIO
window, 0xC0000000 (arch/x86_64/layout.rs BOOT_DEVICE_MEM_START); older releases used port
0x3F0. emu answers at both. Only a 1-byte write of 123 at offset 0 counts, as in Firecracker.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from emu import layout
from emu.bus import Bus
from emu.timers import ProcessStart

MAGIC = 123  # "guest boot complete"


def boot_time_line(start: ProcessStart, wall_ns: int, cpu_ns: int) -> str:
    """Firecracker's line: `Guest-boot-time =  12345 us 12 ms,   2345 CPU us 2 CPU ms`."""
    us, cpu_us = (wall_ns - start.wall_ns) // 1000, (cpu_ns - start.cpu_ns) // 1000
    return f"Guest-boot-time = {us:>6} us {us // 1000} ms, {cpu_us:>6} CPU us {cpu_us // 1000} CPU ms"


class BootTimer:
    """The device, on its MMIO page and its port; `report` gets each line."""

    def __init__(self, start: ProcessStart, report: Callable[[str], None]) -> None:
        self._start = start
        self._report = report
        self.lines: list[str] = []

    def register(self, bus: Bus) -> None:
        bus.register_mmio(layout.FIRECRACKER_BOOT_TIMER_BASE, layout.FIRECRACKER_BOOT_TIMER_SIZE, self,
                          "Firecracker boot timer")  # fmt: skip
        bus.register_pio(layout.PORT_FIRECRACKER_BOOT_TIMER, 1, self, "Firecracker boot timer (port)")

    def _write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 1 and value == MAGIC:
            line = boot_time_line(self._start, time.monotonic_ns(), time.process_time_ns())
            self.lines.append(line)
            self._report(line)

    def mmio_read(self, offset: int, size: int) -> int:
        return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        self._write(offset, size, value)

    def io_read(self, offset: int, size: int) -> int:
        return 0

    def io_write(self, offset: int, size: int, value: int) -> None:
        self._write(offset, size, value)

    def reset(self) -> None:
        """Nothing to reset: the start is the VMM's, not the guest's."""
