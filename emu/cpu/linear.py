"""Guest memory by linear address, as the CPU sees it: the state's paging applied and a failed
translation raised as the fault the CPU would take. Used to deliver interrupts, to read guest
tables and code for fault reports, and by the debugger."""

from __future__ import annotations

import struct

from emu.cpu.paging import PageFault, PagingRegs, translate
from emu.cpu.state import CpuState
from emu.cpu.x86 import vector_name
from emu.errors import GuestMemoryError
from emu.memory import GuestMemory


class Fault(Exception):
    """The exception an access (or an interrupt delivery) raises, with the CPU's error code."""

    def __init__(self, vector: int, error_code: int | None, reason: str, cr2: int | None = None) -> None:
        super().__init__(f"{vector_name(vector)}: {reason}")
        self.vector = vector
        self.error_code = error_code
        self.reason = reason
        self.cr2 = cr2


class LinearMemory:
    """Linear-address access: paging applied, faults raised as Fault(#PF)."""

    def __init__(self, mem: GuestMemory, state: CpuState) -> None:
        self.mem = mem
        self.regs = PagingRegs(state.cr0, state.cr3, state.cr4, state.efer)
        # Translations already made, by (page, write, user): an interrupt delivery pushes several
        # words onto one stack page and reads one IDT page. One object lives for one delivery or
        # one debugger view, during which the guest's page tables do not change.
        self._pages: dict[tuple[int, bool, bool], int] = {}

    def _phys(self, linear: int, write: bool, user: bool) -> int:
        key = (linear >> 12, write, user)
        page = self._pages.get(key)
        if page is not None:
            return page | (linear & 0xFFF)
        try:
            phys = translate(self.mem, self.regs, linear, write=write, user=user)
        except PageFault as pf:
            raise Fault(14, pf.error_code, pf.reason, cr2=linear) from None
        except GuestMemoryError:
            raise Fault(13, 0, f"page tables for {linear:#x} lie outside guest RAM") from None
        self._pages[key] = phys & ~0xFFF
        return phys

    def read(self, linear: int, size: int, *, user: bool = False) -> bytes:
        out = bytearray()
        while size:
            chunk = min(size, 0x1000 - (linear & 0xFFF))
            phys = self._phys(linear, False, user)
            try:
                out += self.mem.read(phys, chunk)
            except GuestMemoryError:
                out += b"\xff" * chunk  # reads outside RAM see all-ones, as on a PC bus
            linear += chunk
            size -= chunk
        return bytes(out)

    def write(self, linear: int, data: bytes, *, user: bool = False) -> None:
        # Translate every page first so a fault leaves memory untouched.
        pieces, pos = [], 0
        while pos < len(data):
            chunk = min(len(data) - pos, 0x1000 - ((linear + pos) & 0xFFF))
            pieces.append((self._phys(linear + pos, True, user), data[pos : pos + chunk]))
            pos += chunk
        for phys, piece in pieces:
            try:
                self.mem.write(phys, piece)
            except GuestMemoryError:
                raise Fault(13, 0, f"stack at {phys:#x} lies outside guest RAM") from None

    def u16(self, linear: int) -> int:
        return int(struct.unpack("<H", self.read(linear, 2))[0])

    def u32(self, linear: int) -> int:
        return int(struct.unpack("<I", self.read(linear, 4))[0])

    def u64(self, linear: int) -> int:
        return int(struct.unpack("<Q", self.read(linear, 8))[0])
