"""int 11h (equipment), int 12h (conventional memory) and int 15h (system services).

int 15h 86h (wait CX:DX microseconds) really waits, in slices of at most WAIT_SLICE seconds:
each slice returns to the ROM, which opens an interrupt window and calls again, so the timer
keeps ticking and a stop request is seen while a guest waits.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

from emu import layout
from emu.firmware.bios import bda
from emu.firmware.bios.guestbuf import ram_window, real_address
from emu.firmware.bios.regs import UNSUPPORTED, Regs
from emu.firmware.tables.e820 import E820Entry, e820_map
from emu.memory import GuestMemory

SMAP = 0x534D_4150  # 'SMAP'
CONFIG_TABLE = (0xF000, 0xE6F5)  # roms/bios.asm config_table
A20_SUPPORT = 0x0003  # 2403h BX: the keyboard controller and port 92h can gate A20
ACPI_ENABLED = 1  # the ACPI 3.0 extended attributes of a 24-byte E820 entry
WAIT_SLICE = 0.01  # seconds


class SystemServices:
    def __init__(self, mem: GuestMemory, set_a20: Callable[[bool], None], a20: Callable[[], bool]) -> None:
        self.mem = mem
        self.set_a20 = set_a20
        self.a20 = a20
        self._wait_until = 0.0
        self._map: list[E820Entry] | None = None

    def reset(self) -> None:
        self._wait_until = 0.0

    @property
    def memory_map(self) -> list[E820Entry]:
        if self._map is None:
            self._map = e820_map(self.mem)
        return self._map

    def equipment(self, r: Regs) -> None:
        r.ax = self.mem.read_u16(bda.EQUIPMENT)

    def memory_size(self, r: Regs) -> None:
        r.ax = self.mem.read_u16(bda.BASE_MEMORY_KIB)

    # -- int 15h --------------------------------------------------------------------------------
    def service(self, r: Regs) -> None:
        ah = r.ah
        if r.ax == 0xE820:
            self._e820(r)
        elif r.ax == 0xE801:
            self._e801(r)
        elif ah == 0x88:
            extended = (self.mem.low_ram_end - layout.HIGH_MEMORY) >> 10
            r.ax = min(extended, 0xFFFF)
            r.cf = False
        elif ah == 0x86:
            self._wait(r)
        elif ah == 0xC0:
            r.es, r.bx = CONFIG_TABLE
            r.ok()
        elif ah == 0xC1:
            r.es = self.mem.read_u16(bda.EBDA_SEGMENT)
            r.cf = False
        elif ah == 0x24 and r.al <= 3:
            self._a20(r)
        elif r.ax == 0xEC00:
            r.ok()  # "the OS will run in mode BL": acknowledged, nothing to tune
        else:  # 53h APM, 4Fh keyboard intercept, E980h and the rest: not supported
            r.fail(UNSUPPORTED)

    def _e820(self, r: Regs) -> None:
        entries = self.memory_map
        index = r.ebx
        if r.edx != SMAP or r.ecx < 20 or index >= len(entries):
            r.fail(UNSUPPORTED)
            return
        size = 24 if r.ecx >= 24 else 20
        data = entries[index].pack()
        if size == 24:
            data += struct.pack("<I", ACPI_ENABLED)
        window = ram_window(self.mem, real_address(r.es, r.di), size, writable=True)
        if window is None:
            r.fail(UNSUPPORTED)
            return
        window[:] = data
        r.eax = SMAP
        r.ecx = size
        r.ebx = index + 1 if index + 1 < len(entries) else 0
        r.cf = False

    def _e801(self, r: Regs) -> None:
        low = self.mem.low_ram_end
        below_16m = min(max(low, layout.HIGH_MEMORY), 16 * layout.MiB) - layout.HIGH_MEMORY
        above_16m = max(0, low - 16 * layout.MiB)
        r.ax = r.cx = below_16m >> 10  # KiB between 1 MiB and 16 MiB
        r.bx = r.dx = min(above_16m >> 16, 0xFFFF)  # 64 KiB blocks from 16 MiB to the hole
        r.cf = False

    def _wait(self, r: Regs) -> None:
        now = time.monotonic()
        if not r.retry:
            self._wait_until = now + ((r.cx << 16) | r.dx) / 1e6
        left = self._wait_until - now
        if left > 0:
            time.sleep(min(left, WAIT_SLICE))
            if self._wait_until - time.monotonic() > 0:
                r.retry = True
                return
        r.retry = False
        r.ok()

    def _a20(self, r: Regs) -> None:
        sub = r.al
        if sub in (0, 1):
            self.set_a20(sub == 1)
            r.ok()
        elif sub == 2:
            r.ok()
            r.al = int(self.a20())
        else:
            r.ok()
            r.bx = A20_SUPPORT
