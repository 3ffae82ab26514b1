"""Disk images as BIOS drives: geometry, sector I/O, and the copy-on-write overlay of --snapshot."""

from __future__ import annotations

from dataclasses import dataclass

from emu.config import DiskSpec
from emu.devices.diskimage import SECTOR, DiskImage
from emu.errors import EmuError

__all__ = ["SECTOR", "Chs", "Disk", "FloppyFormat", "logical_chs", "physical_chs"]

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


class Disk(DiskImage):
    """One BIOS drive backed by an image file (emu/devices/diskimage.py: sector I/O and the
    --snapshot overlay) with its int 13h geometry."""

    def __init__(self, spec: DiskSpec, number: int, snapshot: bool) -> None:
        super().__init__(spec.path, spec.readonly, snapshot, spec.format)
        self.spec = spec
        self.number = number  # BIOS drive number: 0x00.. floppies, 0x80.. hard disks
        size = self.size
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
