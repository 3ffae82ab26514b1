"""CpuState: the complete, backend-neutral architectural state of one x86-64 CPU."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum

from emu.cpu import x86

GPR_NAMES = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
)  # fmt: skip
SEGMENT_NAMES = ("cs", "ds", "es", "fs", "gs", "ss")
# Every segment register with a hidden cache in CpuState: the six above, TR and LDTR.
ALL_SEGMENT_NAMES = (*SEGMENT_NAMES, "tr", "ldt")


class Mode(Enum):
    REAL = "real"
    VM86 = "vm86"
    PROTECTED16 = "protected16"
    PROTECTED32 = "protected32"
    COMPAT = "compat"  # long mode, 16/32-bit code segment
    LONG = "long64"

    @property
    def bits(self) -> int:
        return {Mode.LONG: 64, Mode.PROTECTED32: 32}.get(self, 16 if self is not Mode.COMPAT else 32)


@dataclass
class Segment:
    """A segment register with its hidden descriptor cache (KVM's kvm_segment, field for field).

    `limit` is the byte-granular (expanded) limit; `type` is the 4-bit descriptor type.
    """

    selector: int = 0
    base: int = 0
    limit: int = 0xFFFF
    type: int = x86.SEG_TYPE_DATA_RW_ACCESSED
    s: int = 1
    dpl: int = 0
    present: int = 1
    avl: int = 0
    l: int = 0  # noqa: E741 - the architectural name
    db: int = 0
    g: int = 0
    unusable: int = 0

    @classmethod
    def real(cls, selector: int, code: bool = False) -> Segment:
        """A real-mode segment as loaded by a real-mode `mov sreg` or far jump."""
        t = x86.SEG_TYPE_CODE_RX_ACCESSED if code else x86.SEG_TYPE_DATA_RW_ACCESSED
        return cls(selector=selector & 0xFFFF, base=(selector & 0xFFFF) << 4, type=t)

    @classmethod
    def flat_code(cls, selector: int, *, long: bool, dpl: int = 0) -> Segment:
        """A flat 4 GiB code segment as SYSCALL/SYSENTER load it (64-bit when `long`)."""
        return cls(selector=selector, base=0, limit=0xFFFF_FFFF, type=x86.SEG_TYPE_CODE_RX_ACCESSED,
                   dpl=dpl, l=int(long), db=int(not long), g=1)  # fmt: skip

    @classmethod
    def flat_data(cls, selector: int, *, dpl: int = 0) -> Segment:
        """A flat 4 GiB writable data/stack segment (B=1), as SYSCALL/SYSENTER load SS."""
        return cls(selector=selector, base=0, limit=0xFFFF_FFFF, type=x86.SEG_TYPE_DATA_RW_ACCESSED,
                   dpl=dpl, db=1, g=1)  # fmt: skip

    @classmethod
    def from_descriptor(cls, selector: int, raw: int) -> Segment:
        d = x86.decode_descriptor(raw)
        return cls(
            selector=selector, base=d["base"], limit=d["limit"], type=d["type"], s=d["s"], dpl=d["dpl"],
            present=d["present"], avl=d["avl"], l=d["l"], db=d["db"], g=d["g"],
        )  # fmt: skip

    @property
    def attributes(self) -> int:
        """Attribute bits in the descriptor's high-dword layout shifted down by 8 (VMX AR format)."""
        return (
            self.type | (self.s << 4) | (self.dpl << 5) | (self.present << 7)
            | (self.avl << 12) | (self.l << 13) | (self.db << 14) | (self.g << 15)
            | (self.unusable << 16)
        )  # fmt: skip

    @classmethod
    def from_attributes(cls, selector: int, base: int, limit: int, ar: int) -> Segment:
        return cls(
            selector=selector, base=base, limit=limit, type=ar & 0xF, s=(ar >> 4) & 1,
            dpl=(ar >> 5) & 3, present=(ar >> 7) & 1, avl=(ar >> 12) & 1, l=(ar >> 13) & 1,
            db=(ar >> 14) & 1, g=(ar >> 15) & 1, unusable=(ar >> 16) & 1,
        )  # fmt: skip


@dataclass
class DescriptorTable:
    base: int = 0
    limit: int = 0xFFFF


@dataclass
class FpuState:
    """x87/SSE state in FXSAVE terms (what both KVM's kvm_fpu and Unicorn expose)."""

    fcw: int = 0x37F
    fsw: int = 0
    ftw: int = 0  # abridged tag word (FXSAVE): bit i set = register i valid
    fop: int = 0
    fip: int = 0
    fdp: int = 0
    st: list[bytes] = field(default_factory=lambda: [bytes(10)] * 8)  # 80-bit registers ST(0..7)
    xmm: list[bytes] = field(default_factory=lambda: [bytes(16)] * 16)
    mxcsr: int = 0x1F80


def _default_msrs() -> dict[int, int]:
    msrs = dict.fromkeys(x86.STATE_MSRS, 0)
    msrs[x86.Msr.PAT] = x86.PAT_RESET
    return msrs


@dataclass
class CpuState:
    """Registers, segment caches, tables, control registers, MSRs, debug registers and FPU.

    The defaults are the architectural reset state (CS=F000 base FFFF0000, IP=FFF0), the same
    state a PC's CPU comes out of reset with.
    """

    rax: int = 0
    rbx: int = 0
    rcx: int = 0
    rdx: int = 0x600  # family/model/stepping signature, as after RESET
    rsi: int = 0
    rdi: int = 0
    rsp: int = 0
    rbp: int = 0
    r8: int = 0
    r9: int = 0
    r10: int = 0
    r11: int = 0
    r12: int = 0
    r13: int = 0
    r14: int = 0
    r15: int = 0
    rip: int = 0xFFF0
    rflags: int = x86.FLAG_FIXED
    cs: Segment = field(
        default_factory=lambda: Segment(selector=0xF000, base=0xFFFF_0000, type=x86.SEG_TYPE_CODE_RX_ACCESSED)
    )
    ds: Segment = field(default_factory=Segment)
    es: Segment = field(default_factory=Segment)
    fs: Segment = field(default_factory=Segment)
    gs: Segment = field(default_factory=Segment)
    ss: Segment = field(default_factory=Segment)
    tr: Segment = field(default_factory=lambda: Segment(type=x86.SEG_TYPE_TSS_BUSY, s=0))
    ldt: Segment = field(default_factory=lambda: Segment(type=x86.SEG_TYPE_LDT, s=0))
    gdt: DescriptorTable = field(default_factory=DescriptorTable)
    idt: DescriptorTable = field(default_factory=DescriptorTable)
    cr0: int = 0x6000_0010  # CD | NW | ET
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    cr8: int = 0
    efer: int = 0
    msrs: dict[int, int] = field(default_factory=_default_msrs)
    dr0: int = 0
    dr1: int = 0
    dr2: int = 0
    dr3: int = 0
    dr6: int = 0xFFFF_0FF0
    dr7: int = 0x400
    fpu: FpuState = field(default_factory=FpuState)

    # -- derived ------------------------------------------------------------------------------
    @property
    def cpl(self) -> int:
        if not self.cr0 & x86.Cr0.PE:
            return 0
        if self.rflags & x86.FLAG_VM:
            return 3
        return self.ss.dpl  # SS.DPL always equals CPL (what VMX and SVM report too)

    @property
    def mode(self) -> Mode:
        if not self.cr0 & x86.Cr0.PE:
            return Mode.REAL
        if self.efer & x86.Efer.LMA:
            return Mode.LONG if self.cs.l else Mode.COMPAT
        if self.rflags & x86.FLAG_VM:
            return Mode.VM86
        return Mode.PROTECTED32 if self.cs.db else Mode.PROTECTED16

    @property
    def paging(self) -> bool:
        return bool(self.cr0 & x86.Cr0.PG)

    @property
    def flat_pc(self) -> int:
        """Linear address of the next instruction (CS.base + RIP, wrapped as the mode does)."""
        if self.mode is Mode.LONG:
            return self.rip
        return (self.cs.base + self.rip) & 0xFFFF_FFFF

    def copy(self) -> CpuState:
        return dataclasses.replace(
            self,
            cs=dataclasses.replace(self.cs), ds=dataclasses.replace(self.ds),
            es=dataclasses.replace(self.es), fs=dataclasses.replace(self.fs),
            gs=dataclasses.replace(self.gs), ss=dataclasses.replace(self.ss),
            tr=dataclasses.replace(self.tr), ldt=dataclasses.replace(self.ldt),
            gdt=dataclasses.replace(self.gdt), idt=dataclasses.replace(self.idt),
            msrs=dict(self.msrs),
            fpu=dataclasses.replace(self.fpu, st=list(self.fpu.st), xmm=list(self.fpu.xmm)),
        )  # fmt: skip

    def gprs(self) -> dict[str, int]:
        return {n: getattr(self, n) for n in GPR_NAMES}

    def segments(self) -> dict[str, Segment]:
        return {n: getattr(self, n) for n in SEGMENT_NAMES}
