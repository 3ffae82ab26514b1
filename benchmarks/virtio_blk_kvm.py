#!/usr/bin/env python3
"""Per-request cost of virtio-blk under KVM: the synchronous exit path against ioeventfd/irqfd
and the device thread (emu/devices/virtio/device_thread.py).

The guest (tests/guests/virtio/slow.asm with REQUESTS defined) sends one-sector reads one at a
time over virtio-mmio and spins on the used ring between them. Two runs per mode, SMALL and LARGE
requests; the difference divided by LARGE - SMALL removes boot and set-up. Reported per request:
wall time (the guest's latency), userspace exits and the host time the vCPU thread spends in
them (time the guest cannot run), host time the device thread spends serving the queue, and the
guest's spin-loop iterations while it waits (guest work the vCPU did meanwhile). On this
project's nested PVM host every exit and guest instruction is slow: compare the modes, not hosts.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from guests.virtio import KERNELS, SNIPPETS, VIRTIO  # noqa: E402

from emu.backends.kvm.backend import KvmBackend  # noqa: E402
from emu.config import BackendName, DiskSpec, MachineConfig, VirtioTransport  # noqa: E402
from emu.devices.virtio.device import VirtioDevice  # noqa: E402
from emu.machine import Machine  # noqa: E402
from emu.tools.asm import assemble  # noqa: E402

SMALL, LARGE = 20, 220
DONE_STATUS = (0x10 << 1) | 1


def guest(requests: int) -> bytes:
    source = f"%define REQUESTS {requests}\n" + (VIRTIO / "slow.asm").read_text()
    return assemble(source, name=f"virtio-slow-{requests}", include_dirs=(VIRTIO, KERNELS, SNIPPETS))


class Probe:
    """Host time in the vCPU thread's exit handlers and in the device thread's queue service."""

    def __init__(self) -> None:
        self.exits = 0
        self.exit_ns = 0
        self.serve_ns = 0

    def install(self) -> None:
        probe = self
        for name in ("_do_mmio", "_do_io"):
            original = getattr(KvmBackend, name)

            def timed(backend: KvmBackend, original: Callable[[KvmBackend], None] = original) -> None:
                t = time.perf_counter_ns()
                original(backend)
                probe.exit_ns += time.perf_counter_ns() - t
                probe.exits += 1

            setattr(KvmBackend, name, timed)
        serve = VirtioDevice.serve

        def served(dev: VirtioDevice, index: int) -> None:
            t = time.perf_counter_ns()
            serve(dev, index)
            probe.serve_ns += time.perf_counter_ns() - t

        VirtioDevice.serve = served  # type: ignore[method-assign]


PROBE = Probe()


def run(kernel: Path, disk: Path) -> tuple[float, ...]:
    """(wall s, exits, s in exit handlers, s serving queues on the device thread, guest spins)."""
    cfg = MachineConfig(backend=BackendName.KVM, mem=64 << 20, kernel=kernel, cmdline="console=ttyS0",
                        disks=[DiskSpec(disk, transport=VirtioTransport.MMIO)], timeout=300)  # fmt: skip
    before = (PROBE.exits, PROBE.exit_ns, PROBE.serve_ns)
    with Machine(cfg) as m:
        t0 = time.monotonic()
        result = m.run()
        wall = time.monotonic() - t0
    serial = result.serial.decode(errors="replace")
    found = re.search(r"count=([0-9a-f]{16})", serial)
    if result.status != DONE_STATUS or found is None:
        sys.exit(f"guest failed: {result.reason}\n{serial}")
    exits, exit_ns, serve_ns = (
        a - b for a, b in zip((PROBE.exits, PROBE.exit_ns, PROBE.serve_ns), before, strict=True)
    )
    return wall, exits, exit_ns / 1e9, serve_ns / 1e9, int(found[1], 16)


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        print("skipped: /dev/kvm is not usable")
        return 0
    PROBE.install()
    with tempfile.TemporaryDirectory(prefix="emu-bench-kvm-") as tmp:
        disk = Path(tmp) / "disk.img"
        disk.write_bytes(bytes(64 * 512))
        kernels = {}
        for n in (SMALL, LARGE):
            kernels[n] = Path(tmp) / f"slow-{n}.elf"
            kernels[n].write_bytes(guest(n))
        print(f"per request ({LARGE} - {SMALL} one-sector reads over virtio-mmio, boot subtracted):")
        header = (
            f"{'mode':<22}{'wall us':>9}{'exits':>7}{'vCPU in exits us':>18}{'device thread us':>18}{'guest spins':>13}"
        )
        print(header)
        print("-" * len(header))
        for mode, eventfds in (("synchronous exits", False), ("ioeventfd + irqfd", True)):
            KvmBackend.use_eventfds = eventfds
            small, large = run(kernels[SMALL], disk), run(kernels[LARGE], disk)
            wall, exits, in_exits, serving, spins = (
                (b - a) / (LARGE - SMALL) for a, b in zip(small, large, strict=True)
            )
            print(
                f"{mode:<22}{wall * 1e6:>9.0f}{exits:>7.1f}{in_exits * 1e6:>18.0f}{serving * 1e6:>18.0f}{spins:>13.0f}"
            )
        KvmBackend.use_eventfds = True
    return 0


if __name__ == "__main__":
    sys.exit(main())
