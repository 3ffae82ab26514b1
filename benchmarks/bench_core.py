#!/usr/bin/env python3
"""Benchmark of emu's machine core (prints figures; not a test).

1. Guest instructions per second of a 64-bit register loop under emu's Unicorn backend (all of
   emu's hooks installed, run through Machine) versus bare Unicorn with no hooks.
2. Cost of one port-I/O exit on each backend, in microseconds of wall time per `out`.
3. Cost of one local APIC timer interrupt: a periodic timer with the shortest period, the CPU
   waiting in `sti; hlt` for each one; wall time per interrupt (Unicorn: emu's local APIC, its
   timer on the TimerQueue, delivery in Python; KVM: the in-kernel APIC).

Timing inside the guest run uses serial markers: the guest writes 'S' before and 'E' after the
measured part, and the host timestamps each byte as it arrives, so start-up is not counted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import unicorn
from unicorn import x86_const as X

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emu.backends.base import BackendUnavailable
from emu.config import BackendName, MachineConfig
from emu.errors import HostError
from emu.machine import Machine
from emu.tools.asm import assemble

LOOP_BODY = """
    mov rcx, {n}
.loop:
    add rax, rcx
    dec rcx
    jnz .loop
"""
INSNS_PER_ITER = 3
GUESTS = Path(__file__).resolve().parents[1] / "tests" / "guests"

# Real mode -> long mode (tests/guests/enter_long.inc), then the measured part.
GUEST = """
%include "enter_long.inc"
org 0x8000
    ENTER_LONG_MODE 0x10000
    mov dx, 0x3F8
    mov al, 'S'
    out dx, al
{body}
    mov dx, 0x3F8
    mov al, 'E'
    out dx, al
    cli
    hlt
    GDT_TABLE
"""

OUT_BODY = """
    mov rcx, {n}
    mov dx, 0x80
.loop:
    out dx, al
    dec rcx
    jnz .loop
"""


# The local APIC timer at its shortest period (initial count 1, divide by 1): each interrupt
# costs what the machine takes to deliver it, not the period. Built on the APIC snippets' long-mode
# set-up (tests/guests/snippets/apic.inc).
LAPIC_GUEST = """
%include "lib.inc"
%include "apic.inc"
%define COUNT VARS + 0x00
    SNIPPET_START
    ENTER_LONG_APIC
    SET_GATE 0x40, tick
    call lapic_enable
    mov qword [COUNT], 0
    mov dword [LAPIC + APIC_TDCR], 0xB
    mov dword [LAPIC + APIC_LVTT], LVT_PERIODIC | 0x40
    mov dx, 0x3F8
    mov al, 'S'
    out dx, al
    mov dword [LAPIC + APIC_TMICT], 1
.wait:
    sti
    hlt
    cli
    cmp qword [COUNT], {n}
    jb .wait
    mov dword [LAPIC + APIC_TMICT], 0
    mov dx, 0x3F8
    mov al, 'E'
    out dx, al
    HALT
tick:
    inc qword [COUNT]
    mov dword [LAPIC + APIC_EOI], 0
    iretq
    APIC_GUEST_END
"""
SNIPPETS = GUESTS / "snippets"


class Marks:
    def __init__(self) -> None:
        self.t: dict[int, float] = {}

    def __call__(self, data: bytes) -> None:
        now = time.perf_counter()
        for b in data:
            self.t.setdefault(b, now)

    def span(self) -> float:
        return self.t[ord("E")] - self.t[ord("S")]


def run_emu(body: str, backend: BackendName, tmp: Path, *, source: str | None = None) -> float:
    """Seconds between the guest's S and E markers; `source`: a whole guest instead of `body`
    inside the register-loop frame."""
    image = tmp / f"bench-{abs(hash((body, source)))}.bin"
    if source is None:
        image.write_bytes(assemble(GUEST.format(body=body), name="bench", include_dirs=(GUESTS,)))
    else:
        image.write_bytes(assemble(source, name="bench_lapic", include_dirs=(SNIPPETS, GUESTS)))
    marks = Marks()
    m = Machine(MachineConfig(backend=backend, mem=32 << 20, image=image, load_addr=0x8000, timeout=600),
                serial_sinks=[marks])  # fmt: skip
    try:
        r = m.run()
    finally:
        m.close()
    if r.status != 0 or ord("E") not in marks.t:
        raise RuntimeError(f"benchmark guest failed: {r.reason}")
    return marks.span()


def run_bare_unicorn(n: int) -> float:
    """The same loop on a bare Unicorn engine: no hooks, no emu."""
    code = assemble("bits 64\n" + LOOP_BODY.format(n=n) + "    hlt\n", name="bare")
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    uc.mem_map(0, 2 << 20)
    uc.mem_write(0x1000, code)
    uc.reg_write(X.UC_X86_REG_RSP, 0x8000)
    t0 = time.perf_counter()
    uc.emu_start(0x1000, 0x1000 + len(code))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=100_000_000, help="compute loop iterations")
    ap.add_argument("--outs", type=int, default=200_000, help="port writes under Unicorn")
    ap.add_argument("--kvm-outs", type=int, default=20_000, help="port writes under KVM (slow nested KVM here)")
    ap.add_argument("--ticks", type=int, default=20_000, help="local APIC timer interrupts under Unicorn")
    ap.add_argument("--kvm-ticks", type=int, default=2_000, help="local APIC timer interrupts under KVM")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(__file__).resolve().parents[1] / ".cache" / "bench"
    tmp.mkdir(parents=True, exist_ok=True)

    n = args.iterations
    insns = n * INSNS_PER_ITER
    bare = min(run_bare_unicorn(n) for _ in range(args.repeat))
    emu = min(run_emu(LOOP_BODY.format(n=n), BackendName.UNICORN, tmp) for _ in range(args.repeat))
    print(f"compute loop, {insns / 1e6:.0f} M guest instructions (best of {args.repeat}):")
    print(f"  bare unicorn {unicorn.__version__} (no hooks) : {insns / bare / 1e6:8.1f} M instr/s  ({bare:.3f} s)")
    print(f"  emu --backend unicorn           : {insns / emu / 1e6:8.1f} M instr/s  ({emu:.3f} s)")
    print(f"  emu machinery overhead          : {100 * (emu - bare) / bare:+8.1f} %  (target < 10 %)")

    print("port-I/O exit cost (out dx, al to the POST-code port 0x80):")
    u = min(run_emu(OUT_BODY.format(n=args.outs), BackendName.UNICORN, tmp) for _ in range(args.repeat))
    print(f"  unicorn : {1e6 * u / args.outs:8.2f} us per exit  ({args.outs} exits)")
    try:
        k = min(run_emu(OUT_BODY.format(n=args.kvm_outs), BackendName.KVM, tmp) for _ in range(args.repeat))
        print(f"  kvm     : {1e6 * k / args.kvm_outs:8.2f} us per exit  ({args.kvm_outs} exits)")
    except (HostError, BackendUnavailable) as e:
        print(f"  kvm     : not measured: {e}")

    print("local APIC timer interrupt (periodic, shortest period, each one waking `hlt`):")
    for backend, n in ((BackendName.UNICORN, args.ticks), (BackendName.KVM, args.kvm_ticks)):
        try:
            t = min(run_emu("", backend, tmp, source=LAPIC_GUEST.format(n=n)) for _ in range(args.repeat))
            print(f"  {backend.value:7} : {1e6 * t / n:8.2f} us per interrupt  ({n} interrupts)")
        except (HostError, BackendUnavailable) as e:
            print(f"  {backend.value:7} : not measured: {e}")


if __name__ == "__main__":
    main()
