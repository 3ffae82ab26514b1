#!/usr/bin/env python3
"""Sequential read throughput of a 64 MiB virtio-blk disk inside Linux: emu (Unicorn, virtio-pci)
and QEMU TCG (`-M pc`, `-drive if=virtio`) side by side, in one run, plus emu's cost per request.

The same Debian cloud kernel, an initramfs that loads virtio_pci and virtio_blk (built from the
kernel .deb like tests/guests/virtio/linux.py), the same disk image and memory. The guest drops
its page cache and runs `dd if=/dev/vda of=/dev/null bs=1M` RUNS times, timing each by
/proc/uptime (the guest's clock, host time on both tools). emu runs in this process so the
device's notify path can be timed: host microseconds per request (pop, host read, copy into
guest RAM, push, interrupt) and the requests' share of the guest's dd time.

QEMU on microvm would expose the disk over virtio-mmio, which Debian's kernel cannot find from
its command line, hence `-M pc` (a transitional virtio-blk-pci device, as emu's `transport=pci`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from guests.virtio.linux import INIT_HEAD, MODULES, build_initramfs  # noqa: E402

from benchmarks.linux_qemu import QEMU, available, default_cmdline, host_line  # noqa: E402
from emu.config import BackendName, BootKind, DiskSpec, MachineConfig, VirtioTransport  # noqa: E402
from emu.devices.diskimage import DiskImage  # noqa: E402
from emu.devices.virtio.device import VirtioDevice  # noqa: E402
from emu.machine import Machine  # noqa: E402
from emu.tools.guests import LinuxGuest, ensure_linux_guest  # noqa: E402

DISK_MIB = 64
MEM_MIB = 256
RUNS = 3
BENCH_INIT = rf"""{INIT_HEAD}for m in {" ".join(Path(m).name for m in MODULES)}; do insmod /lib/modules/$m; done
n=0
while [ ! -b /dev/vda ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
echo "BENCH-SECTORS $(cat /sys/block/vda/size)"
for run in $(seq {RUNS}); do
    sync; echo 3 > /proc/sys/vm/drop_caches
    t0=$(cut -d' ' -f1 /proc/uptime)
    dd if=/dev/vda of=/dev/null bs=1048576 2>/dev/null
    t1=$(cut -d' ' -f1 /proc/uptime)
    echo "BENCH-DD $run $t0 $t1"
done
poweroff -f
"""
APPLETS = ("sh", "mount", "insmod", "cat", "sleep", "dd", "sync", "poweroff", "cut", "seq", "echo")
DD_RE = re.compile(r"BENCH-DD (\d+) ([\d.]+) ([\d.]+)")


def dd_seconds(console: str) -> list[float]:
    return [float(t1) - float(t0) for _, t0, t1 in DD_RE.findall(console)]


class NotifyTimer:
    """Wraps VirtioDevice.notify (host time, count) and DiskImage.read (bytes read for the guest)."""

    def __init__(self) -> None:
        self.ns = 0
        self.notifies = 0
        self.bytes = 0

    def install(self) -> None:
        original = VirtioDevice.notify
        disk_read = DiskImage.read
        timer = self

        def counted(disk: DiskImage, sector: int, count: int) -> bytes:
            data = disk_read(disk, sector, count)
            timer.bytes += len(data)
            return data

        DiskImage.read = counted  # type: ignore[method-assign]

        def timed(dev: VirtioDevice, index: int) -> None:
            t = time.perf_counter_ns()
            original(dev, index)
            timer.ns += time.perf_counter_ns() - t
            timer.notifies += 1

        VirtioDevice.notify = timed  # type: ignore[method-assign]


def run_emu(guest: LinuxGuest, initrd: Path, disk: Path) -> tuple[list[float], float, dict[str, float]]:
    timer = NotifyTimer()
    timer.install()
    cfg = MachineConfig(
        backend=BackendName.UNICORN, mem=MEM_MIB << 20, kernel=guest.vmlinux, boot=BootKind.PVH, initrd=initrd,
        cmdline="console=ttyS0 panic=-1", disks=[DiskSpec(disk, readonly=True, transport=VirtioTransport.PCI)],
        no_reboot=True, timeout=600,
    )  # fmt: skip
    t0 = time.monotonic()
    with Machine(cfg) as m:
        result = m.run()
        blk = m.virtio[0].device
        requests = getattr(blk, "requests", 0)
    wall = time.monotonic() - t0
    console = result.serial.decode(errors="replace")
    if result.status != 0 or not DD_RE.search(console):
        sys.exit(f"emu run failed ({result.reason}):\n{console[-2000:]}")
    stats = {"requests": requests, "notify_ns": timer.ns, "notifies": timer.notifies, "bytes": timer.bytes}
    return dd_seconds(console), wall, stats


def run_qemu(guest: LinuxGuest, initrd: Path, disk: Path) -> tuple[list[float], float]:
    cmd = [
        shutil.which(QEMU) or QEMU, "-M", "pc", "-accel", "tcg", "-m", f"{MEM_MIB}M", "-nographic", "-no-reboot",
        "-kernel", str(guest.bzimage), "-initrd", str(initrd), "-append", default_cmdline(),
        "-drive", f"file={disk},if=virtio,format=raw,readonly=on",
    ]  # fmt: skip
    t0 = time.monotonic()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace", timeout=600)
    wall = time.monotonic() - t0
    if not DD_RE.search(p.stdout):
        sys.exit(f"QEMU run failed (status {p.returncode}):\n{p.stdout[-2000:]}{p.stderr[-1000:]}")
    return dd_seconds(p.stdout), wall


def assets_for_bench() -> tuple[LinuxGuest, Path]:
    guest = ensure_linux_guest()
    return guest, build_initramfs(guest, "initramfs-bench-blk.cpio", BENCH_INIT, MODULES, APPLETS)


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    assets = available(assets_for_bench, FileNotFoundError)  # FileNotFoundError: no kernel .deb kept
    if assets is None:
        return 0
    guest, initrd = assets
    with tempfile.TemporaryDirectory(prefix="emu-bench-blk-") as tmp:
        disk = Path(tmp) / "disk.img"
        disk.write_bytes(os.urandom(DISK_MIB << 20))
        print(host_line())
        print(f"guest: Linux {guest.version}, {MEM_MIB} MiB, {DISK_MIB} MiB raw disk, dd bs=1M, {RUNS} runs "
              "(page cache dropped before each)\n")  # fmt: skip
        emu_dd, emu_wall, stats = run_emu(guest, initrd, disk)
        rows = [("emu unicorn (virtio-pci)", emu_dd, emu_wall)]
        if shutil.which(QEMU):
            qemu_dd, qemu_wall = run_qemu(guest, initrd, disk)
            rows.append(("qemu pc tcg (virtio-blk-pci)", qemu_dd, qemu_wall))
        else:
            print(f"note: {QEMU} is not installed: emu only")
    header = f"{'tool':<30}{'dd runs (s)':<22}{'best MiB/s':>11}{'process (s)':>13}"
    print(header)
    print("-" * len(header))
    best: dict[str, float] = {}
    for name, runs, wall in rows:
        rate = DISK_MIB / min(runs) if runs and min(runs) > 0 else float("nan")
        best[name] = rate
        print(f"{name:<30}{' '.join(f'{r:.2f}' for r in runs):<22}{rate:>11.1f}{wall:>13.1f}")
    requests, notify_ns = stats["requests"], stats["notify_ns"]
    total_dd = sum(emu_dd)
    print()
    print(f"emu: {requests:.0f} virtio-blk requests (boot included) in {stats['notifies']:.0f} notifies, "
          f"{stats['bytes'] / max(requests, 1) / 1024:.0f} KiB read per request on average; "
          f"{notify_ns / 1e3 / max(requests, 1):.0f} us of host time per request in the notify path "
          f"(pop, read, copy, push, interrupt); {notify_ns / 1e9:.2f} s in total, "
          f"{100 * notify_ns / 1e9 / total_dd:.0f}% of the guest's {total_dd:.2f} s of dd")  # fmt: skip
    if len(best) == 2:
        e, q = best.values()
        print(f"emu reads at {e:.1f} MiB/s, QEMU at {q:.1f} MiB/s: {q / e:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
