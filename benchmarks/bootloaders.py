#!/usr/bin/env python3
"""Real bootloaders from disk: emu (Unicorn) and QEMU (TCG, SeaBIOS) side by side, in one run.

The same disk images (emu.tools.bootloaders; `scripts/fetch-bootloaders` builds them) boot under
`emu run --disk` and under `qemu-system-x86_64 -accel tcg` (pc machine, SeaBIOS, IDE disk,
-nographic: the serial port on stdio, and SeaBIOS copies text-mode output there too). Each row
prints host wall-clock seconds from process start to
- the bootloader's banner: "SYSLINUX 6.04", or GRUB's "GRUB loading" from boot.img,
- GRUB's own line (the echo of its embedded config, once its kernel and modules run),
- the kernel hand-over: the kernel's first console line ("Linux version"),
- the initramfs's /init (EMU-INIT-START) and process exit,
and a summary gives emu's times over QEMU's. Runs are sequential (the machine has two cores);
-n takes the best of several runs.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.linux_qemu import QEMU, available, best, host_line, time_boot
from emu.tools.bootloaders import (
    GRUB_BANNER,
    GRUB_LOADING,
    KERNEL_BANNER,
    SYSLINUX_BANNER,
    Boot,
    ensure_bootloader_images,
)
from emu.tools.guests import MARKER_START

MEM_MIB = 256
TIMEOUT_S = 120
COLUMNS = ("banner", "grub", "kernel", "/init", "exit")


@dataclass
class Row:
    tool: str
    boot: Boot
    cmd: list[str]


def marks_for(boot: Boot) -> dict[str, bytes]:
    banner = SYSLINUX_BANNER if boot is Boot.SYSLINUX else GRUB_LOADING
    marks = {"banner": banner.encode(), "kernel": KERNEL_BANNER.encode(), "/init": MARKER_START.encode()}
    if boot is not Boot.SYSLINUX:
        marks["grub"] = GRUB_BANNER.encode()
    return marks


def emu_command(image: Path) -> list[str]:
    return [
        sys.executable, "-m", "emu.cli", "run", "--backend", "unicorn", "--disk", f"{image},ro",
        "--mem", str(MEM_MIB), "--no-reboot", "--timeout", str(TIMEOUT_S),
    ]  # fmt: skip


def qemu_command(image: Path) -> list[str]:
    # snapshot=on: QEMU's IDE disks cannot be read-only; writes go to a temporary overlay.
    return [
        shutil.which(QEMU) or QEMU, "-accel", "tcg", "-m", str(MEM_MIB),
        "-drive", f"file={image},format=raw,if=ide,snapshot=on", "-nographic", "-no-reboot",
    ]  # fmt: skip


def cell(v: float) -> str:
    return f"{'-':>8}" if math.isnan(v) else f"{v:>8.2f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("-n", "--runs", type=int, default=1, help="runs per row; the best is printed (default 1)")
    args = p.parse_args()
    built = available(ensure_bootloader_images)
    if built is None:
        return 0
    have_qemu = shutil.which(QEMU) is not None
    rows: list[Row] = []
    for boot in Boot:
        rows.append(Row("emu unicorn", boot, emu_command(built[boot])))
        if have_qemu:
            rows.append(Row("qemu tcg seabios", boot, qemu_command(built[boot])))
    if not have_qemu:
        print(f"note: {QEMU} is not installed (apt-get install qemu-system-x86): emu rows only")

    print(host_line())
    print(f"guest: Linux {built.guest.version} + busybox initramfs, {MEM_MIB} MiB; syslinux "
          f"{built.syslinux_version}, GRUB {built.grub_version}")  # fmt: skip
    print(f"best of {args.runs} run(s); seconds of host wall-clock time from process start\n")
    header = f"{'tool':<18}{'image':<14}" + "".join(f"{c:>8}" for c in COLUMNS) + f"{'status':>8}"
    print(header)
    print("-" * len(header))
    results: dict[tuple[str, Boot], dict[str, float]] = {}
    for row in rows:
        runs = [time_boot(row.cmd, TIMEOUT_S + 30, marks_for(row.boot)) for _ in range(args.runs)]
        res = {c: best(runs, c) for c in COLUMNS}
        results[(row.tool, row.boot)] = res
        print(f"{row.tool:<18}{row.boot.value:<14}" + "".join(cell(res[c]) for c in COLUMNS)
              + f"{runs[-1]['status']:>8.0f}", flush=True)  # fmt: skip
    print()
    for boot in Boot:
        e, q = results.get(("emu unicorn", boot)), results.get(("qemu tcg seabios", boot))
        if e is None or q is None:
            continue
        ratios = [f"{c} {e[c] / q[c]:.2f}x" for c in ("banner", "kernel", "/init") if e[c] > 0 and q[c] > 0]
        print(f"{boot.value}: emu's time over QEMU's: {', '.join(ratios)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
