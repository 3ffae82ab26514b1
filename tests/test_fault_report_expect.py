"""--expect / --expect-timeout: CI runs that require serial markers, and their exit status."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from guests.cli import emu_run

from emu.errors import ExitStatus
from emu.expect import ExpectWatch
from emu.tools.asm import assemble_file

GUESTS = Path(__file__).parent / "guests"


@pytest.fixture(scope="module")
def real_mode(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A guest that prints 'real_mode: start' ... 'real_mode: done' and halts (status 0)."""
    path = tmp_path_factory.mktemp("expect") / "real_mode.bin"
    path.write_bytes(assemble_file(GUESTS / "snippets" / "real_mode.asm"))
    return ["--image", str(path), "--load-addr", "0x8000", "--serial", "none"]


def test_all_markers_present_keeps_the_guests_status(real_mode: list[str]) -> None:
    p = emu_run(*real_mode, "--expect", "real_mode: start", "--expect", "real_mode: done")
    assert p.returncode == ExitStatus.OK, p.stderr


def test_a_missing_marker_is_status_8_naming_it(real_mode: list[str]) -> None:
    p = emu_run(*real_mode, "--expect", "real_mode: done", "--expect", "login:")
    assert p.returncode == ExitStatus.EXPECT_MISSING
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "'login:'" in lines[0] and "real_mode: done" not in lines[0], p.stderr


def test_expect_timeout_ends_a_silent_guest(tmp_path: Path) -> None:
    spin = tmp_path / "spin.bin"
    spin.write_bytes(b"\xeb\xfe")  # jmp $: runs forever, prints nothing
    start = time.monotonic()
    p = emu_run("--image", str(spin), "--serial", "none", "--expect", "READY", "--expect-timeout", "1")
    assert p.returncode == ExitStatus.EXPECT_MISSING, p.stderr
    assert time.monotonic() - start < 15
    assert "'READY'" in p.stderr and "--expect-timeout expired" in p.stderr


def test_markers_seen_before_the_expect_timeout_let_the_run_finish(real_mode: list[str]) -> None:
    p = emu_run(*real_mode, "--expect", "real_mode: done", "--expect-timeout", "30")
    assert p.returncode == ExitStatus.OK, p.stderr


def test_a_triple_fault_keeps_its_status_when_a_marker_is_missing(tmp_path: Path) -> None:
    image = tmp_path / "tf.bin"
    image.write_bytes(assemble_file(GUESTS / "snippets" / "triple_fault.asm"))
    p = emu_run("--image", str(image), "--load-addr", "0x8000", "--serial", "none", "--expect", "booted")
    assert p.returncode == ExitStatus.TRIPLE_FAULT
    assert p.stderr.strip().splitlines()[-1].endswith("required serial output never appeared: 'booted' (exit status 4)")


def test_expect_timeout_without_expect_is_a_usage_error(real_mode: list[str]) -> None:
    p = emu_run(*real_mode, "--expect-timeout", "5")
    assert p.returncode == ExitStatus.USAGE
    assert p.stderr.strip().count("\n") == 0 and "--expect-timeout needs" in p.stderr


def test_a_marker_split_across_writes_is_found() -> None:
    seen = []
    watch = ExpectWatch(["Linux version", "/init"], on_all_seen=lambda: seen.append(True))
    for chunk in (b"[ 0.0] Lin", b"ux vers", b"ion 6.1\n", b"run /", b"ini", b"t\n"):
        watch(chunk)
    assert watch.missing == [] and seen == [True]


def test_a_marker_never_written_whole_stays_missing() -> None:
    watch = ExpectWatch(["ready"])
    for chunk in (b"rea", b"\n", b"dy"):
        watch(chunk)
    assert watch.missing == ["ready"]
