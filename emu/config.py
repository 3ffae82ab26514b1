"""MachineConfig: everything that describes one machine, independent of how it was asked for."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from emu import layout


class BackendName(Enum):
    UNICORN = "unicorn"
    KVM = "kvm"


@dataclass
class MachineConfig:
    backend: BackendName = BackendName.UNICORN
    mem: int = 256 * layout.MiB
    # Boot source (exactly one): firmware image at the reset vector, or a flat real-mode image.
    bios: Path | None = None
    image: Path | None = None
    load_addr: int = 0x7C00
    # Console and debug ports.
    serial_out: Path | None = None  # None: the console (stdio)
    debugcon: str = "stdio"  # stdio | none | a file path
    no_reboot: bool = False
    timeout: float | None = None  # seconds of wall-clock time before the run is ended
    extra: dict[str, object] = field(default_factory=dict)
