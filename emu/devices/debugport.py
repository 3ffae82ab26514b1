"""Ports that exist for debugging guests: QEMU's isa-debug-exit, the Bochs/QEMU debug console
(port 0xE9) and the POST code port (0x80)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from emu import layout
from emu.bus import Bus

post_log = logging.getLogger("emu.post")


class DebugExit:
    """QEMU isa-debug-exit: writing v ends the run with status (v << 1) | 1.

    As under QEMU (`-device isa-debug-exit,iobase=0xf4,iosize=4`) any write to any of its
    ports, of any width, exits, and reads return 0. QEMU passes (v << 1) | 1 to exit(), so the
    host sees its low 8 bits; `on_exit` is given that status, always odd, 1..255.
    """

    def __init__(self, on_exit: Callable[[int], None], base: int = layout.PORT_DEBUG_EXIT, iosize: int = 4) -> None:
        self._on_exit = on_exit
        self.base = base
        self.iosize = iosize

    def register(self, bus: Bus) -> None:
        bus.register_pio(self.base, self.iosize, self, "isa-debug-exit")

    def reset(self) -> None:
        pass  # no state

    def io_read(self, offset: int, size: int) -> int:
        return 0

    def io_write(self, offset: int, size: int, value: int) -> None:
        self._on_exit(((value << 1) | 1) & 0xFF)


class DebugConsole:
    """Bochs/QEMU debug console: each byte written goes to `output`; reads return `readback`
    (0xE9 by default) so a guest can tell the port is there."""

    def __init__(
        self,
        output: Callable[[bytes], None],
        base: int = layout.PORT_DEBUGCON,
        readback: int = layout.PORT_DEBUGCON,
    ) -> None:
        self._output = output
        self.base = base
        self.readback = readback

    def register(self, bus: Bus) -> None:
        bus.register_pio(self.base, 1, self, "debug console")

    def reset(self) -> None:
        pass  # no state

    def io_read(self, offset: int, size: int) -> int:
        return self.readback

    def io_write(self, offset: int, size: int, value: int) -> None:
        self._output(bytes((value & 0xFF,)))  # a byte-wide port: wider writes keep the low byte


class PostCodes:
    """Port 0x80, where firmware writes its progress codes (and Linux its I/O delays).

    Every write is logged at debug level on "emu.post"; the last code is kept in `.last` and
    read back, as on a POST card.
    """

    def __init__(self, base: int = layout.PORT_POST) -> None:
        self.base = base
        self.last = 0

    def register(self, bus: Bus) -> None:
        bus.register_pio(self.base, 1, self, "POST codes")

    def reset(self) -> None:
        self.last = 0

    def io_read(self, offset: int, size: int) -> int:
        return self.last

    def io_write(self, offset: int, size: int, value: int) -> None:
        self.last = value & 0xFF
        post_log.debug("POST code 0x%02X", self.last)
