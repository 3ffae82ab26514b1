"""An uncompressed 64-bit Linux (vmlinux ELF), entered in long mode the way Firecracker does."""

from __future__ import annotations

from emu import layout
from emu.cpu.state import CpuState
from emu.errors import EmuError
from emu.firmware.boot import entry, zeropage
from emu.firmware.boot.elf import ElfKernel
from emu.firmware.boot.inputs import KernelInputs, write_cmdline
from emu.firmware.boot.placement import LoadPlan
from emu.firmware.tables.e820 import e820_map
from emu.memory import GuestMemory


def load(memory: GuestMemory, inp: KernelInputs, elf: ElfKernel) -> CpuState:
    if not elf.is_x86_64:
        raise EmuError(f"{inp.what}: a {elf.arch} ELF; the 64-bit Linux entry needs an x86-64 ELF64")
    plan = LoadPlan(memory)
    elf.load(inp.kernel.data, plan, "kernel")
    rip = elf.physical_entry(inp.what)
    if rip >= layout.BOOT_IDENTITY_MAP_END:
        raise EmuError(
            f"{inp.what}: entry point {rip:#x} is above the first GiB, which is all the boot page tables map"
        )
    cmdline = inp.cmdline_bytes(inp.cmdline, layout.CMDLINE_MAX - 1, "the Linux boot protocol")
    # No header means no initrd_addr_max: like Firecracker, the initrd goes at the top of low RAM.
    placed = inp.place_modules(plan, layout.MMIO_HOLE_START, include_modules=False)
    ramdisk = placed[0] if placed else None
    write_cmdline(memory, cmdline)
    memory.write(layout.ZERO_PAGE_ADDR, zeropage.build(e820_map(memory), len(cmdline), ramdisk))
    return entry.long_mode_state(memory, rip, layout.ZERO_PAGE_ADDR)
