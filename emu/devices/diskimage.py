"""A disk image file (raw or qcow2) as 512-byte sectors, shared by the BIOS drives and virtio-blk.

The format is detected from the file's magic unless the DiskSpec names one; either way the file is
Storage (imagefile.py: raw, qcow2.py: qcow2) and this class adds sectors and the snapshot. Without
a snapshot, writes go to the file; with one (`--snapshot`), to an in-memory overlay of whole
sectors and the file (and any backing file) is opened read-only. A trailing partial sector is not
part of the disk.
"""

from __future__ import annotations

import os
from pathlib import Path

from emu.config import DiskFormat
from emu.devices.imagefile import RawFile, Storage, open_fd, probe
from emu.devices.qcow2 import Qcow2Image
from emu.errors import EmuError

SECTOR = 512


def open_storage(path: Path, writable: bool, fmt: DiskFormat | None = None) -> Storage:
    """The image at `path` as Storage, in format `fmt` (None: detected); errors are one line."""
    what = f"disk {path}"
    fd = open_fd(path, writable, what)
    try:
        kind = fmt or probe(fd)
    except OSError as e:
        os.close(fd)
        raise EmuError(f"{what}: {e.strerror}") from None
    if kind is DiskFormat.QCOW2:
        return Qcow2Image(fd, path, writable, what)  # closes fd if it fails
    return RawFile(fd)


class ReadOnlyDisk(PermissionError):
    """A write to a disk opened read-only."""


class DiskImage:
    def __init__(
        self, path: Path, readonly: bool = False, snapshot: bool = False, format: DiskFormat | None = None
    ) -> None:
        self.path = path
        self.readonly = readonly
        self.overlay: dict[int, bytes] | None = {} if snapshot else None
        self.store = open_storage(path, not readonly and not snapshot, format)
        self.format = self.store.format
        self.size = self.store.size  # qcow2: the virtual size
        self.sectors = self.size // SECTOR
        if self.sectors == 0:
            self.close()
            raise EmuError(f"disk {path}: smaller than one 512-byte sector")

    def close(self) -> None:
        self.store.close()

    def _check(self, lba: int, count: int) -> None:
        if lba < 0 or count < 0 or lba + count > self.sectors:
            raise ValueError(f"sectors {lba}+{count} beyond the disk ({self.sectors})")

    def read(self, lba: int, count: int) -> bytes:
        self._check(lba, count)
        data = self.store.read_at(lba * SECTOR, count * SECTOR)
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
        self.store.write_at(lba * SECTOR, data)

    def write_zeroes(self, lba: int, count: int) -> None:
        self._check(lba, count)
        if self.readonly:
            raise ReadOnlyDisk("read-only disk")
        if self.overlay is None:
            self.store.write_zeroes(lba * SECTOR, count * SECTOR)  # qcow2: zero clusters, no data
            return
        zero = bytes(SECTOR)
        for i in range(count):
            self.overlay[lba + i] = zero

    def flush(self) -> None:
        """Make every write so far durable (fsync); nothing to do for a snapshot or a read-only disk."""
        if self.overlay is None and not self.readonly:
            self.store.flush()
