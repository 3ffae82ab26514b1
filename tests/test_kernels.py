"""Direct kernel boot end to end: the project's test kernels booted with --kernel/--initrd/--cmdline.

Each kernel (tests/guests/kernels/*.asm) reports on COM1 the entry state and the boot structures
it was handed (registers, control registers, selectors, GDT/IDT, page tables, zero page / PVH
start info / multiboot information, command line, initrd and module contents, the e820 map and
the MP table) and leaves through the debug-exit port. Every line is compared with what the boot
protocol and Firecracker's layout promise for a 96 MiB machine, on every backend.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from guests import kernels
from guests.backends import BACKEND_PARAMS, require

from emu.config import BackendName, MachineConfig
from emu.machine import run_machine

MEM = 96 << 20
CMDLINE = "console=ttyS0 emu-test root=/dev/vda"
DONE_STATUS = (0x10 << 1) | 1  # the kernels write 0x10 to the debug-exit port when they finish
INITRD = b"emu test initrd\n" + bytes((i * 7 + 3) & 0xFF for i in range(4984))  # 5000 bytes
MODULE = b"module one\n"

# 96 MiB of RAM: conventional memory up to the EBDA, the EBDA and BIOS area reserved, RAM from
# 1 MiB to 96 MiB, and KVM's private pages below the firmware area reserved.
E820 = """\
e820 entries=05
e820 0000000000000000 000000000009fc00 1
e820 000000000009fc00 0000000000000400 2
e820 00000000000e0000 0000000000020000 2
e820 0000000000100000 0000000005f00000 1
e820 00000000feffc000 0000000000004000 2
"""
MPTABLE = """\
mptable fp=0009fc00 fpsum=00 rev=04 table=0009fc10 sig=PCMP sum=00 len=0120 count=001d lapic=fee00000
mptable cpu apic=00 flags=03
mptable ioapic id=02 flags=01 addr=fec00000
mptable lint type=03 apic=00 lint=00
mptable lint type=01 apic=ff lint=01
mptable cpus=01 buses=01 ioapics=01 irqs=18 lints=02 irq_pin_mismatches=00
"""
LONG_MODE_ENTRY = """\
regs rax=0000000000000000 rbx=0000000000000000 rcx=0000000000000000 rdx=0000000000000000
regs rsi=0000000000007000 rdi=0000000000000000 rsp=0000000000008ff0 rbp=0000000000008ff0 rflags=0000000000000002
cr0=80000031 cr3=00009000 cr4=00000020 efer=00000500
seg cs=0008 ds=0010 es=0010 ss=0010 fs=0010 gs=0010 tr=0018
gdtr base=00000500 limit=001f idtr base=00000520 limit=0007
gdt 00af9b000000ffff 00cf93000000ffff 008f8b000000ffff
pt pml4[0]=000000000000a003 pdpt[0]=000000000000b003 pd[0]=0000000000000083 pd[1]=0000000000200083 \
pd[511]=000000003fe00083
fpu fcw=037f
"""
FLAT32 = """\
cr0=00000011 cr3=00000000 cr4=00000000 efer=00000000
seg cs=0008 ds=0010 es=0010 ss=0010 fs=0010 gs=0010 tr=0018
gdtr base=00000500 limit=001f idtr base=00000520 limit=0007
gdt 00cf9b000000ffff 00cf93000000ffff 00008b0000000067
"""


def file_line(addr: int, data: bytes) -> str:
    head = data.split(b"\n")[0][:24].decode()
    return f'addr={addr:08x} size={len(data):08x} sum={sum(data) & 0xFFFFFFFF:08x} head="{head}"'


def zero_page(version: str, setup_sects: str, loadflags: str, code32: str, cmdline_size: str, align: str,
              initrd_max: str, xloadflags: str, pref: str, init_size: str, initrd_addr: int) -> str:  # fmt: skip
    return (
        f"zp boot_flag=aa55 header=53726448 version={version} setup_sects={setup_sects} loader=ff "
        f"loadflags={loadflags} code32_start={code32}\n"
        f"zp cmd_line_ptr=00020000 cmdline_size={cmdline_size} kernel_alignment={align} "
        f"initrd_addr_max={initrd_max} xloadflags={xloadflags} pref_address={pref} init_size={init_size}\n"
        f'cmdline="{CMDLINE}"\n'
        f"initrd {file_line(initrd_addr, INITRD)}\n"
    )


@dataclass
class Files:
    dir: Path
    initrd: Path
    module: Path

    def kernel(self, name: str) -> Path:
        path = self.dir / f"{name}.bin"
        if not path.exists():
            path.write_bytes(kernels.build(name))
        return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Files]:
    d = tmp_path_factory.mktemp("kernels")
    (d / "initrd.img").write_bytes(INITRD)
    (d / "module1.txt").write_bytes(MODULE)
    yield Files(d, d / "initrd.img", d / "module1.txt")


# Initrd and modules go page-aligned at the top of RAM (96 MiB), the initrd highest; a bzImage's
# initrd_addr_max (64 MiB - 1 in bzimage64) caps the initrd's end.
INITRD_TOP = 0x5FFE000
MODULE_BELOW = 0x5FFD000


def expected(name: str, f: Files) -> str:
    kernel = f.kernel(name)
    if name == "vmlinux":
        zp = zero_page("0000", "00", "00", "00000000", f"{len(CMDLINE) + 1:08x}", "01000000", "00000000", "0000",
                       "0000000000000000", "00000000", INITRD_TOP)  # fmt: skip
        return "vmlinux: 64-bit entry\n" + LONG_MODE_ENTRY + zp + E820 + MPTABLE
    if name == "bzimage64":
        zp = zero_page("020f", "01", "01", "00100000", "000007ff", "00200000", "03ffffff", "0001",
                       "0000000001000000", "00400000", 0x3FFE000)  # fmt: skip
        return "bzimage64: 64-bit entry\n" + LONG_MODE_ENTRY + zp + E820 + MPTABLE
    if name == "bzimage32":
        zp = zero_page("020f", "01", "01", "00100000", "000000ff", "00200000", "7fffffff", "0000",
                       "0000000001000000", "00400000", INITRD_TOP)  # fmt: skip
        return (
            "bzimage32: 32-bit entry\n"
            "regs eax=00000000 ebx=00000000 ecx=00000000 edx=00000000 esi=00007000 edi=00000000 ebp=00000000 "
            "eflags=00000002\n"
            "cr0=00000011 cr3=00000000 cr4=00000000 efer=00000000\n"
            "seg cs=0010 ds=0018 es=0018 ss=0018 fs=0018 gs=0018 tr=0008\n"
            "gdtr base=00000500 limit=001f idtr base=00000520 limit=0007\n"
            "gdt 00008b0000000067 00cf9b000000ffff 00cf93000000ffff\n" + zp + E820 + MPTABLE
        )
    if name == "pvh":
        return (
            "pvh: 32-bit entry\n"
            "regs eax=00000000 ebx=00006000 ecx=00000000 edx=00000000 esi=00000000 edi=00000000 ebp=00000000 "
            "eflags=00000002\n" + FLAT32 + "start_info magic=336ec578 version=00000001 flags=00000000 "
            "nr_modules=00000002 modlist=00006040 cmdline=00020000 rsdp=00000000 memmap=00007000 "
            "memmap_entries=00000005\n"
            f'cmdline="{CMDLINE}"\n'
            f"module {file_line(INITRD_TOP, INITRD)}\n"
            f'module cmdline="{f.initrd}"\n'
            f"module {file_line(MODULE_BELOW, MODULE)}\n"
            f'module cmdline="{f.module}"\n' + E820 + MPTABLE
        )
    assert name.startswith("multiboot")
    bss = "bss first=00000000 last=00000000\n" if name == "multiboot_aout" else ""
    mmap = "".join(f"mmap size=14 {line}\n" for line in E820.splitlines()[1:])
    return (
        f"{name}: entry\n" + bss + "regs eax=2badb002 ebx=00006000 ecx=00000000 edx=00000000 esi=00000000 "
        "edi=00000000 ebp=00000000 eflags=00000002\n"
        + FLAT32
        # flags: mem, cmdline, mods, mmap, boot loader name; 639 KiB low, 95 MiB from 1 MiB up.
        + "mbi flags=0000024d mem_lower=0000027f mem_upper=00017c00 mods_count=00000002 mmap_length=00000078\n"
        f'cmdline="{kernel} {CMDLINE}"\n'
        'loader="emu"\n'
        f"module {file_line(INITRD_TOP, INITRD)}\n"
        f'module string="{f.initrd}"\n'
        f"module {file_line(MODULE_BELOW, MODULE)}\n"
        f'module string="{f.module}"\n' + mmap + MPTABLE
    )


PT_LINE = re.compile(r"^pt ")


def without_accessed_dirty(serial: str) -> str:
    """The CPU sets the accessed/dirty bits (5, 6) in the page-table entries it walks."""
    out = []
    for line in serial.splitlines(keepends=True):
        if PT_LINE.match(line):
            line = re.sub(r"=([0-9a-f]{16})", lambda m: f"={int(m.group(1), 16) & ~0x60:016x}", line)
        out.append(line)
    return "".join(out)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("name", kernels.NAMES)
def test_kernel_boots_with_the_promised_state(files: Files, name: str, backend: BackendName) -> None:
    require(backend)
    modules = [files.module] if name.startswith(("multiboot", "pvh")) else []
    cfg = MachineConfig(
        backend=backend, mem=MEM, kernel=files.kernel(name), initrd=files.initrd, cmdline=CMDLINE,
        modules=modules, timeout=60,
    )  # fmt: skip
    r = run_machine(cfg)
    serial = r.serial.decode("latin-1")
    context = f"kernel {name} on {backend.value}: status {r.status} ({r.reason})\n{serial}"
    want = expected(name, files) + "done\n"
    got = without_accessed_dirty(serial)
    assert got.splitlines() == want.splitlines(), context
    assert r.status == DONE_STATUS, context


def test_every_kernel_source_is_tested() -> None:
    on_disk = {p.stem for p in kernels.KERNELS.glob("*.asm")}
    assert on_disk == set(kernels.NAMES)
