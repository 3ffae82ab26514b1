"""Image files as byte-addressed storage: the interface a disk format implements (raw here, qcow2
in qcow2.py), opening a file with one-line errors, and telling the formats apart by their magic."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Protocol

from emu.config import DiskFormat
from emu.errors import EmuError

QCOW2_MAGIC = b"QFI\xfb"
_ZERO_CHUNK = 128 * 1024  # bytes written per pwrite when zeroing a range


class Storage(Protocol):
    """A virtual disk of `size` bytes. Reads past the end are the caller's bug (DiskImage checks);
    a backing file's reader (qcow2) clips instead: see read_at's contract in each format."""

    format: DiskFormat
    size: int

    def read_at(self, offset: int, length: int) -> bytes:
        """`length` bytes at `offset`; whatever lies beyond `size` reads as zeros."""
        ...

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None: ...

    def write_zeroes(self, offset: int, length: int) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def open_fd(path: Path, writable: bool, what: str) -> int:
    """An fd on `path`; failures are one EmuError line starting with `what` (e.g. "disk x.img")."""
    try:
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
    except FileNotFoundError:
        raise EmuError(f"{what}: no such file") from None
    except IsADirectoryError:
        raise EmuError(f"{what}: is a directory") from None
    except PermissionError:
        hint = " (add ,ro or use --snapshot)" if writable else ""
        raise EmuError(f"{what}: permission denied{hint}") from None
    except OSError as e:
        raise EmuError(f"{what}: {e.strerror}") from None
    if stat.S_ISDIR(os.fstat(fd).st_mode):  # O_RDONLY opens a directory without complaint
        os.close(fd)
        raise EmuError(f"{what}: is a directory")
    return fd


def probe(fd: int) -> DiskFormat:
    """qcow2 when the file starts with its magic, else raw (as QEMU probes, minus other formats)."""
    return DiskFormat.QCOW2 if os.pread(fd, len(QCOW2_MAGIC), 0) == QCOW2_MAGIC else DiskFormat.RAW


class RawFile:
    """A raw image: the file's bytes are the disk's bytes. Takes ownership of `fd`."""

    format = DiskFormat.RAW

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.size = os.fstat(fd).st_size

    def read_at(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        # Short only past the end of the file (a backing file smaller than its overlay).
        return data if len(data) == length else data.ljust(length, b"\0")

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        os.pwrite(self._fd, data, offset)

    def write_zeroes(self, offset: int, length: int) -> None:
        while length:
            n = min(length, _ZERO_CHUNK)
            os.pwrite(self._fd, bytes(n), offset)
            offset += n
            length -= n

    def flush(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
