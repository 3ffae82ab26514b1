"""A guest-requested reset reboots the whole machine: memory, the CPU and the interrupt
controllers (KVM's in-kernel ones included) come back at their power-on state."""

from __future__ import annotations

from pathlib import Path

import pytest
from guests.backends import BACKEND_PARAMS, require
from guests.cli import emu_run

from emu.config import BackendName
from emu.tools.asm import assemble

# Boot 1 notes the master PIC's mask register in CMOS (battery-backed, survives the reset),
# changes it and resets through the keyboard controller. Boot 2 compares the mask with the note.
GUEST = """
bits 16
org 0x7C00
    mov al, 0x40
    out 0x70, al
    in al, 0x71
    cmp al, 0xA5
    je second
    in al, 0x21                 ; power-on IMR
    mov bl, al
    mov al, 0x41
    out 0x70, al
    mov al, bl
    out 0x71, al
    mov al, 0x40
    out 0x70, al
    mov al, 0xA5
    out 0x71, al
    mov al, 0x5A                ; OCW1: a mask no power-on state has
    out 0x21, al
    mov al, 0xFE                ; pulse the reset line
    out 0x64, al
    cli
    hlt
second:
    mov al, 0x40                ; forget the mark
    out 0x70, al
    xor al, al
    out 0x71, al
    mov al, 0x41
    out 0x70, al
    in al, 0x71
    mov bl, al
    in al, 0x21
    mov si, same
    cmp al, bl
    je print
    mov si, differs
print:
    mov dx, 0x3F8
.next:
    lodsb
    test al, al
    jz .done
    out dx, al
    jmp .next
.done:
    cli
    hlt
same: db "IMR at power-on again", 10, 0
differs: db "IMR kept across the reset", 10, 0
"""


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_reset_restores_the_interrupt_controllers(backend: BackendName, tmp_path: Path) -> None:
    require(backend)
    image = tmp_path / "reboot.img"
    image.write_bytes(assemble(GUEST, name="reboot"))
    p = emu_run("--backend", backend.value, "--image", str(image), "--timeout", "20", timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "IMR at power-on again\n"
