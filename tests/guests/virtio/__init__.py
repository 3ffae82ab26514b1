"""The project's virtio test guests (nasm sources here, booted with --kernel) and a small Python
virtio-mmio driver (driver.py) for the unit tests."""

from __future__ import annotations

from pathlib import Path

from emu.tools.asm import assemble

VIRTIO = Path(__file__).parent
KERNELS = VIRTIO.parent / "kernels"
SNIPPETS = VIRTIO.parent / "snippets"


def build(name: str) -> bytes:
    """Assemble tests/guests/virtio/<name>.asm into a vmlinux-shaped ELF (cached by content)."""
    return assemble(
        (VIRTIO / f"{name}.asm").read_text(), name=f"virtio-{name}", include_dirs=(VIRTIO, KERNELS, SNIPPETS)
    )
