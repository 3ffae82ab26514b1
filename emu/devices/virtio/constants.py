"""Numbers from the virtio 1.x specification (OASIS virtio v1.2) shared by the core, the
transports and the devices."""

from __future__ import annotations

from enum import IntEnum, IntFlag


class DeviceStatus(IntFlag):
    """Device status register bits (spec 2.1)."""

    ACKNOWLEDGE = 1
    DRIVER = 2
    DRIVER_OK = 4
    FEATURES_OK = 8
    NEEDS_RESET = 0x40
    FAILED = 0x80


class DeviceId(IntEnum):
    NET = 1
    BLOCK = 2
    CONSOLE = 3
    RNG = 4


# Feature bits every device may offer (spec 6): ring and transport features.
F_INDIRECT_DESC = 1 << 28
F_EVENT_IDX = 1 << 29
F_VERSION_1 = 1 << 32  # a modern (non-legacy) device and driver

# Split-ring descriptor flags (spec 2.7.5).
DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
# Avail ring flags (driver → device) and used ring flags (device → driver).
AVAIL_F_NO_INTERRUPT = 1
USED_F_NO_NOTIFY = 1

# Interrupt status bits (virtio-mmio InterruptStatus, virtio-pci ISR).
ISR_USED_BUFFER = 1
ISR_CONFIG_CHANGE = 2

VENDOR_ID = int.from_bytes(b"EMU\0", "little")  # any value is allowed; this one says "emu"
