"""The direct kernel boot loaders without running a CPU: detection, entry states, boot structures,
and every kind of bad input a user can hand `--kernel`, `--initrd`, `--module` and `--cmdline`.

Bad input must give one EmuError line (the CLI prints it and exits 2) and never a traceback or a
write outside guest RAM.
"""

from __future__ import annotations

import itertools
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from guests import kernels
from guests.kernels import EM_386, EM_AARCH64, EM_ARM, Seg, make_elf, multiboot_header, xen_pvh_note

from emu import layout
from emu.config import BootKind
from emu.cpu import x86
from emu.cpu.state import CpuState, Mode
from emu.errors import EmuError, ExitStatus
from emu.firmware.boot.kernel import detect, load_kernel, read_inputs
from emu.firmware.tables import mptable
from emu.memory import GuestMemory

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20
CODE = b"\xf4" * 64  # hlt: the loaders never run it


class Loaded:
    def __init__(self, memory: GuestMemory, state: CpuState) -> None:
        self.memory = memory
        self.state = state


@pytest.fixture
def boot(tmp_path: Path) -> Iterator:
    """boot(kernel_bytes, **MachineConfig fields, initrd=bytes, modules=[bytes]) -> Loaded."""
    memories: list[GuestMemory] = []

    def run(kernel: bytes, *, mem: int = 64 * MiB, initrd: bytes | None = None,
            modules: tuple[bytes, ...] = (), prefill: int | None = None, **cfg: object) -> Loaded:  # fmt: skip
        kpath = tmp_path / "kernel.bin"
        kpath.write_bytes(kernel)
        ipath = None
        if initrd is not None:
            ipath = tmp_path / "initrd.img"
            ipath.write_bytes(initrd)
        mpaths = []
        for i, m in enumerate(modules):
            mpaths.append(tmp_path / f"module{i}.bin")
            mpaths[-1].write_bytes(m)
        memory = GuestMemory(mem)
        memories.append(memory)
        if prefill is not None:
            memory.fill(0, memory.low_ram_end, prefill)
        boot = cfg.pop("boot", BootKind.AUTO)
        inputs = read_inputs(kpath, ipath, mpaths, str(cfg.pop("cmdline", "")))
        assert not cfg, f"unknown options {cfg}"
        return Loaded(memory, load_kernel(memory, inputs, boot))  # type: ignore[arg-type]

    yield run
    for m in memories:
        m.close()


def vmlinux(paddr: int = 0x100000, **kw: object) -> bytes:
    return make_elf([Seg(paddr, CODE)], kw.pop("entry", paddr), **kw)  # type: ignore[arg-type]


# -- detection ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("vmlinux", BootKind.ELF),
        ("bzimage64", BootKind.BZIMAGE),
        ("bzimage32", BootKind.BZIMAGE),
        ("pvh", BootKind.PVH),
        ("multiboot_elf", BootKind.MULTIBOOT),
        ("multiboot_aout", BootKind.MULTIBOOT),
    ],
)
def test_detects_each_test_kernel(name: str, kind: BootKind) -> None:
    assert detect(kernels.build(name)) is kind


def test_multiboot_header_wins_over_pvh_note_and_pvh_over_vmlinux() -> None:
    note = xen_pvh_note(0x100000)
    both = make_elf([Seg(0x100000, CODE)], 0x100000, note=note, after_headers=multiboot_header(0x3))
    assert detect(both) is BootKind.MULTIBOOT
    assert detect(make_elf([Seg(0x100000, CODE)], 0x100000, note=note)) is BootKind.PVH
    assert detect(make_elf([Seg(0x100000, CODE)], 0x100000, bits=32, machine=EM_386, note=note)) is BootKind.PVH


def test_a_multiboot_header_with_a_bad_checksum_is_ignored_in_favour_of_the_elf() -> None:
    bad = make_elf([Seg(0x100000, CODE)], 0x100000, after_headers=multiboot_header(0x3, checksum=1))
    assert detect(bad) is BootKind.ELF


# -- entry states ---------------------------------------------------------------------------------
def test_vmlinux_long_mode_entry_state(boot) -> None:
    s = boot(vmlinux(entry=0x100010)).state
    assert s.mode is Mode.LONG and s.rip == 0x100010
    assert (s.rsi, s.rsp, s.rbp, s.rflags) == (0x7000, 0x8FF0, 0x8FF0, 0x2)
    assert s.rax == s.rbx == s.rcx == s.rdx == s.rdi == 0
    assert s.cr0 & (x86.Cr0.PE | x86.Cr0.PG | x86.Cr0.ET | x86.Cr0.NE) == 0x80000031
    assert not s.cr0 & (x86.Cr0.CD | x86.Cr0.NW)
    assert (s.cr3, s.cr4, s.efer) == (0x9000, x86.Cr4.PAE, x86.Efer.LME | x86.Efer.LMA)
    cs = s.cs
    assert (cs.selector, cs.base, cs.limit, cs.type, cs.s, cs.present, cs.l, cs.db, cs.g) == (
        0x08, 0, 0xFFFFFFFF, 0xB, 1, 1, 1, 0, 1,
    )  # fmt: skip
    for seg in (s.ds, s.es, s.fs, s.gs, s.ss):
        assert (seg.selector, seg.base, seg.limit, seg.type, seg.db, seg.g, seg.present) == (
            0x10, 0, 0xFFFFFFFF, 0x3, 1, 1, 1,
        )  # fmt: skip
    assert (s.tr.selector, s.tr.type, s.tr.s, s.tr.present, s.tr.limit) == (0x18, 0xB, 0, 1, 0xFFFFFFFF)
    assert (s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit) == (0x500, 31, 0x520, 7)
    assert (s.fpu.fcw, s.fpu.mxcsr) == (0x37F, 0x1F80)


def test_vmlinux_gdt_page_tables_and_zero_page(boot) -> None:
    m = boot(vmlinux(), cmdline="console=ttyS0", initrd=b"x" * 5000).memory
    assert struct.unpack("<4Q", m.read(0x500, 32)) == (
        0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF, 0x008F8B000000FFFF,
    )  # fmt: skip
    assert m.read(0x520, 8) == bytes(8)
    assert m.read_u64(0x9000) == 0xA003 and m.read_u64(0xA000) == 0xB003
    assert [m.read_u64(0xB000 + 8 * i) for i in (0, 1, 511)] == [0x83, 0x200083, 0x3FE00083]
    zp = m.read(0x7000, 4096)
    assert zp[0x202:0x206] == b"HdrS" and struct.unpack_from("<H", zp, 0x1FE)[0] == 0xAA55
    assert zp[0x210] == 0xFF  # type_of_loader: undefined boot loader
    assert struct.unpack_from("<I", zp, 0x228)[0] == 0x20000 and m.read(0x20000, 14) == b"console=ttyS0\0"
    assert struct.unpack_from("<I", zp, 0x230)[0] == 16 * MiB  # kernel_alignment, as Firecracker
    ramdisk, size = struct.unpack_from("<II", zp, 0x218)
    assert (ramdisk, size) == ((64 * MiB - 5000) & ~0xFFF, 5000)
    assert m.read(ramdisk, size) == b"x" * 5000


def test_vmlinux_virtual_entry_is_translated_and_bss_is_zeroed(boot) -> None:
    kernel_map = 0xFFFFFFFF80000000
    elf = make_elf([Seg(0x200000, CODE, memsz=0x3000, vaddr=kernel_map + 0x200000)], kernel_map + 0x200020)
    loaded = boot(elf, prefill=0xAA)
    assert loaded.state.rip == 0x200020
    assert loaded.memory.read(0x200000, len(CODE)) == CODE
    assert loaded.memory.read(0x200000 + len(CODE), 0x3000 - len(CODE)) == bytes(0x3000 - len(CODE))


def test_boot_elf_forces_the_64bit_entry_of_a_pvh_kernel(boot) -> None:
    image = kernels.build("pvh")
    e_entry = struct.unpack_from("<Q", image, 24)[0]
    forced = boot(image, boot=BootKind.ELF).state
    assert forced.mode is Mode.LONG and forced.rip == e_entry and forced.rsi == 0x7000
    auto = boot(image).state
    assert auto.mode is Mode.PROTECTED32 and auto.rip != e_entry


def test_pvh_entry_state_and_start_info(boot) -> None:
    elf = make_elf([Seg(0x100000, CODE)], 0x100000, bits=32, machine=EM_386, note=xen_pvh_note(0x100008, 4))
    loaded = boot(elf, cmdline="quiet", initrd=b"INITRD", modules=(b"MOD",))
    s, m = loaded.state, loaded.memory
    assert s.mode is Mode.PROTECTED32 and s.rip == 0x100008 and s.rbx == 0x6000
    assert (s.cr0, s.cr3, s.cr4, s.efer, s.rflags) == (0x11, 0, 0, 0, 0x2)
    assert (s.cs.selector, s.cs.db, s.cs.limit, s.ds.selector, s.ss.limit) == (0x08, 1, 0xFFFFFFFF, 0x10, 0xFFFFFFFF)
    assert (s.tr.selector, s.tr.limit, s.tr.type, s.tr.g) == (0x18, 0x67, 0xB, 0)
    magic, version, flags, nmods, modlist, cmdline, rsdp, memmap, entries, _ = struct.unpack(
        "<IIIIQQQQII", m.read(0x6000, 56)
    )
    assert (magic, version, flags, nmods, rsdp) == (0x336EC578, 1, 0, 2, 0)
    assert m.read(cmdline, 6) == b"quiet\0"
    mods = [struct.unpack("<QQQQ", m.read(modlist + 32 * i, 32)) for i in range(2)]
    assert [m.read(a, n) for a, n, _, _ in mods] == [b"INITRD", b"MOD"]
    assert all(a % 4096 == 0 for a, *_ in mods)
    table = [struct.unpack("<QQII", m.read(memmap + 24 * i, 24))[:3] for i in range(entries)]
    assert (0x100000, 63 * MiB, 1) in table and (0, 0x9FC00, 1) in table


def test_multiboot_info_structure(boot) -> None:
    loaded = boot(kernels.build("multiboot_aout"), mem=32 * MiB, cmdline="a=1", initrd=b"I" * 10, modules=(b"M",))
    s, m = loaded.state, loaded.memory
    assert (s.rax, s.rbx, s.mode) == (0x2BADB002, 0x6000, Mode.PROTECTED32)
    flags, lower, upper = struct.unpack("<III", m.read(0x6000, 12))
    assert flags & 0x24D == 0x24D
    assert (lower, upper) == (639, 31 * 1024)
    cmdline, count, mods = struct.unpack("<III", m.read(0x6010, 12))
    assert m.read(cmdline, 512).split(b"\0")[0].endswith(b"kernel.bin a=1")
    entries = [struct.unpack("<IIII", m.read(mods + 16 * i, 16)) for i in range(count)]
    assert [m.read(a, e - a) for a, e, _, _ in entries] == [b"I" * 10, b"M"]
    assert m.read(struct.unpack("<I", m.read(0x6040, 4))[0], 4) == b"emu\0"


def test_bzimage_zero_page_keeps_the_kernels_header(boot) -> None:
    image = kernels.build("bzimage64")
    loaded = boot(image)
    zp = loaded.memory.read(0x7000, 4096)
    for off, size in ((0x1F1, 1), (0x206, 2), (0x230, 4), (0x236, 2), (0x238, 4), (0x258, 8), (0x260, 4)):
        assert zp[off : off + size] == image[off : off + size], hex(off)
    assert loaded.state.rip == 0x100200 and loaded.state.mode is Mode.LONG
    setup = (image[0x1F1] + 1) * 512
    assert loaded.memory.read(0x100000, len(image) - setup) == image[setup:]


def test_bzimage32_entry_follows_the_32bit_boot_protocol(boot) -> None:
    s = boot(kernels.build("bzimage32")).state
    assert s.mode is Mode.PROTECTED32 and s.rip == 0x100000
    assert (s.cs.selector, s.ds.selector, s.es.selector, s.ss.selector) == (0x10, 0x18, 0x18, 0x18)
    assert (s.rsi, s.rbx, s.rbp, s.rdi) == (0x7000, 0, 0, 0)
    assert not s.rflags & x86.FLAG_IF and not s.paging


def mptable_entries(blob: bytes) -> list[bytes]:
    """The configuration table's entries, after checking both headers."""
    fp, table = blob[:16], blob[16:]
    assert fp[:4] == b"_MP_" and sum(fp) % 256 == 0 and fp[8:10] == b"\x01\x04"
    assert struct.unpack_from("<I", fp, 4)[0] == 0x9FC10
    length, count, lapic = struct.unpack_from("<H", table, 4)[0], *struct.unpack_from("<HI", table, 34)
    assert table[:4] == b"PCMP" and length == len(table) and sum(table) % 256 == 0 and lapic == 0xFEE00000
    entries, pos = [], 44
    while pos < length:
        size = 20 if table[pos] == 0 else 8
        entries.append(table[pos : pos + size])
        pos += size
    assert count == len(entries)
    return entries


def test_mptable_layout() -> None:
    entries = mptable_entries(mptable.build(0x9FC00))
    assert len(entries) == 1 + 1 + 1 + 24 + 2
    types = [e[0] for e in entries]
    assert types == sorted(types)  # the spec's order: processors, buses, IOAPICs, I/O ints, local ints
    assert entries[0][1] == 0 and entries[0][3] == 0x3  # APIC id 0, enabled BSP
    assert entries[1][2:] == b"ISA   "
    assert entries[2][1] == 2 and struct.unpack_from("<I", entries[2], 4)[0] == 0xFEC00000
    irqs = [(e[5], e[6], e[7]) for e in entries if e[0] == 3]
    assert irqs == [(n, 2, n) for n in range(24)]
    lints = [(e[1], e[6], e[7]) for e in entries if e[0] == 4]
    assert lints == [(3, 0, 0), (1, 0xFF, 1)]  # ExtINT -> LINT0, NMI -> LINT1 of every APIC


def test_mptable_with_four_cpus() -> None:
    entries = mptable_entries(mptable.build(0x9FC00, cpus=4))
    cpus = [(e[1], e[2], e[3], *struct.unpack_from("<II", e, 4)) for e in entries if e[0] == 0]
    assert cpus == [(n, 0x14, 0x3 if n == 0 else 0x1, 0x600, 0x201) for n in range(4)]  # only CPU 0 is the BSP
    (ioapic,) = [e for e in entries if e[0] == 2]
    assert (ioapic[1], ioapic[2], ioapic[3]) == (5, 0x11, 1)  # id cpus + 1, version 0x11, usable
    assert [(e[5], e[6], e[7]) for e in entries if e[0] == 3] == [(n, 5, n) for n in range(24)]
    assert len(entries) == 4 + 1 + 1 + 24 + 2


def test_mptable_irq0_on_pin_2() -> None:
    entries = mptable_entries(mptable.build(0x9FC00, irq0_pin=2))
    irqs = [(e[5], e[7]) for e in entries if e[0] == 3]
    assert irqs == [(0, 2), (1, 1)] + [(n, n) for n in range(3, 24)]  # no entry for IRQ 2, the cascade
    with pytest.raises(EmuError, match="pin 24"):
        mptable.build(0x9FC00, irq0_pin=24)


# -- bad input ------------------------------------------------------------------------------------
def error_of(load, kernel: bytes, **kw: object) -> str:
    with pytest.raises(EmuError) as info:
        load(kernel, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def truncated(name: str, keep: float) -> bytes:
    data = kernels.build(name)
    return data[: int(len(data) * keep)]


@pytest.mark.parametrize(
    ("kernel", "words"),
    [
        (b"just some text, not a kernel\n" * 10, ["not a kernel emu can boot"]),
        (b"\x7fELF\x02\x01\x01" + bytes(20), ["not a valid ELF"]),
        (truncated("vmlinux", 0.5), ["truncated ELF"]),
        (truncated("pvh", 0.5), ["truncated ELF"]),
        (truncated("bzimage64", 0.8), ["truncated bzImage"]),
        (truncated("bzimage64", 0.05), ["truncated bzImage"]),
        (make_elf([Seg(0x100000, CODE)], 0x100000, machine=EM_AARCH64), ["AArch64", "not an x86 kernel"]),
        (make_elf([Seg(0x100000, CODE)], 0x100000, bits=32, machine=EM_ARM), ["ARM", "not an x86 kernel"]),
        (make_elf([Seg(0x100000, CODE)], 0x100000, bits=32, machine=EM_386), ["32-bit i386", "PVH"]),
        (make_elf([Seg(0x100000, CODE)], 0x100000, e_type=1), ["ET_REL"]),
        (make_elf([], 0x100000), ["no loadable"]),
        (vmlinux(paddr=0x8000), ["below 1 MiB"]),
        (vmlinux(paddr=0x7FFFF0), ["does not fit in guest RAM"]),
        (vmlinux(paddr=0x100000, entry=0x300000), ["entry point 0x300000", "not inside"]),
        (make_elf([Seg(0x100000, CODE)], 0x100000, note=xen_pvh_note(0x500000)), ["PVH entry 0x500000"]),
        (make_elf([Seg(0x100000, CODE)], 0x100000, note=xen_pvh_note(0x100000, 2)), ["PVH entry note"]),
        (b"\0" * 64 + multiboot_header(0x3, checksum=5), ["valid checksum"]),
        (b"\0" * 64 + struct.pack("<I", 0xE85250D6) + bytes(64), ["multiboot2"]),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else "kernel",
)
def test_bad_kernel_files(boot, kernel: bytes, words: list[str]) -> None:
    msg = error_of(boot, kernel, mem=8 * MiB)
    for w in words:
        assert w in msg, msg


def aout(flags: int = 0x10003, header_addr: int = 0x100000, load_addr: int = 0x100000, load_end: int = 0,
         bss_end: int = 0, entry: int = 0x100000, size: int = 4096) -> bytes:  # fmt: skip
    hdr = multiboot_header(flags, addresses=(header_addr, load_addr, load_end, bss_end, entry))
    return hdr + b"\xf4" * (size - len(hdr))


@pytest.mark.parametrize(
    ("kernel", "words"),
    [
        (aout(flags=0x10007), ["video mode", "flag bit 2"]),
        (aout(flags=0x10013), ["features emu does not know", "0x10"]),
        (aout(load_end=0x110000), ["truncated"]),
        (aout(header_addr=0x100000, load_addr=0x100010), ["load_addr"]),
        (aout(header_addr=0x100040), ["before the start of the file"]),
        (aout(load_end=0x100800, bss_end=0x100400), ["bss_end_addr"]),
        (aout(entry=0x200000), ["entry_addr"]),
        (aout(header_addr=0x1000, load_addr=0x1000, entry=0x1000), ["below 1 MiB"]),
        (aout(flags=0x3), ["not an ELF"]),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else "kernel",
)
def test_bad_multiboot_kernels(boot, kernel: bytes, words: list[str]) -> None:
    msg = error_of(boot, kernel)
    for w in words:
        assert w in msg, msg


def with_header_field(name: str, offset: int, fmt: str, value: int) -> bytes:
    image = bytearray(kernels.build(name))
    struct.pack_into(fmt, image, offset, value)
    return bytes(image)


def test_bzimage_protocol_errors(boot) -> None:
    assert "zImage" in error_of(boot, with_header_field("bzimage64", 0x211, "<B", 0))
    assert "zImage" in error_of(boot, with_header_field("bzimage64", 0x206, "<H", 0x0105))
    assert "below 1 MiB" in error_of(boot, with_header_field("bzimage64", 0x214, "<I", 0x10000))
    # pref_address 16 MiB + init_size 4 MiB: the kernel cannot decompress itself in 16 MiB of RAM.
    assert "init_size" in error_of(boot, kernels.build("bzimage64"), mem=16 * MiB)


def test_cmdline_limits(boot) -> None:
    assert "at most 255" in error_of(boot, kernels.build("bzimage32"), cmdline="x" * 256)
    boot(kernels.build("bzimage32"), cmdline="x" * 255)
    assert "at most 2047" in error_of(boot, vmlinux(), cmdline="x" * 2048)
    boot(vmlinux(), cmdline="x" * 2047)
    assert "NUL" in error_of(boot, vmlinux(), cmdline="a\0b")


def test_initrd_that_does_not_fit(boot) -> None:
    # 8 MiB of RAM with the kernel at 1 MiB: 7.5 MiB of initrd would have to overlap the kernel.
    msg = error_of(boot, vmlinux(), mem=8 * MiB, initrd=b"\0" * (15 * MiB // 2))
    assert "initrd" in msg and "does not fit" in msg and "kernel" in msg
    # bzimage64 says initrd_addr_max = 64 MiB - 1; with plenty of RAM above, the initrd must still
    # end below 64 MiB, where the kernel's decompression area leaves too little room.
    msg = error_of(boot, kernels.build("bzimage64"), mem=256 * MiB, initrd=b"\0" * (48 * MiB))
    assert "initrd" in msg and "0x4000000" in msg
    loaded = boot(kernels.build("bzimage64"), mem=256 * MiB, initrd=b"\0" * (40 * MiB))
    ramdisk, size = struct.unpack("<II", loaded.memory.read(0x7218, 8))
    assert ramdisk + size <= 64 * MiB and ramdisk >= 20 * MiB


def test_wrong_forced_protocol_and_misplaced_modules(boot) -> None:
    assert "no PVH entry note" in error_of(boot, vmlinux(), boot=BootKind.PVH)
    assert "not a bzImage" in error_of(boot, vmlinux(), boot=BootKind.BZIMAGE)
    assert "no multiboot header" in error_of(boot, vmlinux(), boot=BootKind.MULTIBOOT)
    assert "not an ELF" in error_of(boot, kernels.build("bzimage64"), boot=BootKind.ELF)
    assert "--module" in error_of(boot, vmlinux(), modules=(b"m",))


def test_missing_and_empty_files(boot, tmp_path: Path) -> None:
    with _closing(GuestMemory(8 * MiB)) as m, pytest.raises(EmuError, match=r"kernel .*nope: no such file"):
        load_kernel(m, read_inputs(tmp_path / "nope", None, [], ""), BootKind.AUTO)
    assert "empty" in error_of(boot, b"")
    (tmp_path / "k").write_bytes(vmlinux())
    with _closing(GuestMemory(8 * MiB)) as m, pytest.raises(EmuError, match=r"initrd .*no such file"):
        load_kernel(m, read_inputs(tmp_path / "k", tmp_path / "missing.img", [], ""), BootKind.AUTO)


class _closing:
    def __init__(self, memory: GuestMemory) -> None:
        self.memory = memory

    def __enter__(self) -> GuestMemory:
        return self.memory

    def __exit__(self, *exc: object) -> None:
        self.memory.close()


def test_cli_reports_a_bad_kernel_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad-file"
    bad.write_bytes(b"MZ this is not a kernel" * 20)
    p = subprocess.run(
        [sys.executable, "-m", "emu.cli", "run", "--kernel", str(bad)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == ExitStatus.USAGE, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "bad-file" in lines[0] and "not a kernel emu can boot" in lines[0]


def test_layout_boot_structures_do_not_overlap() -> None:
    spans = [
        (layout.BOOT_GDT_ADDR, layout.BOOT_IDT_ADDR),
        (layout.BOOT_IDT_ADDR, layout.BOOT_IDT_ADDR + 8),
        (layout.BOOT_INFO_ADDR, layout.BOOT_INFO_END),
        (layout.ZERO_PAGE_ADDR, layout.ZERO_PAGE_ADDR + 4096),
        (layout.BOOT_PML4_ADDR, layout.BOOT_PD_ADDR + 4096),
        (layout.CMDLINE_ADDR, layout.CMDLINE_ADDR + layout.CMDLINE_MAX),
        (layout.BOOT_STRINGS_ADDR, layout.BOOT_STRINGS_END),
        (layout.MPTABLE_AREA_START, layout.MPTABLE_AREA_END),
    ]
    spans.sort()
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))
    assert layout.BOOT_STACK_TOP < layout.BOOT_PML4_ADDR and layout.BOOT_STACK_TOP > layout.ZERO_PAGE_ADDR + 4096
