"""Debian's cloud kernel with the busybox initramfs (emu.tools.guests), booted through `emu run`.

Under Unicorn it must reach /init through each direct-boot path (bzImage, the vmlinux ELF's
64-bit entry, PVH), run userspace (uname, /proc/uptime, a `sleep 1` that takes about a second)
and power off with exit status 0. Under this machine's slow KVM a full boot is out of reach, so
the KVM test checks that the kernel was entered and ran its early code: its own banner, our
command line and the E820 map it parsed, printed by the kernel's early console.
"""

from __future__ import annotations

import re

import pytest
from guests.backends import kvm_unavailable_reason
from guests.cli import emu_run

from emu.tools.guests import MARKER_DONE, MARKER_START, SLEEP_RE, LinuxGuest

CMDLINE = "console=ttyS0 panic=-1"
FAILURE_SIGNS = ("EMU-INIT-WARN", "segfault", "Kernel panic", "Oops", "BUG:", "general protection fault")


@pytest.mark.parametrize(
    ("path", "boot"),
    [("bzimage", "bzimage"), ("vmlinux", "elf"), ("vmlinux", "pvh")],
    ids=["bzimage", "vmlinux-elf", "pvh"],
)
def test_linux_userspace_under_unicorn(guest: LinuxGuest, path: str, boot: str) -> None:
    kernel = guest.bzimage if path == "bzimage" else guest.vmlinux
    p = emu_run(
        "--backend", "unicorn", "--kernel", str(kernel), "--boot", boot, "--initrd", str(guest.initramfs),
        "--cmdline", CMDLINE, "--mem", "256", "--no-reboot", "--timeout", "90",
        timeout=150,
    )  # fmt: skip
    out = p.stdout
    assert p.returncode == 0, f"exit {p.returncode}: {p.stderr.strip()}\n{out[-3000:]}"
    assert f"Command line: {CMDLINE}" in out
    assert "Run /init as init process" in out
    bad = [line for line in out.splitlines() if any(s in line for s in FAILURE_SIGNS)]
    assert not bad, "\n".join(bad)

    after = out.split(MARKER_START, 1)[1].splitlines()
    uname = next(line for line in after if line.startswith("Linux "))
    assert guest.version in uname and uname.rstrip().endswith("x86_64 GNU/Linux"), uname
    uptime = next(line for line in after if re.fullmatch(r"\d+\.\d\d \d+\.\d\d", line.strip()))
    assert 0.5 < float(uptime.split()[0]) < 60, uptime

    m = SLEEP_RE.search(out.encode())
    assert m is not None, out[-2000:]
    assert 0.95 <= float(m.group(1)) <= 1.5, f"`sleep 1` took {m.group(1)} s of guest uptime"
    assert MARKER_DONE in out
    # poweroff -f without ACPI: the kernel halts with interrupts off, and emu ends the run.
    assert "reboot: System halted" in out or "reboot: Power down" in out
    assert "halted" in p.stderr


def test_linux_enters_and_runs_early_code_under_kvm(guest: LinuxGuest) -> None:
    reason = kvm_unavailable_reason()
    if reason:
        pytest.skip(reason)
    cmdline = "console=ttyS0 earlyprintk=ttyS0 panic=-1 emu-kvm-test"
    p = emu_run(
        "--backend", "kvm", "--kernel", str(guest.vmlinux), "--boot", "elf", "--initrd", str(guest.initramfs),
        "--cmdline", cmdline, "--mem", "256", "--no-reboot", "--timeout", "20",
        timeout=90,
    )  # fmt: skip
    out = p.stdout
    # This host's nested KVM runs the kernel at a few million instructions a second: the run
    # ends on the timeout (status 124), well before userspace.
    assert p.returncode in (0, 124), p.stderr
    assert f"Linux version {guest.version}" in out, out[-2000:]
    assert f"Command line: {cmdline}" in out
    # The E820 map the kernel printed is the one emu built (tables/e820.py): low RAM, the BIOS
    # area reserved, RAM from 1 MiB to the end of the 256 MiB.
    assert "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable" in out
    assert "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable" in out
    assert "Hypervisor detected: KVM" in out
    bad = [line for line in out.splitlines() if any(s in line for s in FAILURE_SIGNS)]
    assert not bad, "\n".join(bad)
