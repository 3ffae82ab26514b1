"""`emu run` as a user meets it: bad input gets one clear line and the documented status."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from guests.backends import BACKEND_PARAMS, require
from guests.cli import emu_run

from emu.config import BackendName
from emu.errors import ExitStatus
from emu.tools.asm import assemble

REPO = Path(__file__).resolve().parents[1]


def assert_one_line_error(p: subprocess.CompletedProcess[str], status: int, *words: str) -> None:
    assert p.returncode == status, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{p.stderr}"
    assert "Traceback" not in p.stderr
    for w in words:
        assert w in lines[0]


def test_missing_image(tmp_path: Path) -> None:
    p = emu_run("--image", str(tmp_path / "nope.img"))
    assert_one_line_error(p, ExitStatus.USAGE, "nope.img", "no such file")


def test_image_larger_than_ram(tmp_path: Path) -> None:
    big = tmp_path / "big.img"
    big.write_bytes(b"\x90" * (5 << 20))
    p = emu_run("--image", str(big), "--mem", "4M")
    assert_one_line_error(p, ExitStatus.USAGE, "does not fit in guest RAM")


def test_firmware_larger_than_rom_window(tmp_path: Path) -> None:
    big = tmp_path / "big.rom"
    with big.open("wb") as f:
        f.truncate(17 << 20)
    p = emu_run("--bios", str(big))
    assert_one_line_error(p, ExitStatus.USAGE, "firmware image")


def test_unknown_backend() -> None:
    p = emu_run("--backend", "bochs")
    assert_one_line_error(p, ExitStatus.USAGE, "invalid choice", "bochs")


@pytest.mark.parametrize("mem", ["0", "1M", "1", "lots"])
def test_bad_mem(mem: str) -> None:
    p = emu_run("--mem", mem)
    assert_one_line_error(p, ExitStatus.USAGE, "mem")


def test_empty_image(tmp_path: Path) -> None:
    empty = tmp_path / "empty.img"
    empty.touch()
    assert_one_line_error(emu_run("--image", str(empty)), ExitStatus.USAGE, "empty")


def _can_fake_unreadable_kvm() -> bool:
    return os.geteuid() == 0 and all(shutil.which(t) for t in ("unshare", "setpriv", "mknod"))


def test_kvm_device_not_accessible() -> None:
    """Run `emu run --backend kvm` where /dev/kvm exists but this user may not open it."""
    if os.path.exists("/dev/kvm") and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        p = emu_run("--backend", "kvm")  # already the situation for this user
    elif _can_fake_unreadable_kvm():
        # A private mount namespace where /dev/kvm is a node we may not open (root's override
        # capabilities dropped), so the real open() fails with EACCES as for an ordinary user.
        script = (
            "set -e; n=$(mktemp -u /tmp/kvmnode.XXXXXX); mknod $n c 10 232; chown nobody $n; chmod 000 $n; "
            "mount --bind $n /dev/kvm 2>/dev/null || { touch /dev/kvm; mount --bind $n /dev/kvm; }; rm $n; "
            f"exec setpriv --bounding-set -dac_override,-dac_read_search {sys.executable} -m emu.cli run --backend kvm"
        )
        p = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=REPO, capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    else:
        pytest.skip("cannot make /dev/kvm inaccessible here (needs root with unshare/setpriv)")
    assert_one_line_error(p, ExitStatus.SOFTWARE, "/dev/kvm")


def test_timeout_ends_a_stuck_guest(tmp_path: Path) -> None:
    img = tmp_path / "spin.img"
    img.write_bytes(assemble("bits 16\norg 0x7c00\njmp $\n", name="spin"))
    p = emu_run("--image", str(img), "--timeout", "1", "-q")
    assert p.returncode == ExitStatus.TIMEOUT


def test_debug_exit_status(tmp_path: Path) -> None:
    img = tmp_path / "exit.img"
    img.write_bytes(assemble("bits 16\norg 0x7c00\nmov al, 0x12\nout 0xf4, al\njmp $\n", name="dbgexit"))
    p = emu_run("--image", str(img))
    assert p.returncode == (0x12 << 1) | 1
    assert "debug-exit" in p.stderr


def test_serial_to_file_and_input_from_stdin(tmp_path: Path) -> None:
    """A guest echoes COM1 input back upper-cased until it reads '.', then halts."""
    src = """
bits 16
org 0x7c00
    mov dx, 0x3fd
poll:
    in al, dx
    test al, 1
    jz poll
    mov dx, 0x3f8
    in al, dx
    cmp al, '.'
    je done
    and al, 0xdf
    out dx, al
    mov dx, 0x3fd
    jmp poll
done:
    cli
    hlt
"""
    img = tmp_path / "echo.img"
    img.write_bytes(assemble(src, name="echo"))
    out = tmp_path / "serial.txt"
    p = emu_run("--image", str(img), "--serial", str(out), "--timeout", "20", stdin="hello.")
    # --serial FILE takes output only; stdin is not connected, so the guest never sees '.'.
    assert p.returncode == ExitStatus.TIMEOUT
    p = emu_run("--image", str(img), "--timeout", "20", stdin="hello.")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "HELLO"


RESET_GUEST = """
bits 16
org 0x7c00
    mov dx, 0x3f8
    mov al, 'B'
    out dx, al
    mov al, 0xfe            ; i8042: pulse the CPU reset line
    out 0x64, al
    jmp $
"""


@pytest.mark.parametrize("backend", ["unicorn", "kvm"])
def test_guest_reset(tmp_path: Path, backend: str) -> None:
    from guests.backends import require

    from emu.config import BackendName

    require(BackendName(backend))
    img = tmp_path / "reset.img"
    img.write_bytes(assemble(RESET_GUEST, name="reset"))
    p = emu_run("--backend", backend, "--image", str(img), "--no-reboot")
    assert p.returncode == 0 and "reset" in p.stderr
    assert p.stdout == "B"
    # Without --no-reboot the machine reboots (RAM reloaded, CPU reset) and the guest runs again.
    p = emu_run("--backend", backend, "--image", str(img), "--timeout", "3")
    assert p.returncode == ExitStatus.TIMEOUT
    assert p.stdout.count("B") >= 3, p.stdout


SPIN = "bits 16\norg 0x8000\n    cli\n    mov ax, 1\nspin:\n    inc ax\n    jmp spin\n"


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_a_run_that_times_out_says_where_the_cpu_was(backend: BackendName, tmp_path: Path) -> None:
    require(backend)
    image = tmp_path / "spin.bin"
    image.write_bytes(assemble(SPIN, name="spin"))
    p = emu_run("--backend", backend.value, "--image", str(image), "--load-addr", "0x8000", "--timeout", "1")
    assert p.returncode == ExitStatus.TIMEOUT
    where = re.search(r"emu: the CPU was at 0000:(0x800[45]) \(linear 0x800[45], real\): (inc ax|jmp 0x8004)", p.stderr)
    assert where, p.stderr
    if backend is BackendName.UNICORN:  # the block trace: what ran before
        assert "emu:   0x8001: mov ax, 1" in p.stderr
    assert p.stderr.rstrip().endswith("emu: timeout: the guest ran for 1 s (exit status 124)")
