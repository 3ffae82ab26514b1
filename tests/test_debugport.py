"""isa-debug-exit, the 0xE9 debug console and POST codes, driven through the bus."""

from __future__ import annotations

import logging

import pytest

from emu.bus import Bus
from emu.devices.debugport import DebugConsole, DebugExit, PostCodes


@pytest.mark.parametrize(("value", "status"), [(0, 1), (1, 3), (0x7F, 0xFF), (0x10, 0x21)])
def test_debug_exit_status(value: int, status: int) -> None:
    bus = Bus()
    exits: list[int] = []
    DebugExit(on_exit=exits.append).register(bus)
    bus.pio_write(0xF4, 1, value)
    assert exits == [status]


def test_debug_exit_wide_writes_and_reads() -> None:
    bus = Bus()
    exits: list[int] = []
    DebugExit(on_exit=exits.append).register(bus)
    bus.pio_write(0xF4, 4, 0x31)  # `out dx, eax` as in the usual iosize=4 setup
    bus.pio_write(0xF7, 1, 0x02)  # any port of the device exits
    # exit() keeps the low 8 bits of (v << 1) | 1, so large values wrap but stay odd.
    bus.pio_write(0xF4, 4, 0x80)
    assert exits == [0x63, 0x05, 0x01]
    assert bus.pio_read(0xF4, 1) == 0  # QEMU's reads return 0
    assert bus.pio_read(0xF8, 1) == 0xFF  # the device ends at 0xF7


def test_debugcon_output_and_detection() -> None:
    bus = Bus()
    out = bytearray()
    DebugConsole(output=out.extend).register(bus)
    assert bus.pio_read(0xE9, 1) == 0xE9
    for ch in b"hello\n":
        bus.pio_write(0xE9, 1, ch)
    assert out == b"hello\n"


def test_post_codes_are_logged_and_read_back(caplog: pytest.LogCaptureFixture) -> None:
    bus = Bus()
    post = PostCodes()
    post.register(bus)
    with caplog.at_level(logging.DEBUG, logger="emu.post"):
        bus.pio_write(0x80, 1, 0x1A)
        bus.pio_write(0x80, 1, 0xFF)
    assert [r.getMessage() for r in caplog.records if r.name == "emu.post"] == [
        "POST code 0x1A",
        "POST code 0xFF",
    ]
    assert post.last == 0xFF
    assert bus.pio_read(0x80, 1) == 0xFF
    post.reset()
    assert bus.pio_read(0x80, 1) == 0x00
