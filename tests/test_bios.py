"""emu's BIOS (roms/bios.asm + emu/firmware/bios/): MBR guests from tests/guests/mbr/ booted from
disk images on every backend, each with its expected report; Unicorn and KVM must agree."""

from __future__ import annotations

import hashlib
import random
import re
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from guests.backends import BACKEND_PARAMS, kvm_unavailable_reason, require

from emu import layout
from emu.config import BackendName, DiskSpec, MachineConfig, VirtioTransport
from emu.errors import EmuError, ExitStatus
from emu.machine import Machine
from emu.tools.asm import assemble_file

GUESTS = Path(__file__).parent / "guests" / "mbr"
ROMS = Path(__file__).resolve().parents[1] / "roms"
MEM = 32 << 20
TIMEOUT = 30.0
PASS = 1  # the guests' EXIT 0: debug-exit status (0 << 1) | 1
SECTOR = 512
PATTERN_START = 16  # sectors before this hold the guest's code


def pattern_sector(lba: int) -> bytes:
    """The test pattern: each sector starts with its own LBA, then (LBA & 0xFF) bytes."""
    return struct.pack("<I", lba) + bytes([lba & 0xFF]) * (SECTOR - 4)


def disk_image(path: Path, guest: str, sectors: int) -> Path:
    code = assemble_file(GUESTS / f"{guest}.asm")
    assert len(code) <= PATTERN_START * SECTOR
    data = bytearray(code) + bytes(PATTERN_START * SECTOR - len(code))
    data += b"".join(pattern_sector(k) for k in range(PATTERN_START, sectors))
    path.write_bytes(data)
    return path


@dataclass
class Run:
    status: int
    reason: str
    report: str  # what the guest printed on the debug console
    console: bytes  # what emu's console showed (serial output and the int 10h echo)
    serial: bytes
    transcript: bytes  # every character int 10h printed (teletype, write string, 09h stepped over)
    screen: list[tuple[str, bytes]] = field(default_factory=list)  # rows: text, attributes
    memory: dict[int, bytes] = field(default_factory=dict)  # requested guest-memory ranges
    seconds: float = 0.0

    def describe(self) -> str:
        return f"status {self.status}, reason {self.reason!r}; report:\n{self.report}"


def run_disks(
    backend: BackendName,
    disks: list[DiskSpec],
    *,
    snapshot: bool = False,
    mem: int = MEM,
    peek: tuple[tuple[int, int], ...] = (),
    during: Callable[[Machine], None] | None = None,
) -> Run:
    console: list[bytes] = []
    cfg = MachineConfig(backend=backend, mem=mem, disks=disks, snapshot=snapshot, timeout=TIMEOUT)
    start = time.monotonic()
    with Machine(cfg, serial_sinks=[console.append]) as m:
        if during is not None:
            during(m)
        r = m.run()
        seconds = time.monotonic() - start
        assert m.bios is not None
        m.bios.echo.flush()
        text = m.memory.read(layout.VGA_TEXT, 80 * 25 * 2)
        screen = [
            (
                text[row * 160 : (row + 1) * 160 : 2].decode("latin-1").rstrip(),
                text[row * 160 + 1 : (row + 1) * 160 : 2],
            )
            for row in range(25)
        ]
        return Run(
            status=r.status, reason=r.reason, report=r.debugcon.decode("latin-1"), console=b"".join(console),
            serial=r.serial, transcript=bytes(m.bios.video.transcript), screen=screen,
            memory={addr: m.memory.read(addr, size) for addr, size in peek}, seconds=seconds,
        )  # fmt: skip


class Runs:
    """Each (case, backend) runs once per session, so the agreement test reuses the results."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._runs: dict[tuple[str, BackendName], Run] = {}

    def get(self, case: str, backend: BackendName) -> Run:
        key = (case, backend)
        if key not in self._runs:
            self._runs[key] = CASES[case](self.workdir / f"{case}-{backend.value}", backend)
        return self._runs[key]


# -- the guests and what they must report ---------------------------------------------------------
BOOT_REPORT = """\
entry: ax=aa55 dl=80 sp=7c00 ds=0000 es=0000 ss=0000 if=0200
bda: com1=03f8 equip=0222 basemem=027f ebda=9fc0 hd=01 ebda[0]=01
int12=027f int11=0222 ivt13=f000
"""

DISK_SECTORS = 16384  # 8 MiB: CHS 16/16/63 without translation
DISK_REPORT = """\
41h: ah=30 cf=0 bx=aa55 cx=0007
08h: ah=00 cf=0 cx=0e3f dx=0f01
15h: ah=03 cf=0 cx:dx=00003b10
48h: ah=00 cf=0 size=0042 flags=0002 chs=0010/10/3f sectors=00004000 bps=0200 dpte=ffffffff key=bedd bus=ISA sum=00
02h c1h2s3 x2: ah=00 cf=0 al=02 lba=00000470,00000471
42h lba 5000 x3: ah=00 cf=0 count=0003 lba=00001388,00001389,0000138a
42h flat 2M: ah=00 cf=0 count=0002
43h lba 200: ah=00 cf=0 readback=57575757
03h c0h1s1: ah=00 cf=0 al=01
00h ah=00 cf=0 0ch ah=00 cf=0 0dh ah=00 cf=0 10h ah=00 cf=0
04h ah=00 cf=0 al=04 44h ah=00 cf=0 47h ah=00 cf=0
02h count 0: ah=01 cf=1 al=00
02h sector 0: ah=01 cf=1
02h cylinder 32: ah=01 cf=1 bda474=01 01h: ah=01 cf=1
42h lba end: ah=01 cf=1 count=0000
42h across end: ah=04 cf=1 count=0002 lba=00003fff
42h buffer in mmio: ah=01 cf=1 count=0000
42h packet size 8: ah=01 cf=1
99h: ah=01 cf=1 drive 81h: ah=01 cf=1 41h bad bx: ah=01 cf=1
02h across 64K: ah=00 cf=0 lba=00000011
disk: done
"""
# On a read-only disk the two writes fail with "write protected" and LBA 200 keeps its pattern.
DISK_REPORT_RO = DISK_REPORT.replace(
    "43h lba 200: ah=00 cf=0 readback=57575757", "43h lba 200: ah=03 cf=1 readback=000000c8"
).replace("03h c0h1s1: ah=00 cf=0 al=01", "03h c0h1s1: ah=03 cf=1 al=00")

SERVICES_REPORT = """\
e820: 0000000000000000 000000000009fc00 1 ext=1 ecx=18 eax=534d4150
e820: 000000000009fc00 0000000000000400 2 ext=1 ecx=18 eax=534d4150
e820: 00000000000e0000 0000000000020000 2 ext=1 ecx=18 eax=534d4150
e820: 0000000000100000 0000000001f00000 1 ext=1 ecx=18 eax=534d4150
e820: 00000000feffc000 0000000000004000 2 ext=1 ecx=18 eax=534d4150
e820: 00000000fffe0000 0000000000020000 2 ext=1 ecx=18 eax=534d4150
e820 bad signature: ah=86 cf=1 bad index: ah=86 cf=1 20-byte ecx=14
e801: ah=3c cf=0 ax=3c00 bx=0100 cx=3c00 dx=0100 88h: ax=7c00
c0h: ah=00 cf=0 es:bx=f000:e6f5 size=0008 model=fc features=74
a20: on=01 ah=00 cf=0 off=00 ah=00 cf=0 on=01 support=0003
apm: ah=86 cf=1 ec00: ah=00 cf=0 wait: ah=00 cf=0 c1h: es=9fc0
1ah ticks: cx:dx=00123456 al=00 time: ah=00 cf=0 bcd date: ah=00 cf=0 bcd pci: ah=00 cf=0
10h 0f: ax=5003 bh=00 00: al=30 cursor=0100 shape=0607 after 13h=050d
10h 08: ax=1f79 12: bx=0003 1a: ax=1a1a bx=0008 4f00: ax=0100
16h 01: zf=0 ax=1e61 00: ax=1e61 10: ax=3062 up: ax=48e0 11: zf=1 02: al=00
16h 00 waits... ax=1071
services: done
"""
KEYS_BEFORE = b"ab\x1b[A"  # 'a', 'b', cursor up
KEY_LATER = b"q"  # fed while the guest waits in int 16h 00h
KEY_DELAY = 0.5

FLOPPY_SECTORS = 2880
FLOPPY_REPORT = """\
floppy: dl=00 equip=0223
08h: ah=00 cf=0 bx=0004 cx=4f12 dx=0101 es:di=f000:efc7 spt=12
15h: ah=01 cf=0 41h: ah=01 cf=1
02h c1h1s5 x2: ah=00 cf=0 al=02 lba=0000003a,0000003b
02h across 64K: ah=09 cf=1 al=00 bda441=09
02h sector 19: ah=01 cf=1
floppy: done
"""

# The boot disk plus a transitional virtio-blk disk, which lands at 00:01.0 with its I/O BAR 0
# (128 bytes) at 0xC001 and INTA on IRQ 14 (0Eh); the host bridge is 8086:1237 at 00:00.0.
PCI_REPORT = """\
b101: ah=00 cf=0 edx=20494350 al=01 bx=0210 cl=00 edi=00000000
b102 1af4:1001 #0: ah=00 cf=0 bx=0008
b102 1af4:1001 #1: ah=86 cf=1 bx=eeee
b102 8086:1237 #0: ah=00 cf=0 bx=0000
b102 ffff:1001 #0: ah=83 cf=1 bx=eeee
b103 00010000 #0: ah=00 cf=0 bx=0008
b103 ab060000 #0: ah=00 cf=0 bx=0000
b103 00060000 #1: ah=86 cf=1 bx=eeee
b103 000c0300 #0: ah=86 cf=1 bx=eeee
cf8 kept: 80000810
b106: ah=81 cf=1
reads: ah=00 cf=0 cx=1af4 ah=00 cf=0 cx=1001 ah=00 cf=0 ecx=01000000 ah=00 cf=0 ecx=ffffff01 \
ah=00 cf=0 cl=00 ah=00 cf=0 ecx=ffffffff
bad: ah=87 cf=1 ah=87 cf=1 ah=87 cf=1 ah=87 cf=1 ah=81 cf=1
b10b line=0b: ah=00 cf=0 ah=00 cf=0 cl=0b port=0000010b
b10d bar0 sizing: ah=00 cf=0 ecx=0000c001 ah=00 cf=0 ah=00 cf=0 ecx=ffffff81 ah=00 cf=0 ecx=0000c001
b10c command=0000: ah=00 cf=0 cx=0007 ah=00 cf=0 port=00100000 ah=00 cf=0 cx=0007
pci: done
"""


def case_boot(work: Path, backend: BackendName) -> Run:
    work.mkdir(parents=True, exist_ok=True)
    return run_disks(backend, [DiskSpec(disk_image(work / "boot.img", "boot", 2048))])


def case_disk(work: Path, backend: BackendName) -> Run:
    work.mkdir(parents=True, exist_ok=True)
    disk = disk_image(work / "disk.img", "disk", DISK_SECTORS)
    run = run_disks(backend, [DiskSpec(disk)], peek=((0x200000, 2 * SECTOR),))
    run.memory[-1] = disk.read_bytes()  # the image after the run
    return run


def case_services(work: Path, backend: BackendName) -> Run:
    work.mkdir(parents=True, exist_ok=True)
    disk = disk_image(work / "services.img", "services", 2048)

    def keys(m: Machine) -> None:
        m.serial.feed(KEYS_BEFORE)
        timer = threading.Timer(KEY_DELAY, m.serial.feed, (KEY_LATER,))
        timer.daemon = True
        timer.start()

    return run_disks(backend, [DiskSpec(disk)], during=keys)


def case_echo(work: Path, backend: BackendName) -> Run:
    work.mkdir(parents=True, exist_ok=True)
    return run_disks(backend, [DiskSpec(disk_image(work / "echo.img", "echo", 2048))])


def case_ticks(work: Path, backend: BackendName) -> Run:
    work.mkdir(parents=True, exist_ok=True)
    return run_disks(backend, [DiskSpec(disk_image(work / "ticks.img", "ticks", 2048))])


def case_floppy(work: Path, backend: BackendName) -> Run:
    work.mkdir(parents=True, exist_ok=True)
    disk = disk_image(work / "floppy.img", "floppy", FLOPPY_SECTORS)
    return run_disks(backend, [DiskSpec(disk, floppy=True)])


def case_pci(work: Path, backend: BackendName) -> Run:
    work.mkdir(parents=True, exist_ok=True)
    other = work / "other.img"
    other.write_bytes(bytes(1 << 20))
    boot = DiskSpec(disk_image(work / "pci.img", "pci", 2048))
    return run_disks(backend, [boot, DiskSpec(other, transport=VirtioTransport.PCI)])


CASES: dict[str, Callable[[Path, BackendName], Run]] = {
    "boot": case_boot,
    "disk": case_disk,
    "services": case_services,
    "echo": case_echo,
    "floppy": case_floppy,
    "ticks": case_ticks,
    "pci": case_pci,
}
REPORTS = {
    "boot": BOOT_REPORT,
    "disk": DISK_REPORT,
    "services": SERVICES_REPORT,
    "echo": "echo: done\n",
    "floppy": FLOPPY_REPORT,
    "ticks": "ticks: advanced 3 times, int 1Ch calls >= 3: yes\n",
    "pci": PCI_REPORT,
}


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory.mktemp("bios"))


# -- every guest on every backend ---------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_guest_report(runs: Runs, case: str, backend: BackendName) -> None:
    require(backend)
    run = runs.get(case, backend)
    assert run.status == PASS, run.describe()
    assert run.report == REPORTS[case], run.describe()


@pytest.mark.parametrize("case", sorted(CASES))
def test_backends_agree(runs: Runs, case: str) -> None:
    reason = kvm_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no cross-backend comparison: {reason}")
    uc, kvm = runs.get(case, BackendName.UNICORN), runs.get(case, BackendName.KVM)
    assert uc.report == kvm.report
    assert uc.screen == kvm.screen
    assert uc.console == kvm.console


# -- what the guests leave behind -------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_disk_writes_reach_the_image(runs: Runs, backend: BackendName) -> None:
    require(backend)
    run = runs.get("disk", backend)
    image = run.memory[-1]
    assert image[200 * SECTOR : 201 * SECTOR] == b"W" * SECTOR  # int 13h 43h
    assert image[63 * SECTOR : 64 * SECTOR] == b"C" * SECTOR  # int 13h 03h at C/H/S 0/1/1
    assert image[201 * SECTOR : 202 * SECTOR] == pattern_sector(201)
    # The 64-bit flat buffer of 42h: two sectors at 2 MiB.
    assert run.memory[0x200000] == pattern_sector(300) + pattern_sector(301)


def test_snapshot_leaves_the_image_untouched(tmp_path: Path) -> None:
    disk = disk_image(tmp_path / "disk.img", "disk", DISK_SECTORS)
    before = hashlib.sha256(disk.read_bytes()).hexdigest()
    run = run_disks(BackendName.UNICORN, [DiskSpec(disk)], snapshot=True)
    assert run.status == PASS, run.describe()
    assert run.report == DISK_REPORT, run.describe()  # the guest reads its own writes back
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == before


def test_readonly_disk_is_write_protected(tmp_path: Path) -> None:
    disk = disk_image(tmp_path / "disk.img", "disk", DISK_SECTORS)
    before = disk.read_bytes()
    run = run_disks(BackendName.UNICORN, [DiskSpec(disk, readonly=True)])
    assert run.status == PASS, run.describe()
    assert run.report == DISK_REPORT_RO, run.describe()
    assert disk.read_bytes() == before


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_screen_after_int10(runs: Runs, backend: BackendName) -> None:
    require(backend)
    run = runs.get("services", backend)
    rows = [text for text, _ in run.screen]
    # 13h put "emu" at row 5 and 09h/0Ah "XyX" at row 7; the 20 teletype lines from row 8 then
    # scrolled the screen up by 4 rows ("Hi" at row 0 is gone).
    assert rows[1] == " " * 10 + "emu", rows
    assert run.screen[1][1][10:13] == b"\x1e" * 3
    assert rows[3] == "XyX" and run.screen[3][1][:3] == b"\x1f" * 3, rows
    assert rows[4:24] == [f"L{chr(ord('0') + i)}" for i in range(20)], rows
    assert rows[24] == ""
    assert run.transcript.startswith(b"Hi\r\nemuL0\r\nL1\r\n")


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_int10_echo_is_shown_once(runs: Runs, backend: BackendName) -> None:
    require(backend)
    run = runs.get("echo", backend)
    # int 10h text is echoed until the guest uses the UART; the partial line "partial" appears
    # after the echo delay; the line printed both ways appears once (from the serial port).
    assert run.serial == b"\r\nboth\r\n"
    assert run.console == b"boot\r\npartial" + b"\r\nboth\r\n"
    assert run.transcript == b"boot\r\npartial\r\nboth\r\ntail\r\n"
    assert [text for text, _ in run.screen[:4]] == ["boot", "partial", "both", "tail"]


def test_int10_alone_is_echoed(runs: Runs) -> None:
    run = runs.get("services", BackendName.UNICORN)
    assert run.serial == b""
    assert run.console == run.transcript


# -- the OSv-style loader ---------------------------------------------------------------------------
def osv_checksum(payload: bytes) -> int:
    s = 0
    for (d,) in struct.iter_unpack("<I", payload):
        s = ((s << 1) | (s >> 31)) & 0xFFFF_FFFF
        s ^= d
    return s


@pytest.mark.parametrize(
    ("backend", "mib"),
    [pytest.param(BackendName.UNICORN, 16, id="unicorn-16MiB"), pytest.param(BackendName.KVM, 1, id="kvm-1MiB")],
)
def test_osv_style_loader(tmp_path: Path, backend: BackendName, mib: int) -> None:
    """Reads mib MiB (minus one sector, so the last chunk is short) to 1 MiB in 32 KiB chunks,
    switching to protected mode and back around every int 13h call; KVM here runs real-mode
    code at ~2 M instructions/s, so it gets a smaller payload."""
    require(backend)
    sectors = mib * 2048 - 1
    payload = random.Random(mib).randbytes(sectors * SECTOR)
    code = assemble_file(GUESTS / "osv.asm")
    image = code + bytes(15 * SECTOR - len(code)) + struct.pack("<I", sectors) + bytes(SECTOR - 4) + payload
    disk = tmp_path / "osv.img"
    disk.write_bytes(image + bytes(64 * SECTOR))
    run = run_disks(backend, [DiskSpec(disk)], mem=(mib + 16) << 20, peek=((0x100000, len(payload)),))
    chunks = (sectors + 63) // 64
    end = 0x100000 + len(payload)
    assert run.status == PASS, run.describe()
    assert run.report.splitlines() == [
        f"osv: loading {sectors:08x} sectors to 1 MiB",
        f"osv: chunks={chunks:08x} end={end:08x} checksum={osv_checksum(payload):08x}",
    ], run.describe()
    assert run.memory[0x100000] == payload
    print(f"\nosv-style load of {len(payload) / (1 << 20):.1f} MiB on {backend.value}: {run.seconds:.2f} s")


# -- boot failures ----------------------------------------------------------------------------------
def test_disk_without_signature_is_refused(tmp_path: Path) -> None:
    disk = tmp_path / "blank.img"
    disk.write_bytes(bytes(1 << 20))
    with pytest.raises(EmuError, match=r"^no bootable disk: sector 0 of .*blank\.img does not end with"):
        Machine(MachineConfig(mem=MEM, disks=[DiskSpec(disk)]))


def test_cli_no_bootable_disk(tmp_path: Path) -> None:
    disk = tmp_path / "blank.img"
    disk.write_bytes(bytes(1 << 20))
    p = subprocess.run(
        [sys.executable, "-m", "emu.cli", "run", "--disk", str(disk)],
        cwd=ROMS.parent, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == ExitStatus.USAGE, p.stderr
    assert p.stderr.count("\n") == 1 and "no bootable disk" in p.stderr, p.stderr


def test_bios_without_disks_says_so(tmp_path: Path) -> None:
    console: list[bytes] = []
    cfg = MachineConfig(mem=MEM, bios=ROMS / "bios.bin", timeout=TIMEOUT)
    with Machine(cfg, serial_sinks=[console.append]) as m:
        r = m.run()
    assert r.status == ExitStatus.OK, r.reason  # halted for good after the message
    assert b"".join(console) == b"emu BIOS: no bootable disk\r\n"


def test_bad_floppy_size_is_refused(tmp_path: Path) -> None:
    disk = tmp_path / "odd.img"
    disk.write_bytes(bytes(1000 * SECTOR))
    with pytest.raises(EmuError, match="a floppy image must be"):
        Machine(MachineConfig(mem=MEM, disks=[DiskSpec(disk, floppy=True)]))


# -- the ROM and the Python side agree ------------------------------------------------------------
def asm_define(name: str) -> int:
    source = (ROMS / "bios.asm").read_text()
    m = re.search(rf"^%define\s+{name}\s+(\S+)", source, re.MULTILINE)
    assert m, f"%define {name} missing from roms/bios.asm"
    return int(m.group(1), 0)


def test_rom_and_layout_agree() -> None:
    from emu.firmware.bios import disk_services, regs, system

    assert asm_define("PORT_BIOS_CALL") == layout.PORT_BIOS_CALL
    assert asm_define("REGS_SEG") << 4 == layout.BIOS_REGS
    assert asm_define("BOOT_SP") == layout.BIOS_BOOT_SP
    assert asm_define("BOOT_ADDR") == layout.BOOT_SECTOR
    assert asm_define("R_SERVICE") == regs.OFF_SERVICE
    assert asm_define("R_RETRY") == regs.OFF_RETRY
    rom = (ROMS / "bios.bin").read_bytes()
    seg, off = system.CONFIG_TABLE
    assert seg == 0xF000 and rom[off : off + 3] == b"\x08\x00\xfc"
    seg, off = disk_services.DISKETTE_PARAMS
    assert seg == 0xF000 and rom[off + 4] == 18  # sectors per track of a 1.44 MB diskette
    assert rom[0xFFF0] == 0xEA and struct.unpack_from("<HH", rom, 0xFFF1) == (0, 0xF000)
