"""The one CPU model emu shows its guests, shaped for each backend.

The model is a list of features. Each backend offers the subset it really executes:
- Unicorn: the features its TCG core implements (measured once: UNICORN_NATIVE), plus what emu
  emulates there (its local APIC with x2APIC and TSC-deadline, kvmclock behind KVM's leaves),
  minus what emu does not provide: no XSAVE (emu moves x87/SSE state only, and Unicorn faults on
  XSAVEC/XSAVES), no RDRAND (runs must be reproducible).
- KVM: the model plus what the in-kernel irqchip and KVM itself provide (APIC, x2APIC,
  TSC-deadline, XSAVE, the hypervisor leaves), each cut to KVM_GET_SUPPORTED_CPUID.
Same family/model/brand on both, so a guest sees one CPU whichever backend runs it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum


class Reg(Enum):
    EAX = 0
    EBX = 1
    ECX = 2
    EDX = 3


class Feature(Enum):
    """(leaf, register, bit) of a CPUID feature flag (SDM vol. 2A, CPUID)."""

    FPU = (1, Reg.EDX, 0)
    DE = (1, Reg.EDX, 2)
    PSE = (1, Reg.EDX, 3)
    TSC = (1, Reg.EDX, 4)
    MSR = (1, Reg.EDX, 5)
    PAE = (1, Reg.EDX, 6)
    MCE = (1, Reg.EDX, 7)
    CX8 = (1, Reg.EDX, 8)
    APIC = (1, Reg.EDX, 9)
    SEP = (1, Reg.EDX, 11)
    MTRR = (1, Reg.EDX, 12)
    PGE = (1, Reg.EDX, 13)
    MCA = (1, Reg.EDX, 14)
    CMOV = (1, Reg.EDX, 15)
    PAT = (1, Reg.EDX, 16)
    PSE36 = (1, Reg.EDX, 17)
    CLFSH = (1, Reg.EDX, 19)
    MMX = (1, Reg.EDX, 23)
    FXSR = (1, Reg.EDX, 24)
    SSE = (1, Reg.EDX, 25)
    SSE2 = (1, Reg.EDX, 26)
    SSE3 = (1, Reg.ECX, 0)
    PCLMULQDQ = (1, Reg.ECX, 1)
    SSSE3 = (1, Reg.ECX, 9)
    CX16 = (1, Reg.ECX, 13)
    SSE4_1 = (1, Reg.ECX, 19)
    SSE4_2 = (1, Reg.ECX, 20)
    X2APIC = (1, Reg.ECX, 21)
    MOVBE = (1, Reg.ECX, 22)
    POPCNT = (1, Reg.ECX, 23)
    TSC_DEADLINE = (1, Reg.ECX, 24)
    AES = (1, Reg.ECX, 25)
    XSAVE = (1, Reg.ECX, 26)
    RDRAND = (1, Reg.ECX, 30)
    HYPERVISOR = (1, Reg.ECX, 31)
    BMI1 = (7, Reg.EBX, 3)
    SMEP = (7, Reg.EBX, 7)
    BMI2 = (7, Reg.EBX, 8)
    ERMS = (7, Reg.EBX, 9)
    LAHF_LM = (0x8000_0001, Reg.ECX, 0)
    ABM = (0x8000_0001, Reg.ECX, 5)
    SYSCALL = (0x8000_0001, Reg.EDX, 11)
    NX = (0x8000_0001, Reg.EDX, 20)
    PDPE1GB = (0x8000_0001, Reg.EDX, 26)
    RDTSCP = (0x8000_0001, Reg.EDX, 27)
    LM = (0x8000_0001, Reg.EDX, 29)
    INVTSC = (0x8000_0007, Reg.EDX, 8)

    @property
    def leaf(self) -> int:
        return self.value[0]

    @property
    def reg(self) -> Reg:
        return self.value[1]

    @property
    def mask(self) -> int:
        return 1 << self.value[2]


F = Feature

#: The emu CPU: an x86-64-v2 machine with the Haswell-era integer extensions both backends run.
MODEL_FEATURES = frozenset({
    F.FPU, F.DE, F.PSE, F.TSC, F.MSR, F.PAE, F.MCE, F.CX8, F.SEP, F.MTRR, F.PGE, F.MCA, F.CMOV,
    F.PAT, F.PSE36, F.CLFSH, F.MMX, F.FXSR, F.SSE, F.SSE2, F.SSE3, F.PCLMULQDQ, F.SSSE3, F.CX16,
    F.SSE4_1, F.SSE4_2, F.MOVBE, F.POPCNT, F.AES, F.BMI1, F.SMEP, F.BMI2, F.ERMS, F.LAHF_LM,
    F.ABM, F.SYSCALL, F.NX, F.RDTSCP, F.LM, F.INVTSC,
})  # fmt: skip

#: Added under KVM: the in-kernel LAPIC and KVM's own interfaces.
KVM_EXTRAS = frozenset({F.APIC, F.X2APIC, F.TSC_DEADLINE, F.XSAVE, F.HYPERVISOR, F.PDPE1GB})

#: What Unicorn 2.1.4's default x86-64 CPU reports and executes (measured; tests re-check it).
UNICORN_NATIVE = frozenset(F) - {F.X2APIC, F.TSC_DEADLINE, F.PDPE1GB, F.INVTSC}

FAMILY, MODEL, STEPPING = 6, 0x3C, 4
SIGNATURE = (FAMILY << 8) | ((MODEL & 0xF) << 4) | ((MODEL >> 4) << 16) | STEPPING
BRAND = "emu virtual CPU"
INTEL_VENDOR = "GenuineIntel"

Regs = tuple[int, int, int, int]


@dataclass
class CpuidEntry:
    """One leaf/subleaf, in the shape of struct kvm_cpuid_entry2."""

    function: int
    index: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int

    def regs(self) -> Regs:
        return (self.eax, self.ebx, self.ecx, self.edx)

    def set_regs(self, r: Regs) -> None:
        self.eax, self.ebx, self.ecx, self.edx = r


def _vendor_regs(vendor: str) -> tuple[int, int, int]:
    """EBX, EDX, ECX of leaf 0 (the vendor string is split in that order)."""
    b = vendor.encode().ljust(12)[:12]
    ebx, edx, ecx = struct.unpack("<III", b)
    return ebx, edx, ecx


def _brand_leaves() -> dict[int, Regs]:
    b = BRAND.encode().ljust(48, b"\0")
    return {0x8000_0002 + i: struct.unpack_from("<IIII", b, 16 * i) for i in range(3)}


def feature_bits(features: frozenset[Feature], leaf: int, reg: Reg) -> int:
    v = 0
    for f in features:
        if f.leaf == leaf and f.reg is reg:
            v |= f.mask
    return v


def _apply_features(leaf: int, regs: Regs, features: frozenset[Feature]) -> Regs:
    """Clear every flag emu knows in this leaf, then set the offered ones; unknown bits stay."""
    out = list(regs)
    for reg in Reg:
        known = sum(f.mask for f in Feature if f.leaf == leaf and f.reg is reg)
        out[reg.value] = (out[reg.value] & ~known) | feature_bits(features, leaf, reg)
    return (out[0], out[1], out[2], out[3])


UNICORN_FEATURES = MODEL_FEATURES & UNICORN_NATIVE


#: With emu's local APIC under Unicorn: the APIC, its x2APIC mode and TSC-deadline timer (their
#: MSRs reach emu through the MSR intercept), and KVM's paravirtual leaves for kvmclock.
UNICORN_APIC_EXTRAS = frozenset({F.APIC, F.X2APIC, F.TSC_DEADLINE, F.HYPERVISOR})
#: The core crystal (CPUID 0x15 ECX), which is also the local APIC timer's input clock. 1 MHz:
#: Linux computes crystal kHz x EBX in 32 bits, and EBX = the TSC rate in kHz must not overflow it
#: (a 25 MHz crystal made a 2.6 GHz TSC read as 19 MHz).
CRYSTAL_HZ = 1_000_000
KVM_SIGNATURE = "KVMKVMKVM\0\0\0"
KVM_FEATURE_CLOCKSOURCE = 1 << 0
KVM_FEATURE_CLOCKSOURCE2 = 1 << 3
KVM_FEATURE_CLOCKSOURCE_STABLE_BIT = 1 << 24


def unicorn_table(tsc_khz: int, *, local_apic: bool = False, apic_id: int = 0) -> dict[tuple[int, int], Regs]:
    """Every leaf the Unicorn backend answers; other leaves read as the highest basic leaf
    (as Intel CPUs do). Leaf 0x15 gives the TSC frequency so Linux need not calibrate it
    against the PIT (the TSC Unicorn returns is the host's). With `local_apic` (emu emulates
    one per vCPU, and kvmclock), the APIC features and KVM's signature and clock leaves.
    `apic_id`: the vCPU's initial APIC ID (leaf 1 EBX[31:24]); each vCPU is a package of its own,
    as QEMU's -smp N gives by default."""
    feats = UNICORN_FEATURES | (UNICORN_APIC_EXTRAS if local_apic else frozenset())
    vendor = _vendor_regs(INTEL_VENDOR)
    max_basic, max_ext = 0x16, 0x8000_0008
    tsc_mhz = tsc_khz // 1000
    t: dict[tuple[int, int], Regs] = {
        (0, 0): (max_basic, vendor[0], vendor[2], vendor[1]),
        (1, 0): _apply_features(1, (SIGNATURE, apic_id << 24 | 8 << 8, 0, 0), feats),  # CLFLUSH line 8 qwords
        (2, 0): (0x0000_0001, 0, 0, 0x002C_307D),  # cache/TLB descriptors (Unicorn's own)
        # Deterministic cache parameters: L1d, L1i 32 KiB, L2 256 KiB; one core, one thread.
        (4, 0): (0x121, 0x01C0_003F, 0x3F, 1),
        (4, 1): (0x122, 0x01C0_003F, 0x3F, 1),
        (4, 2): (0x143, 0x03C0_003F, 0xFFF, 1),
        (4, 3): (0, 0, 0, 0),
        (6, 0): (0x4, 0, 0, 0),  # ARAT
        (7, 0): _apply_features(7, (0, 0, 0, 0), feats),
        # TSC = crystal * EBX / EAX; 0x16: base and maximum MHz, bus (crystal) MHz.
        (0x15, 0): (CRYSTAL_HZ // 1000, tsc_khz, CRYSTAL_HZ, 0),
        (0x16, 0): (tsc_mhz, tsc_mhz, CRYSTAL_HZ // 1_000_000, 0),
        (0x8000_0000, 0): (max_ext, 0, 0, 0),
        (0x8000_0001, 0): _apply_features(0x8000_0001, (SIGNATURE, 0, 0, 0), feats),
        (0x8000_0005, 0): (0x01FF_01FF, 0x01FF_01FF, 0x4002_0140, 0x4002_0140),
        (0x8000_0006, 0): (0, 0x4200_4200, 0x0200_8140, 0),
        (0x8000_0007, 0): _apply_features(0x8000_0007, (0, 0, 0, 0), feats),
        (0x8000_0008, 0): (0x3024, 0, 0, 0),  # 36 physical bits (emu's address space), 48 linear
    }
    for leaf, regs in _brand_leaves().items():
        t[(leaf, 0)] = regs
    if local_apic:
        sig = struct.unpack("<III", KVM_SIGNATURE.encode())
        t[(0x4000_0000, 0)] = (0x4000_0001, *sig)
        clock = KVM_FEATURE_CLOCKSOURCE | KVM_FEATURE_CLOCKSOURCE2 | KVM_FEATURE_CLOCKSOURCE_STABLE_BIT
        t[(0x4000_0001, 0)] = (clock, 0, 0, 0)
    return t


def unicorn_lookup(table: dict[tuple[int, int], Regs], leaf: int, subleaf: int) -> Regs:
    if (leaf, subleaf) in table:
        return table[(leaf, subleaf)]
    if (leaf, 0) in table and leaf != 4:
        return table[(leaf, 0)]  # leaves without subleaves ignore ECX
    max_basic = table[(0, 0)][0]
    max_ext = table[(0x8000_0000, 0)][0]
    if leaf <= max_basic or 0x8000_0000 <= leaf <= max_ext:
        return (0, 0, 0, 0)  # a reserved leaf inside the range
    return table[(max_basic, 0)]


KVM_FEATURES = MODEL_FEATURES | KVM_EXTRAS
#: XCR0 components the model allows under KVM: x87, SSE (no AVX: the model has none).
XCR0_MODEL = 0b11
XSAVE_AREA_LEGACY = 512 + 64  # legacy region + XSAVE header


def shape_kvm(supported: list[CpuidEntry]) -> list[CpuidEntry]:
    """Cut KVM_GET_SUPPORTED_CPUID down to the model. The host's vendor stays (SYSCALL in
    compatibility mode, VMCALL vs VMMCALL and errata follow the real CPU underneath)."""
    out: list[CpuidEntry] = []
    for e in supported:
        e = CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
        if e.function == 1:
            # Family/model/stepping of the model; APIC ID 0, one logical CPU, CLFLUSH 8 qwords.
            wanted = _apply_features(1, e.regs(), KVM_FEATURES)
            e.set_regs((SIGNATURE, 8 << 8, wanted[2] & e.ecx, wanted[3] & e.edx))
        elif e.function == 7 and e.index == 0:
            e.set_regs(_mask(_apply_features(7, (0, 0, 0, 0), KVM_FEATURES), e.regs()))
        elif e.function == 7:
            e.set_regs((0, 0, 0, 0))
        elif e.function in (0x8000_0001, 0x8000_0007):
            e.set_regs(_mask(_apply_features(e.function, (0, 0, 0, 0), KVM_FEATURES), e.regs()))
        elif e.function == 0xD and e.index == 0:
            e.eax &= XCR0_MODEL
            e.ecx = XSAVE_AREA_LEGACY  # largest area for the components left: x87 + SSE
            e.edx = 0
        elif e.function == 0xD and e.index == 1:
            e.set_regs((e.eax & 1, 0, 0, 0))  # XSAVEOPT only; no compacted/supervisor states
        elif e.function == 0xD and e.index >= 2:
            e.set_regs((0, 0, 0, 0))
        elif e.function in (0x8000_0002, 0x8000_0003, 0x8000_0004):
            e.set_regs(_brand_leaves()[e.function])
        out.append(e)
    return out


def _mask(wanted: Regs, supported: Regs) -> Regs:
    return (wanted[0] & supported[0], wanted[1] & supported[1], wanted[2] & supported[2], wanted[3] & supported[3])


def kvm_vcpu_cpuid(entries: list[CpuidEntry], apic_id: int) -> list[CpuidEntry]:
    """The CPUID of the vCPU with `apic_id`. KVM_GET_SUPPORTED_CPUID knows no vCPU and reports the
    host's topology, so the topology leaves are written here: each vCPU is a package of its own,
    one core with one thread, as with QEMU's -smp N (and emu's Unicorn model). Leaf 1: the initial
    APIC ID in EBX[31:24], HTT clear, so EBX[23:16] stays 0. Leaf 4: no core or thread shares a
    cache (EAX[31:14] = 0). Leaves 0xB and 0x1F, where KVM has them: an SMT and a core level of
    one logical processor each, EDX the x2APIC ID. AMD's 0x80000008 ECX: one core (NC and
    ApicIdSize 0); 0x8000001E EAX: the extended APIC ID."""
    out = []
    levels = []  # the topology leaves (0xB, 0x1F) KVM has
    for e in entries:
        e = CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
        if e.function in (0xB, 0x1F):
            if e.function not in levels:
                levels.append(e.function)
                for index, level_type, count in ((0, 1, 1), (1, 2, 1), (2, 0, 0)):  # SMT, core, end
                    out.append(CpuidEntry(e.function, index, e.flags, 0, count, level_type << 8 | index, apic_id))
            continue
        if e.function == 1:
            e.ebx = (e.ebx & 0x00FF_FFFF) | apic_id << 24
        elif e.function == 4:
            e.eax &= 0x3FFF
        elif e.function == 0x8000_0008:
            e.ecx &= ~0xF0FF
        elif e.function == 0x8000_001E:
            e.eax = apic_id
        out.append(e)
    return out
