"""int 10h: an 80x25 colour text screen in the VGA buffer at 0xB8000, and its console echo.

Text written with teletype (0Eh) and write-string (13h) also appears on emu's console, so an MBR
that only uses int 10h is visible in a terminal. Many guests (syslinux, Linux's setup code with
console=ttyS0) print every character both through int 10h and to the serial port themselves;
showing both would print everything twice. The echo therefore stops for good the first time the
guest transmits on the UART: from then on the guest is taken to drive the serial console
itself. Such guests emit each character on both paths back to back, so echoed text is held
back a moment (until a newline or ECHO_DELAY seconds pass) and dropped if the UART speaks first.
Writes with 09h/0Ah (character at the cursor without moving it) go to the screen only, except a
single character that the cursor then steps over (02h to the next column, or CR/LF after the last
one): that is how GRUB's console prints every printable character, so it is shown like teletype
text ("Welcome to GRUB!").
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from emu import layout
from emu.firmware.bios import bda
from emu.firmware.bios.guestbuf import ram_window, real_address
from emu.firmware.bios.regs import Regs
from emu.memory import GuestMemory

COLUMNS = 80
ROWS = 25
PAGES = 8
PAGE_SIZE = 0x1000
TEXT_MODE = 0x03
DEFAULT_ATTR = 0x07
CURSOR_SHAPE = 0x0607  # start line 6, end line 7
ECHO_DELAY = 0.1  # seconds a partial line waits before it is echoed
VGA_COLOUR = 0x08  # display combination code: VGA with a colour display


class ConsoleEcho:
    """Line-buffered echo of int 10h text to emu's console, muted once the serial port is used."""

    def __init__(self, sink: Callable[[bytes], None], serial_used: Callable[[], bool]) -> None:
        self.sink = sink
        self.serial_used = serial_used
        self._pending = bytearray()
        self._muted = False
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._check_muted():
                return
            self._pending += data
            cut = self._pending.rfind(b"\n") + 1
            if cut:
                self._emit(cut)
            if self._pending and self._timer is None:
                self._timer = threading.Timer(ECHO_DELAY, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        with self._lock:
            self._timer = None
            if not self._check_muted() and self._pending:
                self._emit(len(self._pending))

    def force(self, data: bytes) -> None:
        """Firmware's own messages (no bootable disk): always shown."""
        self.flush()
        self.sink(data)

    def reset(self) -> None:
        with self._lock:
            self._pending.clear()
            self._cancel()

    def close(self) -> None:
        self.reset()

    def _check_muted(self) -> bool:
        if not self._muted and self.serial_used():
            self._muted = True
            self._pending.clear()
            self._cancel()
        return self._muted

    def _emit(self, n: int) -> None:
        data = bytes(self._pending[:n])
        del self._pending[:n]
        self.sink(data)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Video:
    def __init__(self, mem: GuestMemory, echo: ConsoleEcho) -> None:
        self.mem = mem
        self.echo = echo
        self.transcript = bytearray()  # all text echoed to the console, muted or not (for tests)
        self._stepped: tuple[int, int, int, int] | None = None  # 09h/0Ah's char: page, row, column, char

    # -- state in the BDA -----------------------------------------------------------------------
    def post(self) -> None:
        m = self.mem
        m.write_u8(bda.VIDEO_MODE, TEXT_MODE)
        m.write_u16(bda.VIDEO_COLUMNS, COLUMNS)
        m.write_u16(bda.VIDEO_PAGE_SIZE, PAGE_SIZE)
        m.write_u16(bda.VIDEO_PAGE_OFFSET, 0)
        m.write_u16(bda.CURSOR_SHAPE, CURSOR_SHAPE)
        m.write_u8(bda.VIDEO_PAGE, 0)
        m.write_u16(bda.CRTC_PORT, 0x3D4)
        m.write_u8(bda.VIDEO_MODE_CTL, 0x29)
        m.write_u8(bda.VIDEO_PALETTE, 0x30)
        m.write_u8(bda.VIDEO_ROWS, ROWS - 1)
        m.write_u16(bda.CHAR_HEIGHT, 16)
        m.write_u8(bda.VIDEO_FLAGS, 0x60)
        m.write_u8(bda.VIDEO_SWITCHES, 0x09)
        m.write_u8(bda.VGA_FLAGS, 0x51)
        self._set_mode(clear=True)

    def _set_mode(self, clear: bool) -> None:
        self.mem.write_u8(bda.VIDEO_MODE, TEXT_MODE)
        self.mem.write_u8(bda.VIDEO_PAGE, 0)
        self.mem.write_u16(bda.VIDEO_PAGE_OFFSET, 0)
        for page in range(PAGES):
            self._set_cursor(page, 0, 0)
        if clear:
            self.mem.write(layout.VGA_TEXT, bytes([0x20, DEFAULT_ATTR]) * (PAGE_SIZE * PAGES // 2))

    def _cursor(self, page: int) -> tuple[int, int]:
        at = bda.CURSOR_POS + 2 * (page & 7)
        return self.mem.read_u8(at + 1), self.mem.read_u8(at)  # row, column

    def _set_cursor(self, page: int, row: int, col: int) -> None:
        at = bda.CURSOR_POS + 2 * (page & 7)
        self.mem.write_u8(at, col)
        self.mem.write_u8(at + 1, row)

    def _cell(self, page: int, row: int, col: int) -> int:
        return layout.VGA_TEXT + (page & 7) * PAGE_SIZE + 2 * (row * COLUMNS + col)

    # -- screen operations ----------------------------------------------------------------------
    def _put(self, page: int, row: int, col: int, ch: int, attr: int | None) -> None:
        at = self._cell(page, row, col)
        self.mem.write_u8(at, ch)
        if attr is not None:
            self.mem.write_u8(at + 1, attr)

    def _scroll(self, page: int, lines: int, attr: int, top: int, left: int, bottom: int, right: int,
                up: bool) -> None:  # fmt: skip
        bottom, right = min(bottom, ROWS - 1), min(right, COLUMNS - 1)
        if top > bottom or left > right:
            return
        height = bottom - top + 1
        if lines == 0 or lines > height:
            lines = height
        width = 2 * (right - left + 1)
        rows = range(top, bottom + 1) if up else range(bottom, top - 1, -1)
        for row in rows:
            src = row + lines if up else row - lines
            dst = self._cell(page, row, left)
            if top <= src <= bottom:
                self.mem.write(dst, self.mem.read(self._cell(page, src, left), width))
            else:
                self.mem.write(dst, bytes([0x20, attr]) * (width // 2))

    def teletype(self, ch: int, page: int | None = None, attr: int | None = None) -> None:
        if page is None:
            page = self.mem.read_u8(bda.VIDEO_PAGE)
        row, col = self._cursor(page)
        if ch == 0x07:  # bell: nothing to ring
            pass
        elif ch == 0x08:
            col = max(0, col - 1)
        elif ch == 0x0A:
            row += 1
        elif ch == 0x0D:
            col = 0
        else:
            self._put(page, row, col, ch, attr)
            col += 1
            if col >= COLUMNS:
                col = 0
                row += 1
        if row >= ROWS:
            self._scroll(page, 1, DEFAULT_ATTR, 0, 0, ROWS - 1, COLUMNS - 1, up=True)
            row = ROWS - 1
        self._set_cursor(page, row, col)

    def _print(self, data: bytes) -> None:
        self.transcript += data
        self.echo.write(data.replace(b"\x07", b""))

    def message(self, text: str) -> None:
        """A firmware message: on the screen and always on the console."""
        data = text.encode()
        for ch in data:
            self.teletype(ch, attr=DEFAULT_ATTR)
        self.transcript += data
        self.echo.force(data)

    # -- int 10h --------------------------------------------------------------------------------
    def service(self, r: Regs) -> None:
        ah = r.ah
        stepped, self._stepped = self._stepped, None
        if ah == 0x00:
            self._set_mode(clear=not r.al & 0x80)
            r.al = 0x30  # text mode set
        elif ah == 0x01:
            self.mem.write_u16(bda.CURSOR_SHAPE, r.cx)
        elif ah == 0x02:
            if stepped is not None and stepped[:3] == (r.bh & 7, r.dh, r.dl - 1):
                self._print(bytes([stepped[3]]))
            self._set_cursor(r.bh, r.dh, r.dl)
        elif ah == 0x03:
            r.dh, r.dl = self._cursor(r.bh)
            r.cx = self.mem.read_u16(bda.CURSOR_SHAPE)
        elif ah == 0x05:
            page = r.al & 7
            self.mem.write_u8(bda.VIDEO_PAGE, page)
            self.mem.write_u16(bda.VIDEO_PAGE_OFFSET, page * PAGE_SIZE)
        elif ah in (0x06, 0x07):
            page = self.mem.read_u8(bda.VIDEO_PAGE)
            self._scroll(page, r.al, r.bh, r.ch, r.cl, r.dh, r.dl, up=ah == 0x06)
        elif ah == 0x08:
            row, col = self._cursor(r.bh)
            if row < ROWS and col < COLUMNS:
                at = self._cell(r.bh, row, col)
                r.al, r.ah = self.mem.read_u8(at), self.mem.read_u8(at + 1)
        elif ah in (0x09, 0x0A):
            self._repeat(r.bh, r.al, r.bl if ah == 0x09 else None, r.cx)
            if r.cx == 1 and 0x20 <= r.al < 0x7F:
                self._stepped = (r.bh & 7, *self._cursor(r.bh), r.al)
        elif ah == 0x0E:
            if stepped is not None and r.al == 0x0D and stepped[2] == COLUMNS - 1:
                self._print(bytes([stepped[3]]))  # GRUB moves on from the last column by CR/LF
            self.teletype(r.al)
            self._print(bytes([r.al]))
        elif ah == 0x0F:
            r.ah = self.mem.read_u16(bda.VIDEO_COLUMNS) & 0xFF
            r.al = self.mem.read_u8(bda.VIDEO_MODE)
            r.bh = self.mem.read_u8(bda.VIDEO_PAGE)
        elif ah == 0x12:
            self._alternate(r)
        elif ah == 0x13:
            self._write_string(r)
        elif ah == 0x1A:
            if r.al == 0x00:
                r.al = 0x1A
                r.bx = VGA_COLOUR
        elif ah == 0x4F:
            r.ax = 0x0100  # VESA BIOS extensions: not supported (AX != 004Fh)
        # Anything else (palette, font, graphics pixels): accepted and ignored.

    def _repeat(self, page: int, ch: int, attr: int | None, count: int) -> None:
        row, col = self._cursor(page)
        start = row * COLUMNS + col
        for i in range(start, min(start + count, ROWS * COLUMNS)):
            self._put(page, i // COLUMNS, i % COLUMNS, ch, attr)

    def _alternate(self, r: Regs) -> None:
        if r.bl == 0x10:  # EGA/VGA information
            r.bh = 0x00  # colour
            r.bl = 0x03  # 256 KiB of video memory
            r.cx = self.mem.read_u8(bda.VIDEO_SWITCHES) & 0x0F
        elif r.bl in (0x30, 0x31, 0x32, 0x33, 0x34, 0x36):
            r.al = 0x12  # function supported

    def _write_string(self, r: Regs) -> None:
        mode, page, count = r.al, r.bh, r.cx
        with_attrs = bool(mode & 0x02)
        saved = self._cursor(page)
        self._set_cursor(page, r.dh, r.dl)
        view = ram_window(self.mem, real_address(r.es, r.bp), count * (2 if with_attrs else 1), writable=False)
        if view is None:
            return
        data = bytes(view)
        text = data[::2] if with_attrs else data
        for i, ch in enumerate(text):
            attr = data[2 * i + 1] if with_attrs else r.bl
            if ch in (0x07, 0x08, 0x0A, 0x0D):
                self.teletype(ch, page)
            else:
                self.teletype(ch, page, attr)
        self._print(bytes(text))
        if not mode & 0x01:
            self._set_cursor(page, *saved)
