"""MachineConfig: everything that describes one machine, independent of how it was asked for."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from emu import layout


class BackendName(Enum):
    UNICORN = "unicorn"
    KVM = "kvm"


class BootKind(Enum):
    """How --kernel is entered (auto: detected from the file)."""

    AUTO = "auto"
    ELF = "elf"  # 64-bit vmlinux, entered in long mode as Firecracker does
    BZIMAGE = "bzimage"
    PVH = "pvh"
    MULTIBOOT = "multiboot"


class VirtioTransport(Enum):
    """How a virtio device is attached (issue 5)."""

    MMIO = "mmio"  # virtio-mmio version 2 (virtio 1.x, modern)
    MMIO_LEGACY = "mmio-legacy"  # virtio-mmio version 1 (legacy, virtio 0.9.5 semantics)
    PCI = "pci"  # virtio-pci transitional: legacy I/O BAR and modern capabilities, the driver picks
    PCI_LEGACY = "pci-legacy"  # virtio-pci legacy only (0.9.5)
    PCI_MODERN = "pci-modern"  # virtio-pci modern only (1.x, device ID 0x1040 + type)


class TripleFaultPolicy(Enum):
    """What a triple fault does to the run (--triple-fault)."""

    ERROR = "error"  # end the run: exit status 4 and a fault report
    RESET = "reset"  # reboot, as a PC does
    EXIT0 = "exit0"  # end the run with status 0: the guest shuts down this way on purpose


@dataclass
class DiskSpec:
    path: Path
    readonly: bool = False
    floppy: bool = False
    # None: a BIOS disk when the firmware boots, else a virtio-blk disk on the machine's default.
    transport: VirtioTransport | None = None


@dataclass
class NetSpec:
    """--net tap[=NAME][,mac=..][,transport=..]: a virtio-net NIC on a host tap interface."""

    tap: str | None = None  # None: create emutapN (needs CAP_NET_ADMIN)
    mac: bytes | None = None  # None: 52:54:00:12:34:56 + the NIC's index
    transport: VirtioTransport | None = None  # None: the machine's default


@dataclass
class VirtioSpec:
    """--rng / --virtio-console: a device with an optional transport (and, for the console, where
    hvc0's output goes: "stdio" or a file path)."""

    target: str = ""
    transport: VirtioTransport | None = None


@dataclass
class MachineConfig:
    backend: BackendName = BackendName.UNICORN
    mem: int = 256 * layout.MiB
    # Boot source (exactly one): firmware image at the reset vector, or a flat real-mode image.
    bios: Path | None = None
    image: Path | None = None
    load_addr: int = layout.BOOT_SECTOR  # where --image is loaded and entered
    # Direct kernel boot (no firmware code runs).
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""
    boot: BootKind = BootKind.AUTO
    modules: list[Path] = field(default_factory=list)  # extra multiboot modules
    # Disks for the BIOS path (first hard disk is 0x80) and their copy-on-write overlay.
    disks: list[DiskSpec] = field(default_factory=list)
    snapshot: bool = False
    virtio_transport: VirtioTransport = VirtioTransport.MMIO  # for disks that name none
    nets: list[NetSpec] = field(default_factory=list)
    rng: VirtioSpec | None = None
    virtio_console: VirtioSpec | None = None
    no_reboot: bool = False
    timeout: float | None = None  # seconds of wall-clock time before the run is ended
    triple_fault: TripleFaultPolicy = TripleFaultPolicy.ERROR
    deterministic: bool = False  # guest time from executed code (Unicorn only): emu/deterministic.py
    acpi: bool = False  # --kernel: ACPI tables (virtio-mmio devices in the DSDT) instead of cmdline words
