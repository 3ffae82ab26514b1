"""The kernel command-line words that announce virtio-mmio devices to Linux (a PC without ACPI or
a device tree has no other way to list them; PCI ones Linux enumerates)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from emu.devices.virtio.transport.mmio import VirtioMmio

log = logging.getLogger("emu.virtio")


def kernel_cmdline(cmdline: str, transports: Iterable[object]) -> str:
    """`cmdline` with one `virtio_mmio.device=` word appended per virtio-mmio device."""
    words = [t.cmdline_word() for t in transports if isinstance(t, VirtioMmio)]
    if words:
        log.debug("kernel command line += %s", " ".join(words))
    return " ".join([cmdline, *words]) if cmdline else " ".join(words)
