"""The errors emu distinguishes, and the exit statuses the CLI maps them to."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """`emu run` exit statuses (stable, documented in the README).

    Odd statuses 1..255 are reserved for the guest's debug-exit port (QEMU isa-debug-exit
    semantics: writing v to port 0xF4 exits with (v << 1) | 1), so emu's own are even.
    """

    OK = 0  # guest powered off, halted for good, or the user quit
    USAGE = 2  # bad usage or bad input (missing file, image too large, bad option)
    TRIPLE_FAULT = 4
    EXPECT_MISSING = 8  # reserved: a required serial marker never appeared
    SOFTWARE = 70  # emulator error (a bug in emu or an unusable host facility)
    TIMEOUT = 124  # --timeout expired (same value as coreutils' timeout)


class EmuError(Exception):
    """An error a user can cause: reported as one line, exit status USAGE."""

    status: ExitStatus = ExitStatus.USAGE


class HostError(EmuError):
    """The host lacks something emu needs (e.g. /dev/kvm unusable)."""

    status = ExitStatus.SOFTWARE


class GuestMemoryError(Exception):
    """A guest-physical access outside guest RAM (never touches host memory)."""

    def __init__(self, addr: int, size: int) -> None:
        super().__init__(f"guest physical access {addr:#x}+{size} is outside guest RAM")
        self.addr = addr
        self.size = size
