"""int 1Ah AH=B1h: the PCI BIOS (PCI BIOS Specification 2.1, real-mode interface).

Configuration space is reached through mechanism #1 on the machine's bus (ports 0xCF8/0xCFC),
as a BIOS does it, so the answers come from the same PciHost model the guest's own config cycles
reach. CONFIG_ADDRESS is saved and restored around every call: a guest that set it up before an
int 1Ah keeps its cycle. Without a host bridge (CONFIG_ADDRESS does not keep what is written to
it) the installation check fails, and so does everything else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import IntEnum

from emu import layout
from emu.bus import Bus
from emu.devices.pci.function import CONFIG_SIZE, HEADER_TYPE, REVISION, VENDOR_ID
from emu.devices.pci.host import ENABLE
from emu.firmware.bios.regs import Regs

PCI_FUNCTION_ID = 0xB1  # AH of every PCI BIOS call
PCI_SIGNATURE = 0x2049_4350  # EDX of the installation check: "PCI " in memory order
VERSION = 0x0210  # BH.BL = 2.10 (BCD)
MECHANISM_1 = 0x01  # AL bit 0: configuration mechanism #1; special cycles (bit 4) not offered
LAST_BUS = 0  # emu has no PCI-to-PCI bridges: bus 0 is the only bus

NO_DEVICE = 0xFFFF
CLASS_REVISION = REVISION  # as a dword: class, subclass, prog-if, revision (high to low)
MULTI_FUNCTION = 0x80


class PciBiosStatus(IntEnum):
    """AH on return; CF is set for everything but SUCCESSFUL."""

    SUCCESSFUL = 0x00
    FUNC_NOT_SUPPORTED = 0x81
    BAD_VENDOR_ID = 0x83
    DEVICE_NOT_FOUND = 0x86
    BAD_REGISTER_NUMBER = 0x87


class Function(IntEnum):
    """AL of a PCI BIOS call."""

    INSTALLATION_CHECK = 0x01
    FIND_DEVICE = 0x02
    FIND_CLASS_CODE = 0x03
    GENERATE_SPECIAL_CYCLE = 0x06
    READ_BYTE = 0x08
    READ_WORD = 0x09
    READ_DWORD = 0x0A
    WRITE_BYTE = 0x0B
    WRITE_WORD = 0x0C
    WRITE_DWORD = 0x0D


_READS = {Function.READ_BYTE: 1, Function.READ_WORD: 2, Function.READ_DWORD: 4}
_WRITES = {Function.WRITE_BYTE: 1, Function.WRITE_WORD: 2, Function.WRITE_DWORD: 4}


class PciBios:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    # -- configuration mechanism #1 -------------------------------------------------------------
    @contextmanager
    def _config_address(self, value: int) -> Iterator[None]:
        """CONFIG_ADDRESS = `value` for the duration, then the caller's value back."""
        saved = self.bus.pio_read(layout.PORT_PCI_CONFIG_ADDRESS, 4)
        self.bus.pio_write(layout.PORT_PCI_CONFIG_ADDRESS, 4, value)
        try:
            yield
        finally:
            self.bus.pio_write(layout.PORT_PCI_CONFIG_ADDRESS, 4, saved)

    def read(self, bus: int, devfn: int, reg: int, size: int) -> int:
        with self._config_address(ENABLE | bus << 16 | devfn << 8 | (reg & 0xFC)):
            return self.bus.pio_read(layout.PORT_PCI_CONFIG_DATA + (reg & 3), size)

    def write(self, bus: int, devfn: int, reg: int, size: int, value: int) -> None:
        with self._config_address(ENABLE | bus << 16 | devfn << 8 | (reg & 0xFC)):
            self.bus.pio_write(layout.PORT_PCI_CONFIG_DATA + (reg & 3), size, value)

    def present(self) -> bool:
        """Mechanism #1 is there when CONFIG_ADDRESS keeps what is written to it (Linux's probe)."""
        with self._config_address(ENABLE):
            return self.bus.pio_read(layout.PORT_PCI_CONFIG_ADDRESS, 4) == ENABLE

    def functions(self) -> Iterator[tuple[int, int]]:
        """(bus, devfn) of every function present, in the order a BIOS scans them."""
        for bus in range(LAST_BUS + 1):
            for device in range(32):
                if self.read(bus, device << 3, VENDOR_ID, 2) == NO_DEVICE:
                    continue
                multi = self.read(bus, device << 3, HEADER_TYPE, 1) & MULTI_FUNCTION
                for function in range(8 if multi else 1):
                    devfn = device << 3 | function
                    if function == 0 or self.read(bus, devfn, VENDOR_ID, 2) != NO_DEVICE:
                        yield bus, devfn

    # -- int 1Ah AH=B1h -------------------------------------------------------------------------
    def service(self, r: Regs) -> None:
        try:
            function = Function(r.al)
        except ValueError:
            function = None
        if function is None or not self.present():
            r.fail(PciBiosStatus.FUNC_NOT_SUPPORTED)  # B104/B105/B10E/B10F and the rest, or no PCI bus
            return
        if function is Function.INSTALLATION_CHECK:
            r.edx = PCI_SIGNATURE
            r.al = MECHANISM_1
            r.bx = VERSION
            r.cl = LAST_BUS
            r.edi = 0  # no protected-mode entry point (no BIOS32 service directory either)
            r.ok()
        elif function is Function.FIND_DEVICE:
            if r.dx == NO_DEVICE:
                r.fail(PciBiosStatus.BAD_VENDOR_ID)
                return
            wanted = r.cx << 16 | r.dx
            self._find(r, lambda bus, devfn: self.read(bus, devfn, VENDOR_ID, 4) == wanted)
        elif function is Function.FIND_CLASS_CODE:
            wanted = r.ecx & 0xFF_FFFF
            self._find(r, lambda bus, devfn: self.read(bus, devfn, CLASS_REVISION, 4) >> 8 == wanted)
        elif function is Function.GENERATE_SPECIAL_CYCLE:
            r.fail(PciBiosStatus.FUNC_NOT_SUPPORTED)  # as the installation check says (AL bit 4 clear)
        elif function in _READS:
            size = _READS[function]
            if not self._register_ok(r, size):
                return
            value = self.read(r.bh, r.bl, r.di, size)
            if size == 4:
                r.ecx = value
            elif size == 2:
                r.cx = value
            else:
                r.cl = value
            r.ok()
        else:
            size = _WRITES[function]
            if not self._register_ok(r, size):
                return
            self.write(r.bh, r.bl, r.di, size, r.ecx & ((1 << (8 * size)) - 1))
            r.ok()

    @staticmethod
    def _register_ok(r: Regs, size: int) -> bool:
        """Registers 0-255, naturally aligned for words and dwords."""
        if r.di >= CONFIG_SIZE or r.di % size:
            r.fail(PciBiosStatus.BAD_REGISTER_NUMBER)
            return False
        return True

    def _find(self, r: Regs, match: Callable[[int, int], bool]) -> None:
        """The SI-th (from 0) matching function: BH = bus, BL = device << 3 | function."""
        index = r.si
        for bus, devfn in self.functions():
            if match(bus, devfn):
                if index == 0:
                    r.bh, r.bl = bus, devfn
                    r.ok()
                    return
                index -= 1
        r.fail(PciBiosStatus.DEVICE_NOT_FOUND)
