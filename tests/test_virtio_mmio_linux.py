"""Debian's cloud kernel finds emu's virtio-mmio disks through ACPI under the Unicorn backend
(issue 5; `--acpi on`, emu/firmware/tables/acpi.py).

That kernel has no CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES, so the DSDT's LNRO0005 devices are its only
way to virtio-mmio. Two boots (~5 and ~8 s): PVH (the RSDP in hvm_start_info) with a v2 disk to
read and a v1 (legacy) disk to write, and bzImage (the RSDP in the zero page) the other way round
plus a virtio-pci disk (PCI is then found through the DSDT's host bridge).
/init (tests/guests/virtio/linux.py, plus one line naming each virtio device's parent) prints the
sha256 of /dev/vda and writes a marker into /dev/vdb that the test reads from the image file.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from guests.virtio.linux import APPLETS, INIT, MODULES, WRITE_SECTOR, WRITE_TEXT, build_initramfs

from emu import layout
from emu.tools.guests import LinuxGuest

REPO = Path(__file__).resolve().parents[1]
DISK_BYTES = 1 << 20
FAILURE_SIGNS = ("EMU-VIRTIO-WARN", "Kernel panic", "Oops", "BUG:", "general protection fault", "segfault",
                 "ACPI Error", "ACPI BIOS Error")  # fmt: skip
# Each virtio device's parent: the platform device Linux made from the DSDT entry (LNRO0005:NN).
PARENTS = 'for d in /sys/bus/virtio/devices/*; do echo "EMU-PARENT $(basename $(readlink -f $d/..))"; done\n'
ACPI_INIT = INIT.replace("echo EMU-VIRTIO-DONE\n", PARENTS + "echo EMU-VIRTIO-DONE\n")


@pytest.fixture(scope="module")
def initramfs(guest: LinuxGuest) -> Path:
    assert ACPI_INIT != INIT
    try:
        return build_initramfs(guest, "initramfs-virtio-acpi.cpio", ACPI_INIT, MODULES, APPLETS)
    except FileNotFoundError as e:
        pytest.skip(f"virtio initramfs unavailable: {e}")


@pytest.mark.parametrize(
    ("boot", "vda", "vdb", "pci"),
    [
        pytest.param("pvh", "mmio", "mmio-legacy", False, id="pvh-v2-reads-v1-writes"),
        pytest.param("bzimage", "mmio-legacy", "mmio", True, id="bzimage-v1-reads-v2-writes-with-pci"),
    ],
)
def test_linux_finds_virtio_mmio_disks_through_acpi(
    guest: LinuxGuest, initramfs: Path, tmp_path: Path, boot: str, vda: str, vdb: str, pci: bool
) -> None:
    pattern = bytes((i * 13 + (i >> 9)) & 0xFF for i in range(DISK_BYTES))
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    a.write_bytes(pattern)
    b.write_bytes(bytes(DISK_BYTES))
    # With a virtio-pci disk too (vdc: virtio_mmio loads first), found below the DSDT's PCI0.
    extra = ["--disk", f"{a},ro,transport=pci"] if pci else []
    kernel = ["--kernel", str(guest.vmlinux), "--boot", "pvh"] if boot == "pvh" else ["--kernel", str(guest.bzimage)]
    p = subprocess.run(
        [sys.executable, "-m", "emu.cli", "run", "--backend", "unicorn", *kernel, "--acpi", "on",
         "--initrd", str(initramfs), "--cmdline", "console=ttyS0 panic=-1", "--mem", "256", "--no-reboot",
         "--timeout", "90", "--disk", f"{a},ro,transport={vda}", "--disk", f"{b},transport={vdb}", *extra],
        cwd=REPO, capture_output=True, text=True, errors="replace", timeout=150,
    )  # fmt: skip
    out = p.stdout
    assert p.returncode == 0, f"exit {p.returncode}: {p.stderr.strip()}\n{out[-3000:]}"
    bad = [line for line in out.splitlines() if any(s in line for s in FAILURE_SIGNS)]
    assert not bad, "\n".join(bad)
    assert "EMU-VIRTIO-DONE" in out, out[-3000:]

    # Found by ACPI: the RSDP where emu put it, the MADT's local APIC and IOAPIC in use, nothing on
    # the command line, and each virtio device hangs off a platform device made from a DSDT entry.
    assert f"ACPI: RSDP 0x{layout.ACPI_AREA_START:016X} 000024 (v02 EMU   )" in out
    assert f"ACPI: PM-Timer IO Port: {layout.PORT_ACPI_PM_BASE + 8:#x}" in out
    assert "APIC: Switch to symmetric I/O mode setup" in out
    # The PM timer and the TSC (CPUID leaf 0x15) agree: the watchdog never rejects the TSC against
    # acpi_pm. (Against refined-jiffies it can, when a loaded host delays PIT ticks.)
    assert "'acpi_pm' wd_nsec" not in out
    assert "Command line: console=ttyS0 panic=-1\n" in out and "virtio_mmio" not in out
    parents = ["0000:00:01.0"] if pci else []
    assert sorted(re.findall(r"EMU-PARENT (\S+)", out)) == [*parents, "LNRO0005:00", "LNRO0005:01"]
    if pci:
        assert "ACPI: PCI Root Bridge [PCI0] (domain 0000 [bus 00])" in out
        assert f"[vdc] {DISK_BYTES // 512} 512-byte logical blocks" in out

    assert f"EMU-VDA-SIZE {DISK_BYTES // 512}" in out
    assert f"EMU-VDA-SHA256 {hashlib.sha256(pattern).hexdigest()}  /dev/vda" in out
    assert b.read_bytes()[WRITE_SECTOR * 512 : WRITE_SECTOR * 512 + len(WRITE_TEXT)] == WRITE_TEXT.encode()
    assert a.read_bytes() == pattern
    # virtio-mmio v2 offers VERSION_1 (feature bit 32), v1 never does.
    features = dict(re.findall(r"EMU-FEATURES (vd[ab]) ([01]{64})", out))
    assert (features["vda"][32], features["vdb"][32]) == ("1" if vda == "mmio" else "0", "1" if vdb == "mmio" else "0")
    # Through the IOAPIC: pin n is GSI n, as the MADT says.
    irqs = {int(n): int(count) for n, count in re.findall(r"EMU-IRQ (\d+):\s+(\d+)\s+IO-APIC\s+\S+\s+virtio", out)}
    assert set(layout.VIRTIO_MMIO_IRQS[:2]) <= set(irqs) and all(irqs.values()), irqs
    assert set(irqs) - set(layout.VIRTIO_MMIO_IRQS[:2]) <= (set(layout.PCI_INTX_IRQS) if pci else set()), irqs


def test_linux_writes_a_qcow2_overlay_that_qemu_img_accepts(guest: LinuxGuest, initramfs: Path, tmp_path: Path) -> None:
    """vdb is a qcow2 overlay (qemu-img create -b) of a raw base; Linux writes through virtio-blk;
    afterwards `qemu-img check` finds no error or leak, `qemu-img compare` finds the overlay equal
    to the raw image with Linux's write, and the base is untouched."""
    pattern = bytes((i * 7 + (i >> 8)) & 0xFF for i in range(DISK_BYTES))
    a, base, overlay = tmp_path / "a.img", tmp_path / "base.img", tmp_path / "overlay.qcow2"
    a.write_bytes(bytes(DISK_BYTES))
    base.write_bytes(pattern)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base.name, "-F", "raw", str(overlay)],
                   cwd=tmp_path, check=True)  # fmt: skip
    p = subprocess.run(
        [sys.executable, "-m", "emu.cli", "run", "--kernel", str(guest.vmlinux), "--acpi", "on",
         "--initrd", str(initramfs), "--cmdline", "console=ttyS0 panic=-1", "--mem", "256", "--no-reboot",
         "--timeout", "90", "--disk", f"{a},ro", "--disk", str(overlay)],
        cwd=REPO, capture_output=True, text=True, errors="replace", timeout=150,
    )  # fmt: skip
    assert p.returncode == 0 and "EMU-VIRTIO-DONE" in p.stdout, f"exit {p.returncode}: {p.stderr}\n{p.stdout[-3000:]}"
    check = subprocess.run(["qemu-img", "check", str(overlay)], capture_output=True, text=True)
    assert check.returncode == 0 and "No errors were found on the image." in check.stdout, check.stdout
    assert "leaked" not in check.stdout
    expected = bytearray(pattern)
    expected[WRITE_SECTOR * 512 : WRITE_SECTOR * 512 + len(WRITE_TEXT)] = WRITE_TEXT.encode()
    want = tmp_path / "expected.img"
    want.write_bytes(expected)
    compare = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(overlay), str(want)],
                             capture_output=True, text=True)  # fmt: skip
    assert compare.returncode == 0, compare.stdout + compare.stderr
    assert base.read_bytes() == pattern
