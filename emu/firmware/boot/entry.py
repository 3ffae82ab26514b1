"""The CPU state a directly-booted kernel starts in, and the GDT/IDT/page tables that state points at."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from emu import layout
from emu.cpu import x86
from emu.cpu.state import CpuState, DescriptorTable, Segment
from emu.memory import GuestMemory

# Descriptors (base 0; limit in 4 KiB units when G is set). The accessed bit is already set in
# every code/data descriptor, so the CPU never writes the GDT back when the kernel reloads a
# selector from it, and the TSS descriptors are busy, as TR requires.
CODE64 = x86.encode_descriptor(0, 0xFFFFF, 0x9B, 0xA)  # 0x00AF9B000000FFFF: L=1, G=1
CODE32 = x86.encode_descriptor(0, 0xFFFFF, 0x9B, 0xC)  # 0x00CF9B000000FFFF: D=1, G=1, 4 GiB
DATA32 = x86.encode_descriptor(0, 0xFFFFF, 0x93, 0xC)  # 0x00CF93000000FFFF
TSS_LONG = x86.encode_descriptor(0, 0xFFFFF, 0x8B, 0x8)  # 0x008F8B000000FFFF: Firecracker's, G=1
TSS32 = x86.encode_descriptor(0, 0x67, 0x8B, 0x0)  # 0x00008B0000000067: base 0, limit 0x67 (PVH ABI)


@dataclass(frozen=True)
class BootGdt:
    """A boot GDT and which of its selectors go into CS, the data segments and TR."""

    entries: tuple[int, ...]
    cs: int
    ds: int
    tr: int


# Firecracker's long-mode GDT (arch/x86_64/regs.rs): 0x08 code, 0x10 data, 0x18 TSS.
GDT_LONG = BootGdt((0, CODE64, DATA32, TSS_LONG), cs=0x08, ds=0x10, tr=0x18)
# Firecracker's PVH GDT, also used for multiboot (whose selectors the spec leaves open).
GDT_FLAT32 = BootGdt((0, CODE32, DATA32, TSS32), cs=0x08, ds=0x10, tr=0x18)
# Linux's 32-bit boot protocol requires __BOOT_CS = 0x10 and __BOOT_DS = 0x18; the TSS takes the
# otherwise unused 0x08 so the table still ends before the IDT at 0x520.
GDT_LINUX32 = BootGdt((0, TSS32, CODE32, DATA32), cs=0x10, ds=0x18, tr=0x08)

CR0_LONG = x86.Cr0.PE | x86.Cr0.ET | x86.Cr0.NE | x86.Cr0.PG
CR0_FLAT32 = x86.Cr0.PE | x86.Cr0.ET
PTE_PRESENT_RW = 0x3
PDE_2M_PAGE = 0x83  # present, writable, PS


def write_gdt_idt(memory: GuestMemory, gdt: BootGdt) -> None:
    assert layout.BOOT_GDT_ADDR + 8 * len(gdt.entries) <= layout.BOOT_IDT_ADDR
    memory.write(layout.BOOT_GDT_ADDR, struct.pack(f"<{len(gdt.entries)}Q", *gdt.entries))
    memory.write(layout.BOOT_IDT_ADDR, bytes(8))


def write_identity_page_tables(memory: GuestMemory) -> None:
    """PML4 -> PDPT -> PD with 512 2 MiB pages: virtual = physical for the first GiB."""
    memory.write(layout.BOOT_PML4_ADDR, struct.pack("<Q", layout.BOOT_PDPT_ADDR | PTE_PRESENT_RW) + bytes(4088))
    memory.write(layout.BOOT_PDPT_ADDR, struct.pack("<Q", layout.BOOT_PD_ADDR | PTE_PRESENT_RW) + bytes(4088))
    memory.write(layout.BOOT_PD_ADDR, struct.pack("<512Q", *((i << 21) | PDE_2M_PAGE for i in range(512))))


def _flat_state(memory: GuestMemory, gdt: BootGdt, rip: int, cr0: int) -> CpuState:
    write_gdt_idt(memory, gdt)
    s = CpuState()
    for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp"):
        setattr(s, name, 0)  # CpuState's RESET values (EDX = signature) mean nothing here
    s.rip = rip
    s.rflags = x86.FLAG_FIXED  # IF, TF, VM clear
    s.cs = Segment.from_descriptor(gdt.cs, gdt.entries[gdt.cs >> 3])
    for name in ("ds", "es", "fs", "gs", "ss"):
        setattr(s, name, Segment.from_descriptor(gdt.ds, gdt.entries[gdt.ds >> 3]))
    s.tr = Segment.from_descriptor(gdt.tr, gdt.entries[gdt.tr >> 3])
    s.gdt = DescriptorTable(layout.BOOT_GDT_ADDR, 8 * len(gdt.entries) - 1)
    s.idt = DescriptorTable(layout.BOOT_IDT_ADDR, 7)
    s.cr0 = cr0  # CD/NW clear: caches on, as firmware would leave them
    return s  # FPU: FCW 0x37F, MXCSR 0x1F80 (the CpuState defaults, as Firecracker sets them)


def long_mode_state(memory: GuestMemory, entry: int, zero_page: int) -> CpuState:
    """Firecracker's 64-bit Linux entry: paging on with the identity map, RSI = zero page."""
    write_identity_page_tables(memory)
    s = _flat_state(memory, GDT_LONG, entry, CR0_LONG)
    s.cr3 = layout.BOOT_PML4_ADDR
    s.cr4 = x86.Cr4.PAE
    s.efer = x86.Efer.LME | x86.Efer.LMA
    s.rsi = zero_page
    s.rsp = s.rbp = layout.BOOT_STACK_TOP
    return s


def protected_mode_state(memory: GuestMemory, gdt: BootGdt, entry: int) -> CpuState:
    """32-bit flat protected mode, paging off, interrupts off; callers set the protocol's registers."""
    s = _flat_state(memory, gdt, entry, CR0_FLAT32)
    s.cr3 = s.cr4 = s.efer = 0
    return s
