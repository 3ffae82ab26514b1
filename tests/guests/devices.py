"""Test-only devices that guests exercise, registered on a Machine's bus before it runs."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from emu import layout


@dataclass(frozen=True)
class MmioAccess:
    op: str  # "r" or "w"
    offset: int
    size: int
    value: int

    def __str__(self) -> str:
        return f"{self.op} +{self.offset:#x}/{self.size} = {self.value:#0{2 + 2 * self.size}x}"


class ScratchMmio:
    """Four 32-bit read/write registers (16 bytes, little-endian) that log every access in order.

    Accesses of any width go to the underlying bytes, so a byte written at +0 reads back as the
    low byte of register 0. Bytes past the end (an access straddling it) read as all-ones.
    """

    # In the MMIO hole, where the guest finds no RAM: virtio-mmio's window, free in the machines
    # these tests build (no virtio device). tests/guests/snippets/mmio.asm has the same address.
    BASE = layout.VIRTIO_MMIO_BASE
    SIZE = 16

    def __init__(self) -> None:
        self.regs = bytearray(self.SIZE)
        self.log: list[MmioAccess] = []
        self._lock = threading.Lock()  # the vCPU thread calls us; the test thread reads the log

    def mmio_read(self, offset: int, size: int) -> int:
        with self._lock:
            data = bytes(self.regs[offset : offset + size]).ljust(size, b"\xff")
            value = int.from_bytes(data, "little")
            self.log.append(MmioAccess("r", offset, size, value))
            return value

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            self.log.append(MmioAccess("w", offset, size, value))
            data = value.to_bytes(size, "little")[: max(0, self.SIZE - offset)]
            self.regs[offset : offset + len(data)] = data

    def accesses(self) -> list[MmioAccess]:
        with self._lock:
            return list(self.log)
