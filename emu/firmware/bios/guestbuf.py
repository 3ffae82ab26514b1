"""Checked windows on guest RAM for services that transfer data on a caller's behalf."""

from __future__ import annotations

from emu.memory import GuestMemory


def ram_window(mem: GuestMemory, addr: int, size: int, *, writable: bool) -> memoryview | None:
    """The guest-physical range [addr, addr+size) as one view, or None when it is not entirely
    inside one RAM region (or, for `writable`, when it is in the read-only firmware ROM)."""
    if addr < 0 or size < 0:
        return None
    region = mem.region_of(addr, max(size, 1))
    if region is None or (writable and region.readonly):
        return None
    return mem.view(addr, size)


def real_address(segment: int, offset: int) -> int:
    """Linear address of segment:offset in real mode (no 1 MiB wrap: A20 is on for services)."""
    return ((segment & 0xFFFF) << 4) + (offset & 0xFFFF)
