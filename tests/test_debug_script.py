"""`emu debug --script` as a user meets it: gdb-named commands on the debug test guest print their
results; a bad command is one error line with status 2; without --script, one line about the TUI."""

from __future__ import annotations

import lzma
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from guests.backends import BACKEND_PARAMS, require
from guests.cli import emu

from emu.config import BackendName
from emu.errors import ExitStatus
from emu.tools.asm import assemble_file
from emu.tools.guests import LinuxGuest

GUEST = Path(__file__).parent / "guests" / "debug" / "modes.asm"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("debug") / "modes.bin"
    path.write_bytes(assemble_file(GUEST))
    return path


def emu_debug(*args: str, script: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    extra = ["--script", "-"] if script is not None else []
    return emu("debug", *args, *extra, stdin=script or "", timeout=timeout)


SCRIPT = """\
info mode
si 3                      # a comment
b 0:8030
c
ni
p $rbx
catch mode
c
c
delete
until 0x8200
info mode
info gdt
page 0x8240
x/2xw 0x8000
xp/1xb 0x8000
info break
tbreak 0x8240 if dword [0x700] == 2
c
info vga
c
info serial
"""


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_script_walks_the_guest_through_its_modes(image: Path, backend: BackendName) -> None:
    require(backend)
    p = emu_debug("--backend", backend.value, "--image", str(image), "--load-addr", "0x8000", script=SCRIPT)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    expected = [
        "real (16-bit code), paging off, CPL 0",
        "stopped (step, 3 instructions): 3 instructions executed",
        "=> 0000:8005 [real]",
        "breakpoint 1 at linear 0x8030 (0:8030)",
        "stopped (breakpoint): breakpoint 1 at 0:8030",
        "=> 0000:8030 [real]  0x8030: e8 64 00",
        "stepped over the call to 0x8033",
        "$rbx = 0x7 (7)",
        "catchpoint 2: mode real -> protected16",
        "catchpoint 2: mode protected16 -> protected32",
        "stopped (until",
        "long64 (64-bit code), paging on, CPL 0",
        "code segment 64-bit, readable",
        "PD    table 0x3000 [  0] = 0x00000000000000a3 [P W A PS]",
        "-> physical 0x8240 (2048 KiB page",
        "0x8000:  0x8ec031fa  0x8ec08ed8",
        "p:0x8000:  0xfa",
        "temporary breakpoint 3 at linear 0x8240 (0x8240) if dword [0x700] == 2",
        "stopped (breakpoint",
        "OK",
        "stopped (halted",
        "exit status 0): guest halted with interrupts disabled",
        "RPL",
    ]
    pos = 0
    for line in expected:
        found = out.find(line, pos)
        assert found >= 0, f"missing (in order) {line!r} in:\n{out}"
        pos = found + len(line)
    assert p.stderr == ""


def test_unicorn_only_commands(image: Path) -> None:
    script = "catch exception 6\nc\nsi 4\nrsi 2\ninfo history 2\n"
    p = emu_debug("--image", str(image), "--load-addr", "0x8000", script=script)
    assert p.returncode == 0, p.stderr
    assert "catchpoint 1: exception 0x6 (UD) delivered" in p.stdout
    assert "stopped (step): stepped back 2 instructions" in p.stdout
    assert "history (last 2, oldest first):" in p.stdout


def test_kvm_reports_what_it_cannot_do(image: Path) -> None:
    require(BackendName.KVM)
    p = emu_debug("--backend", "kvm", "--image", str(image), "--load-addr", "0x8000", script="si\ncatch interrupt\n")
    assert p.returncode == ExitStatus.USAGE
    assert p.stderr.strip() == (
        "emu: error: line 2: catch interrupt: catch interrupt: KVM delivers interrupts inside the kernel "
        "(in-kernel irqchip)"
    )
    assert "stopped (step, 1 instruction)" in p.stdout  # the lines before it ran


@pytest.mark.parametrize(
    ("script", "words"),
    [
        ("si\nfrobnicate\nsi\n", ("line 2: frobnicate", "unknown command")),
        ("b\n", ("line 1", "break needs a location")),
        ("b 0x8000 if rax ==\n", ("line 1", "expected more")),
        ("x/4zw 0x8000\n", ("line 1", "bad format")),
        ("si 0\n", ("line 1", "at least 1")),
        ("watch 0x600 0\n", ("line 1", "at least 1")),
        ("catch exception\n", ("line 1", "needs a vector")),
        ("delete 9\n", ("line 1", "no breakpoint, watchpoint or catchpoint number 9")),
        ("until 0x8200\nx/4xw 0x40000000\n", ("line 2", "cannot read 16 bytes at linear 0x40000000", "PDPT")),
    ],
)
def test_bad_commands_are_one_error_line(image: Path, script: str, words: tuple[str, ...]) -> None:
    p = emu_debug("--image", str(image), "--load-addr", "0x8000", script=script)
    assert p.returncode == ExitStatus.USAGE
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emu: error: "), p.stderr
    for w in words:
        assert w in lines[0]


def test_without_script_or_terminal_points_to_script_mode(image: Path) -> None:
    p = emu_debug("--image", str(image))  # stdin and stdout are pipes: no terminal for the UI
    assert p.returncode == ExitStatus.USAGE
    assert p.stderr.strip().splitlines() == [
        "emu: the debugger's UI needs a terminal (stdin and stdout); run commands headless with --script FILE "
        "(or --script - to read them from stdin); `help` in a script lists them"
    ]


def test_missing_script_file(image: Path, tmp_path: Path) -> None:
    p = emu("debug", "--image", str(image), "--script", str(tmp_path / "nope"), timeout=60)
    assert p.returncode == ExitStatus.USAGE
    assert p.stderr.strip() == f"emu: error: --script {tmp_path / 'nope'}: No such file or directory"


ELF_KERNEL = """
bits 64
section .text
global _start, kernel_main, helper
_start:
    mov ecx, 3
    call kernel_main
    cli
    hlt
kernel_main:
    call helper
    loop kernel_main
    ret
helper:
    nop
    ret
"""


def test_symbols_of_a_kernel_elf(tmp_path: Path) -> None:
    """A --kernel ELF with a symbol table: breakpoints by name and <symbol+off> in listings."""
    nasm, ld = shutil.which("nasm"), shutil.which("ld")
    if nasm is None or ld is None:
        pytest.skip("needs nasm and ld (binutils) to link an ELF with symbols")
    src, obj, elf = tmp_path / "k.asm", tmp_path / "k.o", tmp_path / "k.elf"
    src.write_text(ELF_KERNEL)
    subprocess.run([nasm, "-f", "elf64", "-o", str(obj), str(src)], check=True)
    subprocess.run([ld, "-o", str(elf), "-e", "_start", "-Ttext=0x200000", "-z", "max-page-size=0x1000", str(obj)],
                   check=True)  # fmt: skip
    p = emu_debug("--kernel", str(elf), "--boot", "elf", script="b helper\nc\nc\nx/2i kernel_main\ninfo break\n")
    assert p.returncode == 0, p.stderr
    helper = symbol_address(elf, "helper")
    lines = p.stdout.splitlines()
    assert lines[0] == f"breakpoint 1 at linear {helper:#x} (helper)"
    assert f"{helper:#x} <helper>:" in p.stdout
    # the listing names the function it shows and the target of its call
    assert any("<kernel_main>:" in line and f"call {helper:#x} <helper>" in line for line in lines), p.stdout
    assert lines[-1].endswith("hit 2")


def symbol_address(elf: Path, name: str) -> int:
    from elftools.elf.elffile import ELFFile

    with elf.open("rb") as f:
        table = ELFFile(f).get_section_by_name(".symtab")
        return next(s["st_value"] for s in table.iter_symbols() if s.name == name)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_info_apic_shows_the_power_on_platform(image: Path, backend: BackendName) -> None:
    """Under Unicorn emu's local APIC starts in virtual-wire mode (LINT0 ExtINT for the 8259s, LINT1
    NMI) next to an IOAPIC whose ID follows the CPUs'; KVM's in-kernel ones are not decoded."""
    require(backend)
    p = emu_debug("--backend", backend.value, "--image", str(image), "--load-addr", "0x8000", script="info apic\n")
    assert p.returncode == 0, p.stderr
    if backend is BackendName.KVM:
        assert "the local APIC and IOAPIC are not decoded here" in p.stdout
        return
    assert "local APIC 0 (xapic, software-disabled, base 0xfee00000, BSP)" in p.stdout
    assert re.search(r"LVT lint0 +extint +vector 0x00\n", p.stdout) and re.search(r"LVT lint1 +nmi ", p.stdout)
    assert "IOAPIC 2 (version 0x11):" in p.stdout


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_several_cpus_each_shown_and_chosen(backend: BackendName, tmp_path: Path) -> None:
    """--smp 4: a breakpoint on the APs' STARTUP trampoline stops the machine on the first AP to
    arrive, which commands then show; continuing steps that AP off the breakpoint; at the end
    `info cpus` has all four halted and `cpu N` chooses whose registers print."""
    require(backend)
    data = assemble_file(Path(__file__).parent / "guests" / "snippets" / "smp_startup.asm")
    image = tmp_path / "smp_startup.bin"
    image.write_bytes(data)
    trampoline = 0x8000 + (len(data) - 1) // 4096 * 4096  # the last page: where STARTUP sends the APs
    script = f"b {trampoline:#x}\nc\ninfo cpus\ndelete\nc\ninfo cpus\ncpu 3\np $rip\ninfo apic\ncpu 9\n"
    p = emu_debug("--backend", backend.value, "--image", str(image), "--load-addr", "0x8000", "--smp", "4",
                  script=script)  # fmt: skip
    out = p.stdout
    stop = re.search(r"stopped \(breakpoint\) on vCPU (\d): breakpoint 1", out)
    assert stop and stop.group(1) in "123", out
    where = f"{trampoline >> 4:04x}:0"  # CS = vector << 8 = the page's paragraph, IP 0
    assert re.search(rf"^\* {stop.group(1)}\s+running\s+real\s+{where}", out, re.M), out
    assert re.search(r"^  0\s+running\s+long64", out, re.M), out
    halted = re.findall(r"^[ *] (\d)\s+halted\s+long64", out, re.M)
    assert halted[-4:] == ["0", "1", "2", "3"], out
    assert "vCPU 3 (halted): => " in out
    assert "no vCPU 9: the machine has 4 (0 to 3)" in p.stderr
    if backend is BackendName.UNICORN:  # emu's own APICs: the chosen vCPU's (KVM's are not decoded)
        assert "local APIC 3 (xapic, software-disabled, base 0xfee00000): TPR" in out, out


def test_gdb_habits(tmp_path: Path) -> None:
    """x/4gx as well as x/4xg, $pc/$sp, p/x p/d p/t p/c, set $pc: what gdb users type."""
    image = tmp_path / "spin.bin"
    image.write_bytes(assemble_file(GUEST))
    script = "x/2gx 0x8000\nx/2xg 0x8000\np/x $pc\np/t 5\np/c 0x41\np/d -1\nset $pc = $pc + 1\np/x $pc\nx/2gxg 0\n"
    p = emu_debug("--image", str(image), "--load-addr", "0x8000", script=script)
    lines = p.stdout.splitlines()
    assert lines[0].startswith("0x8000:") and lines[0] == lines[1]  # the size on either side of the format
    assert lines[2:7] == ["$pc = 0x8000", "5 = 101", "0x41 = 'A'", "-1 = -1", "pc = 0x8001"]
    assert lines[7] == "$pc = 0x8001"
    assert p.returncode == 2 and "bad format '2gxg'" in p.stderr


OSV_ROFS = Path(__file__).resolve().parents[2] / "shared" / "guests" / "osv" / "rofs"


def test_symbols_of_a_kernel_from_its_unstripped_elf(tmp_path: Path) -> None:
    """--symbols loader.elf (OSv's kernel with its full symbol table) gives `b main`, which stops
    in OSv's main."""
    if not (OSV_ROFS / "loader.elf.xz").is_file():
        pytest.skip(f"the OSv test guests are not beside this checkout ({OSV_ROFS})")
    elf = tmp_path / "loader.elf"
    elf.write_bytes(lzma.decompress((OSV_ROFS / "loader.elf.xz").read_bytes()))
    kernel = ["--kernel", str(OSV_ROFS / "loader-stripped.elf"), "--cmdline", "--rootfs=ramfs /hello"]
    p = emu_debug(*kernel, "--symbols", str(elf), script="b main\nc\n")
    assert p.returncode == 0, p.stderr
    assert "stopped (breakpoint): breakpoint 1 at main" in p.stdout
    assert "=> 0x40222c50 [long64]  0x40222c50 <main>:" in p.stdout


def test_a_kernel_without_symbols_says_how_to_give_them(guest: LinuxGuest) -> None:
    p = emu_debug("--kernel", str(guest.vmlinux), script="b start_kernel\n")  # extracted from a bzImage
    assert p.returncode == 2 and "the kernel has no symbols; give them with --symbols FILE" in p.stderr


def test_symbols_from_a_system_map_with_an_offset(image: Path, tmp_path: Path) -> None:
    """A System.map (or kallsyms) line per symbol, every address moved by @OFFSET."""
    system_map = tmp_path / "System.map"
    system_map.write_text("0000000000000030 T mode_call\n0000000000000000 A absolute_value\nnot a symbol line\n")
    p = emu_debug("--image", str(image), "--load-addr", "0x8000", "--symbols", f"{system_map}@0x8000",
                  script="b mode_call\nc\n")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "breakpoint 1 at linear 0x8030 (mode_call)" in p.stdout
    assert "stopped (breakpoint): breakpoint 1 at mode_call" in p.stdout
    for spec, message in ((str(tmp_path / "absent.map"), "no such file"), (f"{system_map}@zz", "not an offset")):
        p = emu_debug("--image", str(image), "--symbols", spec, script="")
        assert p.returncode == 2 and message in p.stderr and p.stderr.count("\n") == 1, p.stderr
    empty = tmp_path / "empty.map"
    empty.write_text("nothing here\n")
    p = emu_debug("--image", str(image), "--symbols", str(empty), script="")
    assert p.returncode == 2 and "no `ADDRESS TYPE NAME` lines" in p.stderr
