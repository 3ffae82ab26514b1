"""Pieces of emu's BIOS that need no guest: disk geometry, the register block, key translation,
int 10h's console echo."""

from __future__ import annotations

import pytest

from emu import layout
from emu.firmware.bios.disk import Chs, logical_chs, physical_chs
from emu.firmware.bios.keyboard import key_word
from emu.firmware.bios.regs import FLAG_CF, FLAG_IF, FLAG_ZF, Regs
from emu.firmware.bios.video import COLUMNS, ConsoleEcho, Video
from emu.memory import GuestMemory


@pytest.mark.parametrize(
    ("sectors", "physical", "logical"),
    [
        # Fits int 13h as it is: no translation.
        (16384, Chs(16, 16, 63), Chs(16, 16, 63)),
        (1024 * 16 * 63, Chs(1024, 16, 63), Chs(1024, 16, 63)),
        # 1 GiB: 2080 cylinders -> LARGE (cylinders halved, heads doubled until <= 1024).
        (2 * 1024 * 1024, Chs(2080, 16, 63), Chs(520, 64, 63)),
        # 4 GiB: cylinders x heads > 131072 -> LBA-assisted, 255 heads.
        (8 * 1024 * 1024, Chs(8322, 16, 63), Chs(522, 255, 63)),
        # 10 GiB: beyond 1024/255/63 -> the int 13h maximum.
        (20 * 1024 * 1024, Chs(16383, 16, 63), Chs(1024, 255, 63)),
        # A 64 KiB image: the physical guess claims more than there is -> LBA, at least 1 cylinder.
        (128, Chs(2, 16, 63), Chs(1, 16, 63)),
    ],
)
def test_hard_disk_geometry(sectors: int, physical: Chs, logical: Chs) -> None:
    assert physical_chs(sectors) == physical
    assert logical_chs(physical, sectors) == logical


def test_register_block_round_trip() -> None:
    mem = GuestMemory(layout.MIN_MEMORY)
    try:
        frame = 0x7BFA
        mem.write_u16(frame + 4, FLAG_IF | FLAG_CF)  # the caller's FLAGS in its iret frame
        r = Regs(eax=0x1234_5678, ss=0, sp=frame)
        r.store(mem, with_frame=False)
        r = Regs.load(mem)
        assert (r.ax, r.ah, r.al) == (0x5678, 0x56, 0x78)
        r.ah = 0x42
        r.bl = 0x99
        r.cf = False
        r.zf = True
        r.store(mem)
        back = Regs.load(mem)
        assert back.eax == 0x1234_4278 and back.ebx == 0x99
        assert mem.read_u16(frame + 4) == FLAG_IF | FLAG_ZF  # IF kept, CF cleared, ZF set
    finally:
        mem.close()


@pytest.mark.parametrize(
    ("byte", "word"),
    [(ord("a"), 0x1E61), (ord("A"), 0x1E41), (ord("1"), 0x0231), (ord("!"), 0x0221), (0x0D, 0x1C0D),
     (0x0A, 0x1C0D), (0x7F, 0x0E08), (0x1B, 0x011B), (0x03, 0x2E03), (ord(" "), 0x3920)],
)  # fmt: skip
def test_key_words(byte: int, word: int) -> None:
    assert key_word(byte) == word


def echoed(calls: list[Regs]) -> bytes:
    """What emu's console shows after these int 10h calls (no serial output from the guest)."""
    mem = GuestMemory(layout.MIN_MEMORY)
    try:
        shown: list[bytes] = []
        echo = ConsoleEcho(shown.append, lambda: False)
        video = Video(mem, echo)
        video.post()
        for r in calls:
            video.service(r)
        echo.flush()
        return b"".join(shown)
    finally:
        mem.close()


def grub_putchar(ch: str, row: int, col: int) -> list[Regs]:
    """GRUB 2.06's console: get the cursor, 09h with CX=1, then move the cursor one column on
    (at the last column: CR, LF by teletype instead)."""
    calls = [Regs(eax=0x0300), Regs(eax=0x0900 | ord(ch), ebx=0x0007, ecx=1)]
    if col == COLUMNS - 1:
        return [*calls, Regs(eax=0x0E0D), Regs(eax=0x0E0A)]
    return [*calls, Regs(eax=0x0200, edx=(row << 8) | (col + 1))]


def test_int10_chars_the_cursor_steps_over_are_echoed() -> None:
    calls = [Regs(eax=0x0200, edx=0x0000)]  # cursor at row 0, column 0
    for i, ch in enumerate("Welcome"):
        calls += grub_putchar(ch, 0, i)
    calls += [Regs(eax=0x0E0D), Regs(eax=0x0E0A)]
    assert echoed(calls) == b"Welcome\r\n"
    # The last column: GRUB moves on with CR/LF, the character still shows once.
    edge = [Regs(eax=0x0200, edx=0x0100 | (COLUMNS - 1)), *grub_putchar("!", 1, COLUMNS - 1)]
    assert echoed(edge) == b"!\r\n"


def test_int10_chars_written_in_place_are_not_echoed() -> None:
    # 09h/0Ah that leave the cursor where it is (a status character, a filled box) or that the
    # program then moves away from stay on the screen only.
    in_place = [Regs(eax=0x0200, edx=0x0000), Regs(eax=0x0958, ebx=0x001F, ecx=3), Regs(eax=0x0A79, ecx=1),
                Regs(eax=0x0800), Regs(eax=0x0A7A, ecx=1), Regs(eax=0x0200, edx=0x0500)]  # fmt: skip
    assert echoed(in_place) == b""
