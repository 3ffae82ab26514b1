"""The project's virtio-blk test guest (tests/guests/virtio/blk.asm) booted with --kernel and a
--disk, over virtio-mmio v2 (modern) and v1 (legacy), on every backend: it reads a known sector,
writes one, flushes, and the host finds the write in the image file. Plus `emu run` as a user
types it: the command-line word Linux needs, and bad disk options as one error line."""

from __future__ import annotations

from pathlib import Path

import pytest
from guests.backends import BACKEND_PARAMS, require
from guests.cli import emu_run
from guests.virtio.blkcase import (
    DONE_STATUS,
    SECTOR1,
    SECTORS,
    assert_only_sector2_written,
    image_fixture,
    kernel_fixture,
    sector2_written,
)

from emu.config import BackendName, DiskSpec, MachineConfig, VirtioTransport
from emu.errors import ExitStatus
from emu.machine import run_machine

MMIO_TRANSPORTS = (VirtioTransport.MMIO, VirtioTransport.MMIO_LEGACY)  # PCI: tests/test_pci_virtio.py
TRANSPORTS = [pytest.param(t, id=t.value) for t in MMIO_TRANSPORTS]


kernel = kernel_fixture("blk")
image = image_fixture


def expected(version: int, *, readonly: bool = False) -> str:
    modern = version == 2
    features = (0x1_0000_0000 if modern else 0) | 0x3000_0000 | 0x244
    features |= 0x20 if readonly else 0x6000  # read-only, or discard + write-zeroes
    write_status = 1 if readonly else 0
    out = "virtio-blk guest\n"
    out += 'cmdline="console=ttyS0 virtio_mmio.device=4K@0xd0000000:5"\n'
    out += f"magic=74726976 version={version} device=02 vendor=00554d45\n"
    out += f"features={features:016x}\n"
    if modern:
        out += "features_ok status=0b\nqueue0 max=0100 ready=1\n"
    else:
        out += "queue0 max=0100 pfn=00000400\n"
    out += f"status={0x0F if modern else 0x07:02x} capacity={SECTORS:016x}\n"
    out += "req type=00 status=00 len=0201 isr=1 isr_after_ack=0\n"
    out += f'sector1="emu virtio sector one" sum={sum(SECTOR1):08x}\n'
    out += f"req type=01 status={write_status:02x} len=0001 isr=1 isr_after_ack=0\n"
    out += "req type=04 status=00 len=0001 isr=1 isr_after_ack=0\n"
    out += "req type=08 status=00 len=0015 isr=1 isr_after_ack=0\n"
    out += 'id="emu-disk.img"\n'
    out += "req type=00 status=01 len=0001 isr=1 isr_after_ack=0\n"  # past the end: IOERR
    out += "req type=63 status=02 len=0001 isr=1 isr_after_ack=0\n"  # unknown type: UNSUPP
    out += f"bad notify status={0x4F if modern else 0x47:02x} isr=2 after reset status=00\n"
    return out + "done\n"


def boot(kernel: Path, backend: BackendName, disk: DiskSpec, snapshot: bool = False) -> str:
    cfg = MachineConfig(backend=backend, mem=64 << 20, kernel=kernel, cmdline="console=ttyS0",
                        disks=[disk], snapshot=snapshot, timeout=60)  # fmt: skip
    result = run_machine(cfg)
    assert result.status == DONE_STATUS, result.reason + "\n" + result.serial.decode(errors="replace")
    return result.serial.decode()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_guest_reads_writes_and_flushes(
    kernel: Path, image: Path, backend: BackendName, transport: VirtioTransport
) -> None:
    require(backend)
    serial = boot(kernel, backend, DiskSpec(image, transport=transport))
    assert serial == expected(1 if transport is VirtioTransport.MMIO_LEGACY else 2)
    assert_only_sector2_written(image)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_read_only_disk_refuses_the_write(kernel: Path, image: Path, backend: BackendName) -> None:
    require(backend)
    before = image.read_bytes()
    assert boot(kernel, backend, DiskSpec(image, readonly=True)) == expected(2, readonly=True)
    assert image.read_bytes() == before


def test_snapshot_leaves_the_image_untouched(kernel: Path, image: Path) -> None:
    before = image.read_bytes()
    assert boot(kernel, BackendName.UNICORN, DiskSpec(image), snapshot=True) == expected(2)
    assert image.read_bytes() == before


# -- emu run -------------------------------------------------------------------------------------
def test_cli_kernel_with_disk_and_legacy_default(kernel: Path, image: Path, tmp_path: Path) -> None:
    serial = tmp_path / "serial.txt"
    p = emu_run("--kernel", str(kernel), "--cmdline", "console=ttyS0", "--disk", str(image),
                "--virtio-transport", "mmio-legacy", "--serial", str(serial), "-v")  # fmt: skip
    assert p.returncode == DONE_STATUS, p.stderr
    assert "kernel command line += virtio_mmio.device=4K@0xd0000000:5" in p.stderr
    assert serial.read_text() == expected(1)
    assert image.read_bytes()[1024:1536] == sector2_written()


@pytest.mark.parametrize(
    "disk_arg,words",
    [
        pytest.param("{image},transport=usb", ["unknown virtio transport", "'usb'"], id="bad-transport"),
        pytest.param("{image},floppy,transport=mmio", ["floppy"], id="floppy-virtio"),
        pytest.param("{missing}", ["missing.img", "no such file"], id="missing-image"),
    ],
)
def test_cli_bad_disk_is_one_line(kernel: Path, image: Path, tmp_path: Path, disk_arg: str, words: list[str]) -> None:
    arg = disk_arg.format(image=image, missing=tmp_path / "missing.img")
    p = emu_run("--kernel", str(kernel), "--disk", arg)
    assert p.returncode == ExitStatus.USAGE, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    for w in words:
        assert w in lines[0]
