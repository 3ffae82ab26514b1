"""The host side of the guest console: stdio in raw mode with a QEMU-style Ctrl-A escape."""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import threading
import tty
from collections.abc import Callable

ESCAPE = 0x01  # Ctrl-A
HELP = b"\r\nC-a x    exit emu\r\nC-a h    print this help\r\nC-a C-a  send C-a to the guest\r\n"


class StdioConsole:
    """Feeds host stdin to the guest (through `feed`) and writes guest output to stdout.

    When stdin is a terminal it is put in raw mode, so every key (Ctrl-C included) reaches the
    guest; Ctrl-A x quits. The terminal is always restored, whatever way emu ends.
    """

    def __init__(self, on_quit: Callable[[], None], stdin_fd: int | None = None) -> None:
        self.on_quit = on_quit
        self.in_fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
        self.out_fd = sys.stdout.fileno()
        self.is_tty = os.isatty(self.in_fd)
        self._saved: list | None = None
        self._feed: Callable[[bytes], None] | None = None
        self._stop_r, self._stop_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._escape = False
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        if self.is_tty:
            data = data.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n")
        # stdout may be closed (a pipe reader went away): the guest keeps running regardless.
        with self._lock, contextlib.suppress(OSError):
            os.write(self.out_fd, data)

    def start(self, feed: Callable[[bytes], None]) -> None:
        self._feed = feed
        if self.is_tty:
            self._saved = termios.tcgetattr(self.in_fd)
            tty.setraw(self.in_fd)
        self._thread = threading.Thread(target=self._reader, name="console-in", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        if self._thread is not None:
            self._thread.join(1)
        if self._saved is not None:
            termios.tcsetattr(self.in_fd, termios.TCSADRAIN, self._saved)
            self._saved = None
        for fd in (self._stop_r, self._stop_w):
            os.close(fd)

    def _reader(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.in_fd, self._stop_r], [], [])
            except (OSError, ValueError):
                return
            if self._stop_r in ready:
                return
            try:
                data = os.read(self.in_fd, 256)
            except OSError:
                return
            if not data:
                return  # EOF: the guest simply gets no more input
            self._handle(data)

    def _handle(self, data: bytes) -> None:
        if not self.is_tty:
            assert self._feed is not None
            self._feed(data)
            return
        out = bytearray()
        for b in data:
            if self._escape:
                self._escape = False
                if b in (ord("x"), ord("X")):
                    self.on_quit()
                    return
                if b in (ord("h"), ord("H"), ord("?")):
                    self.write(HELP)
                elif b == ESCAPE:
                    out.append(ESCAPE)
                continue
            if b == ESCAPE:
                self._escape = True
                continue
            out.append(b)
        if out and self._feed is not None:
            self._feed(bytes(out))
