"""virtio under KVM off the vCPU thread (emu/devices/virtio/device_thread.py): the project's blk
guests notify through ioeventfds and interrupt through irqfds, a slow disk request leaves the vCPU
running, a reset waits for the request in flight, and the registrations follow resets, BAR moves
and decode changes."""

from __future__ import annotations

import os
import re
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from guests.backends import require
from guests.virtio import build
from guests.virtio.blkcase import DONE_STATUS, SECTOR1, assert_only_sector2_written, image_fixture
from guests.virtio.driver import BUF, NEXT, WRITE, Desc, MmioDriver

from emu import layout
from emu.backends.kvm.api import KvmError
from emu.backends.kvm.backend import KvmBackend
from emu.backends.kvm.eventfds import KvmEventfds
from emu.config import BackendName, DiskSpec, MachineConfig, VirtioTransport
from emu.devices.diskimage import DiskImage
from emu.devices.virtio.device_thread import DeviceThread
from emu.devices.virtio.transport.pci import VirtioPci
from emu.devices.virtio.transport.pci_modern import MODERN_BAR, NOTIFY_OFF
from emu.machine import Machine

image = image_fixture
SLOW = 1.0  # seconds the throttled disk takes per read


@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for name in ("blk", "blk_pci", "slow"):
        path = tmp_path_factory.mktemp(f"kvm-{name}") / f"{name}.elf"
        path.write_bytes(build(name))
        out[name] = path
    return out


def machine(kernel: Path, image: Path, transport: VirtioTransport, cmdline: str = "console=ttyS0", *,
            eventfds: bool = True) -> Machine:  # fmt: skip
    require(BackendName.KVM)
    cfg = MachineConfig(backend=BackendName.KVM, mem=64 << 20, kernel=kernel, cmdline=cmdline,
                        disks=[DiskSpec(image, transport=transport)], timeout=60)  # fmt: skip
    m = Machine(cfg)
    if eventfds and m.backend.event_fds() is None:
        m.close()
        pytest.skip("this host's KVM lacks KVM_CAP_IOEVENTFD, KVM_CAP_IRQFD or KVM_CAP_IRQFD_RESAMPLE")
    return m


def io_thread(m: Machine) -> DeviceThread:
    (thread,) = m.virtio_threads
    assert isinstance(thread, DeviceThread) and thread.device is m.virtio[0].device
    return thread


def kvm_eventfds(m: Machine) -> KvmEventfds:
    host = m.backend.event_fds()
    assert isinstance(host, KvmEventfds)
    return host


@pytest.fixture
def slow_disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every disk read takes SLOW seconds (a throttled file); yields the names of the threads
    that read."""
    readers: list[str] = []
    original = DiskImage.read

    def throttled(self: DiskImage, lba: int, count: int) -> bytes:
        readers.append(threading.current_thread().name)
        time.sleep(SLOW)
        return original(self, lba, count)

    monkeypatch.setattr(DiskImage, "read", throttled)
    yield readers


# -- the blk guests -------------------------------------------------------------------------------
GUESTS = [
    pytest.param("blk", VirtioTransport.MMIO, "", id="mmio"),
    pytest.param("blk", VirtioTransport.MMIO_LEGACY, "", id="mmio-legacy"),
    pytest.param("blk_pci", VirtioTransport.PCI_LEGACY, "legacy ", id="pci-legacy"),
    pytest.param("blk_pci", VirtioTransport.PCI_MODERN, "modern ", id="pci-modern"),
    pytest.param("blk_pci", VirtioTransport.PCI, "legacy ", id="transitional-as-legacy"),
    pytest.param("blk_pci", VirtioTransport.PCI, "modern ", id="transitional-as-modern"),
]


@pytest.mark.parametrize(("guest", "transport", "driver"), GUESTS)
def test_guest_notifies_by_ioeventfd_and_interrupts_by_irqfd(
    kernels: dict[str, Path], image: Path, guest: str, transport: VirtioTransport, driver: str
) -> None:
    m = machine(kernels[guest], image, transport, f"{driver}console=ttyS0")
    try:
        thread = io_thread(m)
        result = m.run()
        serial = result.serial.decode(errors="replace")
        assert result.status == DONE_STATUS, result.reason + "\n" + serial
        assert serial.endswith("after reset status=00\ndone\n"), serial
        assert thread.signals >= 6  # the guest's six requests woke the device thread ...
        assert thread.kicks == 0  # ... and not one notify of a live queue was an exit
        assert thread.irqfd_signals >= 6
        # The guest resets the device at the end: nothing stays registered in KVM.
        assert thread.ioeventfds == 0 and thread.irq_gsi is None
        host = kvm_eventfds(m)
        assert host.ioeventfds == 0 and host.irqfds == 0
    finally:
        m.close()
    assert_only_sector2_written(image)


def run_slow_guest(kernels: dict[str, Path], image: Path, *, eventfds: bool = True) -> tuple[int, str]:
    m = machine(kernels["slow"], image, VirtioTransport.MMIO, eventfds=eventfds)
    try:
        result = m.run()
    finally:
        m.close()
    serial = result.serial.decode(errors="replace")
    assert result.status == DONE_STATUS, result.reason + "\n" + serial
    found = re.search(r"count=([0-9a-f]{16}) status=00 isr=1 data=([0-9a-f]{8})", serial)
    assert found, serial
    assert int(found[2], 16) == struct.unpack_from("<I", SECTOR1)[0]  # sector 1 arrived
    return int(found[1], 16), serial


def test_slow_request_does_not_stall_the_vcpu(
    kernels: dict[str, Path], image: Path, slow_disk: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guest counts while its read (SLOW seconds on the host) is in flight."""
    count, _ = run_slow_guest(kernels, image)
    assert slow_disk == ["virtio-blk"]  # the device thread read, not vcpu0
    # Tens of thousands of iterations even on this host's slow nested KVM (~2 M instructions/s).
    assert count > 10_000, count
    # The synchronous path for contrast: the notify exit returns only after the read.
    monkeypatch.setattr(KvmBackend, "use_eventfds", False)
    slow_disk.clear()
    sync_count, _ = run_slow_guest(kernels, image, eventfds=False)
    assert slow_disk == ["vcpu0"]
    assert sync_count <= 2, sync_count


# -- resets, BAR moves and decode (driven from Python while no vCPU runs) ------------------------
def submit_read(drv: MmioDriver) -> None:
    hdr, buf, st = BUF, BUF + 0x1000, BUF + 0x800
    drv.mem.write(hdr, struct.pack("<IIQ", 0, 0, 1))
    drv.mem.write_u8(st, 0xFF)
    drv.put_descs([Desc(hdr, 16, NEXT, 1), Desc(buf, 512, NEXT | WRITE, 2), Desc(st, 1, WRITE, 0)])
    drv.kick()


def test_reset_waits_for_the_request_in_flight(kernels: dict[str, Path], image: Path, slow_disk: list[str]) -> None:
    m = machine(kernels["slow"], image, VirtioTransport.MMIO)
    try:
        thread = io_thread(m)
        drv = MmioDriver(m.bus, m.memory, layout.VIRTIO_MMIO_BASE)
        drv.start()
        assert thread.ioeventfds == 1 and thread.irq_gsi == m.virtio[0].irq
        t0 = time.monotonic()
        submit_read(drv)  # a notify by an exit (no vCPU here): handed to the device thread
        assert time.monotonic() - t0 < SLOW / 2 and thread.kicks == 1
        deadline = time.monotonic() + 5
        while not slow_disk and time.monotonic() < deadline:
            time.sleep(0.01)
        assert slow_disk == ["virtio-blk"]
        drv.w(0x070, 0)  # driver reset: waits for the read, then drops its answer
        assert time.monotonic() - t0 >= SLOW * 0.9
        assert drv.used_idx() == 0 and drv.status == 0
        assert thread.ioeventfds == 0 and thread.irq_gsi is None
        # The device comes back after the reset, on the device thread again.
        drv.start()
        submit_read(drv)
        deadline = time.monotonic() + 5 + SLOW
        while drv.used_idx() != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert drv.used_idx() == 1 and drv.mem.read_u8(BUF + 0x800) == 0
        assert drv.mem.read(BUF + 0x1000, len(SECTOR1)) == SECTOR1
        assert m.virtio[0].device.isr == 1
    finally:
        m.close()


def cfg_write(m: Machine, device: int, offset: int, size: int, value: int) -> None:
    m.bus.pio_write(layout.PORT_PCI_CONFIG_ADDRESS, 4, 0x8000_0000 | device << 11 | (offset & 0xFC))
    m.bus.pio_write(layout.PORT_PCI_CONFIG_DATA + (offset & 3), size, value)


def start_modern(m: Machine, bar: int) -> None:
    """A modern driver's set-up through the common configuration (virtio 1.x 4.1.4.3)."""

    def w(off: int, size: int, value: int) -> None:
        m.bus.mmio_write(bar + off, size, value)

    for status in (0, 1, 3):
        w(0x14, 1, status)
    w(0x08, 4, 1)  # driver_feature_select 1: VERSION_1
    w(0x0C, 4, 1)
    w(0x14, 1, 0xB)
    w(0x16, 2, 0)  # queue_select
    w(0x18, 2, 8)  # queue_size
    for off, addr in ((0x20, 0x10000), (0x28, 0x12000), (0x30, 0x13000)):
        w(off, 4, addr)
        w(off + 4, 4, 0)
    w(0x1C, 2, 1)  # queue_enable
    w(0x14, 1, 0xF)


def registered_in_kvm(m: Machine, addr: int) -> bool:
    """Does KVM hold a 2-byte any-value ioeventfd at `addr`? A second one collides (EEXIST)."""
    host = kvm_eventfds(m)
    fd = os.eventfd(0)
    try:
        try:
            host.add_ioeventfd(fd, addr, 2, pio=False, datamatch=None)
        except KvmError:
            return True
        host.remove_ioeventfd(fd, addr, 2, pio=False, datamatch=None)
        return False
    finally:
        os.close(fd)


def test_registrations_follow_bar_moves_decode_and_reset(kernels: dict[str, Path], image: Path) -> None:
    m = machine(kernels["blk_pci"], image, VirtioTransport.PCI_MODERN)
    try:
        fn = m.virtio[0]
        assert isinstance(fn, VirtioPci)
        thread = io_thread(m)
        number = next(d for d, f in m.pci.functions.items() if f is fn)
        bar = fn.bar_address(MODERN_BAR)
        assert not registered_in_kvm(m, bar + NOTIFY_OFF)
        start_modern(m, bar)
        assert thread.ioeventfds == 2 and thread.irq_gsi == 14  # 2- and 4-byte notifies; INTA
        assert registered_in_kvm(m, bar + NOTIFY_OFF)
        # The guest moves the BAR: the notify address moves with it.
        new = bar + 0x10_0000
        cfg_write(m, number, 0x10 + 4 * MODERN_BAR, 4, new | 0x4)  # 64-bit memory BAR
        assert fn.bar_address(MODERN_BAR) == new
        assert registered_in_kvm(m, new + NOTIFY_OFF) and not registered_in_kvm(m, bar + NOTIFY_OFF)
        # Memory decode off: no notify address at all; on again: back.
        cfg_write(m, number, 0x04, 2, fn.command & ~0x2)
        assert thread.ioeventfds == 0 and not registered_in_kvm(m, new + NOTIFY_OFF)
        assert thread.irq_gsi == 14  # the interrupt does not depend on decode
        cfg_write(m, number, 0x04, 2, fn.command | 0x2)
        assert thread.ioeventfds == 2 and registered_in_kvm(m, new + NOTIFY_OFF)
        # Driver reset: everything goes.
        m.bus.mmio_write(new + 0x14, 1, 0)
        assert thread.ioeventfds == 0 and thread.irq_gsi is None
        host = kvm_eventfds(m)
        assert host.ioeventfds == 0 and host.irqfds == 0
        # Machine reset with the device live: the same.
        start_modern(m, new)
        assert host.ioeventfds == 2 and host.irqfds == 1
        fn.reset()
        assert host.ioeventfds == 0 and host.irqfds == 0
    finally:
        m.close()
