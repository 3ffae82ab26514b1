"""emu.config.validate: every check of a machine's options that needs no file, in one place, before
anything is opened."""

from __future__ import annotations

from pathlib import Path

import pytest
from guests.cli import emu_run

from emu.config import (
    BackendName,
    BootKind,
    DiskSpec,
    MachineConfig,
    NetSpec,
    VirtioSpec,
    VirtioTransport,
    validate,
)
from emu.errors import EmuError, ExitStatus

K = Path("/nonexistent/kernel")  # never opened: validation comes first


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (MachineConfig(), "exactly one boot source"),
        (MachineConfig(kernel=K, image=K), "exactly one boot source"),
        (MachineConfig(image=K, cmdline="quiet"), "only apply with --kernel"),
        (MachineConfig(image=K, boot=BootKind.PVH), "only apply with --kernel"),
        (MachineConfig(image=K, acpi=True), "--acpi on only applies with --kernel"),
        (
            MachineConfig(kernel=K, backend=BackendName.KVM, deterministic=True),
            "--deterministic needs --backend unicorn",
        ),
        (
            MachineConfig(kernel=K, deterministic=True, nets=[NetSpec("tap0")]),
            "--net cannot be used with --deterministic",
        ),
        (MachineConfig(kernel=K, virtio_console=VirtioSpec("")), "--virtio-console needs a FILE or stdio"),
        (MachineConfig(kernel=K, disks=[DiskSpec(K, floppy=True)]), "a floppy is a BIOS drive"),
        (MachineConfig(disks=[DiskSpec(K, floppy=True)] * 3), "3 floppy disks given"),
        (MachineConfig(kernel=K, disks=[DiskSpec(K)] * 6), "6 virtio-mmio devices given: emu has 5 slots"),
    ],
)
def test_each_bad_combination_is_one_error(cfg: MachineConfig, message: str) -> None:
    with pytest.raises(EmuError, match=message):
        validate(cfg)


def test_good_combinations_pass() -> None:
    validate(MachineConfig(disks=[DiskSpec(K)]))  # the BIOS boots the disk
    validate(MachineConfig(kernel=K, cmdline="quiet", acpi=True, deterministic=True))
    # Six disks fit when only five sit on virtio-mmio slots.
    disks = [DiskSpec(K)] * 5 + [DiskSpec(K, transport=VirtioTransport.PCI)]
    validate(MachineConfig(kernel=K, disks=disks))


def test_the_cli_checks_options_before_reading_files() -> None:
    """A bad combination is named even when a file it mentions does not exist."""
    p = emu_run("--kernel", str(K), "--backend", "kvm", "--deterministic")
    assert p.returncode == ExitStatus.USAGE
    assert p.stderr.strip() == "emu: error: --deterministic needs --backend unicorn (KVM runs on host time)"


def test_the_bios_also_boots_virtio_pci_disks_not_mmio_ones(tmp_path: Path) -> None:
    """As SeaBIOS boots virtio-blk: with firmware, a virtio-pci disk is a BIOS drive too (after
    the plain ones); virtio-mmio disks are not, and nothing is under --kernel."""
    a, b, c = (DiskSpec(tmp_path / n) for n in "abc")
    b.transport, c.transport = VirtioTransport.PCI, VirtioTransport.MMIO
    cfg = MachineConfig(disks=[c, b, a])
    assert cfg.bios_disks() == [a, b] and cfg.virtio_disks() == [c, b]
    validate(MachineConfig(disks=[b]))  # a virtio-pci disk alone is a boot source
    cfg.kernel = tmp_path / "k"
    assert cfg.bios_disks() == []
