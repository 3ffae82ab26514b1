"""Regression tests for the Unicorn engine hazards emu works around (docs/architecture/backends.md,
"Unicorn hazards"): each guest here went wrong before the workaround."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from emu.backends.base import ExitKind
from emu.backends.unicorn import UnicornBackend
from emu.bus import Bus
from emu.cpu.state import CpuState, Segment
from emu.firmware.boot.flat import load_flat
from emu.memory import GuestMemory
from emu.tools.asm import assemble

GUESTS = Path(__file__).parent / "guests"
COUNTER = 0x600
LOOPS = 3_000_000

# Long mode (paging on), then LOOPS read-modify-write instructions on two counters, then hlt.
COUNT_GUEST = f"""
%include "enter_long.inc"
org 0x8000
    ENTER_LONG_MODE 0x1000
    mov rcx, {LOOPS}
.loop:
    inc qword [{COUNTER}]
    add qword [{COUNTER + 8}], 3
    dec rcx
    jnz .loop
    hlt
    GDT_TABLE
"""


def load_count_guest(backend: UnicornBackend) -> None:
    image = assemble(COUNT_GUEST, name="engine-count", include_dirs=(GUESTS,))
    backend.set_state(load_flat(backend.memory, image, 0x8000))


@pytest.fixture
def backend() -> Iterator[UnicornBackend]:
    mem = GuestMemory(8 << 20)
    be = UnicornBackend(mem, Bus())
    yield be
    be.close()
    mem.close()


def test_stops_from_another_thread_never_repeat_an_instruction(backend: UnicornBackend) -> None:
    """Unicorn's own emu_stop from another thread re-ran `inc [mem]` after its store (hundreds
    of extra increments in a run like this one); emu's stops land between blocks."""
    load_count_guest(backend)
    done = threading.Event()
    stops = 0

    def stopper() -> None:
        nonlocal stops
        while not done.is_set():
            backend.request_stop()
            stops += 1
            time.sleep(0.0002)

    t = threading.Thread(target=stopper)
    t.start()
    runs = 0
    try:
        while (exit_ := backend.run()).kind is ExitKind.INTERRUPTED:
            runs += 1
    finally:
        done.set()
        t.join()
    assert exit_.kind is ExitKind.HALT, exit_.message
    assert runs > 20, "the guest was hardly interrupted: the test proves nothing"
    assert backend.memory.read_u64(COUNTER) == LOOPS
    assert backend.memory.read_u64(COUNTER + 8) == 3 * LOOPS


def test_cr2_survives_the_end_of_a_run_under_paging(backend: UnicornBackend) -> None:
    """With an exit address in use, every return from emu_start translated until-1 through the
    guest's page tables and left CR2 = 0xfffffffffffffffe behind (Linux saw bogus page faults)."""
    load_count_guest(backend)
    state = backend.get_state()
    state.cr2 = 0x1234_5000
    backend.set_state(state)
    t = threading.Timer(0.05, backend.request_stop)
    t.start()
    first = backend.run()
    t.join()
    assert first.kind is ExitKind.INTERRUPTED
    assert backend.get_state().cr2 == 0x1234_5000
    while (exit_ := backend.run()).kind is ExitKind.INTERRUPTED:
        pass
    assert exit_.kind is ExitKind.HALT
    after = backend.get_state()
    assert after.mode.value == "long64" and after.cr0 & 0x8000_0000
    assert after.cr2 == 0x1234_5000


def test_step_after_a_run_executes_one_instruction(backend: UnicornBackend) -> None:
    """Stepping through code that a normal run had already translated ran whole blocks."""
    # mov cx, 3 / inc ax / inc ax / inc word [0x500] / loop (to the second inc) / hlt
    code = bytes.fromhex("b903004040ff060005e2f9f4")
    backend.memory.write(0x7C00, code)
    state = CpuState()
    state.cs = Segment(selector=0, base=0, limit=0xFFFF, type=0xB, s=1, present=1)
    state.rip = 0x7C00
    backend.set_state(state)
    assert backend.run().kind is ExitKind.HALT
    assert backend.memory.read_u16(0x500) == 3
    state.rax = 0
    backend.set_state(state)
    trace = []
    for _ in range(6):
        assert backend.step().kind is ExitKind.DEBUG
        s = backend.get_state()
        trace.append((s.rip, s.rax & 0xFFFF, backend.memory.read_u16(0x500)))
    assert trace == [(0x7C03, 0, 3), (0x7C04, 1, 3), (0x7C05, 2, 3), (0x7C09, 2, 4), (0x7C04, 2, 4), (0x7C05, 3, 4)]
    # and a normal run after stepping finishes the loop at full speed
    assert backend.run().kind is ExitKind.HALT
    assert backend.memory.read_u16(0x500) == 6
