"""MachineConfig: everything that describes one machine, independent of how it was asked for."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from emu import layout
from emu.errors import EmuError


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


class DiskFormat(Enum):
    """A disk image's format (--disk ...,format=); None in a DiskSpec: detected from the magic."""

    RAW = "raw"
    QCOW2 = "qcow2"


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
    format: DiskFormat | None = None  # None: qcow2 if the file starts with its magic, else raw


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
    smp: int = 1  # vCPUs (--smp, QEMU's name): CPU 0 boots, the others wait for INIT-SIPI-SIPI
    boot_timer: bool = False  # Firecracker's boot timer (emu/devices/boot_timer.py)
    # With --acpi on, announce virtio-mmio devices on the kernel command line too, as Firecracker
    # does (its guests may read either: Linux the DSDT, OSv the command line).
    virtio_cmdline_too: bool = False

    # -- derived views ----------------------------------------------------------------------------
    @property
    def firmware_boot(self) -> bool:
        """The machine starts in firmware (emu's BIOS or --bios), not in a kernel or flat image."""
        return self.kernel is None and self.image is None

    def bios_disks(self) -> list[DiskSpec]:
        """The disks the BIOS serves: none without firmware (--kernel, --image), else those that
        name no virtio transport, then the virtio-pci ones, which it boots as SeaBIOS boots
        virtio-blk (the same disk, shared with the device)."""
        if self.kernel is not None:
            return []
        plain = [d for d in self.disks if d.transport is None]
        if not self.firmware_boot:
            return plain
        return plain + [d for d in self.disks if d.transport is not None and d.transport not in MMIO_TRANSPORTS]

    def virtio_disks(self) -> list[DiskSpec]:
        """The virtio-blk disks: all of them under --kernel, else those naming a transport."""
        return [d for d in self.disks if self.kernel is not None or d.transport is not None]

    def virtio_transports(self) -> list[VirtioTransport]:
        """The transport of every virtio device the options ask for, in creation order."""
        default = self.virtio_transport
        out = [d.transport or default for d in self.virtio_disks()]
        out += [n.transport or default for n in self.nets]
        out += [s.transport or default for s in (self.rng, self.virtio_console) if s is not None]
        return out


#: vCPUs each backend runs (--smp): Unicorn's are scheduled on one host thread, KVM's each have one.
MAX_CPUS = {BackendName.UNICORN: 16, BackendName.KVM: 64}

#: virtio transports that sit on virtio-mmio slots (the others are PCI functions).
MMIO_TRANSPORTS = frozenset({VirtioTransport.MMIO, VirtioTransport.MMIO_LEGACY})


def validate(cfg: MachineConfig) -> None:
    """Every check of a machine's options that needs no file: the first problem as an EmuError
    naming the options involved. The Machine calls it once, before it builds anything; loaders
    only check what the files say."""
    sources = sum(x is not None for x in (cfg.bios, cfg.image, cfg.kernel))
    if sources != 1 and not (sources == 0 and cfg.bios_disks()):
        raise EmuError("give exactly one boot source: --bios FILE, --image FILE or --kernel FILE")
    if cfg.kernel is None and (cfg.initrd or cfg.cmdline or cfg.modules or cfg.boot is not BootKind.AUTO):
        raise EmuError("--initrd, --cmdline, --module and --boot only apply with --kernel")
    if cfg.acpi and cfg.kernel is None:
        raise EmuError("--acpi on only applies with --kernel (the BIOS path has no ACPI tables)")
    if cfg.deterministic and cfg.backend is not BackendName.UNICORN:
        raise EmuError("--deterministic needs --backend unicorn (KVM runs on host time)")
    limit = MAX_CPUS[cfg.backend]
    if not 1 <= cfg.smp <= limit:
        raise EmuError(f"--smp {cfg.smp}: the {cfg.backend.value} backend runs 1 to {limit} vCPUs")
    if cfg.deterministic and cfg.nets:
        raise EmuError("--net cannot be used with --deterministic (frames arrive at host times)")
    if cfg.virtio_console is not None and not cfg.virtio_console.target:
        raise EmuError("--virtio-console needs a FILE or stdio")
    for disk in cfg.disks:
        if disk.floppy and (disk.transport is not None or cfg.kernel is not None):
            raise EmuError(f"disk {disk.path}: a floppy is a BIOS drive; it cannot be a virtio disk")
    floppies = sum(d.floppy for d in cfg.bios_disks())
    if floppies > 2:
        raise EmuError(f"{floppies} floppy disks given: a PC BIOS has at most 2")
    mmio = sum(t in MMIO_TRANSPORTS for t in cfg.virtio_transports())
    if mmio > len(layout.VIRTIO_MMIO_IRQS):
        raise EmuError(f"{mmio} virtio-mmio devices given: emu has {len(layout.VIRTIO_MMIO_IRQS)} slots")
