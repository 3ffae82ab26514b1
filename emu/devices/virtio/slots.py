"""Which disks, NICs, the rng and the console become virtio devices, and where they sit:
virtio-mmio slots and their IRQs (emu/layout.py) or PCI slots, and the kernel command-line words
that announce the virtio-mmio ones to Linux."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from emu import layout
from emu.bus import Bus
from emu.config import DiskSpec, MachineConfig, NetSpec, VirtioTransport
from emu.devices.diskimage import DiskImage
from emu.devices.pci.host import PciHost, intx_irq
from emu.devices.virtio.blk import VirtioBlk
from emu.devices.virtio.console import VirtioConsole
from emu.devices.virtio.device import VirtioDevice
from emu.devices.virtio.eventfd import DeviceThread, EventfdHost, NotifyAddr
from emu.devices.virtio.inbox import Defer, run_now
from emu.devices.virtio.mmio import Reg, VirtioMmio
from emu.devices.virtio.net import TapLink, VirtioNet
from emu.devices.virtio.pci import LEGACY_BAR, MODERN_BAR, NOTIFY_MULTIPLIER, NOTIFY_OFF, PciMode, VirtioPci
from emu.devices.virtio.pci_legacy import LegacyReg
from emu.devices.virtio.rng import VirtioRng, seeded_source
from emu.devices.virtio.tap import default_mac, open_tap
from emu.errors import EmuError
from emu.memory import GuestMemory

log = logging.getLogger("emu.virtio")

SetIrq = Callable[[int, bool], None]


def bios_disks(cfg: MachineConfig) -> list[DiskSpec]:
    """The disks the BIOS serves: none under --kernel (no firmware runs), else those that name
    no virtio transport."""
    if cfg.kernel is not None:
        return []
    return [d for d in cfg.disks if d.transport is None]


def virtio_disks(cfg: MachineConfig) -> list[DiskSpec]:
    """The disks bios_disks() leaves: all of them under --kernel, else those naming a transport."""
    return [d for d in cfg.disks if cfg.kernel is not None or d.transport is not None]


Transport = VirtioMmio | VirtioPci
_PCI_MODES = {VirtioTransport.PCI: PciMode.TRANSITIONAL, VirtioTransport.PCI_LEGACY: PciMode.LEGACY,
              VirtioTransport.PCI_MODERN: PciMode.MODERN}  # fmt: skip


@dataclass
class _Request:
    """One virtio device to create: its transport and a factory (called once slots are checked)."""

    transport: VirtioTransport
    make: Callable[[], VirtioDevice]
    what: str  # for the debug line: the disk, tap or sink behind it


def _requests(cfg: MachineConfig, memory: GuestMemory, defer: Defer) -> list[_Request]:
    default = cfg.virtio_transport
    reqs: list[_Request] = []
    for spec in virtio_disks(cfg):
        if spec.floppy:
            raise EmuError(f"disk {spec.path}: a floppy is a BIOS drive; it cannot be a virtio disk")

        def make_blk(spec: DiskSpec = spec) -> VirtioDevice:
            disk = DiskImage(spec.path, spec.readonly, cfg.snapshot)
            return VirtioBlk(memory, disk)

        ro = " (read-only)" if spec.readonly else ""
        reqs.append(_Request(spec.transport or default, make_blk, f"{spec.path}{ro}"))
    if cfg.nets and cfg.deterministic:
        raise EmuError("--net cannot be used with --deterministic (frames arrive at host times)")
    for i, net in enumerate(cfg.nets):

        def make_net(net: NetSpec = net, i: int = i) -> VirtioDevice:
            fd, name = open_tap(net.tap)
            if net.tap is None:
                log.info("created tap interface %s", name)
            return VirtioNet(memory, TapLink(fd, name), net.mac or default_mac(i), defer)

        reqs.append(_Request(net.transport or default, make_net, f"tap {net.tap or 'emutapN'}"))
    if cfg.rng is not None:
        # A deterministic run must see the same "random" bytes every time.
        source = seeded_source() if cfg.deterministic else os.urandom
        reqs.append(_Request(cfg.rng.transport or default, lambda: VirtioRng(memory, source), "host entropy"))
    if cfg.virtio_console is not None:
        spec_c = cfg.virtio_console
        reqs.append(_Request(spec_c.transport or default, lambda: VirtioConsole(memory, *_sink(spec_c.target), defer),
                             f"hvc0 -> {spec_c.target}"))  # fmt: skip
    return reqs


def _sink(target: str) -> tuple[Callable[[bytes], None], Callable[[], None]]:
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


def attach_virtio(
    cfg: MachineConfig,
    memory: GuestMemory,
    bus: Bus,
    set_irq: SetIrq,
    pci: PciHost | None = None,
    defer: Defer = run_now,
    eventfds: EventfdHost | None = None,
) -> list[Transport]:
    """Create the machine's virtio devices on their transports: virtio-mmio ones registered on
    the bus, virtio-pci ones plugged into `pci` (whose `assign()` then maps their BARs). `defer`
    runs host-data deliveries (network frames, console input) on the vCPU thread. With
    `eventfds` (KVM) every device gets a device thread (eventfd.py)."""
    reqs = _requests(cfg, memory, defer)
    mmio_count = sum(r.transport not in _PCI_MODES for r in reqs)
    if mmio_count > len(layout.VIRTIO_MMIO_IRQS):
        raise EmuError(f"{mmio_count} virtio-mmio devices given: emu has {len(layout.VIRTIO_MMIO_IRQS)} slots")
    if pci is None and mmio_count < len(reqs):
        raise EmuError("virtio-pci needs the PCI host bridge")
    devices: list[Transport] = []
    slot = 0
    try:
        for req in reqs:
            device = req.make()
            where: str
            dev: Transport
            if req.transport in _PCI_MODES:
                assert pci is not None
                dev = VirtioPci(device, _PCI_MODES[req.transport])
                devices.append(dev)
                number = pci.plug(dev)
                device.label = f"virtio-{dev.kind} 00:{number:02x}.0 {device.name}"
                irq = intx_irq(number, dev.intx_pin)
                where = f"PCI 00:{number:02x}.0 INT{'ABCD'[dev.intx_pin - 1]} -> irq {irq}"
                if eventfds is not None:
                    _pci_thread(dev, eventfds, irq)
            else:
                base = layout.VIRTIO_MMIO_BASE + slot * layout.VIRTIO_MMIO_SLOT_SIZE
                irq = layout.VIRTIO_MMIO_IRQS[slot]
                slot += 1
                legacy = req.transport is VirtioTransport.MMIO_LEGACY
                dev = VirtioMmio(device, base, irq, functools.partial(set_irq, irq), legacy=legacy)
                devices.append(dev)
                dev.register(bus)
                where = f"irq {irq}"
                if eventfds is not None:
                    _mmio_thread(dev, eventfds)
            log.debug("%s %s: %s", device.label, where, req.what)
    except BaseException:
        close_virtio(devices)
        raise
    return devices


def _mmio_thread(t: VirtioMmio, host: EventfdHost) -> None:
    notify = t.base + Reg.QUEUE_NOTIFY  # one register for every queue: the value names the queue
    wired = t.device.irq
    t.io_thread = DeviceThread(t.device, host, lambda i: (NotifyAddr(notify, 4, False, i),), lambda: t.irq, wired)
    t.device.irq = t.io_thread.line


def _pci_thread(fn: VirtioPci, host: EventfdHost, gsi: int) -> None:
    def addrs(i: int) -> tuple[NotifyAddr, ...]:
        """The notify address of the interface the driver uses, where its BAR decodes now."""
        index = LEGACY_BAR if fn.device.legacy else MODERN_BAR
        bar = fn.bars.get(index)
        base = fn.bar_address(index) if bar is not None and fn.decodes(bar) else 0
        if not base:
            return ()
        if fn.device.legacy:  # one port for every queue: the value names the queue
            return (NotifyAddr(base + LegacyReg.QUEUE_NOTIFY, 2, True, i),)
        # Modern: the address names the queue and the value does not matter; Linux writes 16
        # bits, other drivers may write 32 (KVM matches lengths exactly).
        at = base + NOTIFY_OFF + NOTIFY_MULTIPLIER * i
        return NotifyAddr(at, 2, False, None), NotifyAddr(at, 4, False, None)

    thread = DeviceThread(fn.device, host, addrs, lambda: gsi, fn.on_intx)
    fn.io_thread = thread
    fn.on_intx = thread.line  # the level after the command register's INTx-disable bit
    remap = fn.on_decode_change

    def decode_changed() -> None:
        remap()
        thread.sync()  # a BAR moved or decode went off: the notify addresses follow

    fn.on_decode_change = decode_changed


def close_virtio(devices: list[Transport]) -> None:
    for dev in devices:
        if dev.io_thread is not None:
            dev.io_thread.close()  # before the VM goes: it removes its registrations
            dev.io_thread = None
    for dev in devices:
        dev.device.close()


def find_console(devices: list[Transport]) -> VirtioConsole | None:
    """The machine's virtio-console device (its `feed` takes host input), if it has one."""
    return next((d.device for d in devices if isinstance(d.device, VirtioConsole)), None)


def kernel_cmdline(cmdline: str, devices: list[Transport]) -> str:
    """The command line with one `virtio_mmio.device=` word per virtio-mmio device appended (Linux
    has no other way to find them on a PC without ACPI or a device tree; PCI ones it enumerates)."""
    words = [d.cmdline_word() for d in devices if isinstance(d, VirtioMmio)]
    if words:
        log.debug("kernel command line += %s", " ".join(words))
    return " ".join([cmdline, *words]) if cmdline else " ".join(words)
