"""int 16h: keys from the serial console, through the BIOS keyboard buffer in the BDA.

emu has no PS/2 keyboard input path from the host terminal, so the BIOS reads the bytes the
host typed from COM1's receiver (through the bus, as the guest itself would: when LCR.DLAB is
clear and the UART is not in loopback) and turns them into (scan code, ASCII) words in the
classic 16-entry ring at 40:1Eh. VT100 cursor and editing sequences become the matching keys.
"""

from __future__ import annotations

import time

from emu import layout
from emu.bus import Bus
from emu.devices.serial import LCR_DLAB, LSR_DR, MCR_LOOP, Reg
from emu.firmware.bios import bda
from emu.firmware.bios.regs import Regs
from emu.memory import GuestMemory

RING_START = 0x1E  # offsets from 0400h
RING_END = 0x3E
POLL = 0.005  # seconds a waiting int 16h 00h sleeps before the ROM asks again

KEY_ENTER = 0x1C0D
KEY_BACKSPACE = 0x0E08
KEY_TAB = 0x0F09
KEY_ESC = 0x011B
KEY_SPACE = 0x3920

# US layout: scan codes of the printable keys, unshifted and shifted.
_ROWS = (
    (0x02, "1234567890-=", "!@#$%^&*()_+"),
    (0x10, "qwertyuiop[]", "QWERTYUIOP{}"),
    (0x1E, "asdfghjkl;'`", 'ASDFGHJKL:"~'),
    (0x2B, "\\zxcvbnm,./", "|ZXCVBNM<>?"),
)
SCAN: dict[int, int] = {}
for _base, _plain, _shifted in _ROWS:
    for _i, (_a, _b) in enumerate(zip(_plain, _shifted, strict=True)):
        SCAN[ord(_a)] = SCAN[ord(_b)] = _base + _i

# ESC [ x / ESC O x and ESC [ n ~ sequences -> extended keys (ASCII 0 or E0h).
CSI_KEYS = {b"A": 0x4800, b"B": 0x5000, b"C": 0x4D00, b"D": 0x4B00, b"H": 0x4700, b"F": 0x4F00,
            b"2~": 0x5200, b"3~": 0x5300, b"5~": 0x4900, b"6~": 0x5100, b"1~": 0x4700, b"4~": 0x4F00}  # fmt: skip


def key_word(byte: int) -> int:
    """The (scan << 8 | ascii) word for one host byte."""
    if byte in (0x0D, 0x0A):
        return KEY_ENTER
    if byte in (0x08, 0x7F):
        return KEY_BACKSPACE
    if byte == 0x09:
        return KEY_TAB
    if byte == 0x1B:
        return KEY_ESC
    if byte == 0x20:
        return KEY_SPACE
    if 0x01 <= byte <= 0x1A:  # Ctrl-letter
        return SCAN[ord("a") + byte - 1] << 8 | byte
    return SCAN.get(byte, 0) << 8 | byte


class Keyboard:
    def __init__(self, mem: GuestMemory, bus: Bus, port: int = layout.PORT_COM1) -> None:
        self.mem = mem
        self.bus = bus
        self.port = port

    def post(self) -> None:
        m = self.mem
        for field in (bda.KBD_HEAD, bda.KBD_TAIL, bda.KBD_BUFFER_START):
            m.write_u16(field, RING_START)
        m.write_u16(bda.KBD_BUFFER_END, RING_END)
        m.write_u8(bda.KBD_STATUS3, 0x10)  # 101/102-key keyboard

    # -- host input -----------------------------------------------------------------------------
    def _uart_bytes(self) -> bytes:
        b = self.bus
        if b.pio_read(self.port + Reg.LCR, 1) & LCR_DLAB or b.pio_read(self.port + Reg.MCR, 1) & MCR_LOOP:
            return b""
        out = bytearray()
        while len(out) < 64 and b.pio_read(self.port + Reg.LSR, 1) & LSR_DR:
            out.append(b.pio_read(self.port + Reg.RBR_THR_DLL, 1))
        return bytes(out)

    def pump(self) -> None:
        data = self._uart_bytes()
        i = 0
        while i < len(data):
            byte = data[i]
            i += 1
            if byte == 0x1B and i < len(data) and data[i] in b"[O":
                end = i + 1
                while end < len(data) and end - i <= 3 and not 0x40 <= data[end] <= 0x7E:
                    end += 1
                seq = data[i + 1 : end + 1]
                if seq in CSI_KEYS:
                    self._push(CSI_KEYS[seq] | 0xE0)
                    i = end + 1
                    continue
            self._push(key_word(byte))

    def _push(self, word: int) -> bool:
        m = self.mem
        head, tail = m.read_u16(bda.KBD_HEAD), m.read_u16(bda.KBD_TAIL)
        start, end = m.read_u16(bda.KBD_BUFFER_START), m.read_u16(bda.KBD_BUFFER_END)
        if not (start < end <= 0x100 and start <= tail < end):
            start, end, tail, head = RING_START, RING_END, RING_START, RING_START
        nxt = tail + 2 if tail + 2 < end else start
        if nxt == head:
            return False  # full: the key is lost, as on a PC (which would beep)
        m.write_u16(layout.BDA_START + tail, word)
        m.write_u16(bda.KBD_TAIL, nxt)
        return True

    def _peek(self, remove: bool) -> int | None:
        m = self.mem
        head, tail = m.read_u16(bda.KBD_HEAD), m.read_u16(bda.KBD_TAIL)
        if head == tail:
            return None
        start, end = m.read_u16(bda.KBD_BUFFER_START), m.read_u16(bda.KBD_BUFFER_END)
        if not (start <= head < end <= 0x100):
            m.write_u16(bda.KBD_HEAD, tail)  # corrupted pointers: drop the buffer
            return None
        word = m.read_u16(layout.BDA_START + head)
        if remove:
            m.write_u16(bda.KBD_HEAD, head + 2 if head + 2 < end else start)
        return word

    # -- int 16h --------------------------------------------------------------------------------
    def service(self, r: Regs) -> None:
        ah = r.ah
        if ah in (0x00, 0x10, 0x01, 0x11):
            self.pump()
            extended = ah in (0x10, 0x11)
            remove = ah in (0x00, 0x10)
            word = self._peek(remove)
            if remove:
                if word is None:
                    time.sleep(POLL)  # nothing typed: wait a little, then the ROM asks again
                    r.retry = True
                    return
                r.retry = False
            if word is not None:
                if not extended and word & 0xFF == 0xE0:
                    word &= 0xFF00  # the non-extended calls report grey keys as ASCII 0
                r.ax = word
            r.zf = word is None
        elif ah == 0x02:
            r.al = self.mem.read_u8(bda.SHIFT_FLAGS)
        elif ah == 0x12:
            r.al = self.mem.read_u8(bda.SHIFT_FLAGS)
            r.ah = self.mem.read_u8(bda.SHIFT_FLAGS2)
        elif ah == 0x05:
            r.al = 0 if self._push(r.cx) else 1
        # 03h (typematic rate) and the rest: accepted and ignored.
