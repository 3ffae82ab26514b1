"""What the tests of the two virtio-blk guests share (blk.asm over virtio-mmio in
tests/test_virtio_guest.py, blk_pci.asm over virtio-pci in tests/test_pci_virtio.py): the kernel
and disk image fixtures and what the guests leave in the image."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from guests.virtio import build

DONE_STATUS = (0x10 << 1) | 1  # the guests write 0x10 to the debug-exit port when they finish
SECTORS = 64
SECTOR1 = b"emu virtio sector one\0"


def sector2_written() -> bytes:
    """Sector 2 as the guests write it: byte i = i ^ 0x5A, then their line over the start."""
    data = bytearray((i ^ 0x5A) & 0xFF for i in range(512))
    text = b"written by the virtio-blk guest\n\0"
    data[: len(text)] = text
    return bytes(data)


def kernel_fixture(name: str) -> Callable[..., Path]:
    """A module-scoped `kernel` fixture: tests/guests/virtio/<name>.asm built into an ELF file."""

    @pytest.fixture(scope="module", name="kernel")
    def kernel(tmp_path_factory: pytest.TempPathFactory) -> Path:
        path = tmp_path_factory.mktemp(f"virtio-{name}") / f"{name}.elf"
        path.write_bytes(build(name))
        return path

    return kernel


@pytest.fixture(name="image")
def image_fixture(tmp_path: Path) -> Path:
    """A zeroed SECTORS-sector disk image with SECTOR1's line at sector 1."""
    data = bytearray(SECTORS * 512)
    data[512 : 512 + len(SECTOR1)] = SECTOR1
    path = tmp_path / "disk.img"
    path.write_bytes(data)
    return path


def assert_only_sector2_written(image: Path) -> None:
    """The guest wrote sector 2 and left the rest of the image as write_image made it."""
    data = image.read_bytes()
    assert data[1024:1536] == sector2_written()
    assert data[512 : 512 + len(SECTOR1)] == SECTOR1 and data[1536:] == bytes(len(data) - 1536)
