"""Which disks become virtio devices, and where they sit: virtio-mmio slots and their IRQs
(emu/layout.py) or PCI slots, and the kernel command-line words that announce the virtio-mmio
ones to Linux."""

from __future__ import annotations

import logging
from collections.abc import Callable

from emu import layout
from emu.bus import Bus
from emu.config import DiskSpec, MachineConfig, VirtioTransport
from emu.devices.diskimage import DiskImage
from emu.devices.pci.host import PciHost, intx_irq
from emu.devices.virtio.blk import VirtioBlk
from emu.devices.virtio.mmio import VirtioMmio
from emu.devices.virtio.pci import PciMode, VirtioPci
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
    bios = bios_disks(cfg)
    return [d for d in cfg.disks if not any(d is b for b in bios)]


Transport = VirtioMmio | VirtioPci
_PCI_MODES = {VirtioTransport.PCI: PciMode.TRANSITIONAL, VirtioTransport.PCI_LEGACY: PciMode.LEGACY,
              VirtioTransport.PCI_MODERN: PciMode.MODERN}  # fmt: skip


def attach_virtio(
    cfg: MachineConfig, memory: GuestMemory, bus: Bus, set_irq: SetIrq, pci: PciHost | None = None
) -> list[Transport]:
    """Create the machine's virtio devices on their transports: virtio-mmio ones registered on
    the bus, virtio-pci ones plugged into `pci` (whose `assign()` then maps their BARs)."""
    specs = virtio_disks(cfg)
    transports = [spec.transport or cfg.virtio_transport for spec in specs]
    mmio_count = sum(t not in _PCI_MODES for t in transports)
    if mmio_count > len(layout.VIRTIO_MMIO_IRQS):
        raise EmuError(f"{mmio_count} virtio-mmio disks given: emu has {len(layout.VIRTIO_MMIO_IRQS)} slots")
    if pci is None and mmio_count < len(specs):
        raise EmuError("virtio-pci needs the PCI host bridge")
    devices: list[Transport] = []
    slot = 0
    try:
        for spec, transport in zip(specs, transports, strict=True):
            if spec.floppy:
                raise EmuError(f"disk {spec.path}: a floppy is a BIOS drive; it cannot be a virtio disk")
            disk = DiskImage(spec.path, spec.readonly, cfg.snapshot)
            blk = VirtioBlk(memory, disk)
            where: str
            dev: Transport
            if transport in _PCI_MODES:
                assert pci is not None
                dev = VirtioPci(blk, _PCI_MODES[transport])
                devices.append(dev)
                number = pci.plug(dev)
                blk.label = f"virtio-{dev.kind} 00:{number:02x}.0 {blk.name}"
                where = f"PCI 00:{number:02x}.0 INT{'ABCD'[dev.intx_pin - 1]} -> irq {intx_irq(number, dev.intx_pin)}"
            else:
                base = layout.VIRTIO_MMIO_BASE + slot * layout.VIRTIO_MMIO_SLOT_SIZE
                irq = layout.VIRTIO_MMIO_IRQS[slot]
                slot += 1
                irq_line = (lambda line: lambda level: set_irq(line, level))(irq)
                dev = VirtioMmio(blk, base, irq, irq_line, legacy=transport is VirtioTransport.MMIO_LEGACY)
                devices.append(dev)
                dev.register(bus)
                where = f"irq {irq}"
            ro = " (read-only)" if spec.readonly else ""
            log.debug("%s %s: %s, %d sectors%s", blk.label, where, spec.path, disk.sectors, ro)
    except BaseException:
        close_virtio(devices)
        raise
    return devices


def close_virtio(devices: list[Transport]) -> None:
    for dev in devices:
        disk = getattr(dev.device, "disk", None)
        if disk is not None:
            disk.close()


def kernel_cmdline(cmdline: str, devices: list[Transport]) -> str:
    """The command line with one `virtio_mmio.device=` word per virtio-mmio device appended (Linux
    has no other way to find them on a PC without ACPI or a device tree; PCI ones it enumerates)."""
    words = [d.cmdline_word() for d in devices if isinstance(d, VirtioMmio)]
    if words:
        log.debug("kernel command line += %s", " ".join(words))
    return " ".join([cmdline, *words]) if cmdline else " ".join(words)
