"""OSv, the unikernel emu's story starts from (../shared/guests/osv), on emu's modern PC under
Unicorn: it needs a clock source (kvmclock or an HPET in ACPI) and a local APIC, and halted with
"Neither paravirtual clock nor HPET is available" before emu had them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from guests.backends import kvm_is_pvm, require
from guests.cli import emu_run

from emu.config import BackendName

OSV = Path(__file__).resolve().parents[2] / "shared" / "guests" / "osv"
RAMFS = OSV / "ramfs" / "loader-stripped.elf"


@pytest.fixture(scope="module")
def ramfs_kernel() -> Path:
    if not RAMFS.is_file():
        pytest.skip(f"the OSv test guests are not beside this checkout ({OSV})")
    return RAMFS


@pytest.mark.parametrize("cpus", [1, 2])
@pytest.mark.parametrize("acpi", ["off", "on"])
def test_osv_ramfs_says_hello(ramfs_kernel: Path, acpi: str, cpus: int) -> None:
    """With --smp 2 OSv finds the second CPU in the MP table (acpi off) or the MADT and starts it."""
    p = emu_run(
        "--kernel", str(ramfs_kernel), "--cmdline", "--verbose --bootchart --rootfs=ramfs /hello", "--acpi", acpi,
        "--no-reboot", "--timeout", "60", "--smp", str(cpus),
        timeout=120,
    )  # fmt: skip
    out = p.stdout
    assert p.returncode == 0, f"exit {p.returncode}: {p.stderr}\n{out[-3000:]}"
    assert "Neither paravirtual clock nor HPET" not in out
    assert f"{cpus} CPUs detected" in out
    assert "Hello from C code" in out
    # Its power-off: ACPI S5 where the DSDT declares it, else a reset (here: --no-reboot's end).
    ending = "guest powered off (ACPI S5)" if acpi == "on" else "guest requested a reset (--no-reboot)"
    assert f"emu: {ending} (exit status 0)" in p.stderr
    # OSv's boot chart: real, increasing times (they come from kvmclock).
    total = re.search(r"Total time: (\d+\.\d+)ms", out)
    marks = [float(m) for m in re.findall(r"\t[^:\n]+: (\d+\.\d+)ms, \(\+", out)]
    assert total and 10 < float(total.group(1)) < 30_000, out[-2000:]
    assert marks == sorted(marks) and marks[-1] > 0


@pytest.fixture(scope="module")
def rofs_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OSv's rofs disk (qcow2 as built) as a raw image, as Firecracker takes it (qemu-img from
    qemu-utils, which scripts/setup installs)."""
    usr = OSV / "rofs" / "usr.img"
    if not usr.is_file():
        pytest.skip(f"the OSv test guests are not beside this checkout ({OSV})")
    raw = tmp_path_factory.mktemp("osv") / "usr.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(usr), str(raw)], check=True)
    return raw


def test_osv_rofs_the_firecracker_way(rofs_raw: Path) -> None:
    """OSv's scripts/firecracker.py set-up: loader-stripped.elf entered in 64-bit mode, `--nopci`,
    the rofs on a virtio-mmio disk announced on the command line. OSv's virtio-mmio driver does
    not accept VERSION_1; Firecracker's devices take it anyway, and so do emu's."""
    p = emu_run(
        "--kernel", str(OSV / "rofs" / "loader-stripped.elf"), "--boot", "elf", "--disk", str(rofs_raw),
        "--cmdline", "--verbose --nopci --rootfs=rofs /hello", "--mem", "128M", "--no-reboot", "--timeout", "60",
        timeout=120,
    )  # fmt: skip
    out = p.stdout
    assert p.returncode == 0, f"exit {p.returncode}: {p.stderr}\n{out[-3000:]}"
    assert "VFS: mounting rofs at /rofs" in out
    assert "Hello from C code" in out


def test_osv_ramfs_under_kvm(ramfs_kernel: Path) -> None:
    require(BackendName.KVM)
    if kvm_is_pvm():
        pytest.skip("this host's KVM is PVM: its instruction emulator, which runs guest ring 0, fails on OSv's "
                    "early SSE code (movq xmm0, rax: KVM internal error, emulation failed; measured)")  # fmt: skip
    p = emu_run("--backend", "kvm", "--kernel", str(ramfs_kernel), "--cmdline", "--rootfs=ramfs /hello",
                "--no-reboot", "--timeout", "60", timeout=120)  # fmt: skip
    assert p.returncode == 0 and "Hello from C code" in p.stdout, p.stderr


def test_osv_mbr_boot_of_its_qcow2_disk_as_built() -> None:
    """OSv's usr.img as its build makes it (qcow2): emu's BIOS boots it as SeaBIOS boots a
    virtio-blk disk, OSv's MBR loader reads the kernel with int 13h, and OSv then reads its rofs
    from the same disk through virtio-blk over PCI (one open image for both)."""
    usr = OSV / "rofs" / "usr.img"
    if not usr.is_file():
        pytest.skip(f"the OSv test guests are not beside this checkout ({OSV})")
    p = emu_run("--disk", f"{usr},ro,transport=pci", "--no-reboot", "--timeout", "60", "--expect", "Hello from C code",
                timeout=120)  # fmt: skip
    assert p.returncode == 0, f"exit {p.returncode}: {p.stderr}\n{p.stdout[-3000:]}"
    assert "OSv v0.57.0" in p.stdout and "Cmdline: /hello" in p.stdout
