"""A raw disk image file as 512-byte sectors, shared by the BIOS drives and virtio-blk.

Without a snapshot, writes go to the file; with one (`--snapshot`), to an in-memory overlay of
whole sectors and the file is opened read-only. A trailing partial sector is not part of the disk.
"""

from __future__ import annotations

import os
from pathlib import Path

from emu.errors import EmuError

SECTOR = 512
_ZERO_CHUNK = 256  # sectors written per pwrite when zeroing a range


class ReadOnlyDisk(PermissionError):
    """A write to a disk opened read-only."""


class DiskImage:
    def __init__(self, path: Path, readonly: bool = False, snapshot: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self.overlay: dict[int, bytes] | None = {} if snapshot else None
        writable = not readonly and not snapshot
        self._fd = -1
        try:
            self._fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        except FileNotFoundError:
            raise EmuError(f"disk {path}: no such file") from None
        except IsADirectoryError:
            raise EmuError(f"disk {path}: is a directory") from None
        except PermissionError:
            hint = " (add ,ro or use --snapshot)" if writable else ""
            raise EmuError(f"disk {path}: permission denied{hint}") from None
        except OSError as e:
            raise EmuError(f"disk {path}: {e.strerror}") from None
        self.size = os.fstat(self._fd).st_size
        self.sectors = self.size // SECTOR
        if self.sectors == 0:
            self.close()
            raise EmuError(f"disk {path}: smaller than one 512-byte sector")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _check(self, lba: int, count: int) -> None:
        if lba < 0 or count < 0 or lba + count > self.sectors:
            raise ValueError(f"sectors {lba}+{count} beyond the disk ({self.sectors})")

    def read(self, lba: int, count: int) -> bytes:
        self._check(lba, count)
        data = os.pread(self._fd, count * SECTOR, lba * SECTOR)
        if self.overlay:
            buf = bytearray(data)
            for i in range(count):
                sector = self.overlay.get(lba + i)
                if sector is not None:
                    buf[i * SECTOR : (i + 1) * SECTOR] = sector
            data = bytes(buf)
        return data

    def write(self, lba: int, data: bytes | bytearray | memoryview) -> None:
        if len(data) % SECTOR:
            raise ValueError(f"a write of {len(data)} bytes is not whole sectors")
        count = len(data) // SECTOR
        self._check(lba, count)
        if self.readonly:
            raise ReadOnlyDisk("read-only disk")
        if self.overlay is not None:
            for i in range(count):
                self.overlay[lba + i] = bytes(data[i * SECTOR : (i + 1) * SECTOR])
            return
        os.pwrite(self._fd, data, lba * SECTOR)

    def write_zeroes(self, lba: int, count: int) -> None:
        self._check(lba, count)
        if self.readonly:
            raise ReadOnlyDisk("read-only disk")
        while count:
            n = min(count, _ZERO_CHUNK)
            self.write(lba, bytes(n * SECTOR))
            lba += n
            count -= n

    def flush(self) -> None:
        """Make every write so far durable (fsync); nothing to do for a snapshot or a read-only disk."""
        if self.overlay is None and not self.readonly:
            os.fsync(self._fd)
