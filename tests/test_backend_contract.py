"""The Backend contract on every backend: stop/resume from another thread, and state that moves
between backends (a guest stopped under one continues under the other)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from guests.backends import BACKEND_PARAMS, require

from emu.backends.base import Backend, ExitKind
from emu.bus import Bus
from emu.config import BackendName
from emu.firmware.boot.flat import load_flat
from emu.machine import make_backend
from emu.memory import GuestMemory
from emu.tools.asm import assemble

COUNTER = 0x600

# Real mode -> 64-bit long mode, then count in memory forever (for stop/resume), or (MIGRATE)
# load SSE/GPR values, ask the host to stop at port 0x99, then report them (and the x87 control
# word) after the stop. (This host's nested KVM emulates ring-0 x87 instructions and cannot run
# fld/fstp, so x87 registers are moved by the host and compared through the state API.)
GUEST = """
%include "enter_long.inc"
org 0x8000
    ENTER_LONG_MODE 0x1000
%ifdef MIGRATE
    mov rax, 0x1122334455667788
    mov [0x710], rax
    movdqu xmm3, [0x710]               ; (this host's KVM emulates some ring-0 SSE: movdqu it knows)
    mov r13, 0xDEADBEEFCAFEF00D
    mov dx, 0x3F8
    out 0x99, al                       ; the host stops the CPU here and moves it
    mov al, '>'                        ; (a pause is not an end: this output must not be lost)
    out dx, al
    movdqu [0x720], xmm3
    mov rbx, [0x720]
    fnstcw [0x700]                     ; the x87 control word the host set before the move
    movzx rcx, word [0x700]
    mov dx, 0x3F8
    mov rdi, rbx
    call hex64
    mov rdi, rcx
    call hex64
    mov rdi, r13
    call hex64
    cli
    hlt
hex64:                                 ; print rdi as 16 hex digits and a newline
    mov rsi, 16
.digit:
    rol rdi, 4
    mov al, dil
    and al, 0xF
    add al, '0'
    cmp al, '9'
    jbe .out
    add al, 'a' - '0' - 10
.out:
    out dx, al
    dec rsi
    jnz .digit
    mov al, 10
    out dx, al
    ret
%else
.count:
    inc qword [COUNTER]
    jmp .count
%endif
    GDT_TABLE
"""


class StopPort:
    """Port 0x99: asks whichever backend is current to stop (as a debugger would)."""

    def __init__(self) -> None:
        self.backend: Backend | None = None

    def io_read(self, offset: int, size: int) -> int:
        return 0

    def io_write(self, offset: int, size: int, value: int) -> None:
        assert self.backend is not None
        self.backend.request_stop()


class Serial:
    def __init__(self) -> None:
        self.out = bytearray()

    def io_read(self, offset: int, size: int) -> int:
        return 0x60 if offset == 5 else 0

    def io_write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self.out.append(value)


def _image(migrate: bool) -> bytes:
    src = ("%define MIGRATE\n" if migrate else "") + f"%define COUNTER {COUNTER}\n" + GUEST
    name = "contract-migrate" if migrate else "contract-count"
    return assemble(src, name=name, include_dirs=(Path(__file__).parent / "guests",))


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_stop_and_resume_from_another_thread(backend: BackendName) -> None:
    require(backend)
    mem, bus = GuestMemory(8 << 20), Bus()
    be = make_backend(backend, mem, bus)
    try:
        be.set_state(load_flat(mem, _image(False), 0x8000))
        counts = []
        for _ in range(3):
            timer = threading.Timer(0.3, be.request_stop)
            timer.start()
            t0 = time.monotonic()
            exit_ = be.run()
            elapsed = time.monotonic() - t0
            timer.join()
            assert exit_.kind is ExitKind.INTERRUPTED
            assert elapsed < 2.0
            counts.append(mem.read_u64(COUNTER))
        # The guest kept counting across every stop and resume, in long mode.
        assert counts[0] > 0
        assert counts[0] < counts[1] < counts[2]
        assert be.get_state().mode.value == "long64"
    finally:
        be.close()
        mem.close()


@pytest.mark.parametrize(
    ("first", "second"), [(BackendName.KVM, BackendName.UNICORN), (BackendName.UNICORN, BackendName.KVM)]
)
def test_guest_moves_between_backends(first: BackendName, second: BackendName) -> None:
    """Run under one backend until the guest asks to stop, continue under the other."""
    require(BackendName.KVM)
    mem, bus = GuestMemory(8 << 20), Bus()
    stop, serial = StopPort(), Serial()
    bus.register_pio(0x99, 1, stop, "stop")
    bus.register_pio(0x3F8, 8, serial, "serial")
    a = make_backend(first, mem, bus)
    b = make_backend(second, mem, bus)
    try:
        a.set_state(load_flat(mem, _image(True), 0x8000))
        stop.backend = a
        assert a.run().kind is ExitKind.INTERRUPTED
        state = a.get_state()
        assert state.mode.value == "long64" and state.r13 == 0xDEADBEEFCAFEF00D
        pi80 = bytes.fromhex("35c26821a2da0fc90040")  # pi as an x87 80-bit value
        state.fpu.fcw, state.fpu.ftw = 0x27F, 0x01
        state.fpu.st = [pi80] + [bytes(10)] * 7
        a.set_state(state)
        state = a.get_state()
        b.set_state(state)
        moved = b.get_state()
        assert moved.fpu.xmm[3][:8] == (0x1122334455667788).to_bytes(8, "little")
        assert (moved.fpu.fcw, moved.fpu.st[0], moved.fpu.mxcsr) == (0x27F, pi80, state.fpu.mxcsr)
        assert (moved.cr0, moved.cr3, moved.cr4, moved.efer, moved.cs, moved.ss) == (
            state.cr0,
            state.cr3,
            state.cr4,
            state.efer,
            state.cs,
            state.ss,
        )
        stop.backend = b
        exit_ = b.run()
        assert exit_.kind is ExitKind.HALT, exit_.message
        lines = serial.out.decode().split()
        # xmm3, the x87 control word and r13 came across intact.
        assert lines == [">1122334455667788", "000000000000027f", "deadbeefcafef00d"]
    finally:
        a.close()
        b.close()
        mem.close()
