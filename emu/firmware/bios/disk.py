"""Disk images as BIOS drives: geometry, sector I/O, and the copy-on-write overlay of --snapshot."""

from __future__ import annotations

import os
from dataclasses import dataclass

from emu.config import DiskSpec
from emu.errors import EmuError

SECTOR = 512

# Hard disk "physical" geometry for an image, as QEMU reports a disk without a partition-table
# hint: 16 heads, 63 sectors per track, cylinders from the size (at least 2, at most 16383).
PHYS_HEADS = 16
PHYS_SPT = 63
MAX_PHYS_CYLINDERS = 16383
MAX_LOGICAL_CYLINDERS = 1024  # int 13h CHS has 10 cylinder bits


@dataclass(frozen=True)
class Chs:
    cylinders: int
    heads: int
    sectors: int  # per track

    @property
    def total(self) -> int:
        return self.cylinders * self.heads * self.sectors


@dataclass(frozen=True)
class FloppyFormat:
    chs: Chs
    cmos_type: int  # int 13h 08h BL: the CMOS drive type


FLOPPY_FORMATS = {
    360 * 1024: FloppyFormat(Chs(40, 2, 9), 1),
    1200 * 1024: FloppyFormat(Chs(80, 2, 15), 2),
    720 * 1024: FloppyFormat(Chs(80, 2, 9), 3),
    1440 * 1024: FloppyFormat(Chs(80, 2, 18), 4),
    2880 * 1024: FloppyFormat(Chs(80, 2, 36), 5),
}


def physical_chs(sectors: int) -> Chs:
    cylinders = min(max(sectors // (PHYS_HEADS * PHYS_SPT), 2), MAX_PHYS_CYLINDERS)
    return Chs(cylinders, PHYS_HEADS, PHYS_SPT)


def logical_chs(phys: Chs, sectors: int) -> Chs:
    """The int 13h (translated) geometry, chosen the way SeaBIOS does: no translation when the
    physical geometry fits int 13h, else LARGE (cylinders halved, heads doubled) when
    cylinders x heads <= 131072, else LBA-assisted (63 sectors, 16..255 heads)."""
    c, h, s = phys.cylinders, phys.heads, phys.sectors
    if phys.total > sectors:
        mode = "lba"  # the physical geometry claims more than the disk has
    elif c <= MAX_LOGICAL_CYLINDERS and h <= 16 and s <= 63:
        mode = "none"
    elif c * h <= 131072:
        mode = "large"
    else:
        mode = "lba"
    if mode == "large":
        while c > MAX_LOGICAL_CYLINDERS:
            c >>= 1
            h <<= 1
            if h > 127:
                break
    elif mode == "lba":
        s = 63
        if sectors > 63 * 255 * MAX_LOGICAL_CYLINDERS:
            h, c = 255, MAX_LOGICAL_CYLINDERS
        else:
            per_head = sectors // 63
            h = next((n for n in (16, 32, 64, 128) if per_head // MAX_LOGICAL_CYLINDERS <= n), 255)
            c = per_head // h
    return Chs(max(1, min(c, MAX_LOGICAL_CYLINDERS)), h, s)


class Disk:
    """One BIOS drive backed by an image file.

    Without --snapshot, writes go to the file; with it, to an in-memory overlay of whole sectors
    and the file is opened read-only. A trailing partial sector is not part of the disk.
    """

    def __init__(self, spec: DiskSpec, number: int, snapshot: bool) -> None:
        self.spec = spec
        self.number = number  # BIOS drive number: 0x00.. floppies, 0x80.. hard disks
        self.readonly = spec.readonly
        self.overlay: dict[int, bytes] | None = {} if snapshot else None
        writable = not spec.readonly and not snapshot
        try:
            self._fd = os.open(spec.path, os.O_RDWR if writable else os.O_RDONLY)
        except FileNotFoundError:
            raise EmuError(f"disk {spec.path}: no such file") from None
        except IsADirectoryError:
            raise EmuError(f"disk {spec.path}: is a directory") from None
        except PermissionError:
            hint = " (add ,ro or use --snapshot)" if writable else ""
            raise EmuError(f"disk {spec.path}: permission denied{hint}") from None
        except OSError as e:
            raise EmuError(f"disk {spec.path}: {e.strerror}") from None
        size = os.fstat(self._fd).st_size
        self.sectors = size // SECTOR
        if self.sectors == 0:
            self.close()
            raise EmuError(f"disk {spec.path}: smaller than one 512-byte sector")
        self.floppy: FloppyFormat | None = None
        if spec.floppy:
            self.floppy = FLOPPY_FORMATS.get(size)
            if self.floppy is None:
                self.close()
                sizes = ", ".join(f"{k // 1024}K" for k in sorted(FLOPPY_FORMATS))
                raise EmuError(f"disk {spec.path}: a floppy image must be {sizes} (it is {size} bytes)")
            self.pchs = self.lchs = self.floppy.chs
        else:
            self.pchs = physical_chs(self.sectors)
            self.lchs = logical_chs(self.pchs, self.sectors)

    @property
    def is_floppy(self) -> bool:
        return self.floppy is not None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def read(self, lba: int, count: int) -> bytes:
        if lba < 0 or count < 0 or lba + count > self.sectors:
            raise ValueError(f"sectors {lba}+{count} beyond the disk ({self.sectors})")
        data = os.pread(self._fd, count * SECTOR, lba * SECTOR)
        if self.overlay:
            buf = bytearray(data)
            for i in range(count):
                sector = self.overlay.get(lba + i)
                if sector is not None:
                    buf[i * SECTOR : (i + 1) * SECTOR] = sector
            data = bytes(buf)
        return data

    def write(self, lba: int, data: bytes) -> None:
        count = len(data) // SECTOR
        if lba < 0 or lba + count > self.sectors or len(data) % SECTOR:
            raise ValueError(f"sectors {lba}+{count} beyond the disk ({self.sectors})")
        if self.readonly:
            raise PermissionError("read-only disk")
        if self.overlay is not None:
            for i in range(count):
                self.overlay[lba + i] = bytes(data[i * SECTOR : (i + 1) * SECTOR])
            return
        os.pwrite(self._fd, data, lba * SECTOR)
