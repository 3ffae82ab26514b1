"""The A20 gate masks physical address bit 20 while it is off (Unicorn; KVM cannot, as QEMU under
KVM cannot either: docs/architecture/platform.md). Both gates a PC has are exercised: port 0x92 and the
keyboard controller's output port."""

from __future__ import annotations

from pathlib import Path

from guests.cli import emu_run

from emu.tools.asm import assemble

GUEST = """
bits 16
org 0x7C00
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7C00
    mov ax, 0xFFFF
    mov es, ax
    mov byte [0x600], 'a'          ; physical 0x000600
    mov byte [es:0x610], 'b'       ; physical 0x100600: the same byte when bit 20 is masked
    call show                      ; A20 on at power-on (i8042 output port): b
    in al, 0x92                    ; port 0x92 bit 1 on, then off: the last change wins, as in
    or al, 2                       ; QEMU (port 0x92 reads 0 at power-on, so clearing it alone
    out 0x92, al                   ; would change nothing)
    and al, ~2
    out 0x92, al
    call show                      ; a
    or al, 2
    out 0x92, al
    call show                      ; b
    mov al, 0xD1                   ; write the i8042 output port: A20 (bit 1) off
    out 0x64, al
    mov al, 0xCD
    out 0x60, al
    call show                      ; a
    mov byte [es:0x610], 'c'       ; a write through the wrapped address lands at 0x600
    mov al, 0xD1
    out 0x64, al
    mov al, 0xCF                   ; A20 on again
    out 0x60, al
    call show                      ; b
    mov al, [0x600]
    call putc                      ; c
    mov al, 10
    call putc
    cli
    hlt
show:
    push ax
    mov al, [es:0x610]
    call putc
    pop ax
    ret
putc:
    push dx
    mov dx, 0x3F8
    out dx, al
    pop dx
    ret
"""


def test_a20_gates_mask_bit_20_under_unicorn(tmp_path: Path) -> None:
    image = tmp_path / "a20.img"
    image.write_bytes(assemble(GUEST, name="a20"))
    p = emu_run("--backend", "unicorn", "--image", str(image), "--timeout", "20", timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "babab" + "c\n"
