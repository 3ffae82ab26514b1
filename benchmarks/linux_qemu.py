#!/usr/bin/env python3
"""The reference: the Debian cloud kernel + busybox initramfs (emu.tools.guests) under QEMU TCG.

`qemu_command()` is the command line that boots them and `time_boot()` times a run; the other
benchmarks compare emu with QEMU through them (and share `available()`, `best()`, `host_line()`).
Run this file to boot once and print host wall-clock seconds to each /init marker.

The guest's TSC under TCG is the host's TSC, so `tsc_early_khz` is the host's TSC rate: it skips
the PIT calibration (which can fail under emulation, docs: ../shared/notes/boot-facts.md), and a
wrong value would make the guest clock (and `sleep 1`) run at the wrong speed.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emu.tools.guests import MARKER_DONE, MARKER_START, SLEEP_RE, GuestUnavailable, LinuxGuest, ensure_linux_guest

QEMU = "qemu-system-x86_64"
T = TypeVar("T")


def available(build: Callable[[], T], *also: type[Exception]) -> T | None:
    """build()'s guest assets, or None after printing why the host cannot provide them (the
    benchmark then skips: it is not a failure)."""
    try:
        return build()
    except (GuestUnavailable, *also) as e:
        print(f"skipped: {getattr(e, 'reason', e)}")
        return None


def best(runs: list[dict[str, float]], key: str) -> float:
    """The smallest of `key` over time_boot() runs (nan when no run reached it)."""
    values = [r[key] for r in runs if key in r]
    return min(values) if values else math.nan


def host_line() -> str:
    return f"host: {platform.node()}, {platform.processor() or platform.machine()}, Python {platform.python_version()}"


def host_tsc_khz() -> int | None:
    """The host's TSC rate in kHz from /proc/cpuinfo ("cpu MHz"; the TSC rate on constant-TSC hosts)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "cpu MHz":
                return round(float(value) * 1000)
    except (OSError, ValueError):
        pass
    return None


def default_cmdline() -> str:
    khz = host_tsc_khz()
    return "console=ttyS0 panic=-1" + (f" tsc_early_khz={khz}" if khz else "")


def qemu_command(guest: LinuxGuest, cmdline: str | None = None, *, pvh: bool = False, mem: str = "256M") -> list[str]:
    """QEMU microvm under TCG booting `guest` with its initramfs; power-off ends QEMU (status 0).

    pvh=True boots the extracted vmlinux ELF through its Xen PVH note instead of the bzImage.
    """
    kernel = guest.vmlinux if pvh else guest.bzimage
    return [
        shutil.which(QEMU) or QEMU, "-M", "microvm", "-accel", "tcg", "-m", mem,
        "-nographic", "-no-reboot", "-kernel", str(kernel), "-initrd", str(guest.initramfs),
        "-append", default_cmdline() if cmdline is None else cmdline,
    ]  # fmt: skip


def time_boot(cmd: list[str], timeout: float = 120, marks: dict[str, bytes] | None = None) -> dict[str, float]:
    """Run `cmd`; host seconds from start to each marker line and to exit ("exit"), the exit
    status ("status") and the peak RSS ("rss_mib"). Each of `marks` (name -> bytes) is timed
    under its name as its bytes arrive, wherever it stands in a line."""
    found: dict[str, float] = {}
    marks = marks or {}
    keep = max((len(m) for m in marks.values()), default=1)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    watchdog = threading.Timer(timeout, proc.kill)  # a silent hang would block the reads
    watchdog.start()

    def line_seen(raw: bytes, now: float) -> None:
        line = raw.strip()
        for marker in (MARKER_START, MARKER_DONE):
            if line == marker.encode():
                found.setdefault(marker, now)
        m = SLEEP_RE.search(line)
        if m:
            found["sleep"] = float(m.group(1))

    seen = partial = b""
    try:
        fd = proc.stdout.fileno()
        while chunk := os.read(fd, 1 << 16):
            now = time.monotonic() - t0
            window = seen + chunk
            for name, mark in marks.items():
                if name not in found and mark in window:
                    found[name] = now
            seen = window[-keep:]  # a mark split across two reads is still found
            *lines, partial = (partial + chunk).split(b"\n")
            for raw in lines:
                line_seen(raw, now)
        if partial:
            line_seen(partial, time.monotonic() - t0)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        found["rss_mib"] = usage.ru_maxrss / 1024  # peak resident set, KiB on Linux
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    found["exit"] = time.monotonic() - t0
    found["status"] = proc.returncode
    return found


def main() -> int:
    p = argparse.ArgumentParser(description="Boot the Debian cloud kernel under QEMU TCG and time it.")
    p.add_argument("--pvh", action="store_true", help="boot the extracted vmlinux through PVH")
    p.add_argument("--cmdline", help=f"kernel command line (default: {default_cmdline()!r})")
    p.add_argument("-n", "--runs", type=int, default=1)
    args = p.parse_args()
    guest = available(ensure_linux_guest)
    if guest is None:
        return 0
    cmd = qemu_command(guest, args.cmdline, pvh=args.pvh)
    print(" ".join(cmd))
    for _ in range(args.runs):
        m = time_boot(cmd)
        print(f"{MARKER_START} at {m.get(MARKER_START, float('nan')):.2f} s, {MARKER_DONE} at "
              f"{m.get(MARKER_DONE, float('nan')):.2f} s, exit {m['exit']:.2f} s (status {m['status']:.0f}), "
              f"guest-timed sleep 1: {m.get('sleep', float('nan')):.2f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
