"""virtio devices: one core (device.py: features, status, config space, interrupt status; queue.py:
split virtqueues), the devices written once against it (blk, net, rng, console), the transports
that expose it (transport/), and how the machine's configuration becomes wired devices
(config_devices.py, attach.py, cmdline.py; wiring.py, and under KVM device_thread.py and
irqfd.py)."""
