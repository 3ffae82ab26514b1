"""The project's virtio-pci test guest (tests/guests/virtio/blk_pci.asm) booted with --kernel and a
--disk on every backend: it enumerates PCI bus 0 through 0xCF8/0xCFC, sizes a BAR, reads the
addresses emu assigned, toggles decode, and drives the disk through the legacy I/O BAR or the
modern capabilities (legacy-only, modern-only and transitional devices, the transitional one
both ways): read a known sector, write one, flush, get-id, two refused requests and one protocol
violation; the host finds the write in the image file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from guests.backends import BACKEND_PARAMS, require
from guests.virtio.blkcase import (
    DONE_STATUS,
    SECTOR1,
    SECTORS,
    assert_only_sector2_written,
    image_fixture,
    kernel_fixture,
)

from emu.config import BackendName, DiskSpec, MachineConfig, VirtioTransport
from emu.machine import run_machine

REPO = Path(__file__).resolve().parents[1]
CASES = [
    pytest.param(VirtioTransport.PCI_LEGACY, "legacy", id="pci-legacy"),
    pytest.param(VirtioTransport.PCI_MODERN, "modern", id="pci-modern"),
    pytest.param(VirtioTransport.PCI, "legacy", id="transitional-as-legacy"),
    pytest.param(VirtioTransport.PCI, "modern", id="transitional-as-modern"),
]


kernel = kernel_fixture("blk_pci")
image = image_fixture


def expected(transport: VirtioTransport, driver: str) -> str:
    modern_device = transport is VirtioTransport.PCI_MODERN
    has_io = transport is not VirtioTransport.PCI_MODERN
    has_mem = transport is not VirtioTransport.PCI_LEGACY
    device_id = 0x1042 if modern_device else 0x1001
    out = "virtio-blk pci guest\n"
    out += f'cmdline="{driver} console=ttyS0"\n'
    out += "pci 00:00.0 id=12378086 class=060000\n"
    out += f"pci 00:01.0 id={device_id:04x}1af4 class=010000\n"
    out += "pci 00:1f.0 id=ffffffff\n"
    # Slot 1's INTA is IRQ 14 (emu/layout.py PCI_INTX_IRQS swizzle).
    out += f"virtio subsys={0x40 if modern_device else 2:04x}1af4 rev={int(modern_device):02x} line/pin=010e\n"
    out += f"bar0 mask={0xFFFFFF81 if has_io else 0:08x} io={0xC000 if has_io else 0:04x}"
    out += f" bar4={0xC0000004 if has_mem else 0:016x}\n"
    features = 0x3000_6244  # blk: SEG_MAX, BLK_SIZE, FLUSH, TOPOLOGY, DISCARD, WRITE_ZEROES; ring
    if driver == "legacy":
        out += "decode off=ffff on=0100\n"
        out += f"features={features:08x}\n"
        out += "queue0 max=0100 pfn=00000400\n"
        status, bad = 0x07, 0x47
    else:
        out += "caps common=0000 notify=3000 mult=4 isr=1000 device=2000\n"
        out += "decode off=ffff on=0001\n"
        out += f"features={features | 1 << 32:016x}\n"
        out += "features_ok status=0b\n"
        out += "queue0 max=0100 msix=ffff enable=1\n"
        status, bad = 0x0F, 0x4F
    out += f"status={status:02x} capacity={SECTORS:016x}\n"
    req = "req type={:02x} status={:02x} len={:04x} intx=1 isr=1 isr_after=0\n"
    out += req.format(0, 0, 0x201)
    out += f'sector1="emu virtio sector one" sum={sum(SECTOR1):08x}\n'
    out += req.format(1, 0, 1) + req.format(4, 0, 1) + req.format(8, 0, 0x15)
    out += 'id="emu-disk.img"\n'
    out += req.format(0, 1, 1)  # past the end: IOERR
    out += req.format(0x63, 2, 1)  # unknown type: UNSUPP
    out += f"bad notify status={bad:02x} isr=2 after reset status=00\n"
    return out + "done\n"


@pytest.mark.parametrize(("transport", "driver"), CASES)
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_guest_drives_blk_over_pci(
    kernel: Path, image: Path, backend: BackendName, transport: VirtioTransport, driver: str
) -> None:
    require(backend)
    cfg = MachineConfig(backend=backend, mem=64 << 20, kernel=kernel, cmdline=f"{driver} console=ttyS0",
                        disks=[DiskSpec(image, transport=transport)], timeout=60)  # fmt: skip
    result = run_machine(cfg)
    serial = result.serial.decode(errors="replace")
    assert result.status == DONE_STATUS, result.reason + "\n" + serial
    assert serial == expected(transport, driver)
    assert_only_sector2_written(image)


def test_cli_default_transport_pci(kernel: Path, image: Path, tmp_path: Path) -> None:
    serial = tmp_path / "serial.txt"
    p = subprocess.run(
        [sys.executable, "-m", "emu.cli", "run", "--kernel", str(kernel), "--cmdline", "modern console=ttyS0",
         "--disk", str(image), "--virtio-transport", "pci", "--serial", str(serial), "-v"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == DONE_STATUS, p.stderr
    assert "virtio-pci 00:01.0 blk PCI 00:01.0 INTA -> irq 14" in p.stderr
    assert "virtio_mmio.device" not in p.stderr  # PCI devices are enumerated, not announced
    assert serial.read_text() == expected(VirtioTransport.PCI, "modern")
