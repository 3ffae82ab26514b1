"""Linear → physical translation by walking the guest's page tables (32-bit, PAE, 4-level).

Used by emu's own interrupt delivery (which must push onto the guest's stack and read its IDT
through paging) and by the debugger's translate view; it returns every level it visited.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from emu.cpu import x86

PTE_P = 1 << 0
PTE_W = 1 << 1
PTE_U = 1 << 2
PTE_PS = 1 << 7
PTE_NX = 1 << 63
ADDR_MASK = 0x000F_FFFF_FFFF_F000

# #PF error code bits
PF_P = 1 << 0
PF_W = 1 << 1
PF_U = 1 << 2
PF_RSVD = 1 << 3
PF_I = 1 << 4


class PhysReader(Protocol):
    def read_u32(self, gpa: int) -> int: ...
    def read_u64(self, gpa: int) -> int: ...


class PageFault(Exception):
    def __init__(self, linear: int, error_code: int, reason: str) -> None:
        super().__init__(f"#PF at {linear:#x} (error code {error_code:#x}): {reason}")
        self.linear = linear
        self.error_code = error_code
        self.reason = reason


@dataclass
class WalkStep:
    level: str  # "PML4", "PDPT", "PD", "PT" (or "PDE"/"PTE" for 32-bit paging)
    table: int  # physical address of the table
    index: int
    entry: int


@dataclass
class Walk:
    linear: int
    physical: int | None
    steps: list[WalkStep] = field(default_factory=list)
    page_size: int = 4096
    writable: bool = True
    user: bool = True
    executable: bool = True


@dataclass(frozen=True)
class PagingRegs:
    cr0: int
    cr3: int
    cr4: int
    efer: int


def walk(mem: PhysReader, regs: PagingRegs, linear: int) -> Walk:
    """Walk without raising; `physical` is None when a level is not present."""
    if not regs.cr0 & x86.Cr0.PG:
        return Walk(linear, linear & 0xFFFF_FFFF)
    if regs.cr4 & x86.Cr4.PAE:
        long_mode = bool(regs.efer & x86.Efer.LMA)
        levels = ("PML4", "PDPT", "PD", "PT") if long_mode else ("PDPT", "PD", "PT")
        shifts = {"PML4": 39, "PDPT": 30, "PD": 21, "PT": 12}
        table = regs.cr3 & (ADDR_MASK if long_mode else 0xFFFF_FFE0)
        w = Walk(linear, None)
        for level in levels:
            # PAE's PDPT has 4 entries (CR3 points at them), every other table 512.
            index = (linear >> shifts[level]) & (0x1FF if long_mode or level != "PDPT" else 3)
            entry = mem.read_u64(table + 8 * index)
            w.steps.append(WalkStep(level, table, index, entry))
            if not entry & PTE_P:
                return w
            if level != "PDPT" or long_mode:
                w.writable &= bool(entry & PTE_W)
                w.user &= bool(entry & PTE_U)
            if regs.efer & x86.Efer.NXE and entry & PTE_NX:
                w.executable = False
            if level in ("PDPT", "PD") and entry & PTE_PS and (long_mode or level == "PD"):
                size = 1 << shifts[level]
                w.page_size = size
                w.physical = (entry & ADDR_MASK & ~(size - 1)) | (linear & (size - 1))
                return w
            table = entry & ADDR_MASK
        w.physical = table | (linear & 0xFFF)
        return w
    # Classic 32-bit paging, with 4 MiB pages when CR4.PSE.
    linear &= 0xFFFF_FFFF
    w = Walk(linear, None)
    pd = regs.cr3 & 0xFFFF_F000
    pde = mem.read_u32(pd + 4 * (linear >> 22))
    w.steps.append(WalkStep("PDE", pd, linear >> 22, pde))
    if not pde & PTE_P:
        return w
    w.writable, w.user = bool(pde & PTE_W), bool(pde & PTE_U)
    if pde & PTE_PS and regs.cr4 & x86.Cr4.PSE:
        w.page_size = 4 << 20
        high = ((pde >> 13) & 0xFF) << 32
        w.physical = (pde & 0xFFC0_0000) | high | (linear & 0x3F_FFFF)
        return w
    pt = pde & 0xFFFF_F000
    pte = mem.read_u32(pt + 4 * ((linear >> 12) & 0x3FF))
    w.steps.append(WalkStep("PTE", pt, (linear >> 12) & 0x3FF, pte))
    if not pte & PTE_P:
        return w
    w.writable &= bool(pte & PTE_W)
    w.user &= bool(pte & PTE_U)
    w.physical = (pte & 0xFFFF_F000) | (linear & 0xFFF)
    return w


def translate(mem: PhysReader, regs: PagingRegs, linear: int, *, write: bool = False, user: bool = False) -> int:
    """Translate for an access, raising PageFault with the architectural error code."""
    w = walk(mem, regs, linear)
    err = (PF_W if write else 0) | (PF_U if user else 0)
    if w.physical is None:
        raise PageFault(linear, err, f"{w.steps[-1].level if w.steps else 'CR3'} entry not present")
    wp = bool(regs.cr0 & x86.Cr0.WP)
    if user and not w.user:
        raise PageFault(linear, err | PF_P, "supervisor page accessed from user mode")
    if write and not w.writable and (user or wp):
        raise PageFault(linear, err | PF_P, "write to a read-only page")
    return w.physical
