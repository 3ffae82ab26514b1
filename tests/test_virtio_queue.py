"""The virtio core and virtio-mmio transport driven as a guest driver drives them (through the Bus
and guest RAM), with every kind of garbage a driver can write: each must put the device into
NEEDS_RESET (or refuse the step), raise no exception, and leave a device that works again after
a reset."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from guests.virtio.driver import (
    ACK,
    AVAIL,
    BUF,
    DRIVER_OK,
    F_EVENT_IDX,
    F_INDIRECT_DESC,
    F_VERSION_1,
    FEATURES_OK,
    INDIRECT,
    ISR,
    MAGIC,
    NEEDS_RESET,
    NEXT,
    NOTIFY,
    QNUM,
    QNUMMAX,
    QREADY,
    RING,
    STATUS,
    USED,
    VERSION,
    WRITE,
    Desc,
    MmioDriver,
    patterned_image,
    sector_bytes,
)

from emu import layout
from emu.bus import Bus
from emu.devices.diskimage import DiskImage
from emu.devices.virtio.blk import VirtioBlk
from emu.devices.virtio.queue import vring_need_event
from emu.devices.virtio.transport.mmio import VirtioMmio
from emu.devices.virtio.wiring import Wiring
from emu.memory import GuestMemory

MEM = 16 << 20
BASE = layout.VIRTIO_MMIO_BASE
SECTORS = 64
T_IN = 0
OK, IOERR = 0, 1


class Rig:
    """Guest RAM, a bus, one virtio-blk on virtio-mmio, the IRQ line's history and a driver."""

    def __init__(self, image: Path, legacy: bool, firmware_size: int = 0) -> None:
        self.mem = GuestMemory(MEM, firmware_size=firmware_size)
        self.bus = Bus()
        self.levels: list[bool] = []
        self.disk = DiskImage(image)
        self.blk = VirtioBlk(self.mem, Wiring(self.levels.append), self.disk)
        self.dev = VirtioMmio(self.blk, BASE, 5, legacy=legacy)
        self.dev.register(self.bus)
        self.drv = MmioDriver(self.bus, self.mem, BASE)

    @property
    def irq(self) -> bool:
        return bool(self.levels) and self.levels[-1]

    def close(self) -> None:
        self.disk.close()
        self.mem.close()

    def assert_needs_reset_then_recovers(self) -> None:
        """NEEDS_RESET is set (and stays set while the driver keeps going), then a reset and a
        fresh start give a device that reads sector 1 correctly."""
        assert self.drv.status & NEEDS_RESET
        assert self.blk.errors >= 1
        self.drv.start()
        assert not self.drv.status & NEEDS_RESET
        status, data = self.drv.blk(T_IN, 1, read_len=512)
        assert status == OK
        assert data == sector_bytes(1)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return patterned_image(tmp_path / "disk.img", SECTORS)


@pytest.fixture(params=[False, True], ids=["mmio-v2", "mmio-v1"])
def rig(request: pytest.FixtureRequest, image: Path) -> Iterator[Rig]:
    r = Rig(image, legacy=request.param)
    yield r
    r.close()


@pytest.fixture
def modern(image: Path) -> Iterator[Rig]:
    r = Rig(image, legacy=False)
    yield r
    r.close()


# -- the happy path ------------------------------------------------------------------------------
def test_discovery_registers(rig: Rig) -> None:
    d = rig.drv
    assert d.r(MAGIC) == 0x74726976
    assert d.r(VERSION) == (1 if rig.dev.version == 1 else 2)
    assert d.r(0x008) == 2  # block device
    assert d.r(QNUMMAX) == 256
    offered = d.offered()
    assert bool(offered & F_VERSION_1) == (rig.dev.version == 2)
    assert offered & F_INDIRECT_DESC and offered & F_EVENT_IDX
    assert d.r(0x100) == SECTORS and d.r(0x104) == 0  # capacity in the config space


def test_read_completes_with_used_entry_and_interrupt(rig: Rig) -> None:
    rig.drv.start()
    status, data = rig.drv.blk(T_IN, 3, read_len=1024)
    assert status == OK
    assert data == sector_bytes(3) + sector_bytes(4)
    assert rig.drv.used_idx() == 1
    assert rig.drv.last_used() == (0, 1025)  # head 0; data + status byte written
    assert rig.drv.r(ISR) == 1 and rig.irq
    rig.drv.w(ACK, 1)
    assert rig.drv.r(ISR) == 0 and not rig.irq


def test_indirect_descriptors(rig: Rig) -> None:
    rig.drv.start(features=F_INDIRECT_DESC | (F_VERSION_1 if rig.dev.version == 2 else 0))
    m, table, hdr, buf, st = rig.mem, BUF + 0x4000, BUF, BUF + 0x1000, BUF + 0x100
    m.write(hdr, struct.pack("<IIQ", T_IN, 0, 7))
    rig.drv.put_descs([Desc(hdr, 16, NEXT, 1), Desc(buf, 512, NEXT | WRITE, 2), Desc(st, 1, WRITE)], table)
    rig.drv.put_descs([Desc(table, 48, INDIRECT)])
    rig.drv.kick()
    assert m.read_u8(st) == OK
    assert m.read(buf, 512) == sector_bytes(7)


def test_event_index_suppresses_and_requests(modern: Rig) -> None:
    d = modern.drv
    d.start(features=F_VERSION_1 | F_EVENT_IDX)
    used_event = AVAIL + 4 + 2 * d.qsize
    modern.mem.write_u16(used_event, 1)  # "interrupt me when used idx passes 1", i.e. at the 2nd
    assert d.blk(T_IN, 1, read_len=512)[0] == OK
    assert d.r(ISR) == 0 and not modern.irq
    assert modern.mem.read_u16(USED + 4 + 8 * d.qsize) == 1  # avail_event: the device saw entry 0
    assert d.blk(T_IN, 2, read_len=512)[0] == OK
    assert d.r(ISR) == 1 and modern.irq


def test_vring_need_event_wraps() -> None:
    assert vring_need_event(0xFFFF, 0x0001, 0xFFFE)
    assert not vring_need_event(0x0005, 0x0001, 0xFFFE)


def test_no_interrupt_flag_without_event_index(rig: Rig) -> None:
    rig.drv.start()
    rig.mem.write_u16(rig.drv.avail, 1)  # VIRTQ_AVAIL_F_NO_INTERRUPT
    assert rig.drv.blk(T_IN, 1, read_len=512)[0] == OK
    assert rig.drv.used_idx() == 1
    assert not rig.irq


# -- negotiation ---------------------------------------------------------------------------------
def test_mmio_takes_a_modern_driver_without_version_1(modern: Rig) -> None:
    """As Firecracker's devices do: OSv's virtio-mmio driver leaves VERSION_1 out."""
    assert modern.drv.negotiate(features=0) & FEATURES_OK


def test_a_device_that_requires_version_1_refuses_without_it(modern: Rig) -> None:
    """What virtio-pci's modern interface keeps (the device core's default)."""
    modern.blk.version_1_required = True
    assert not modern.drv.negotiate(features=0) & FEATURES_OK
    assert modern.drv.negotiate() & FEATURES_OK


def test_features_not_offered_are_refused(modern: Rig) -> None:
    assert not modern.drv.negotiate(features=F_VERSION_1 | 1 << 40) & FEATURES_OK
    assert modern.drv.negotiate() & FEATURES_OK


def test_driver_ok_after_refused_features(modern: Rig) -> None:
    assert not modern.drv.negotiate(features=F_VERSION_1 | 1 << 40) & FEATURES_OK
    modern.drv.w(STATUS, modern.drv.status | DRIVER_OK)
    modern.assert_needs_reset_then_recovers()


# -- garbage -----------------------------------------------------------------------------------
def test_notify_before_driver_ok(rig: Rig) -> None:
    rig.drv.negotiate()
    rig.drv.setup_queue()
    rig.drv.w(NOTIFY, 0)
    rig.assert_needs_reset_then_recovers()


@pytest.mark.parametrize("size", [6, 0, 512])
def test_queue_size_not_a_power_of_two_or_too_big(rig: Rig, size: int) -> None:
    rig.drv.negotiate()
    rig.drv.setup_queue(qsize=size)
    assert rig.drv.status & NEEDS_RESET
    if rig.dev.version == 2:
        assert rig.drv.r(QREADY) == 0
    rig.assert_needs_reset_then_recovers()


@pytest.mark.parametrize(
    "where", [dict(desc=MEM - 64), dict(avail=0xD000_0000), dict(used=1 << 40), dict(desc=RING + 8)]
)
def test_ring_outside_ram_or_misaligned(modern: Rig, where: dict[str, int]) -> None:
    modern.drv.negotiate()
    modern.drv.setup_queue(**where)
    assert modern.drv.r(QREADY) == 0
    modern.assert_needs_reset_then_recovers()


def test_ring_in_firmware_rom(image: Path) -> None:
    r = Rig(image, legacy=False, firmware_size=64 << 10)
    try:
        r.drv.negotiate()
        r.drv.setup_queue(used=layout.FIRMWARE_TOP - 0x1000)
        r.assert_needs_reset_then_recovers()
    finally:
        r.close()


def chain_test(rig: Rig, descs: list[Desc], head: int = 0, features: int | None = None) -> None:
    rig.drv.start(features=features)
    rig.mem.write(BUF, struct.pack("<IIQ", T_IN, 0, 1))
    rig.drv.put_descs(descs)
    before = rig.drv.used_idx()
    rig.drv.kick(head)
    assert rig.drv.used_idx() == before  # nothing completed
    assert rig.drv.r(ISR) & 2 and rig.irq  # config change interrupt announces NEEDS_RESET
    rig.assert_needs_reset_then_recovers()


HDR = Desc(BUF, 16, NEXT, 1)
STAT = Desc(BUF + 0x100, 1, WRITE)


@pytest.mark.parametrize(
    "descs",
    [
        pytest.param([HDR, Desc(MEM, 512, NEXT | WRITE, 2), STAT], id="buffer-beyond-ram"),
        pytest.param([HDR, Desc(MEM - 256, 512, NEXT | WRITE, 2), STAT], id="buffer-crosses-ram-end"),
        pytest.param([HDR, Desc(0xFEC0_0000, 512, NEXT | WRITE, 2), STAT], id="buffer-in-mmio-hole"),
        pytest.param([HDR, Desc(BUF + 0x1000, 512, NEXT | WRITE, 0)], id="loop"),
        pytest.param([HDR, Desc(BUF + 0x1000, 512, NEXT | WRITE, 8)], id="next-beyond-size"),
        pytest.param(
            [HDR, Desc(BUF + 0x1000, 512, NEXT | WRITE, 2), Desc(BUF, 16, NEXT, 3), STAT], id="readable-after-writable"
        ),
        pytest.param([Desc(BUF + 0x4000, 48, INDIRECT)], id="indirect-not-negotiated"),
    ],
)
def test_bad_descriptor_chain(rig: Rig, descs: list[Desc]) -> None:
    chain_test(rig, descs)


def test_head_index_beyond_queue(rig: Rig) -> None:
    chain_test(rig, [HDR, STAT], head=9)


def test_avail_index_jumps_past_the_ring(rig: Rig) -> None:
    rig.drv.start()
    rig.mem.write_u16(rig.drv.avail + 2, 100)  # 100 new entries in an 8-entry ring
    rig.drv.w(NOTIFY, 0)
    rig.assert_needs_reset_then_recovers()


@pytest.mark.parametrize(
    "table_desc,inner",
    [
        pytest.param(Desc(BUF + 0x4000, 40, INDIRECT), [HDR, STAT], id="length-not-multiple-of-16"),
        pytest.param(Desc(BUF + 0x4000, 0, INDIRECT), [], id="empty-table"),
        pytest.param(Desc(MEM - 16, 48, INDIRECT), [], id="table-beyond-ram"),
        pytest.param(Desc(BUF + 0x4000, 32, INDIRECT | NEXT, 1), [HDR, STAT], id="indirect-with-next"),
        pytest.param(Desc(BUF + 0x4000, 32, INDIRECT), [Desc(BUF + 0x5000, 32, INDIRECT), STAT], id="nested"),
        pytest.param(
            Desc(BUF + 0x4000, 32, INDIRECT), [HDR, Desc(BUF + 0x100, 1, WRITE | NEXT, 2)], id="next-beyond-table"
        ),
        pytest.param(
            Desc(BUF + 0x4000, 32, INDIRECT), [Desc(BUF, 16, NEXT, 1), Desc(BUF, 16, NEXT, 0)], id="loop-in-table"
        ),
    ],
)
def test_bad_indirect_table(rig: Rig, table_desc: Desc, inner: list[Desc]) -> None:
    rig.mem.fill(BUF + 0x4000, 0x2000)
    rig.drv.put_descs(inner, BUF + 0x4000)
    version_1 = F_VERSION_1 if rig.dev.version == 2 else 0
    chain_test(rig, [table_desc], features=F_INDIRECT_DESC | version_1)


def test_notify_of_a_missing_queue_and_writes_to_a_live_queue(modern: Rig) -> None:
    modern.drv.start()
    modern.drv.w(QNUM, 4)  # the queue is live: its size cannot change
    assert modern.drv.status & NEEDS_RESET
    modern.assert_needs_reset_then_recovers()
    modern.drv.w(NOTIFY, 3)
    modern.assert_needs_reset_then_recovers()


def test_needs_reset_device_ignores_its_queue_until_reset(rig: Rig) -> None:
    rig.drv.start()
    rig.drv.w(NOTIFY, 5)
    assert rig.drv.status & NEEDS_RESET
    rig.drv.blk(T_IN, 1, read_len=512)
    assert rig.drv.used_idx() == 0
    rig.drv.w(STATUS, rig.drv.status | DRIVER_OK)  # the driver cannot clear NEEDS_RESET itself
    assert rig.drv.status & NEEDS_RESET
    rig.assert_needs_reset_then_recovers()


def test_narrow_and_unknown_register_accesses_are_harmless(rig: Rig) -> None:
    assert rig.bus.mmio_read(BASE + MAGIC, 1) == 0  # registers are 32-bit only
    rig.bus.mmio_write(BASE + STATUS, 2, 0xFFFF)
    rig.drv.w(0x0F0, 1)
    assert rig.drv.status == 0
    rig.drv.start()
    assert rig.drv.blk(T_IN, 1, read_len=512)[0] == OK


def test_random_garbage_never_raises(rig: Rig) -> None:
    """Seeded random register writes and random ring/descriptor bytes: no exception leaves the
    device, and it still serves requests after a reset."""
    import random

    rnd = random.Random(5)
    regs = [0x014, 0x020, 0x024, 0x028, 0x030, 0x038, 0x03C, 0x040, 0x044, 0x050, 0x064, 0x070,
            0x080, 0x084, 0x090, 0x094, 0x0A0, 0x0A4, 0x100, 0x13C]  # fmt: skip
    features = F_INDIRECT_DESC | F_EVENT_IDX | (F_VERSION_1 if rig.dev.version == 2 else 0)
    for _ in range(300):
        rig.drv.start(features=features)
        rig.mem.write(RING, rnd.randbytes(0x4000))  # descriptors, avail and used rings, all garbage
        for table in (RING, BUF + 0x4000):  # plausible-looking descriptors reach the deeper checks
            rig.drv.put_descs([Desc(rnd.choice([BUF, BUF + 0x4000, rnd.randrange(MEM + 4096)]),
                                    rnd.choice([1, 16, 48, 512, rnd.getrandbits(32)]),
                                    rnd.getrandbits(3), rnd.randrange(12)) for _ in range(8)], table)  # fmt: skip
        for slot in range(8):
            rig.mem.write_u16(rig.drv.avail + 4 + 2 * slot, rnd.randrange(10))
        rig.mem.write_u16(rig.drv.avail + 2, rnd.randrange(12))
        for _ in range(5):
            rig.drv.w(NOTIFY, 0)
            reg = rnd.choice(regs)
            rig.drv.w(reg, rnd.choice([0, 1, 7, 8, 0xFFFF_FFFF, rnd.getrandbits(32)]))
    assert rig.blk.requests > 50 and rig.blk.errors > 100  # both the checks and the requests were reached
    rig.assert_needs_reset_then_recovers()
