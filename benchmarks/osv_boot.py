#!/usr/bin/env python3
"""OSv and the first instruction: emu (Unicorn) and QEMU (TCG) side by side, in one run.

Two figures, host wall-clock seconds from process start:
- OSv's ramfs kernel (../shared/guests/osv/ramfs/loader-stripped.elf, `--rootfs=ramfs /hello`)
  to its "Hello from C code" line: emu through its 64-bit ELF entry with kvmclock, QEMU (-M pc,
  SeaBIOS loading the multiboot-less ELF through its PVH note) as the OSv README measured it;
- a 64 KiB firmware whose reset vector writes to the debug-exit port at once: the cost of
  starting the machine up to its first guest instruction, and of ending it (`--bios` for emu,
  `-bios` on QEMU's microvm, with isa-debug-exit).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.linux_qemu import QEMU, best, host_line, time_boot
from emu.tools.asm import assemble

OSV = Path(__file__).resolve().parents[2] / "shared" / "guests" / "osv" / "ramfs" / "loader-stripped.elf"
HELLO = b"Hello from C code"
EXIT_ROM = """
bits 16
org 0
times 0xfff0 - ($ - $$) db 0
    mov al, 0x10
    out 0xf4, al        ; debug-exit: status (0x10 << 1) | 1 = 33
    hlt
times 0x10000 - ($ - $$) db 0
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--runs", type=int, default=3, help="runs per row; the best is printed (default 3)")
    args = p.parse_args()
    qemu = shutil.which(QEMU)
    print(host_line())
    print(f"best of {args.runs} run(s); seconds of host wall-clock time from process start\n")
    with tempfile.TemporaryDirectory() as tmp:
        rom = Path(tmp) / "exit.rom"
        rom.write_bytes(assemble(EXIT_ROM, name="exit_rom"))
        emu = [sys.executable, "-m", "emu.cli", "run", "-q"]
        rows = []
        if OSV.is_file():
            osv_args = ["--rootfs=ramfs /hello"]
            rows.append(("OSv ramfs to Hello", "emu unicorn", [*emu, "--kernel", str(OSV), "--no-reboot",
                                                               "--cmdline", *osv_args]))  # fmt: skip
            if qemu:
                pc = [qemu, "-M", "pc", "-accel", "tcg", "-m", "256", "-display", "none", "-serial", "stdio",
                      "-no-reboot", "-nic", "none"]  # fmt: skip
                rows.append(("OSv ramfs to Hello", "qemu -M pc tcg", [*pc, "-kernel", str(OSV), "-append", *osv_args]))
        else:
            print(f"note: OSv's test guests are not beside this checkout ({OSV}): no OSv rows")
        rows.append(("first instruction", "emu unicorn", [*emu, "--bios", str(rom)]))
        if qemu:
            rows.append(("first instruction", "qemu microvm tcg",
                         [qemu, "-M", "microvm", "-accel", "tcg", "-m", "64", "-display", "none", "-nodefaults",
                          "-bios", str(rom), "-device", "isa-debug-exit,iobase=0xf4,iosize=4"]))  # fmt: skip
        else:
            print(f"note: {QEMU} is not installed (apt-get install qemu-system-x86): emu rows only")
        print(f"{'what':<22}{'tool':<20}{'Hello':>8}{'exit':>8}{'status':>8}{'RSS MiB':>9}")
        for what, tool, cmd in rows:
            runs = [time_boot(cmd, timeout=120, marks={"hello": HELLO}) for _ in range(args.runs)]
            hello = best(runs, "hello")
            print(f"{what:<22}{tool:<20}{hello:>8.2f}{best(runs, 'exit'):>8.2f}{runs[-1]['status']:>8.0f}"
                  f"{best(runs, 'rss_mib'):>9.0f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
