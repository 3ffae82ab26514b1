"""virtio transports: how a device's registers reach the guest. virtio-mmio (mmio.py, version 2
and legacy version 1) and virtio-pci (pci.py: the PCI function, with pci_legacy.py's I/O BAR and
pci_modern.py's capabilities and memory BAR over the state both share, pci_state.py)."""
