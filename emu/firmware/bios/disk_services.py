"""int 13h: disk services for hard disks (80h..) and floppies (00h..), CHS and EDD 3.0.

Behaviour follows SeaBIOS where the interface leaves room, and is written down here:
- Unknown drive or function, count 0 or above 128 (CHS), sector 0, a cylinder/head/sector
  outside the logical geometry, an LBA at or past the end (42h-44h, 47h): status 01h.
- A transfer that runs past the end of the disk stops there: the sectors before the end are
  transferred, AL (CHS) or the packet's count (EDD) says how many, status 04h.
- Floppies: a buffer that crosses a 64 KiB physical boundary fails with 09h (DMA boundary)
  before anything moves. Hard disks move data by PIO: no boundary check, and a buffer whose
  offset passes FFFFh simply continues linearly (no wrap inside the segment), as SeaBIOS does.
- A buffer that is not entirely in guest RAM: status 01h, nothing transferred.
- Writes to a read-only disk: status 03h (write protected).
Every call records its status in the BDA (40:41h for floppies, 40:74h for hard disks).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from enum import IntEnum

from emu.firmware.bios import bda
from emu.firmware.bios.disk import SECTOR, Disk
from emu.firmware.bios.guestbuf import ram_window, real_address
from emu.firmware.bios.regs import Regs
from emu.firmware.tables.checksum import checksum
from emu.memory import GuestMemory

DISKETTE_PARAMS = (0xF000, 0xEFC7)  # roms/bios.asm diskette_params
MAX_CHS_COUNT = 128
EDD_VERSION = 0x30  # EDD 3.0
EDD_SUPPORT = 0x0007  # 41h CX: extended access, removable-media functions, EDD (48h)
EDD_KEY = 0xBEDD
EDD_DPI_LENGTH = 36  # bytes 1Eh-41h of the 42h-byte EDD 3.0 (Phoenix) table
NO_DPTE = 0xFFFF_FFFF  # FFFF:FFFF: no device parameter table extension
PRIMARY_IDE_BASE = 0x1F0  # reported as the drive's ISA interface address (EDD 3.0 path)


class DiskStatus(IntEnum):
    OK = 0x00
    BAD_COMMAND = 0x01  # invalid function or parameter
    WRITE_PROTECTED = 0x03
    SECTOR_NOT_FOUND = 0x04
    DMA_BOUNDARY = 0x09
    NOT_REMOVABLE = 0xB2


def _span(disk: Disk, lba: int, count: int) -> tuple[int, DiskStatus]:
    """How many of `count` sectors from `lba` are on the disk; 04h when the request runs past its end."""
    done = max(0, min(count, disk.sectors - lba))
    return done, DiskStatus.OK if done == count else DiskStatus.SECTOR_NOT_FOUND


class DiskServices:
    def __init__(self, mem: GuestMemory, disks: list[Disk], invalidate_code: Callable[[int, int], None]) -> None:
        self.mem = mem
        self.disks = {d.number: d for d in disks}
        self.invalidate_code = invalidate_code
        self._functions: dict[int, Callable[[Regs, Disk], DiskStatus | None]] = {
            0x00: self._ok, 0x02: self._read_chs, 0x03: self._write_chs, 0x04: self._verify_chs,
            0x08: self._parameters, 0x09: self._ok, 0x0C: self._ok, 0x0D: self._ok,
            0x10: self._ok, 0x11: self._ok, 0x14: self._ok, 0x15: self._disk_type,
            0x41: self._edd_check, 0x42: self._read_lba, 0x43: self._write_lba,
            0x44: self._verify_lba, 0x45: self._lock, 0x46: self._eject, 0x47: self._verify_lba,
            0x48: self._edd_parameters, 0x49: self._ok,
        }  # fmt: skip

    @property
    def hard_disks(self) -> int:
        return sum(1 for n in self.disks if n & 0x80)

    @property
    def floppies(self) -> int:
        return sum(1 for n in self.disks if not n & 0x80)

    # -- dispatch -------------------------------------------------------------------------------
    def service(self, r: Regs) -> None:
        fn = r.ah
        if fn == 0x01:  # status of the last operation (itself not recorded)
            last = self.mem.read_u8(bda.FLOPPY_LAST_STATUS if r.dl < 0x80 else bda.DISK_LAST_STATUS)
            r.ah = last
            r.cf = last != 0
            return
        disk = self.disks.get(r.dl)
        handler = self._functions.get(fn)
        if disk is None or handler is None or (disk.is_floppy and 0x41 <= fn <= 0x49):
            self._finish(r, DiskStatus.BAD_COMMAND)
            return
        status = handler(r, disk)
        if status is not None:
            self._finish(r, status)

    def _finish(self, r: Regs, status: DiskStatus) -> None:
        self.mem.write_u8(bda.FLOPPY_LAST_STATUS if r.dl < 0x80 else bda.DISK_LAST_STATUS, status)
        r.ah = status
        r.cf = status != DiskStatus.OK

    # -- simple functions -----------------------------------------------------------------------
    def _ok(self, r: Regs, disk: Disk) -> DiskStatus:
        return DiskStatus.OK

    def _lock(self, r: Regs, disk: Disk) -> DiskStatus:
        return DiskStatus.OK  # fixed disks: lock and unlock always succeed

    def _eject(self, r: Regs, disk: Disk) -> DiskStatus:
        return DiskStatus.NOT_REMOVABLE

    def _parameters(self, r: Regs, disk: Disk) -> None:
        chs = disk.lchs
        last_cyl = chs.cylinders - 1
        if disk.is_floppy:
            assert disk.floppy is not None
            count = self.floppies
            r.bx = disk.floppy.cmos_type
            r.es, r.di = DISKETTE_PARAMS
        else:
            count = self.hard_disks
            last_cyl = max(0, last_cyl - 1)  # the last cylinder is reserved (diagnostics)
        self._finish(r, DiskStatus.OK)
        r.al = 0
        r.ch = last_cyl & 0xFF
        r.cl = ((last_cyl >> 2) & 0xC0) | (chs.sectors & 0x3F)
        r.dh = chs.heads - 1
        r.dl = count

    def _disk_type(self, r: Regs, disk: Disk) -> None:
        self._finish(r, DiskStatus.OK)
        if disk.is_floppy:
            r.ah = 0x01  # diskette, no change-line support
            return
        chs = disk.lchs
        sectors = (chs.cylinders - 1) * chs.heads * chs.sectors
        r.ah = 0x03  # fixed disk
        r.cx = sectors >> 16
        r.dx = sectors & 0xFFFF

    # -- CHS transfers --------------------------------------------------------------------------
    def _chs_request(self, r: Regs, disk: Disk) -> tuple[int, int] | None:
        """(lba, count) of a CHS request, or None (status already set) when it is invalid."""
        count = r.al
        cylinder = r.ch | ((r.cl & 0xC0) << 2)
        sector = r.cl & 0x3F
        head = r.dh
        chs = disk.lchs
        if (
            not 0 < count <= MAX_CHS_COUNT
            or sector == 0
            or (cylinder >= chs.cylinders or head >= chs.heads or sector > chs.sectors)
        ):
            r.al = 0
            self._finish(r, DiskStatus.BAD_COMMAND)
            return None
        return (cylinder * chs.heads + head) * chs.sectors + sector - 1, count

    def _chs_access(self, r: Regs, disk: Disk, *, write: bool | None) -> None:
        """02h (write False), 03h (True), 04h (None: verify, nothing moves)."""
        req = self._chs_request(r, disk)
        if req is None:
            return
        lba, count = req
        if write is None:
            done, status = _span(disk, lba, count)
        else:
            done, status = self._transfer(disk, lba, count, real_address(r.es, r.bx), write=write)
        r.al = done
        self._finish(r, status)

    def _read_chs(self, r: Regs, disk: Disk) -> None:
        self._chs_access(r, disk, write=False)

    def _write_chs(self, r: Regs, disk: Disk) -> None:
        self._chs_access(r, disk, write=True)

    def _verify_chs(self, r: Regs, disk: Disk) -> None:
        self._chs_access(r, disk, write=None)

    def _transfer(self, disk: Disk, lba: int, count: int, addr: int, *, write: bool) -> tuple[int, DiskStatus]:
        """Move `count` sectors between the disk at `lba` and guest memory at `addr`."""
        if write and disk.readonly:
            return 0, DiskStatus.WRITE_PROTECTED
        size = count * SECTOR
        if disk.is_floppy and (addr & 0xFFFF) + size > 0x10000:
            return 0, DiskStatus.DMA_BOUNDARY
        window = ram_window(self.mem, addr, size, writable=not write)
        if window is None:
            return 0, DiskStatus.BAD_COMMAND
        done, status = _span(disk, lba, count)
        if done:
            n = done * SECTOR
            if write:
                disk.write(lba, bytes(window[:n]))
            else:
                window[:n] = disk.read(lba, done)
                self.invalidate_code(addr, n)  # the sectors may be code the CPU ran before
        return done, status

    # -- EDD (LBA) functions --------------------------------------------------------------------
    def _edd_check(self, r: Regs, disk: Disk) -> None:
        if r.bx != 0x55AA:
            self._finish(r, DiskStatus.BAD_COMMAND)
            return
        self._finish(r, DiskStatus.OK)
        r.ah = EDD_VERSION
        r.bx = 0xAA55
        r.cx = EDD_SUPPORT

    def _packet(self, r: Regs) -> tuple[int, int, int, int] | None:
        """(address of the packet, count, buffer address, lba) from the disk address packet at
        DS:SI, or None when the packet is malformed or outside RAM."""
        at = real_address(r.ds, r.si)
        head = ram_window(self.mem, at, 16, writable=True)
        if head is None:
            return None
        size, _, count, offset, segment, lba = struct.unpack("<BBHHHQ", head)
        if size < 16:
            return None
        buffer = real_address(segment, offset)
        if (segment, offset) == (0xFFFF, 0xFFFF) and size >= 24:
            flat = ram_window(self.mem, at + 16, 8, writable=False)
            if flat is None:
                return None
            buffer = struct.unpack("<Q", flat)[0]
        return at, count, buffer, lba

    def _lba_access(self, r: Regs, disk: Disk, *, write: bool | None) -> None:
        """42h (write False), 43h (True), 44h/47h (None: verify or seek, nothing moves)."""
        packet = self._packet(r)
        if packet is None:
            self._finish(r, DiskStatus.BAD_COMMAND)
            return
        at, count, buffer, lba = packet
        if lba >= disk.sectors:
            self.mem.write_u16(at + 2, 0)
            self._finish(r, DiskStatus.BAD_COMMAND)
            return
        if count == 0:
            self._finish(r, DiskStatus.OK)
            return
        if write is None:
            done, status = _span(disk, lba, count)
        else:
            done, status = self._transfer(disk, lba, count, buffer, write=write)
        self.mem.write_u16(at + 2, done)
        self._finish(r, status)

    def _read_lba(self, r: Regs, disk: Disk) -> None:
        self._lba_access(r, disk, write=False)

    def _write_lba(self, r: Regs, disk: Disk) -> None:
        self._lba_access(r, disk, write=True)

    def _verify_lba(self, r: Regs, disk: Disk) -> None:
        self._lba_access(r, disk, write=None)

    def _edd_parameters(self, r: Regs, disk: Disk) -> DiskStatus:
        """48h: the drive parameter table at DS:SI, as long as the caller's buffer allows:
        1Ah bytes (EDD 1.x), 1Eh (2.x: DPTE pointer) or 42h (3.0: device path)."""
        at = real_address(r.ds, r.si)
        head = ram_window(self.mem, at, 2, writable=True)
        if head is None:
            return DiskStatus.BAD_COMMAND
        room = struct.unpack("<H", head)[0]
        if room < 0x1A:
            return DiskStatus.BAD_COMMAND
        size = 0x42 if room >= 0x42 else 0x1E if room >= 0x1E else 0x1A
        window = ram_window(self.mem, at, size, writable=True)
        if window is None:
            return DiskStatus.BAD_COMMAND
        p = disk.pchs
        chs_valid = p.total <= disk.sectors
        table = bytearray(struct.pack(
            "<HHIIIQH", size, 0x02 if chs_valid else 0x00,  # info flag 1: CHS information valid
            p.cylinders, p.heads, p.sectors, disk.sectors, SECTOR,
        ))  # fmt: skip
        if size >= 0x1E:
            table += struct.pack("<I", NO_DPTE)
        if size >= 0x42:
            slave = 0  # each image is reported as the master of its own channel
            path = struct.pack("<HBBH4s8sQQB", EDD_KEY, EDD_DPI_LENGTH, 0, 0, b"ISA ", b"ATA     ",
                               PRIMARY_IDE_BASE, slave, 0)  # fmt: skip
            table += path + bytes([checksum(path)])
        window[:] = table
        return DiskStatus.OK
