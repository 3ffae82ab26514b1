"""virtio devices: one core (split virtqueues, features, status, config, interrupts), the
transports that expose it (virtio-mmio v1 legacy and v2 modern) and the devices written once
against the core (blk)."""
