"""The E820 memory map: one map for every boot path (int 15h E820, zero page, PVH, multiboot)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from emu import layout
from emu.memory import GuestMemory


class E820Type(IntEnum):
    RAM = 1
    RESERVED = 2
    ACPI = 3
    NVS = 4
    UNUSABLE = 5


@dataclass(frozen=True)
class E820Entry:
    addr: int
    size: int
    type: E820Type

    @property
    def end(self) -> int:
        return self.addr + self.size

    def pack(self) -> bytes:
        """The 20-byte layout of boot_params.e820_table and int 15h E820."""
        return struct.pack("<QQI", self.addr, self.size, self.type)


def e820_map(memory: GuestMemory) -> list[E820Entry]:
    """RAM below the EBDA, the EBDA and BIOS area reserved, RAM from 1 MiB to the MMIO hole, the
    KVM private pages and the firmware ROM reserved, RAM above 4 GiB. Sorted, non-overlapping."""
    low_end = memory.low_ram_end
    entries = [
        E820Entry(0, layout.EBDA_START, E820Type.RAM),
        E820Entry(layout.EBDA_START, layout.REAL_MODE_END - layout.EBDA_START, E820Type.RESERVED),
        E820Entry(layout.BIOS_AREA_START, layout.BIOS_AREA_END - layout.BIOS_AREA_START, E820Type.RESERVED),
    ]
    if low_end > layout.HIGH_MEMORY:
        entries.append(E820Entry(layout.HIGH_MEMORY, low_end - layout.HIGH_MEMORY, E820Type.RAM))
    entries.append(
        E820Entry(
            layout.KVM_IDENTITY_MAP_ADDR,
            layout.KVM_PRIVATE_END - layout.KVM_IDENTITY_MAP_ADDR,
            E820Type.RESERVED,
        )
    )
    if memory.rom is not None and memory.rom.gpa >= layout.KVM_PRIVATE_END:
        entries.append(E820Entry(memory.rom.gpa, memory.rom.size, E820Type.RESERVED))
    for r in memory.ram_regions:
        if r.gpa >= layout.MMIO_HOLE_END:
            entries.append(E820Entry(r.gpa, r.size, E820Type.RAM))
    return sorted(entries, key=lambda e: e.addr)
