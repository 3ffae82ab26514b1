"""Where the requested virtio devices sit: virtio-mmio slots (emu/layout.py: 4 KiB windows from
VIRTIO_MMIO_BASE, one IRQ each) or PCI slots, and how each one is wired.

Everything is connected in one pass, from the interrupt line towards the device, so nothing is
re-pointed later: the line (the machine's GSI, or the PCI slot's shared INTx line), the way the
queues are served (`Serving`: inline, or a device thread on eventfds when the backend offers
them), for PCI the function's INTx pin, then the device, its transport, and last the device
thread, which needs the transport's notify addresses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from emu import layout
from emu.bus import Bus
from emu.config import MMIO_TRANSPORTS, VirtioTransport
from emu.devices.pci.host import PciHost
from emu.devices.pci.intx import INTA, IntxPin
from emu.devices.virtio.config_devices import DeviceRequest
from emu.devices.virtio.console import VirtioConsole
from emu.devices.virtio.device_thread import EventfdServing
from emu.devices.virtio.serving import Inline, Serving, Worker
from emu.devices.virtio.transport.mmio import VirtioMmio, mmio_label
from emu.devices.virtio.transport.pci import VirtioPci, pci_label
from emu.devices.virtio.transport.pci_state import PciMode
from emu.devices.virtio.wiring import Wiring
from emu.platform import EventFds, IrqLine

log = logging.getLogger("emu.virtio")

Transport = VirtioMmio | VirtioPci
PCI_MODES = {VirtioTransport.PCI: PciMode.TRANSITIONAL, VirtioTransport.PCI_LEGACY: PciMode.LEGACY,
             VirtioTransport.PCI_MODERN: PciMode.MODERN}  # fmt: skip


@dataclass(frozen=True)
class VirtioBoard:
    """What the devices are placed on: the bus (virtio-mmio windows), the PCI host, the machine's
    interrupt lines and, under KVM with the capabilities, the event-fd registrar."""

    bus: Bus
    pci: PciHost
    irq_line: Callable[[int], IrqLine]
    eventfds: EventFds | None = None


@dataclass
class Attached:
    """The machine's virtio devices: their transports in creation order and the device threads
    serving them (KVM)."""

    transports: list[Transport] = field(default_factory=list)
    threads: list[Worker] = field(default_factory=list)


def attach_virtio(requests: list[DeviceRequest], board: VirtioBoard) -> Attached:
    """Build every requested device on its transport: virtio-mmio ones registered on the bus,
    virtio-pci ones plugged into the host (whose `assign()` then maps their BARs). On an error
    what was built is closed again."""
    attached = Attached()
    mmio_slot = 0
    try:
        for req in requests:
            transport: Transport
            if req.transport in MMIO_TRANSPORTS:
                transport, thread = _on_mmio(req, mmio_slot, board)
                mmio_slot += 1
            else:
                transport, thread = _on_pci(req, board)
            attached.transports.append(transport)
            if thread is not None:
                attached.threads.append(thread)
    except BaseException:
        close_virtio(attached.transports, attached.threads)
        raise
    return attached


def _serving(board: VirtioBoard, gsi: int, wired: IrqLine, req: DeviceRequest, label: str) -> Serving:
    """Inline on the vCPU thread, or a device thread when the backend offers eventfds."""
    if board.eventfds is None:
        return Inline(wired)
    return EventfdServing(board.eventfds, gsi, wired, req.kind.num_queues, label)


def _on_mmio(req: DeviceRequest, slot: int, board: VirtioBoard) -> tuple[VirtioMmio, Worker | None]:
    base = layout.VIRTIO_MMIO_BASE + slot * layout.VIRTIO_MMIO_SLOT_SIZE
    gsi = layout.VIRTIO_MMIO_IRQS[slot]  # config.validate() checked there are enough slots
    label = mmio_label(base, req.kind.name)
    serving = _serving(board, gsi, board.irq_line(gsi), req, label)
    device = req.make(Wiring(serving.line, label, serving))
    transport = VirtioMmio(device, base, gsi, legacy=req.transport is VirtioTransport.MMIO_LEGACY)
    transport.register(board.bus)
    log.debug("%s irq %d: %s", label, gsi, req.what)
    return transport, serving.start(device, transport.notify_addrs)


def _on_pci(req: DeviceRequest, board: VirtioBoard) -> tuple[VirtioPci, Worker | None]:
    mode = PCI_MODES[req.transport]
    slot = board.pci.free_slot(INTA)
    label = pci_label(slot.number, mode, req.kind.name)
    serving = _serving(board, slot.gsi, slot.line, req, label)
    # The pin masks (Interrupt Disable) before the serving's line: an irqfd sees what the host would.
    pin = IntxPin(INTA, serving.line)
    device = req.make(Wiring(pin.drive, label, serving))
    fn = VirtioPci(device, mode, pin)
    board.pci.plug(slot, fn)
    log.debug("%s PCI 00:%02x.0 INTA -> irq %d: %s", label, slot.number, slot.gsi, req.what)
    thread = serving.start(device, fn.notify_addrs)
    if thread is not None:
        fn.decode_listeners.append(thread.sync)  # a BAR moved or decode went off: notifies follow
    return fn, thread


def close_virtio(transports: Iterable[Transport], threads: Iterable[Worker]) -> None:
    for thread in threads:
        thread.close()  # before the VM goes: it removes its registrations
    for t in transports:
        t.device.close()


def find_console(transports: Iterable[Transport]) -> VirtioConsole | None:
    """The machine's virtio-console device (its `feed` takes host input), if it has one."""
    return next((t.device for t in transports if isinstance(t.device, VirtioConsole)), None)
