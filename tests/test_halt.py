"""`cli; hlt` ends the run as halted for good (status 0) even while an interrupt is pending at the
8259: under Unicorn the interrupt-window poll used to race the hlt, and the guest ran on past it
until --timeout (status 124)."""

from __future__ import annotations

from pathlib import Path

import pytest
from guests.backends import BACKEND_PARAMS, require

from emu.config import BackendName, MachineConfig
from emu.errors import ExitStatus
from emu.machine import run_machine
from emu.tools.asm import assemble

GUEST = """
bits 16
org 0x8000
    cli
    mov al, 0x11            ; ICW1..4: master 8259 at vectors 0x20-0x27
    out 0x20, al
    mov al, 0x20
    out 0x21, al
    mov al, 4
    out 0x21, al
    mov al, 1
    out 0x21, al
    mov al, 0xEF            ; only IRQ 4 unmasked
    out 0x21, al
    mov dx, 0x3FC
    mov al, 0x08            ; MCR.OUT2: the UART's interrupt reaches IRQ 4
    out dx, al
    mov dx, 0x3F9
    mov al, 0x02            ; IER.THRE: asserted at once, the transmitter is empty
    out dx, al
    hlt
    mov dx, 0xF4            ; past the hlt: a debug-exit status that says so
    mov al, 0x21
    out dx, al
"""


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_cli_hlt_with_a_pending_interrupt_is_the_end(tmp_path: Path, backend: BackendName) -> None:
    require(backend)
    image = tmp_path / "clihlt.img"
    image.write_bytes(assemble(GUEST, name="cli_hlt_pending"))
    for _ in range(5):  # the race was lost most of the time: a few runs make it certain
        result = run_machine(MachineConfig(backend=backend, mem=8 << 20, image=image, load_addr=0x8000, timeout=20))
        assert result.status == ExitStatus.OK, result.reason
        assert result.reason == "guest halted with interrupts disabled"
