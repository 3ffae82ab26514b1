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


@dataclass
class DiskSpec:
    path: Path
    readonly: bool = False
    floppy: bool = False


@dataclass
class MachineConfig:
    backend: BackendName = BackendName.UNICORN
    mem: int = 256 * layout.MiB
    # Boot source (exactly one): firmware image at the reset vector, or a flat real-mode image.
    bios: Path | None = None
    image: Path | None = None
    load_addr: int = 0x7C00
    # Direct kernel boot (no firmware code runs).
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""
    boot: BootKind = BootKind.AUTO
    modules: list[Path] = field(default_factory=list)  # extra multiboot modules
    # Disks for the BIOS path (first hard disk is 0x80) and their copy-on-write overlay.
    disks: list[DiskSpec] = field(default_factory=list)
    snapshot: bool = False
    # Console and debug ports.
    serial_out: Path | None = None  # None: the console (stdio)
    debugcon: str = "stdio"  # stdio | none | a file path
    no_reboot: bool = False
    timeout: float | None = None  # seconds of wall-clock time before the run is ended
    extra: dict[str, object] = field(default_factory=dict)
