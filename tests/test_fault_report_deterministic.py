"""--deterministic: guest time from executed code, so a timing-dependent fault is the same fault,
with a byte-identical report, on every run."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from guests.cli import emu_run

from emu.errors import ExitStatus
from emu.tools.asm import assemble, assemble_file
from emu.tools.guests import LinuxGuest

REPO = Path(__file__).resolve().parents[1]
GUESTS = Path(__file__).parent / "guests"
SCHEMA = json.loads((REPO / "docs" / "report.schema.json").read_text())


@pytest.fixture(scope="module")
def tick_fault(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Triple-faults on the 20th PIT tick while a loop counts in EBX and reads the TSC into ESI."""
    faults = GUESTS / "faults"
    path = tmp_path_factory.mktemp("det") / "tick_fault.bin"
    path.write_bytes(assemble((faults / "tick_fault.asm").read_text(), name="tick_fault",
                              include_dirs=(faults, GUESTS / "snippets")))  # fmt: skip
    return path


def run_report(image: Path, report: Path, *extra: str) -> bytes:
    p = emu_run("--image", str(image), "--load-addr", "0x8000", "--serial", "none", "--timeout", "60",
                "--report", str(report), *extra)  # fmt: skip
    assert p.returncode == ExitStatus.TRIPLE_FAULT, p.stderr
    return report.read_bytes()


def test_deterministic_runs_give_byte_identical_reports(tick_fault: Path, tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    first = run_report(tick_fault, report, "--deterministic")
    second = run_report(tick_fault, report, "--deterministic")
    assert first == second
    data = json.loads(first)
    jsonschema.validate(data, SCHEMA)
    assert [c["name"] for c in data["chain"]] == ["#BP", "#GP", "#DF"]
    assert data["rerun"]["deterministic"] is True
    assert data["rerun"]["argv"][-1] == "--deterministic"
    assert set(data["rerun"]["virtual_time"]) == {"bytes_per_ns", "tsc_khz", "rtc_epoch"}
    # The 20th tick of a 1 kHz timer came after 20 ms of guest time, and the TSC (2 GHz) agrees.
    tsc_low = int(data["states"]["first_fault"]["rsi"], 16)
    assert 0.019 <= tsc_low / 2e9 <= 0.021


def test_without_deterministic_the_same_guest_faults_elsewhere(tick_fault: Path, tmp_path: Path) -> None:
    """The guest really is timing-dependent: host time moves the fault (else the test above
    would prove nothing)."""
    loops = set()
    for n in range(2):
        data = json.loads(run_report(tick_fault, tmp_path / f"r{n}.json"))
        loops.add(data["states"]["first_fault"]["rbx"])
    assert len(loops) == 2


def test_timers_run_on_guest_time(tmp_path: Path) -> None:
    """PIT and RTC under virtual time: 100 PIT ticks in one RTC second, and the waits in hlt
    are skipped, not slept."""
    image = tmp_path / "timer.bin"
    image.write_bytes(assemble_file(GUESTS / "snippets" / "timer.asm"))
    p = emu_run("--image", str(image), "--load-addr", "0x8000", "--serial", str(tmp_path / "out.txt"),
                "--deterministic", "--timeout", "60")  # fmt: skip
    assert p.returncode == ExitStatus.OK, p.stderr
    assert "ticks in one RTC second: 100 +- 5\ntimer: done\n" in (tmp_path / "out.txt").read_text()


def test_deterministic_needs_unicorn() -> None:
    p = emu_run("--backend", "kvm", "--deterministic")
    assert p.returncode == ExitStatus.USAGE
    assert p.stderr.strip().count("\n") == 0 and "--deterministic needs --backend unicorn" in p.stderr


def test_linux_boots_the_same_way_twice(guest: LinuxGuest, tmp_path: Path) -> None:
    """Debian's kernel to userspace and power-off under virtual time: the whole console log,
    dmesg timestamps included, is byte-identical between two runs."""
    logs = []
    for n in range(2):
        log = tmp_path / f"serial{n}.txt"
        p = emu_run("--kernel", str(guest.bzimage), "--initrd", str(guest.initramfs), "--cmdline",
                    "console=ttyS0 panic=-1", "--mem", "256", "--no-reboot", "--timeout", "120",
                    "--deterministic", "--serial", str(log), "--expect", "EMU-INIT-DONE")  # fmt: skip
        assert p.returncode == ExitStatus.OK, p.stderr
        logs.append(log.read_bytes())
    assert logs[0] == logs[1]
    assert b"EMU-SLEEP-OK 1.00\r\n" in logs[0]  # `sleep 1` takes exactly one second of guest time
