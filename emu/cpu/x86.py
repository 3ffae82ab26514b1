"""x86 architectural constants and descriptor encoding/decoding, backend-neutral."""

from __future__ import annotations

from enum import IntEnum, IntFlag

# RFLAGS
FLAG_CF = 1 << 0
FLAG_FIXED = 1 << 1
FLAG_PF = 1 << 2
FLAG_AF = 1 << 4
FLAG_ZF = 1 << 6
FLAG_SF = 1 << 7
FLAG_TF = 1 << 8
FLAG_IF = 1 << 9
FLAG_DF = 1 << 10
FLAG_OF = 1 << 11
FLAG_IOPL = 3 << 12
FLAG_NT = 1 << 14
FLAG_RF = 1 << 16
FLAG_VM = 1 << 17
FLAG_AC = 1 << 18
FLAG_VIF = 1 << 19
FLAG_VIP = 1 << 20
FLAG_ID = 1 << 21


class Cr0(IntFlag):
    PE = 1 << 0
    MP = 1 << 1
    EM = 1 << 2
    TS = 1 << 3
    ET = 1 << 4
    NE = 1 << 5
    WP = 1 << 16
    AM = 1 << 18
    NW = 1 << 29
    CD = 1 << 30
    PG = 1 << 31


class Cr4(IntFlag):
    VME = 1 << 0
    PVI = 1 << 1
    TSD = 1 << 2
    DE = 1 << 3
    PSE = 1 << 4
    PAE = 1 << 5
    MCE = 1 << 6
    PGE = 1 << 7
    PCE = 1 << 8
    OSFXSR = 1 << 9
    OSXMMEXCPT = 1 << 10
    UMIP = 1 << 11
    LA57 = 1 << 12
    VMXE = 1 << 13
    FSGSBASE = 1 << 16
    PCIDE = 1 << 17
    OSXSAVE = 1 << 18
    SMEP = 1 << 20
    SMAP = 1 << 21
    PKE = 1 << 22


class Efer(IntFlag):
    SCE = 1 << 0
    LME = 1 << 8
    LMA = 1 << 10
    NXE = 1 << 11
    SVME = 1 << 12
    FFXSR = 1 << 14


class Msr(IntEnum):
    TSC = 0x10
    APIC_BASE = 0x1B
    SYSENTER_CS = 0x174
    SYSENTER_ESP = 0x175
    SYSENTER_EIP = 0x176
    MISC_ENABLE = 0x1A0
    PAT = 0x277
    MTRR_DEF_TYPE = 0x2FF
    EFER = 0xC000_0080
    STAR = 0xC000_0081
    LSTAR = 0xC000_0082
    CSTAR = 0xC000_0083
    SFMASK = 0xC000_0084
    FS_BASE = 0xC000_0100
    GS_BASE = 0xC000_0101
    KERNEL_GS_BASE = 0xC000_0102
    TSC_AUX = 0xC000_0103


# MSRs carried in CpuState.msrs (FS/GS base live in the segment caches, EFER has its own field).
STATE_MSRS: tuple[int, ...] = (
    Msr.SYSENTER_CS,
    Msr.SYSENTER_ESP,
    Msr.SYSENTER_EIP,
    Msr.PAT,
    Msr.STAR,
    Msr.LSTAR,
    Msr.CSTAR,
    Msr.SFMASK,
    Msr.KERNEL_GS_BASE,
)

PAT_RESET = 0x0007_0406_0007_0406


class Vector(IntEnum):
    DE = 0
    DB = 1
    NMI = 2
    BP = 3
    OF = 4
    BR = 5
    UD = 6
    NM = 7
    DF = 8
    TS = 10
    NP = 11
    SS = 12
    GP = 13
    PF = 14
    MF = 16
    AC = 17
    MC = 18
    XM = 19


VECTOR_NAMES = {
    0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF",
    10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC", 18: "#MC",
    19: "#XM", 20: "#VE", 21: "#CP",
}  # fmt: skip


def vector_name(v: int) -> str:
    """The mnemonic of an exception vector ("#PF", "NMI"), else "vector 0x40"."""
    return VECTOR_NAMES.get(v, f"vector {v:#x}")


# Exceptions that push an error code (in protected and long mode).
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})


# Segment descriptor type field (4 bits) values that matter to emu.
SEG_TYPE_DATA_RW_ACCESSED = 0x3
SEG_TYPE_CODE_RX_ACCESSED = 0xB
SEG_TYPE_LDT = 0x2
SEG_TYPE_TSS16_BUSY = 0x3
SEG_TYPE_TSS32_AVAIL = 0x9
SEG_TYPE_TSS_BUSY = 0xB
GATE_INT16 = 0x6
GATE_TRAP16 = 0x7
GATE_TASK = 0x5
GATE_INT32 = 0xE  # also the 64-bit interrupt gate
GATE_TRAP32 = 0xF  # also the 64-bit trap gate


def tss64_stack_offset(ist: int = 0, cpl: int = 0) -> int:
    """Offset of a stack pointer in the 64-bit TSS: ISTn when ist is 1-7, else RSPn for cpl."""
    return 0x24 + 8 * (ist - 1) if ist else 4 + 8 * cpl


def decode_descriptor(raw: int) -> dict[str, int]:
    """Split an 8-byte segment descriptor into base, byte-granular limit and attribute bits."""
    limit = (raw & 0xFFFF) | ((raw >> 32) & 0xF_0000)
    base = ((raw >> 16) & 0xFF_FFFF) | (((raw >> 56) & 0xFF) << 24)
    g = (raw >> 55) & 1
    if g:
        limit = (limit << 12) | 0xFFF
    return {
        "base": base,
        "limit": limit,
        "type": (raw >> 40) & 0xF,
        "s": (raw >> 44) & 1,
        "dpl": (raw >> 45) & 3,
        "present": (raw >> 47) & 1,
        "avl": (raw >> 52) & 1,
        "l": (raw >> 53) & 1,
        "db": (raw >> 54) & 1,
        "g": g,
    }


def encode_descriptor(base: int, limit: int, access: int, flags: int) -> int:
    """Build an 8-byte descriptor from base, a 20-bit limit, the access byte and the 4 flag bits."""
    return (
        (limit & 0xFFFF)
        | ((base & 0xFF_FFFF) << 16)
        | ((access & 0xFF) << 40)
        | (((limit >> 16) & 0xF) << 48)
        | ((flags & 0xF) << 52)
        | (((base >> 24) & 0xFF) << 56)
    )


def canonical(addr: int) -> bool:
    top = addr >> 47
    return top in (0, 0x1FFFF)
