"""One PCI function's type-0 configuration space (PCI Local Bus 3.0 chapter 6): identity, command
and status, BARs, capabilities, interrupt line and pin.

The 256 bytes are kept as the guest sees them, with a write mask per byte (read-only bits keep
their value) and write-one-to-clear status bits. BAR sizing then needs no special case: a BAR's
write mask covers only its address bits above the size, so writing all-ones reads back the size
mask with the type bits. The host bridge (host.py) maps BARs on the bus when decode is enabled.

Who hears about changes subscribes: `decode_listeners` run after a BAR moved or decode was
switched (the host remaps; a virtio device thread moves its notify registrations). The INTx pin
(intx.py) is given at construction, already wired to where its interrupt goes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntFlag

from emu.devices.pci.intx import IntxPin

# Header offsets.
VENDOR_ID = 0x00
DEVICE_ID = 0x02
COMMAND = 0x04
STATUS = 0x06
REVISION = 0x08
CLASS_PROG = 0x09  # prog-if, subclass, class: three bytes
HEADER_TYPE = 0x0E
BAR0 = 0x10
SUBSYSTEM_VENDOR_ID = 0x2C
SUBSYSTEM_ID = 0x2E
CAPABILITIES = 0x34
INTERRUPT_LINE = 0x3C
INTERRUPT_PIN = 0x3D
CAP_START = 0x40
CONFIG_SIZE = 0x100
BAR_COUNT = 6

CAP_ID_VENDOR = 0x09


class Command(IntFlag):
    IO = 1 << 0
    MEMORY = 1 << 1
    MASTER = 1 << 2
    INTX_DISABLE = 1 << 10


class PciStatus(IntFlag):
    INTERRUPT = 1 << 3
    CAP_LIST = 1 << 4


class BarKind(Enum):
    IO = "io"
    MEM32 = "mem32"
    MEM64 = "mem64"  # takes this BAR and the next


@dataclass
class Bar:
    """A BAR and the device behind it: `handler` gets offsets into the BAR (io_read/io_write for
    an I/O BAR, mmio_read/mmio_write for memory)."""

    index: int
    kind: BarKind
    size: int  # a power of two: at least 4 for I/O, 16 for memory (emu uses 4 KiB and up)
    handler: object
    name: str = ""

    @property
    def flags(self) -> int:
        return {BarKind.IO: 0x1, BarKind.MEM32: 0x0, BarKind.MEM64: 0x4}[self.kind]


class PciFunction:
    """A function's configuration space. Subclasses add BARs and capabilities in __init__ and may
    override `special_read`/`special_write` for registers with side effects."""

    def __init__(
        self, vendor: int, device: int, class_code: int, *, revision: int = 0, subsystem_vendor: int = 0,
        subsystem: int = 0, intx: IntxPin | None = None, name: str = "pci",
    ) -> None:  # fmt: skip
        self.name = name
        self.cfg = bytearray(CONFIG_SIZE)
        self.wmask = bytearray(CONFIG_SIZE)
        self.w1c = bytearray(CONFIG_SIZE)
        self.bars: dict[int, Bar] = {}
        self._next_cap = CAP_START
        self._last_cap: int | None = None
        struct.pack_into("<HH", self.cfg, VENDOR_ID, vendor, device)
        self.cfg[REVISION] = revision
        self.cfg[CLASS_PROG : CLASS_PROG + 3] = class_code.to_bytes(3, "little")
        struct.pack_into("<HH", self.cfg, SUBSYSTEM_VENDOR_ID, subsystem_vendor, subsystem)
        self.intx = intx
        self.cfg[INTERRUPT_PIN] = intx.number if intx is not None else 0
        self._mask16(COMMAND, Command.IO | Command.MEMORY | Command.MASTER | Command.INTX_DISABLE)
        self.wmask[INTERRUPT_LINE] = 0xFF
        self.decode_listeners: list[Callable[[], None]] = []
        self._power_on: bytes = b""

    def _mask16(self, offset: int, mask: int) -> None:
        struct.pack_into("<H", self.wmask, offset, mask)

    # -- building -------------------------------------------------------------------------------
    def add_bar(self, bar: Bar) -> None:
        if bar.size & (bar.size - 1) or bar.size < (4 if bar.kind is BarKind.IO else 16):
            raise ValueError(f"BAR size {bar.size:#x} is not a power of two of the minimum size")
        words = 2 if bar.kind is BarKind.MEM64 else 1
        if bar.index + words > BAR_COUNT or any(i in self.bars for i in range(bar.index, bar.index + words)):
            raise ValueError(f"BAR {bar.index} does not fit")
        off = BAR0 + 4 * bar.index
        struct.pack_into("<I", self.cfg, off, bar.flags)
        struct.pack_into("<I", self.wmask, off, ~(bar.size - 1) & 0xFFFF_FFFF)
        if words == 2:
            struct.pack_into("<I", self.wmask, off + 4, 0xFFFF_FFFF)
        self.bars[bar.index] = bar

    def add_capability(self, cap_id: int, body: bytes, writable: bytes = b"") -> int:
        """Append a capability (`body` follows the ID and next-pointer bytes; `writable` is the
        write mask of `body`). Returns its offset."""
        off = self._next_cap
        size = (2 + len(body) + 3) & ~3
        if off + size > CONFIG_SIZE:
            raise ValueError("configuration space full")
        self.cfg[off] = cap_id
        self.cfg[off + 2 : off + 2 + len(body)] = body
        self.wmask[off + 2 : off + 2 + len(writable)] = writable
        if self._last_cap is None:
            self.cfg[CAPABILITIES] = off
            self.cfg[STATUS] |= PciStatus.CAP_LIST
        else:
            self.cfg[self._last_cap + 1] = off
        self._last_cap = off
        self._next_cap = off + size
        return off

    def seal(self) -> None:
        """The configuration is complete (BARs assigned): what a reset returns to."""
        self._power_on = bytes(self.cfg)

    def reset(self) -> None:
        if self._power_on:
            self.cfg[:] = self._power_on
        self._decode_changed()
        if self.intx is not None:
            self.intx.reset(masked=bool(self.command & Command.INTX_DISABLE))

    # -- fields -----------------------------------------------------------------------------------
    @property
    def command(self) -> Command:
        return Command(struct.unpack_from("<H", self.cfg, COMMAND)[0])

    @property
    def status(self) -> int:
        return struct.unpack_from("<H", self.cfg, STATUS)[0] | self._pending()

    def _pending(self) -> int:
        """Status bit 3: the level the device drives on its pin, whether or not it is masked."""
        return PciStatus.INTERRUPT if self.intx is not None and self.intx.level else 0

    @property
    def intx_pin(self) -> int:
        return self.cfg[INTERRUPT_PIN]

    def bar_address(self, index: int) -> int:
        """The address the guest (or emu) programmed into BAR `index`, without the type bits."""
        bar = self.bars[index]
        low = struct.unpack_from("<I", self.cfg, BAR0 + 4 * index)[0]
        if bar.kind is BarKind.IO:
            return low & ~0x3
        address = low & ~0xF
        if bar.kind is BarKind.MEM64:
            address |= struct.unpack_from("<I", self.cfg, BAR0 + 4 * index + 4)[0] << 32
        return address

    def set_bar_address(self, index: int, address: int) -> None:
        bar = self.bars[index]
        off = BAR0 + 4 * index
        struct.pack_into("<I", self.cfg, off, (address & 0xFFFF_FFFF & ~(bar.size - 1)) | bar.flags)
        if bar.kind is BarKind.MEM64:
            struct.pack_into("<I", self.cfg, off + 4, address >> 32)

    def decodes(self, bar: Bar) -> bool:
        return bool(self.command & (Command.IO if bar.kind is BarKind.IO else Command.MEMORY))

    # -- configuration accesses -------------------------------------------------------------------
    def special_read(self, offset: int, size: int) -> int | None:
        """A register whose value is computed on read (None: the stored bytes)."""
        return None

    def special_write(self, offset: int, size: int, value: int) -> None:
        """Called after a write was stored (registers with side effects)."""

    def config_read(self, offset: int, size: int) -> int:
        value = self.special_read(offset, size)
        if value is not None:
            return value
        value = int.from_bytes(self.cfg[offset : offset + size], "little")
        if offset <= STATUS < offset + size:
            value |= self._pending() << (8 * (STATUS - offset))
        return value

    def config_write(self, offset: int, size: int, value: int) -> None:
        old_command = self.command
        for i in range(size):
            pos, byte = offset + i, (value >> (8 * i)) & 0xFF
            keep = self.cfg[pos] & ~self.wmask[pos] & ~(self.w1c[pos] & byte)
            self.cfg[pos] = (keep | (byte & self.wmask[pos])) & 0xFF
        self.special_write(offset, size, value)
        touched_bars = offset < BAR0 + 4 * BAR_COUNT and offset + size > BAR0
        command = self.command
        if touched_bars or (command ^ old_command) & (Command.IO | Command.MEMORY):
            self._decode_changed()
        if (command ^ old_command) & Command.INTX_DISABLE and self.intx is not None:
            self.intx.mask(bool(command & Command.INTX_DISABLE))

    def _decode_changed(self) -> None:
        for listener in self.decode_listeners:
            listener()
