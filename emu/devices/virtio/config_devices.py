"""The virtio devices a MachineConfig asks for: disks, NICs on taps, the rng and the console, each
with its transport and a factory that builds it once its wiring is known (attach.py).

Host resources (the image file, the tap, the output file) are opened by the factory, so nothing is
opened for a configuration that fails before its devices are built.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from emu.config import DiskSpec, MachineConfig, NetSpec, VirtioSpec, VirtioTransport
from emu.devices.diskimage import DiskImage
from emu.devices.virtio.blk import VirtioBlk
from emu.devices.virtio.console import Sink, VirtioConsole
from emu.devices.virtio.device import VirtioDevice
from emu.devices.virtio.inbox import Defer
from emu.devices.virtio.net import TapLink, VirtioNet
from emu.devices.virtio.rng import VirtioRng, seeded_source
from emu.devices.virtio.tap import default_mac, open_tap
from emu.devices.virtio.wiring import Wiring
from emu.errors import EmuError
from emu.memory import GuestMemory

log = logging.getLogger("emu.virtio")

DeviceFactory = Callable[[Wiring], VirtioDevice]


@dataclass(frozen=True)
class DeviceRequest:
    """One virtio device to build: where it goes, its class (name, queue count) and its factory."""

    transport: VirtioTransport
    kind: type[VirtioDevice]
    make: DeviceFactory
    what: str  # for the debug line: the disk, tap or sink behind it


def requested_devices(cfg: MachineConfig, memory: GuestMemory, defer: Defer,
                      opened: Mapping[int, DiskImage] | None = None) -> list[DeviceRequest]:  # fmt: skip
    """Every virtio device of `cfg`, in the order they get slots. `defer` runs host-data
    deliveries (network frames, console input) on the vCPU thread. `opened`: disks already open
    (the BIOS's, by id() of their DiskSpec), which a virtio-blk device then shares."""
    default = cfg.virtio_transport
    opened = opened or {}
    reqs = [_blk(spec, cfg.snapshot, memory, default, opened.get(id(spec))) for spec in cfg.virtio_disks()]
    reqs += [_net(net, i, memory, defer, default) for i, net in enumerate(cfg.nets)]
    if cfg.rng is not None:
        reqs.append(_rng(cfg.rng, cfg.deterministic, memory, default))
    if cfg.virtio_console is not None:
        reqs.append(_console(cfg.virtio_console, memory, defer, default))
    return reqs


def _blk(spec: DiskSpec, snapshot: bool, memory: GuestMemory, default: VirtioTransport,
         image: DiskImage | None) -> DeviceRequest:  # fmt: skip
    def make(wiring: Wiring) -> VirtioDevice:
        disk = image if image is not None else DiskImage(spec.path, spec.readonly, snapshot, spec.format)
        return VirtioBlk(memory, wiring, disk)

    ro = " (read-only)" if spec.readonly else ""
    return DeviceRequest(spec.transport or default, VirtioBlk, make, f"{spec.path}{ro}")


def _net(net: NetSpec, index: int, memory: GuestMemory, defer: Defer, default: VirtioTransport) -> DeviceRequest:
    def make(wiring: Wiring) -> VirtioDevice:
        fd, name = open_tap(net.tap)
        if net.tap is None:
            log.info("created tap interface %s", name)
        return VirtioNet(memory, wiring, TapLink(fd, name), net.mac or default_mac(index), defer)

    return DeviceRequest(net.transport or default, VirtioNet, make, f"tap {net.tap or 'emutapN'}")


def _rng(spec: VirtioSpec, deterministic: bool, memory: GuestMemory, default: VirtioTransport) -> DeviceRequest:
    # A deterministic run must see the same "random" bytes every time.
    source = seeded_source() if deterministic else os.urandom
    return DeviceRequest(spec.transport or default, VirtioRng, lambda w: VirtioRng(memory, w, source), "host entropy")


def _console(spec: VirtioSpec, memory: GuestMemory, defer: Defer, default: VirtioTransport) -> DeviceRequest:
    def make(wiring: Wiring) -> VirtioDevice:
        return VirtioConsole(memory, wiring, *_sink(spec.target), defer)

    return DeviceRequest(spec.transport or default, VirtioConsole, make, f"hvc0 -> {spec.target}")


def _sink(target: str) -> tuple[Sink, Callable[[], None]]:
    """(write, close) for virtio-console output: stdout, or a file created (truncated) now."""
    if target == "stdio":

        def to_stdout(data: bytes) -> None:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()

        return to_stdout, lambda: None
    try:
        f = open(target, "wb", buffering=0)  # noqa: SIM115 - closed with the device
    except OSError as e:
        raise EmuError(f"--virtio-console {target}: {e.strerror}") from None
    return f.write, f.close
