#!/usr/bin/env python3
"""Time to Linux's /init with several CPUs: emu (Unicorn, --smp) and QEMU (microvm, TCG, -smp)
side by side, in one run.

The Debian cloud kernel and busybox initramfs of linux_boot.py, booted through PVH with ACPI
(its MADT lists the CPUs: this kernel has no MP-table parser) with 1 and 4 CPUs. Each row prints
host wall-clock seconds to the /init marker, to the end of /init and to process exit, the
guest-timed `sleep 1`, the exit status and the CPUs Linux brought up. emu runs every vCPU on
one host thread; QEMU's TCG runs one thread per vCPU (MTTCG), so on this two-core host it may
use both cores. Last, the host cost of one local APIC timer interrupt under Unicorn (bench_core.py's
guest: a periodic timer at its shortest period, each interrupt waking `hlt`).
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_core import LAPIC_GUEST, run_emu
from benchmarks.linux_qemu import QEMU, available, best, default_cmdline, host_line, time_boot
from emu.config import BackendName
from emu.tools.guests import MARKER_DONE, MARKER_START, LinuxGuest, ensure_linux_guest

MEM_MIB = 256
TIMEOUT_S = 180
BROUGHT_UP = re.compile(rb"smp: Brought up 1 node, (\d+) CPU")


def emu_command(guest: LinuxGuest, cmdline: str, cpus: int) -> list[str]:
    return [
        sys.executable, "-m", "emu.cli", "run", "--backend", "unicorn", "--kernel", str(guest.vmlinux),
        "--boot", "pvh", "--acpi", "on", "--smp", str(cpus), "--initrd", str(guest.initramfs),
        "--cmdline", cmdline, "--mem", str(MEM_MIB), "--no-reboot", "--timeout", str(TIMEOUT_S),
    ]  # fmt: skip


def qemu_command(guest: LinuxGuest, cmdline: str, cpus: int) -> list[str]:
    return [
        shutil.which(QEMU) or QEMU, "-M", "microvm,acpi=on", "-accel", "tcg", "-smp", str(cpus),
        "-m", f"{MEM_MIB}M", "-nographic", "-no-reboot", "-kernel", str(guest.vmlinux),
        "-initrd", str(guest.initramfs), "-append", cmdline,
    ]  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--runs", type=int, default=1, help="runs per row; the best is printed (default 1)")
    p.add_argument("--ticks", type=int, default=20_000, help="local APIC timer interrupts to time (default 20000)")
    args = p.parse_args()
    guest = available(ensure_linux_guest)
    if guest is None:
        return 0
    cmdline = default_cmdline()
    rows = [(f"emu unicorn --smp {n}", n, emu_command(guest, cmdline, n)) for n in (1, 4)]
    if shutil.which(QEMU):
        rows += [(f"qemu tcg -smp {n}", n, qemu_command(guest, cmdline, n)) for n in (1, 4)]
    else:
        print(f"note: {QEMU} is not installed (apt-get install qemu-system-x86): emu rows only")
    print(host_line())
    print(f"guest: Linux {guest.version}, busybox initramfs, {MEM_MIB} MiB, PVH with ACPI, cmdline {cmdline!r}")
    print(f"best of {args.runs} run(s); seconds of host wall-clock time from process start\n")
    header = f"{'tool':<22}{'/init':>8}{'done':>8}{'exit':>8}{'sleep 1':>9}{'status':>8}{'CPUs up':>9}"
    print(header)
    print("-" * len(header))
    results: dict[str, float] = {}
    for name, _, cmd in rows:
        runs = [time_boot(cmd, timeout=TIMEOUT_S + 30) for _ in range(args.runs)]
        up = _cpus_up(cmd)
        marker = best(runs, MARKER_START)
        results[name] = marker
        done, exit_, sleep = best(runs, MARKER_DONE), best(runs, "exit"), best(runs, "sleep")
        print(f"{name:<22}{marker:>8.2f}{done:>8.2f}{exit_:>8.2f}{sleep:>9.2f}{runs[-1]['status']:>8.0f}{up:>9}")
    print()
    for n in (1, 4):
        e, q = results.get(f"emu unicorn --smp {n}", math.nan), results.get(f"qemu tcg -smp {n}", math.nan)
        if not math.isnan(e) and not math.isnan(q):
            print(f"{n} CPU(s): emu reaches /init in {e:.2f} s, QEMU in {q:.2f} s: {e / q:.2f}x QEMU's time")
    tmp = Path(__file__).resolve().parents[1] / ".cache" / "bench"
    tmp.mkdir(parents=True, exist_ok=True)
    t = min(run_emu("", BackendName.UNICORN, tmp, source=LAPIC_GUEST.format(n=args.ticks)) for _ in range(args.runs))
    print(f"local APIC timer interrupt under Unicorn: {1e6 * t / args.ticks:.0f} us of host time each ({args.ticks})")
    return 0


def _cpus_up(cmd: list[str]) -> str:
    """The CPU count Linux reported, from one more quiet run (time_boot keeps no output)."""
    import subprocess

    out = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT_S + 30).stdout
    m = BROUGHT_UP.search(out)
    return m.group(1).decode() if m else "?"


if __name__ == "__main__":
    sys.exit(main())
