"""virtio-blk (virtio 1.x spec 5.2) on a raw image file (emu/devices/diskimage.py).

One request queue. Each request is a 16-byte header (type, reserved/ioprio, sector) in the
device-readable part, then data, and a one-byte status as the last writable byte. Every request
is checked against the disk's size and the chain's shape; a bad one completes with IOERR (or
UNSUPP for an unknown type) and never raises into the vCPU loop.
"""

from __future__ import annotations

import logging
import struct
from enum import IntEnum
from pathlib import Path

from emu.devices.diskimage import SECTOR, DiskImage, ReadOnlyDisk
from emu.devices.virtio.constants import DeviceId
from emu.devices.virtio.device import VirtioDevice
from emu.devices.virtio.queue import Chain, Virtqueue
from emu.devices.virtio.wiring import Wiring
from emu.memory import GuestMemory

log = logging.getLogger("emu.virtio.blk")

# Feature bits (spec 5.2.3).
F_SEG_MAX = 1 << 2
F_RO = 1 << 5
F_BLK_SIZE = 1 << 6
F_FLUSH = 1 << 9
F_DISCARD = 1 << 13
F_WRITE_ZEROES = 1 << 14

ID_BYTES = 20  # GET_ID answer: the serial string, NUL-padded
MAX_ZERO_SECTORS = 1 << 15  # per discard / write-zeroes segment (16 MiB)
_HEADER = struct.Struct("<IIQ")  # type, reserved (ioprio in legacy), sector
_SEGMENT = struct.Struct("<QII")  # discard / write-zeroes: sector, num_sectors, flags
_SEGMENT_UNMAP = 1


class ReqType(IntEnum):
    IN = 0
    OUT = 1
    FLUSH = 4
    GET_ID = 8
    DISCARD = 11
    WRITE_ZEROES = 13


class BlkStatus(IntEnum):
    OK = 0
    IOERR = 1
    UNSUPP = 2


class BadRequest(Exception):
    """A request the device answers with IOERR (logged at debug level)."""


class VirtioBlk(VirtioDevice):
    device_id = DeviceId.BLOCK
    name = "blk"

    def __init__(self, memory: GuestMemory, wiring: Wiring, disk: DiskImage, serial: str = "") -> None:
        self.disk = disk
        self.serial = (serial or f"emu-{Path(disk.path).name}")[:ID_BYTES].encode()
        self.requests = 0  # completed requests, for tests and benchmarks
        super().__init__(memory, wiring)

    def device_features(self) -> int:
        features = F_SEG_MAX | F_BLK_SIZE | F_FLUSH
        if self.disk.readonly:
            return features | F_RO
        return features | F_DISCARD | F_WRITE_ZEROES

    def config_bytes(self) -> bytes:
        # capacity, size_max, seg_max, geometry (c, h, s), blk_size, topology (4 fields),
        # writeback, unused, num_queues, discard (3), write zeroes (2), may_unmap, 3 unused.
        return struct.pack(
            "<QIIHBBIBBHIBBHIIIIIB3x",
            self.disk.sectors, 0, self.queue_max_size - 2, 0, 0, 0, SECTOR, 0, 0, 0, 0,
            0, 0, 1, MAX_ZERO_SECTORS, 1, 1, MAX_ZERO_SECTORS, 1, 0,
        )  # fmt: skip

    def close(self) -> None:
        self.disk.close()

    # -- requests ---------------------------------------------------------------------------------
    def handle(self, queue: Virtqueue, chain: Chain) -> int:
        self.requests += 1
        if chain.writable_len < 1:
            # No room for a status byte: nothing can be reported; the driver broke the protocol.
            log.debug("%s: request without a status byte", self.label)
            return 0
        status_at = chain.writable_len - 1
        if chain.readable_len < _HEADER.size:
            log.debug("%s: request header is %d bytes, not 16", self.label, chain.readable_len)
            return chain.write(status_at, bytes([BlkStatus.IOERR]))
        rtype, _, sector = _HEADER.unpack(chain.read(0, _HEADER.size))
        written = 0
        try:
            status, written = self._request(rtype, sector, chain, status_at)
        except BadRequest as e:
            log.debug("%s: request type %d sector %d: %s", self.label, rtype, sector, e)
            status = BlkStatus.IOERR
        except ReadOnlyDisk:
            status = BlkStatus.IOERR
        except OSError as e:
            log.debug("%s: host I/O error on %s: %s", self.label, self.disk.path, e)
            status = BlkStatus.IOERR
        return written + chain.write(status_at, bytes([status]))

    def _sectors(self, sector: int, count: int) -> None:
        if count and (sector >= self.disk.sectors or count > self.disk.sectors - sector):
            raise BadRequest(f"sectors {sector}+{count} beyond the disk ({self.disk.sectors})")

    def _request(self, rtype: int, sector: int, chain: Chain, status_at: int) -> tuple[BlkStatus, int]:
        """(status, data bytes written to the guest) for one request."""
        if rtype == ReqType.IN:
            size = status_at
            if size % SECTOR:
                raise BadRequest(f"read of {size} bytes is not whole sectors")
            self._sectors(sector, size // SECTOR)
            data = self.disk.read(sector, size // SECTOR)
            return BlkStatus.OK, chain.write(0, data)
        if rtype == ReqType.OUT:
            size = chain.readable_len - _HEADER.size
            if size % SECTOR:
                raise BadRequest(f"write of {size} bytes is not whole sectors")
            self._sectors(sector, size // SECTOR)
            if self.disk.readonly:
                raise BadRequest("write to a read-only disk")
            self.disk.write(sector, chain.read(_HEADER.size, size))
            return BlkStatus.OK, 0
        if rtype == ReqType.FLUSH:
            self.disk.flush()
            return BlkStatus.OK, 0
        if rtype == ReqType.GET_ID:
            return BlkStatus.OK, chain.write(0, self.serial.ljust(min(ID_BYTES, status_at), b"\0")[:status_at])
        if rtype in (ReqType.DISCARD, ReqType.WRITE_ZEROES) and not self.disk.readonly:
            self._zero_segments(chain, rtype)
            return BlkStatus.OK, 0
        return BlkStatus.UNSUPP, 0

    def _zero_segments(self, chain: Chain, rtype: int) -> None:
        """Discard and write-zeroes: both zero the sectors (discarded contents are undefined, so
        zeroes are as good as any and keep a --snapshot overlay exact)."""
        body = chain.read(_HEADER.size)
        if not body or len(body) % _SEGMENT.size or len(body) // _SEGMENT.size > 1:
            raise BadRequest(f"{len(body)} bytes of discard/write-zeroes segments (one 16-byte segment allowed)")
        sector, count, flags = _SEGMENT.unpack(body)
        if count > MAX_ZERO_SECTORS:
            raise BadRequest(f"{count} sectors in one segment, more than {MAX_ZERO_SECTORS}")
        if flags & ~_SEGMENT_UNMAP or (rtype == ReqType.DISCARD and flags):
            raise BadRequest(f"segment flags {flags:#x}")
        self._sectors(sector, count)
        self.disk.write_zeroes(sector, count)
