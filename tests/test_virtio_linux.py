"""Debian's cloud kernel drives emu's virtio-pci disks under the Unicorn backend (issue 5).

Each case is one boot through `emu run` (PVH entry, ~5 s) with the virtio-module initramfs
(tests/guests/virtio/linux.py): /init loads virtio_pci and virtio_blk, prints the sha256 of
/dev/vda (a read-only disk the test filled with a pattern) and writes a marker to /dev/vdb, which
the test then finds in the image file. Which interface the driver chose is read from the device's
negotiated features (bit 32, VERSION_1, set only on the modern interface), and /proc/interrupts
shows that the INTx lines delivered (Linux runs in PIC mode under Unicorn).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from guests.virtio.linux import WRITE_SECTOR, WRITE_TEXT, virtio_initramfs

from emu import layout
from emu.tools.guests import LinuxGuest

REPO = Path(__file__).resolve().parents[1]
DISK_BYTES = 1 << 20
FAILURE_SIGNS = ("EMU-VIRTIO-WARN", "Kernel panic", "Oops", "BUG:", "general protection fault", "segfault")


@pytest.fixture(scope="module")
def initramfs(guest: LinuxGuest) -> Path:
    try:
        return virtio_initramfs(guest)
    except FileNotFoundError as e:
        pytest.skip(f"virtio initramfs unavailable: {e}")


@pytest.mark.parametrize(
    ("vda", "vdb", "extra", "modern"),
    [
        pytest.param("pci", "pci", "", (True, True), id="transitional-modern-driver"),
        pytest.param("pci", "pci", "virtio_pci.force_legacy=1", (False, False), id="transitional-force-legacy"),
        pytest.param("pci-legacy", "pci-modern", "", (False, True), id="legacy-only-and-modern-only"),
    ],
)
def test_linux_reads_and_writes_virtio_pci_disks(
    guest: LinuxGuest, initramfs: Path, tmp_path: Path, vda: str, vdb: str, extra: str, modern: tuple[bool, bool]
) -> None:
    pattern = bytes((i * 7 + (i >> 9)) & 0xFF for i in range(DISK_BYTES))
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    a.write_bytes(pattern)
    b.write_bytes(bytes(DISK_BYTES))
    cmdline = " ".join(filter(None, ["console=ttyS0 panic=-1", extra]))
    p = subprocess.run(
        [sys.executable, "-m", "emu.cli", "run", "--backend", "unicorn", "--kernel", str(guest.vmlinux),
         "--boot", "pvh", "--initrd", str(initramfs), "--cmdline", cmdline, "--mem", "256", "--no-reboot",
         "--timeout", "90", "--disk", f"{a},ro,transport={vda}", "--disk", f"{b},transport={vdb}"],
        cwd=REPO, capture_output=True, text=True, errors="replace", timeout=150,
    )  # fmt: skip
    out = p.stdout
    assert p.returncode == 0, f"exit {p.returncode}: {p.stderr.strip()}\n{out[-3000:]}"
    bad = [line for line in out.splitlines() if any(s in line for s in FAILURE_SIGNS)]
    assert not bad, "\n".join(bad)
    assert "EMU-VIRTIO-DONE" in out, out[-3000:]

    assert re.search(r"pci 0000:00:00\.0: \[8086:1237\] type 00 class 0x060000", out)
    assert f"EMU-VDA-SIZE {DISK_BYTES // 512}" in out
    assert f"EMU-VDA-SHA256 {hashlib.sha256(pattern).hexdigest()}  /dev/vda" in out
    assert b.read_bytes()[WRITE_SECTOR * 512 : WRITE_SECTOR * 512 + len(WRITE_TEXT)] == WRITE_TEXT.encode()
    assert a.read_bytes() == pattern

    features = dict(re.findall(r"EMU-FEATURES (vd[ab]) ([01]{64})", out))
    assert (features["vda"][32] == "1", features["vdb"][32] == "1") == modern, features
    irqs = {int(n): int(count) for n, count in re.findall(r"EMU-IRQ (\d+):\s+(\d+)\s+XT-PIC\s+virtio", out)}
    assert set(irqs) <= set(layout.PCI_INTX_IRQS) and sum(irqs.values()) > 0, irqs
