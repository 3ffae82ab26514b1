"""Unicorn 2.1.4's raw CPU state (QEMU's CPUX86State inside a uc_context), read and patched.

Unicorn's register API cannot set hidden segment caches, CPL, EFER.LMA or read the exception
error code. A uc_context holds a copy of CPUX86State after a 40-byte header; emu saves a
context, edits it at the offsets below and restores it. The offsets were measured for the pinned
version, and `self_test()` re-measures them at start-up so that a different build fails loudly
instead of corrupting guest state.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass

import unicorn
from unicorn import x86_const as X
from unicorn.unicorn_py3 import UcContext

from emu.backends.base import BackendUnavailable
from emu.cpu import x86
from emu.cpu.state import DescriptorTable, Segment

CONTEXT_HEADER = 40

# Offsets inside CPUX86State (measured on unicorn 2.1.4, x86-64 target).
OFF_REGS = 0  # 16 x u64, in QEMU's regs[] order:
RAW_GPRS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")  # fmt: skip
OFF_EIP = 128
OFF_HFLAGS = 176
OFF_SEGS = 184  # es cs ss ds fs gs, 24 bytes each: u32 selector, pad, u64 base, u32 limit, u32 flags
SEG_SIZE = 24
OFF_LDT = 328
OFF_TR = 352
OFF_GDT = 376  # SegmentCache: base at +8, limit at +16
OFF_IDT = 400
OFF_CR = 424  # cr[0..4], u64 each
OFF_A20_MASK = 496  # i32, after cr[0..8]: ANDed into every physical address (page walks too)
OFF_EFER = 592
OFF_SYSENTER_CS = 4800
OFF_ERROR_CODE = 5384  # i32
OFF_EXCEPTION_IS_INT = 5388  # i32
OFF_EXCEPTION_NEXT_EIP = 5392  # u64
OFF_DR = 5400  # dr[0..7]
OFF_OLD_EXCEPTION = 5496  # i32; Unicorn bug #1883: never reset, so emu resets it per delivery
# QEMU's SVM state, which follows old_exception: emu runs the guest as an SVM guest whose only
# intercept is MSR access, so rdmsr/wrmsr of chosen MSRs reach Python (msr_intercept.py).
OFF_VM_VMCB = 5504  # u64: the VMCB's physical address
OFF_INTERCEPT = 5520  # u64: intercept bits, SVM exit code - 0x60 each

# QEMU's segment order in segs[].
QEMU_SEG_ORDER = ("es", "cs", "ss", "ds", "fs", "gs")

# hflags bits (QEMU target/i386/cpu.h).
HF_CPL_MASK = 3
HF_INHIBIT_IRQ = 1 << 3
HF_CS32 = 1 << 4
HF_SS32 = 1 << 5
HF_ADDSEG = 1 << 6
HF_PE = 1 << 7
HF_MP_EM_TS = 7 << 9
HF_LMA = 1 << 14
HF_CS64 = 1 << 15
HF_SVME = 1 << 20
HF_GUEST = 1 << 21  # running as an SVM guest: intercepts apply
HF_OSFXSR = 1 << 22
HF_SMAP = 1 << 23
# Bits emu computes; everything else in hflags (SMM, SVMI, MPX, IOBPT) is left as Unicorn has it.
HF_COMPUTED = (
    HF_CPL_MASK | HF_CS32 | HF_SS32 | HF_ADDSEG | HF_PE | HF_MP_EM_TS | HF_LMA | HF_CS64 | HF_SVME
    | HF_OSFXSR | HF_SMAP
)  # fmt: skip

_SEG = struct.Struct("<I4xQII")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")


def flush_translations(uc: unicorn.Uc) -> None:
    """Drop every translated block (~6 ms). The binding's Uc has `ctl_flush_tb`, but its
    unicorn.py picks the class by a runtime version test that type checkers read as the old
    binding's, which lacks it."""
    uc.ctl_flush_tb()  # type: ignore[attr-defined]


class RawStateMismatch(BackendUnavailable):
    """The installed Unicorn's CPU state layout is not the one emu was built against."""


def seg_to_qemu_flags(s: Segment) -> int:
    return (
        (s.type << 8) | (s.s << 12) | (s.dpl << 13) | (s.present << 15)
        | (s.avl << 20) | (s.l << 21) | (s.db << 22) | (s.g << 23)
    )  # fmt: skip


def seg_from_qemu(selector: int, base: int, limit: int, flags: int, pe: bool, name: str) -> Segment:
    present = (flags >> 15) & 1
    return Segment(
        selector=selector & 0xFFFF, base=base, limit=limit, type=(flags >> 8) & 0xF,
        s=(flags >> 12) & 1, dpl=(flags >> 13) & 3, present=present, avl=(flags >> 20) & 1,
        l=(flags >> 21) & 1, db=(flags >> 22) & 1, g=(flags >> 23) & 1,
        unusable=int(pe and not present and name not in ("cs", "tr")),
    )  # fmt: skip


@dataclass
class RawContext:
    """A saved uc_context whose CPUX86State bytes can be read and patched, then restored."""

    ctx: UcContext
    buf: ctypes.Array  # the context's own memory (edits go straight into it)

    @classmethod
    def save(cls, uc: unicorn.Uc) -> RawContext:
        return cls.of(uc.context_save())

    @classmethod
    def of(cls, ctx: UcContext) -> RawContext:
        """A view of a context saved earlier (edits go into it)."""
        address = ctypes.cast(ctx._context, ctypes.c_void_p).value
        assert address is not None
        return cls(ctx, (ctypes.c_char * ctx.size).from_address(address))

    def restore(self, uc: unicorn.Uc) -> None:
        uc.context_restore(self.ctx)

    def commit(self, uc: unicorn.Uc, rflags: int) -> None:
        """Restore an edited context that runs on with `rflags`: hflags recomputed first, RFLAGS
        written through the API last (QEMU keeps the arithmetic flags and DF outside `eflags`)."""
        self.recompute_hflags(rflags)
        self.restore(uc)
        uc.reg_write(X.UC_X86_REG_RFLAGS, rflags)

    # -- scalar fields --------------------------------------------------------------------------
    def u64(self, off: int) -> int:
        return _U64.unpack_from(self.buf, CONTEXT_HEADER + off)[0]

    def set_u64(self, off: int, v: int) -> None:
        _U64.pack_into(self.buf, CONTEXT_HEADER + off, v & 0xFFFF_FFFF_FFFF_FFFF)

    def u32(self, off: int) -> int:
        return _U32.unpack_from(self.buf, CONTEXT_HEADER + off)[0]

    def set_u32(self, off: int, v: int) -> None:
        _U32.pack_into(self.buf, CONTEXT_HEADER + off, v & 0xFFFF_FFFF)

    def i32(self, off: int) -> int:
        return _I32.unpack_from(self.buf, CONTEXT_HEADER + off)[0]

    def set_i32(self, off: int, v: int) -> None:
        _I32.pack_into(self.buf, CONTEXT_HEADER + off, v)

    # -- segments and tables ------------------------------------------------------------------
    def segment(self, name: str) -> Segment:
        off = self._seg_off(name)
        sel, base, limit, flags = _SEG.unpack_from(self.buf, CONTEXT_HEADER + off)
        return seg_from_qemu(sel, base, limit, flags, bool(self.cr(0) & x86.Cr0.PE), name)

    def set_segment(self, name: str, s: Segment) -> None:
        off = self._seg_off(name)
        flags = seg_to_qemu_flags(s)
        if s.unusable:
            flags &= ~(1 << 15)  # QEMU has no "unusable": a null segment is simply not present
        _SEG.pack_into(self.buf, CONTEXT_HEADER + off, s.selector & 0xFFFF, s.base, s.limit & 0xFFFF_FFFF, flags)

    @staticmethod
    def _seg_off(name: str) -> int:
        if name == "ldt":
            return OFF_LDT
        if name == "tr":
            return OFF_TR
        return OFF_SEGS + SEG_SIZE * QEMU_SEG_ORDER.index(name)

    def table(self, name: str) -> DescriptorTable:
        off = OFF_GDT if name == "gdt" else OFF_IDT
        return DescriptorTable(base=self.u64(off + 8), limit=self.u32(off + 16))

    def set_table(self, name: str, t: DescriptorTable) -> None:
        off = OFF_GDT if name == "gdt" else OFF_IDT
        self.set_u64(off + 8, t.base)
        self.set_u32(off + 16, t.limit & 0xFFFF)

    def cr(self, n: int) -> int:
        return self.u64(OFF_CR + 8 * n)

    def set_cr(self, n: int, v: int) -> None:
        self.set_u64(OFF_CR + 8 * n, v)

    # -- hflags ---------------------------------------------------------------------------------
    def recompute_hflags(self, rflags: int) -> None:
        """Derive QEMU's cached mode bits from CR0/CR4/EFER and the segment caches.

        This mirrors what QEMU does when it loads a segment or a control register, so the
        translator sees the same mode the architectural state describes.
        """
        cr0, cr4, efer = self.cr(0), self.cr(4), self.u64(OFF_EFER)
        cs, ss = self.segment("cs"), self.segment("ss")
        hf = self.u32(OFF_HFLAGS) & ~HF_COMPUTED
        pe = bool(cr0 & x86.Cr0.PE)
        lma = bool(efer & x86.Efer.LMA)
        if pe:
            hf |= HF_PE
            hf |= 3 if rflags & x86.FLAG_VM else ss.dpl
        hf |= (cr0 << 8) & HF_MP_EM_TS  # CR0.MP/EM/TS (bits 1-3) -> hflags bits 9-11
        if lma:
            hf |= HF_LMA
        if lma and cs.l:
            hf |= HF_CS32 | HF_CS64
        elif cs.db:
            hf |= HF_CS32
        if ss.db:
            hf |= HF_SS32
        if not hf & HF_CS64 and (not pe or rflags & x86.FLAG_VM or not hf & HF_CS32):
            hf |= HF_ADDSEG
        elif not hf & HF_CS64:
            ds, es = self.segment("ds"), self.segment("es")
            if ds.base | es.base | ss.base:
                hf |= HF_ADDSEG
        if cr4 & x86.Cr4.OSFXSR:
            hf |= HF_OSFXSR
        if cr4 & x86.Cr4.SMAP:
            hf |= HF_SMAP
        if efer & x86.Efer.SVME:
            hf |= HF_SVME
        self.set_u32(OFF_HFLAGS, hf)


def self_test(uc: unicorn.Uc) -> None:
    """Check every raw offset emu relies on against values written through Unicorn's own API."""
    if unicorn.__version__ != "2.1.4":
        raise RawStateMismatch(f"emu needs unicorn 2.1.4 exactly (installed: {unicorn.__version__})")
    saved = uc.context_save()
    try:
        probes = {
            (OFF_REGS + 8 * 15, "r15"): (X.UC_X86_REG_R15, 0x0123_4567_89AB_CDEF),
            (OFF_EIP, "rip"): (X.UC_X86_REG_RIP, 0x1122_3344_5566_7788),
            (OFF_CR + 24, "cr3"): (X.UC_X86_REG_CR3, 0x7654_3000),
            (OFF_DR + 56, "dr7"): (X.UC_X86_REG_DR7, 0x0F00_0401),
            (OFF_SEGS + SEG_SIZE * 4 + 8, "fs.base"): (X.UC_X86_REG_FS_BASE, 0x7FAB_CDEF_0000),
        }
        for (_, _), (reg, value) in probes.items():
            uc.reg_write(reg, value)
        uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x5A5A_0000, 0x1237, 0))
        uc.reg_write(X.UC_X86_REG_MSR, (x86.Msr.SYSENTER_CS, 0x3C3C))
        uc.reg_write(X.UC_X86_REG_MSR, (x86.Msr.EFER, x86.Efer.SCE | x86.Efer.LME | x86.Efer.NXE))
        raw = RawContext.save(uc)
        checks = [(off, name, value) for (off, name), (_, value) in probes.items()]
        checks += [(OFF_GDT + 8, "gdt.base", 0x5A5A_0000), (OFF_SYSENTER_CS, "sysenter_cs", 0x3C3C)]
        for off, name, value in checks:
            if raw.u64(off) != value:
                raise RawStateMismatch(f"unicorn raw state: {name} not at offset {off}")
        if raw.i32(OFF_A20_MASK) != -1:  # QEMU's reset value: nothing masked
            raise RawStateMismatch("unicorn raw state: a20_mask moved")
        if raw.u32(OFF_GDT + 16) != 0x1237:
            raise RawStateMismatch("unicorn raw state: gdt.limit moved")
        if raw.u64(OFF_EFER) & 0xFFF != (x86.Efer.SCE | x86.Efer.LME | x86.Efer.NXE | x86.Efer.LMA):
            raise RawStateMismatch("unicorn raw state: efer moved")
    finally:
        uc.context_restore(saved)
