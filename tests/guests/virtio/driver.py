"""A minimal virtio-mmio driver in Python, for unit tests: it drives a device through the Bus and
guest RAM exactly as a guest would (register accesses, rings and descriptors in GuestMemory), and
can be told to write garbage."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from emu.bus import Bus
from emu.memory import GuestMemory

MAGIC, VERSION, DEVICE_ID = 0x000, 0x004, 0x008
DFEAT, DFEATSEL, GFEAT, GFEATSEL, PAGESIZE = 0x010, 0x014, 0x020, 0x024, 0x028
QSEL, QNUMMAX, QNUM, QALIGN, QPFN, QREADY = 0x030, 0x034, 0x038, 0x03C, 0x040, 0x044
NOTIFY, ISR, ACK, STATUS = 0x050, 0x060, 0x064, 0x070
QDESC, QDRIVER, QDEVICE, CONFIG = 0x080, 0x090, 0x0A0, 0x100

ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK, NEEDS_RESET = 1, 2, 4, 8, 0x40
NEXT, WRITE, INDIRECT = 1, 2, 4
F_INDIRECT_DESC, F_EVENT_IDX, F_VERSION_1 = 1 << 28, 1 << 29, 1 << 32

# Guest-physical layout the driver uses (the tests give the machine 16 MiB).
RING = 0x10000  # descriptor table; avail and used follow (modern) or per the legacy layout
AVAIL = 0x12000
USED = 0x13000
BUF = 0x20000  # request buffers from here


@dataclass
class Desc:
    addr: int
    length: int
    flags: int = 0
    next: int = 0

    def pack(self) -> bytes:
        return struct.pack("<QIHH", self.addr, self.length, self.flags, self.next)


class MmioDriver:
    def __init__(self, bus: Bus, mem: GuestMemory, base: int) -> None:
        self.bus, self.mem, self.base = bus, mem, base
        self.qsize = 8
        self.avail = AVAIL
        self.used = USED
        self.avail_idx = 0

    def r(self, off: int) -> int:
        return self.bus.mmio_read(self.base + off, 4)

    def w(self, off: int, value: int) -> None:
        self.bus.mmio_write(self.base + off, 4, value)

    @property
    def status(self) -> int:
        return self.r(STATUS)

    def offered(self) -> int:
        self.w(DFEATSEL, 0)
        low = self.r(DFEAT)
        self.w(DFEATSEL, 1)
        return low | self.r(DFEAT) << 32

    def negotiate(self, features: int | None = None) -> int:
        """Reset, ACKNOWLEDGE, DRIVER, accept `features` (default: VERSION_1 when offered);
        FEATURES_OK on a modern device. Returns the status read back."""
        self.w(STATUS, 0)
        self.w(STATUS, ACKNOWLEDGE)
        self.w(STATUS, ACKNOWLEDGE | DRIVER)
        offered = self.offered()
        if features is None:
            features = offered & F_VERSION_1
        self.w(GFEATSEL, 0)
        self.w(GFEAT, features & 0xFFFF_FFFF)
        self.w(GFEATSEL, 1)
        self.w(GFEAT, features >> 32)
        if self.r(VERSION) == 2:
            self.w(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK)
        return self.status

    def setup_queue(self, qsize: int = 8, desc: int = RING, avail: int = AVAIL, used: int = USED) -> None:
        self.mem.fill(RING, 0x8000)
        self.qsize = qsize
        self.avail_idx = 0
        self.w(QSEL, 0)
        self.w(QNUM, qsize)
        if self.r(VERSION) == 2:
            self.avail, self.used = avail, used
            for reg, addr in ((QDESC, desc), (QDRIVER, avail), (QDEVICE, used)):
                self.w(reg, addr & 0xFFFF_FFFF)
                self.w(reg + 4, addr >> 32)
            self.w(QREADY, 1)
        else:
            self.w(PAGESIZE, 4096)
            self.w(QALIGN, 4096)
            self.avail = desc + 16 * qsize
            self.used = (self.avail + 6 + 2 * qsize + 4095) & ~4095
            self.w(QPFN, desc >> 12)

    def start(self, features: int | None = None, qsize: int = 8) -> None:
        self.negotiate(features)
        self.setup_queue(qsize)
        self.w(STATUS, self.status | DRIVER_OK)

    # -- requests -------------------------------------------------------------------------------
    def put_descs(self, descs: list[Desc], table: int = RING) -> None:
        for i, d in enumerate(descs):
            self.mem.write(table + 16 * i, d.pack())

    def kick(self, head: int = 0, queue: int = 0) -> None:
        self.mem.write_u16(self.avail + 4 + 2 * (self.avail_idx % self.qsize), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.mem.write_u16(self.avail + 2, self.avail_idx)
        self.w(NOTIFY, queue)

    def used_idx(self) -> int:
        return self.mem.read_u16(self.used + 2)

    def last_used(self) -> tuple[int, int]:
        slot = (self.used_idx() - 1) % self.qsize
        return struct.unpack("<II", self.mem.read(self.used + 4 + 8 * slot, 8))

    def blk(self, rtype: int, sector: int, data: bytes = b"", read_len: int = 0) -> tuple[int, bytes]:
        """One virtio-blk request as a three-descriptor chain; returns (status, data read)."""
        hdr, buf, st = BUF, BUF + 0x1000, BUF + 0x800
        self.mem.write(hdr, struct.pack("<IIQ", rtype, 0, sector) + data)
        self.mem.write_u8(st, 0xFF)
        descs = [Desc(hdr, 16 + len(data), NEXT, 1)]
        if read_len:
            self.mem.fill(buf, read_len, 0xEE)
            descs.append(Desc(buf, read_len, NEXT | WRITE, 2))
        descs.append(Desc(st, 1, WRITE, 0))
        self.put_descs(descs)
        self.kick()
        return self.mem.read_u8(st), self.mem.read(buf, read_len)


class Ring:
    """One virtqueue of a multi-queue device (net, console) set up by an MmioDriver at `base`:
    descriptor table, avail ring and used ring one page apart. Descriptors are used in order."""

    def __init__(self, drv: MmioDriver, index: int, base: int, qsize: int = 8) -> None:
        self.drv, self.index, self.qsize = drv, index, qsize
        self.desc, self.avail, self.used = base, base + 0x1000, base + 0x2000
        self.avail_idx = self.next_desc = self.seen_used = 0
        drv.mem.fill(base, 0x3000)
        drv.w(QSEL, index)
        drv.w(QNUM, qsize)
        if drv.r(VERSION) == 2:
            for reg, addr in ((QDESC, self.desc), (QDRIVER, self.avail), (QDEVICE, self.used)):
                drv.w(reg, addr & 0xFFFF_FFFF)
                drv.w(reg + 4, addr >> 32)
            drv.w(QREADY, 1)
        else:  # legacy: one block; the used ring at the next page
            drv.w(PAGESIZE, 4096)
            drv.w(QALIGN, 4096)
            self.avail = self.desc + 16 * qsize
            self.used = (self.avail + 6 + 2 * qsize + 4095) & ~4095
            drv.w(QPFN, self.desc >> 12)

    def post(self, buffers: list[tuple[int, int, bool]], notify: bool = True) -> int:
        """Queue one chain of (addr, length, device-writable) buffers; returns its head."""
        head = self.next_desc
        for n, (addr, length, writable) in enumerate(buffers):
            i = (head + n) % self.qsize
            last = n == len(buffers) - 1
            flags = (0 if last else NEXT) | (WRITE if writable else 0)
            self.drv.mem.write(self.desc + 16 * i, Desc(addr, length, flags, (i + 1) % self.qsize).pack())
        self.next_desc = (head + len(buffers)) % self.qsize
        self.drv.mem.write_u16(self.avail + 4 + 2 * (self.avail_idx % self.qsize), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.drv.mem.write_u16(self.avail + 2, self.avail_idx)
        if notify:
            self.drv.w(NOTIFY, self.index)
        return head

    def completed(self) -> list[tuple[int, int]]:
        """(head, length) of every chain the device returned since the last call."""
        out = []
        idx = self.drv.mem.read_u16(self.used + 2)
        while self.seen_used != idx:
            slot = self.seen_used % self.qsize
            out.append(struct.unpack("<II", self.drv.mem.read(self.used + 4 + 8 * slot, 8)))
            self.seen_used = (self.seen_used + 1) & 0xFFFF
        return out


def start_multi(drv: MmioDriver, features: int | None = None, queues: int = 2, qsize: int = 8) -> list[Ring]:
    """Negotiate, set up `queues` rings (at RING + 0x4000 * n), DRIVER_OK."""
    drv.negotiate(features)
    rings = [Ring(drv, n, RING + 0x4000 * n, qsize) for n in range(queues)]
    drv.w(STATUS, drv.status | DRIVER_OK)
    return rings


def sector_bytes(n: int) -> bytes:
    """Sector n of a patterned image: the byte n, 512 times."""
    return bytes([n]) * 512


def patterned_image(path: Path, sectors: int) -> Path:
    """A disk image at `path` of `sectors` sectors, each sector n filled by sector_bytes(n)."""
    path.write_bytes(b"".join(sector_bytes(i) for i in range(sectors)))
    return path
