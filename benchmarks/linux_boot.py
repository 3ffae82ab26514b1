#!/usr/bin/env python3
"""Time to Linux's /init: emu (Unicorn) and QEMU (microvm, TCG) side by side, in one run.

The same Debian cloud kernel, busybox initramfs, memory size and kernel command line
(emu.tools.guests; `scripts/fetch-guests` fetches them) boot through each path both tools have:
the bzImage, and the extracted vmlinux through PVH; emu also through the vmlinux ELF's 64-bit
entry (Firecracker's way), which QEMU does not offer. Each row prints host wall-clock seconds from
process start to the /init marker (EMU-INIT-START), to the end of /init (EMU-INIT-DONE) and to
process exit, the guest-timed `sleep 1`, the exit status and the peak RSS. A summary line per boot
path gives emu's time to the marker over QEMU's.

Runs are sequential (the machine has two cores); use -n for the best of several runs.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.linux_qemu import QEMU, available, best, default_cmdline, host_line, qemu_command, time_boot
from emu.tools.guests import MARKER_DONE, MARKER_START, LinuxGuest, ensure_linux_guest

MEM_MIB = 256
TIMEOUT_S = 180


@dataclass
class Row:
    tool: str
    path: str
    cmd: list[str]


def emu_command(guest: LinuxGuest, cmdline: str, path: str) -> list[str]:
    kernel, boot = {"bzImage": (guest.bzimage, "bzimage"), "PVH": (guest.vmlinux, "pvh"),
                    "vmlinux ELF": (guest.vmlinux, "elf")}[path]  # fmt: skip
    return [
        sys.executable, "-m", "emu.cli", "run", "--backend", "unicorn", "--kernel", str(kernel),
        "--boot", boot, "--initrd", str(guest.initramfs), "--cmdline", cmdline, "--mem", str(MEM_MIB),
        "--no-reboot", "--timeout", str(TIMEOUT_S),
    ]  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--runs", type=int, default=1, help="runs per row; the best is printed (default 1)")
    p.add_argument("--cmdline", help=f"kernel command line (default: {default_cmdline()!r})")
    args = p.parse_args()
    guest = available(ensure_linux_guest)
    if guest is None:
        return 0
    cmdline = args.cmdline or default_cmdline()
    rows = [Row("emu unicorn", path, emu_command(guest, cmdline, path)) for path in ("bzImage", "PVH", "vmlinux ELF")]
    if shutil.which(QEMU):
        rows += [
            Row("qemu microvm tcg", "bzImage", qemu_command(guest, cmdline, mem=f"{MEM_MIB}M")),
            Row("qemu microvm tcg", "PVH", qemu_command(guest, cmdline, pvh=True, mem=f"{MEM_MIB}M")),
        ]
    else:
        print(f"note: {QEMU} is not installed (apt-get install qemu-system-x86): emu rows only")

    print(host_line())
    print(f"guest: Linux {guest.version}, busybox initramfs, {MEM_MIB} MiB, cmdline {cmdline!r}")
    print(f"best of {args.runs} run(s); seconds of host wall-clock time from process start\n")
    header = f"{'tool':<18}{'boot path':<13}{'/init':>8}{'done':>8}{'exit':>8}{'sleep 1':>9}{'status':>8}{'RSS MiB':>9}"
    print(header)
    print("-" * len(header))
    results: dict[tuple[str, str], float] = {}
    for row in rows:
        runs = [time_boot(row.cmd, timeout=TIMEOUT_S + 30) for _ in range(args.runs)]
        marker = best(runs, MARKER_START)
        results[(row.tool, row.path)] = marker
        done, exit_, sleep = best(runs, MARKER_DONE), best(runs, "exit"), best(runs, "sleep")
        status, rss = runs[-1]["status"], best(runs, "rss_mib")
        print(
            f"{row.tool:<18}{row.path:<13}{marker:>8.2f}{done:>8.2f}{exit_:>8.2f}{sleep:>9.2f}{status:>8.0f}{rss:>9.0f}"
        )
    print()
    for path in ("bzImage", "PVH"):
        e, q = results.get(("emu unicorn", path), math.nan), results.get(("qemu microvm tcg", path), math.nan)
        if not math.isnan(e) and not math.isnan(q):
            print(f"{path}: emu reaches /init in {e:.2f} s, QEMU in {q:.2f} s: {e / q:.2f}x QEMU's time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
