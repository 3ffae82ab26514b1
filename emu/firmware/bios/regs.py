"""The register block the ROM's service stubs share with Python, and the caller's FLAGS.

roms/bios.asm saves the caller's registers at layout.BIOS_REGS before it traps and reloads them
after, so services read and write registers in guest memory: no backend call is needed and both
backends behave the same. CF and ZF are returned in the FLAGS word of the caller's iret frame.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from emu import layout
from emu.cpu.x86 import FLAG_CF, FLAG_IF, FLAG_ZF
from emu.memory import GuestMemory

__all__ = ["FLAG_CF", "FLAG_IF", "FLAG_ZF", "OFF_RETRY", "OFF_SERVICE", "UNSUPPORTED", "Regs"]

# Offsets in the block (roms/bios.asm R_*): seven 32-bit GPRs, then 16-bit DS, ES, SS, SP and
# two bytes: the service number and the retry request.
_LAYOUT = struct.Struct("<7I4HBB")
OFF_SERVICE = 0x24
OFF_RETRY = 0x25

UNSUPPORTED = 0x86  # AH of int 15h and int 1Ah: "function not supported"


class _Part:
    """A sub-register (AX, AH, AL...) as a property over one of the 32-bit fields."""

    def __init__(self, reg: str, shift: int, bits: int) -> None:
        self.reg, self.shift, self.mask = reg, shift, (1 << bits) - 1

    def __get__(self, obj: Regs, owner: type | None = None) -> int:
        return (getattr(obj, self.reg) >> self.shift) & self.mask

    def __set__(self, obj: Regs, value: int) -> None:
        full = getattr(obj, self.reg)
        full &= ~(self.mask << self.shift)
        setattr(obj, self.reg, full | ((value & self.mask) << self.shift))


@dataclass
class Regs:
    """The caller's registers at the `int`, as the ROM saved them; FLAGS from its iret frame."""

    eax: int = 0
    ebx: int = 0
    ecx: int = 0
    edx: int = 0
    esi: int = 0
    edi: int = 0
    ebp: int = 0
    ds: int = 0
    es: int = 0
    ss: int = 0
    sp: int = 0
    service: int = 0
    retry: bool = False
    flags: int = 0

    ax = _Part("eax", 0, 16)
    ah = _Part("eax", 8, 8)
    al = _Part("eax", 0, 8)
    bx = _Part("ebx", 0, 16)
    bh = _Part("ebx", 8, 8)
    bl = _Part("ebx", 0, 8)
    cx = _Part("ecx", 0, 16)
    ch = _Part("ecx", 8, 8)
    cl = _Part("ecx", 0, 8)
    dx = _Part("edx", 0, 16)
    dh = _Part("edx", 8, 8)
    dl = _Part("edx", 0, 8)
    si = _Part("esi", 0, 16)
    di = _Part("edi", 0, 16)
    bp = _Part("ebp", 0, 16)

    @property
    def frame(self) -> int:
        """Physical address of the caller's FLAGS word (IP, CS, FLAGS at SS:SP)."""
        return (self.ss << 4) + ((self.sp + 4) & 0xFFFF)

    @classmethod
    def load(cls, mem: GuestMemory, with_frame: bool = True) -> Regs:
        f = _LAYOUT.unpack(mem.view(layout.BIOS_REGS, _LAYOUT.size))
        r = cls(*f[:11])
        r.service, r.retry = f[11], bool(f[12])
        if with_frame:
            r.flags = mem.read_u16(r.frame)
        return r

    def store(self, mem: GuestMemory, with_frame: bool = True) -> None:
        _LAYOUT.pack_into(
            mem.view(layout.BIOS_REGS, _LAYOUT.size), 0,
            self.eax, self.ebx, self.ecx, self.edx, self.esi, self.edi, self.ebp,
            self.ds, self.es, self.ss, self.sp, self.service, int(self.retry),
        )  # fmt: skip
        if with_frame:
            mem.write_u16(self.frame, self.flags)

    # -- returning status ---------------------------------------------------------------------
    @property
    def cf(self) -> bool:
        return bool(self.flags & FLAG_CF)

    @cf.setter
    def cf(self, value: bool) -> None:
        self.flags = self.flags | FLAG_CF if value else self.flags & ~FLAG_CF

    @property
    def zf(self) -> bool:
        return bool(self.flags & FLAG_ZF)

    @zf.setter
    def zf(self, value: bool) -> None:
        self.flags = self.flags | FLAG_ZF if value else self.flags & ~FLAG_ZF

    def ok(self) -> None:
        """Success the usual way: AH = 0, CF clear."""
        self.ah = 0
        self.cf = False

    def fail(self, status: int) -> None:
        """Failure the usual way: AH = status, CF set."""
        self.ah = status
        self.cf = True


assert _LAYOUT.size <= layout.BIOS_REGS_SIZE
