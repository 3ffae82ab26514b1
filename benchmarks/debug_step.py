#!/usr/bin/env python3
"""Single-steps per second: emu's headless debug session (Unicorn, KVM) against gdb stepping a QEMU
TCG guest through its gdbstub, on the same guest in one run.

The guest is one boot sector (built here with nasm): a real-mode loop of register and memory
instructions that never ends. Both sides boot it from a raw disk through their BIOS (emu's, and
SeaBIOS under `qemu-system-x86_64 -accel tcg -s -S`), run to 0000:7C00, and then single-step the
same loop:
- gdb: `gdb -batch` with `target remote`, `break *0x7c00`, `continue`, then `stepi N` (gdb sends
  one vCont;s and reads the registers back per instruction), timed with gdb's own Python.
- emu: `DebugSession.stepi(N)` (one call, every instruction checked: breakpoints, catches,
  history) and `stepi(1)` called N times (one command per instruction, as a user types them),
  each under Unicorn and under KVM.
gdb is installed with apt-get when missing (root only); QEMU must be installed. Runs are sequential.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.linux_qemu import QEMU
from emu.config import BackendName, DiskSpec, MachineConfig
from emu.debugger.session import DebugSession
from emu.tools.asm import assemble

LOOP = """\
    org 0x7c00
bits 16
    xor ax, ax
    mov ds, ax
    mov bx, 1
    mov cx, 3
again:
    inc word [0x600]
    add ax, bx
    xor bx, ax
    shl cx, 1
    mov dx, [0x600]
    add dx, cx
    jmp again
    times 510 - ($ - $$) db 0
    dw 0xAA55
"""


def ensure_gdb() -> str | None:
    gdb = shutil.which("gdb")
    if gdb is None and os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing gdb with apt-get (benchmark only) ...", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "gdb"], check=False, capture_output=True)
        gdb = shutil.which("gdb")
    return gdb


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gdb_qemu_rate(gdb: str, disk: Path, steps: int) -> float:
    port = free_port()
    qemu = subprocess.Popen(
        [QEMU, "-accel", "tcg", "-m", "64", "-display", "none", "-serial", "none", "-monitor", "none",
         "-drive", f"file={disk},format=raw,if=ide", "-gdb", f"tcp:127.0.0.1:{port}", "-S"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(0.5)
        cmds = [
            f"target remote 127.0.0.1:{port}", "break *0x7c00", "continue", "delete",
            "python import time; t0 = time.perf_counter()",
            f"stepi {steps}",
            f"python print('RATE', {steps} / (time.perf_counter() - t0))",
        ]  # fmt: skip
        args = [gdb, "-batch", "-nx"]
        for c in cmds:
            args += ["-ex", c]
        p = subprocess.run(args, capture_output=True, text=True, timeout=600)
        for line in p.stdout.splitlines():
            if line.startswith("RATE "):
                return float(line.split()[1])
        raise RuntimeError(f"gdb gave no rate:\n{p.stdout}\n{p.stderr}")
    finally:
        qemu.kill()
        qemu.wait()


def emu_rates(backend: BackendName, disk: Path, steps: int) -> tuple[float, float]:
    cfg = MachineConfig(backend=backend, disks=[DiskSpec(disk, readonly=True)])
    with DebugSession.open(cfg) as s:
        stop = s.until("0:7c00")
        assert s.state().flat_pc == 0x7C00, stop.message
        t0 = time.perf_counter()
        stop = s.stepi(steps)
        batch = steps / (time.perf_counter() - t0)
        assert stop.executed == steps, stop.message
        n = max(1, steps // 4)
        t0 = time.perf_counter()
        for _ in range(n):
            s.stepi()
        single = n / (time.perf_counter() - t0)
    return batch, single


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--steps", type=int, default=20000, help="single-steps per measurement (default 20000)")
    ap.add_argument("--backends", default="unicorn,kvm", help="emu backends to measure (default unicorn,kvm)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        disk = Path(tmp) / "loop.img"
        disk.write_bytes(assemble(LOOP, name="debug-step-loop"))
        rows: list[tuple[str, float]] = []
        gdb = ensure_gdb()
        if gdb is None or shutil.which(QEMU) is None:
            print(f"gdb+QEMU: skipped ({'gdb' if gdb is None else QEMU} is not installed)")
            ref = None
        else:
            ref = gdb_qemu_rate(gdb, disk, args.steps)
            rows.append(("gdb -batch stepi N, QEMU TCG gdbstub", ref))
        for name in args.backends.split(","):
            backend = BackendName(name)
            try:
                steps = args.steps if backend is BackendName.UNICORN else args.steps // 10  # KVM here is slow
                batch, single = emu_rates(backend, disk, steps)
            except Exception as e:  # e.g. no usable /dev/kvm: say so, keep the other rows
                print(f"emu {name}: skipped ({e})")
                continue
            rows.append((f"emu {name}: session.stepi(N)", batch))
            rows.append((f"emu {name}: session.stepi(1) per step", single))
    print(f"\nsingle-steps per second ({args.steps} steps; KVM rows {args.steps // 10}):")
    for label, rate in rows:
        rel = f"  {rate / ref:6.1f}x gdb+QEMU" if ref else ""
        print(f"  {label:<40} {rate:12,.0f}/s{rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
