"""virtio-net as a driver sees it, with a datagram socketpair standing in for the tap: frames
move both ways with the virtio-net header added and stripped, host frames wait for receive
buffers (and are dropped before the driver is up), and bad input never raises. Also the tap
helpers: MAC parsing, attaching to a missing interface, creating emutapN (root)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from guests.virtio.driver import BUF, F_VERSION_1, NEEDS_RESET, MmioDriver, start_multi

from emu import layout
from emu.bus import Bus
from emu.devices.virtio.net import F_MAC, F_STATUS, LINK_UP, RX, TX, TapLink, VirtioNet
from emu.devices.virtio.tap import default_mac, open_tap, parse_mac
from emu.devices.virtio.transport.mmio import VirtioMmio
from emu.devices.virtio.wiring import Wiring
from emu.errors import EmuError
from emu.memory import GuestMemory

MEM = 16 << 20
MAC = bytes.fromhex("525400abcd01")
FRAME = bytes.fromhex("ffffffffffff525400abcd010806") + bytes(range(46))  # a broadcast ARP-sized frame


class Setup:
    def __init__(self, legacy: bool = False) -> None:
        self.mem, bus = GuestMemory(MEM), Bus()
        self.host, guest_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.host.settimeout(2)
        os.set_blocking(guest_end.fileno(), False)
        self.deferred: list[Callable[[], None]] = []  # what the vCPU thread would run
        link = TapLink(guest_end.detach(), "pair")
        self.dev = VirtioNet(self.mem, Wiring(lambda level: None), link, MAC, self.deferred.append)
        VirtioMmio(self.dev, layout.VIRTIO_MMIO_BASE, 5, legacy=legacy).register(bus)
        self.drv = MmioDriver(bus, self.mem, layout.VIRTIO_MMIO_BASE)

    def run_deferred(self, until: Callable[[], bool]) -> None:
        """Play the vCPU thread: run deliveries the reader thread asked for until `until()`."""
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            while self.deferred:
                self.deferred.pop(0)()
            if until():
                return
            time.sleep(0.005)
        raise AssertionError("the reader thread delivered nothing")

    def close(self) -> None:
        self.dev.close()
        self.host.close()
        self.mem.close()


@pytest.fixture
def net() -> Iterator[Setup]:
    s = Setup()
    yield s
    s.close()


def test_net_offers_mac_and_link_status_only(net: Setup) -> None:
    assert net.drv.offered() & ((1 << 24) - 1) == F_MAC | F_STATUS
    raw = bytes(
        net.drv.bus.mmio_read(  # the config space, read as a driver does
            layout.VIRTIO_MMIO_BASE + 0x100 + i, 1
        )
        for i in range(8)
    )
    assert raw[:6] == MAC and struct.unpack("<H", raw[6:8])[0] == LINK_UP


def test_net_transmit_strips_the_header(net: Setup) -> None:
    rings = start_multi(net.drv)
    net.mem.write(BUF, bytes(12) + FRAME)  # modern: 12-byte header (num_buffers)
    head = rings[TX].post([(BUF, 12, False), (BUF + 12, len(FRAME), False)])
    assert net.host.recv(2048) == FRAME
    assert rings[TX].completed() == [(head, 0)] and net.dev.tx_packets == 1


def test_net_receive_adds_the_header_and_waits_for_buffers(net: Setup) -> None:
    rings = start_multi(net.drv)
    net.host.send(FRAME)
    net.run_deferred(lambda: len(net.dev.inbox) == 1)  # no buffer posted yet: held
    net.mem.fill(BUF, 2048, 0xEE)
    head = rings[RX].post([(BUF, 2048, True)])
    assert rings[RX].completed() == [(head, 12 + len(FRAME))]
    assert net.mem.read(BUF, 12) == struct.pack("<BBHHHHH", 0, 0, 0, 0, 0, 0, 1)
    assert net.mem.read(BUF + 12, len(FRAME)) == FRAME
    net.host.send(FRAME[::-1])  # a buffer is waiting now: delivered as soon as it arrives
    rings[RX].post([(BUF + 0x1000, 2048, True)], notify=False)
    net.run_deferred(lambda: net.dev.rx_packets == 2)
    assert net.mem.read(BUF + 0x1000 + 12, len(FRAME)) == FRAME[::-1]


def test_net_legacy_header_is_10_bytes() -> None:
    s = Setup(legacy=True)
    try:
        rings = start_multi(s.drv, features=0)
        assert not s.dev.has(F_VERSION_1) and s.dev.header_len() == 10
        s.mem.write(BUF, bytes(10) + FRAME)
        rings[TX].post([(BUF, 10 + len(FRAME), False)])
        assert s.host.recv(2048) == FRAME
    finally:
        s.close()


def test_net_drops_frames_before_the_driver_and_ones_that_do_not_fit(net: Setup) -> None:
    net.host.send(FRAME)
    net.run_deferred(lambda: net.dev.rx_dropped == 1)
    rings = start_multi(net.drv)
    net.host.send(FRAME)
    net.run_deferred(lambda: len(net.dev.inbox) == 1)
    head = rings[RX].post([(BUF, 20, True)])  # too small for header + frame
    assert rings[RX].completed() == [(head, 0)] and net.dev.rx_dropped == 2
    assert not net.drv.status & NEEDS_RESET


def test_net_bad_transmits_are_dropped_and_bad_rings_need_reset(net: Setup) -> None:
    rings = start_multi(net.drv)
    net.mem.write(BUF, bytes(8))
    rings[TX].post([(BUF, 8, False)])  # shorter than a header
    net.mem.write(BUF, struct.pack("<BB", 0, 1) + bytes(10) + FRAME)  # gso_type TCPV4: never offered
    rings[TX].post([(BUF, 12 + len(FRAME), False)])
    assert net.dev.tx_dropped == 2 and net.dev.tx_packets == 0
    rings[TX].post([(MEM - 4, 64, False)])  # outside RAM
    assert net.drv.status & NEEDS_RESET
    net.host.send(FRAME)  # frames for a broken device are dropped, nothing raises
    net.run_deferred(lambda: net.dev.rx_dropped == 1)


def test_parse_mac() -> None:
    assert parse_mac("52:54:00:AB:cd:01") == MAC
    assert default_mac(1) == bytes.fromhex("525400123457")
    for bad in ("52:54:00:ab:cd", "52-54-00-ab-cd-01", "zz:54:00:ab:cd:01", "01:00:5e:00:00:01"):
        with pytest.raises(ValueError):
            parse_mac(bad)


def test_open_tap_refuses_a_missing_interface() -> None:
    with pytest.raises(EmuError, match="no such interface"):
        open_tap("emu-no-such0")
    with pytest.raises(EmuError, match="not an interface name"):
        open_tap("x" * 16)


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"), reason="needs root and /dev/net/tun")
def test_open_tap_creates_emutap_and_it_goes_away_on_close() -> None:
    fd, name = open_tap(None)
    try:
        assert name.startswith("emutap") and Path("/sys/class/net", name).exists()
        flags = int(Path("/sys/class/net", name, "flags").read_text(), 16)
        assert flags & 1  # brought up
    finally:
        os.close(fd)
    assert not Path("/sys/class/net", name).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--net", "user"], "the only network backend is tap"),
        (["--net", "tap=x,mac=01:00:5e:00:00:01"], "multicast"),
        (["--net", "tap=emu-no-such0", "--virtio-transport", "pci"], "no such interface"),
        (["--net", "tap", "--deterministic"], "cannot be used with --deterministic"),
        (["--virtio-console", ",transport=pci"], "--virtio-console needs a FILE or stdio"),
        (["--rng", "transport=usb"], "unknown virtio transport"),
    ],
)
def test_cli_rejects_bad_device_options_with_one_line(args: list[str], message: str) -> None:
    p = subprocess.run([sys.executable, "-m", "emu.cli", "run", "--timeout", "5", *args],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], p.stderr
