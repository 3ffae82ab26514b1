"""Pieces of emu's BIOS that need no guest: disk geometry, the register block, key translation."""

from __future__ import annotations

import pytest

from emu import layout
from emu.firmware.bios.disk import Chs, logical_chs, physical_chs
from emu.firmware.bios.keyboard import key_word
from emu.firmware.bios.regs import FLAG_CF, FLAG_IF, FLAG_ZF, Regs
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
