"""PVH direct boot (Xen's x86/HVM direct boot ABI, docs/misc/pvh.pandoc), as Firecracker does it.

The kernel is an ELF with an owner "Xen", type 18 (XEN_ELFNOTE_PHYS32_ENTRY) note; it is entered
in 32-bit protected mode with paging off and EBX pointing at struct hvm_start_info. The memory map
comes from the same E820 map as every other boot path.
"""

from __future__ import annotations

import struct

from emu import layout
from emu.cpu.state import CpuState
from emu.errors import EmuError
from emu.firmware.boot import entry
from emu.firmware.boot.elf import ElfKernel
from emu.firmware.boot.inputs import KernelInputs, StringArea, write_cmdline
from emu.firmware.boot.placement import LIMIT_4G, LoadPlan
from emu.firmware.tables.e820 import e820_map
from emu.memory import GuestMemory

START_MAGIC = 0x336E_C578
START_VERSION = 1  # version 1 adds memmap_paddr / memmap_entries
START_INFO = struct.Struct("<IIIIQQQQII")  # magic version flags nr_modules modlist cmdline rsdp memmap entries rsvd
START_INFO_RSDP = 32  # offset of rsdp_paddr in START_INFO
MODLIST_ENTRY = struct.Struct("<QQQQ")  # paddr size cmdline_paddr reserved
MEMMAP_ENTRY = struct.Struct("<QQII")  # addr size type reserved (type: E820 numbering)


def load(memory: GuestMemory, inp: KernelInputs, elf: ElfKernel) -> CpuState:
    if elf.pvh_entry is None:
        raise EmuError(f'{inp.what}: no PVH entry note (owner "Xen", type 18) in the ELF')
    if not elf.is_x86:
        raise EmuError(f"{inp.what}: a {elf.arch} ELF, not an x86 kernel")
    plan = LoadPlan(memory)
    elf.load(inp.kernel.data, plan, "kernel")
    if elf.end > LIMIT_4G:
        raise EmuError(f"{inp.what}: a PVH kernel must load below 4 GiB")
    if not elf.contains_physical(elf.pvh_entry):
        raise EmuError(f"{inp.what}: PVH entry {elf.pvh_entry:#x} is not inside any loaded segment")
    cmdline = inp.cmdline_bytes(inp.cmdline, layout.CMDLINE_MAX - 1, "emu's command line area")
    placed = inp.place_modules(plan, LIMIT_4G, include_modules=True)

    max_mods = (layout.PVH_MEMMAP_ADDR - layout.PVH_MODLIST_ADDR) // MODLIST_ENTRY.size
    if len(placed) > max_mods:
        raise EmuError(f"{len(placed)} modules given; the PVH module list holds {max_mods}")
    strings = StringArea(memory)
    modlist = b"".join(MODLIST_ENTRY.pack(p.addr, p.size, strings.add(str(p.file.path)), 0) for p in placed)
    memory.write(layout.PVH_MODLIST_ADDR, modlist)
    e820 = e820_map(memory)
    memory.write(layout.PVH_MEMMAP_ADDR, b"".join(MEMMAP_ENTRY.pack(e.addr, e.size, e.type, 0) for e in e820))
    info = START_INFO.pack(
        START_MAGIC, START_VERSION, 0, len(placed), layout.PVH_MODLIST_ADDR if placed else 0,
        write_cmdline(memory, cmdline), 0, layout.PVH_MEMMAP_ADDR, len(e820), 0,
    )  # fmt: skip
    memory.write(layout.BOOT_INFO_ADDR, info)

    s = entry.protected_mode_state(memory, entry.GDT_FLAT32, elf.pvh_entry)
    s.rbx = layout.BOOT_INFO_ADDR
    return s
