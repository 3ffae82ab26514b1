"""Fault reports as a CI user meets them: the project's fault guests (tests/guests/faults/) end in
a triple fault on purpose, and `emu run` must say which exception came first, why, why its
delivery failed, and write the same as JSON that validates against docs/report.schema.json."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from guests.backends import BACKEND_PARAMS, require
from guests.cli import emu_run

from emu.config import BackendName, MachineConfig
from emu.errors import ExitStatus
from emu.machine import Machine
from emu.report.fault import fault_report
from emu.tools.asm import assemble

REPO = Path(__file__).resolve().parents[1]
GUESTS = Path(__file__).parent / "guests"
FAULTS = GUESTS / "faults"
SCHEMA = json.loads((REPO / "docs" / "report.schema.json").read_text())
LOAD_ADDR = 0x8000


@dataclass(frozen=True)
class Case:
    chain: tuple[str, ...]  # the exception chain, first fault first (exact under Unicorn)
    cause: tuple[str, ...]  # words the first fault's cause must contain
    failure: str  # words of why delivering the first fault failed
    insn: str  # the faulting instruction, as disassembled
    descriptor: str  # words one of the decoded descriptors must contain
    serial_last: str  # the last line the guest printed before the fault


CASES = {
    "pf_no_idt": Case(
        ("#PF", "#DF"),
        ("read of 0x40000000", "PDPT entry 1", "not present"),
        "IDT entry 0xe is beyond the IDT limit 0x0",
        "mov rax, qword ptr [0x40000000]",
        "beyond the IDT limit 0x0",
        "pf_no_idt: no IDT, reading 0x40000000 (not mapped)",
    ),
    "gp_bad_selector": Case(
        ("#GP", "#DF"),
        ("`mov ds, eax`", "selector 0x48", "beyond the GDT limit 0x2f"),
        "IDT entry 0xd is not an interrupt or trap gate",
        "mov ds, eax",
        "all zero: no gate",
        "gp_bad_selector: loading DS with selector 0x48",
    ),
    "stack_overflow": Case(
        ("#PF", "#DF"),
        ("write to 0x60ff8", "PT entry 96", "not present", "stack overflowed"),
        "on the current stack (RSP 0x61000): PT entry not present",
        "push rax",
        "64-bit interrupt gate",
        "stack_overflow: recursing on a 4 KiB stack above an unmapped page",
    ),
    "bad_ist": Case(
        ("#UD", "#PF", "#DF"),
        ("invalid opcode", "`ud2`"),
        "on the IST1 stack (TSS.IST1 = 0x0)",
        "ud2",
        "IST1 = 0x0",
        "bad_ist: TSS.IST1 is 0, executing ud2",
    ),
    "pm_switch": Case(
        ("#GP", "#DF"),
        ("`ljmp 0x10:", "selector 0x10", "data segment", "CS can only hold a code segment"),
        "IDT entry 0xd is not an interrupt or trap gate",
        "ljmp 0x10:",
        "selector 0x10: data segment",
        "pm_switch: entering protected mode",
    ),
}


def build_image(name: str, workdir: Path) -> Path:
    path = workdir / f"{name}.bin"
    if not path.exists():
        source = (FAULTS / f"{name}.asm").read_text()
        path.write_bytes(assemble(source, name=name, include_dirs=(FAULTS, GUESTS / "snippets")))
    return path


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fault-guests")


def run_fault_guest(name: str, backend: BackendName, images: Path, tmp: Path, *extra: str) -> tuple[Any, str]:
    """Run a fault guest with --report; returns the validated JSON report and stderr."""
    report = tmp / f"{name}-{backend.value}.json"
    image = build_image(name, images)
    p = emu_run("--backend", backend.value, "--image", str(image), "--load-addr", hex(LOAD_ADDR), "--mem", "32M",
                "--serial", "none", "--timeout", "60", "--report", str(report), *extra)  # fmt: skip
    assert p.returncode == ExitStatus.TRIPLE_FAULT, p.stderr
    assert "Traceback" not in p.stderr
    data = json.loads(report.read_text())
    jsonschema.validate(data, SCHEMA)
    return data, p.stderr


def check_chain(data: Any, case: Case) -> None:
    """What the chain must say, whether Unicorn found it directly or by replay."""
    assert [c["name"] for c in data["chain"]] == list(case.chain)
    assert case.failure in data["chain"][0]["delivery_failure"]
    assert all(c["delivery_failure"] for c in data["chain"]), "every event of a triple-fault chain failed"
    first = data["first_fault"]
    assert first["name"] == case.chain[0]
    for word in case.cause:
        assert word in first["cause"], first["cause"]
    # The first fault happened at the instruction the report disassembles at RIP.
    assert first["rip"] == data["states"]["first_fault"]["rip"]
    assert data["code"]["instructions"][0]["text"].startswith(case.insn)


@pytest.mark.parametrize("name", sorted(CASES))
def test_unicorn_report_names_the_first_fault_and_why(name: str, images: Path, tmp_path: Path) -> None:
    case = CASES[name]
    data, stderr = run_fault_guest(name, BackendName.UNICORN, images, tmp_path)
    assert data["chain_source"] == "unicorn"
    check_chain(data, case)
    assert any(case.descriptor in d["text"] for d in data["descriptors"]), data["descriptors"]
    # The last instruction executed is the faulting one, disassembled in the mode it ran in.
    trace = data["trace"]
    assert trace["available"] and len(trace["instructions"]) == 32
    assert trace["instructions"][-1]["address"] == data["first_fault"]["linear_pc"]
    assert trace["instructions"][-1]["text"].startswith(case.insn)
    assert data["serial_tail"].splitlines()[-1] == case.serial_last
    # stderr carries the same report as text, then the one summary line.
    assert f"first fault: {case.chain[0]} at " in stderr
    assert f"cause: {data['first_fault']['cause']}" in stderr
    assert f"  | {case.serial_last}" in stderr
    assert stderr.strip().splitlines()[-1].endswith("(exit status 4)")


@pytest.mark.parametrize("name", sorted(CASES))
def test_kvm_report_has_the_final_state_and_replay_recovers_the_chain(name: str, images: Path, tmp_path: Path) -> None:
    require(BackendName.KVM)
    case = CASES[name]
    data, stderr = run_fault_guest(name, BackendName.KVM, images, tmp_path)
    assert data["chain_source"] == "none" and data["chain"] == [] and data["first_fault"] is None
    assert "--on-triple-fault replay" in data["summary"]
    assert not data["trace"]["available"]
    assert data["code"]["instructions"][0]["text"].startswith(case.insn), "KVM stopped at another instruction"
    assert any(d["why"] == "the gate for #DF" for d in data["descriptors"])
    assert data["serial_tail"].splitlines()[-1] == case.serial_last

    replayed, stderr = run_fault_guest(name, BackendName.KVM, images, tmp_path, "--on-triple-fault", "replay")
    assert replayed["chain_source"] == "replay"
    check_chain(replayed, case)
    assert replayed["replay"]["reproduced"] is True
    assert replayed["replay"]["replay_rip"] == replayed["replay"]["original_rip"] == data["states"]["final"]["rip"]
    assert "replay under unicorn: reproduced the fault" in stderr


def test_pm_switch_trace_decodes_real_mode_code_as_16_bit(images: Path, tmp_path: Path) -> None:
    """The ring buffer records each block's mode: the instructions before the switch are 16-bit
    code (`or eax, 1` needs an operand-size prefix there), the faulting one too."""
    data, _ = run_fault_guest("pm_switch", BackendName.UNICORN, images, tmp_path)
    texts = [i["text"] for i in data["trace"]["instructions"]]
    assert texts[-4:] == ["mov eax, cr0", "or eax, 1", "mov cr0, eax", "ljmp 0x10:0x807f"], texts


def test_stack_overflow_trace_shows_the_recursion_repeating(images: Path, tmp_path: Path) -> None:
    data, _ = run_fault_guest("stack_overflow", BackendName.UNICORN, images, tmp_path)
    trace = data["trace"]["instructions"]
    assert [i["text"] for i in trace[-2:]] == ["inc rax", "push rax"]
    # 4 KiB of stack, 16 bytes per level: the first level's push and call run in the block that
    # set RSP; the recursion's block then ran 255 times whole and once more up to the fatal push.
    assert trace[-3]["text"].startswith("call") and trace[-3]["repeat"] == 1
    assert trace[-1]["repeat"] == trace[-2]["repeat"] == 256


def test_same_guest_twice_gives_byte_identical_reports(images: Path, tmp_path: Path) -> None:
    image = build_image("stack_overflow", images)
    reports = []
    path = tmp_path / "r.json"  # the same command line twice (the report records it)
    for _ in range(2):
        p = emu_run("--image", str(image), "--load-addr", hex(LOAD_ADDR), "--serial", "none", "--report", str(path))
        assert p.returncode == ExitStatus.TRIPLE_FAULT, p.stderr
        reports.append(path.read_bytes())
    assert reports[0] == reports[1]


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_triple_fault_ends_the_run_within_a_second(backend: BackendName, images: Path) -> None:
    require(backend)
    last_output = [0.0]

    def stamp(_data: bytes) -> None:
        last_output[0] = time.monotonic()

    cfg = MachineConfig(backend=backend, mem=32 << 20, image=build_image("bad_ist", images), load_addr=LOAD_ADDR,
                        timeout=30)  # fmt: skip
    with Machine(cfg, serial_sinks=[stamp]) as m:
        result = m.run()
        report = fault_report(m, result, {"argv": []}, replay=False)
    done = time.monotonic()
    assert result.status == ExitStatus.TRIPLE_FAULT and report is not None
    # The guest faults right after its last line: run end and report within a second of it.
    assert done - last_output[0] < 1.0


def test_no_report_file_when_the_run_does_not_triple_fault(tmp_path: Path) -> None:
    image = tmp_path / "hlt.bin"
    image.write_bytes(b"\xfa\xf4")  # cli; hlt
    report = tmp_path / "r.json"
    p = emu_run("--image", str(image), "--report", str(report))
    assert p.returncode == ExitStatus.OK, p.stderr
    assert not report.exists()


def test_report_into_a_missing_directory_is_one_error_line(images: Path, tmp_path: Path) -> None:
    p = emu_run("--image", str(build_image("pf_no_idt", images)), "--load-addr", hex(LOAD_ADDR),
                "--report", str(tmp_path / "nope" / "r.json"))  # fmt: skip
    assert p.returncode == ExitStatus.USAGE
    assert p.stderr.strip().count("\n") == 0 and "no such directory" in p.stderr


# -- --triple-fault -------------------------------------------------------------------------------
def test_triple_fault_exit0_is_a_clean_end_without_a_report(images: Path) -> None:
    p = emu_run("--image", str(build_image("pm_switch", images)), "--load-addr", hex(LOAD_ADDR), "--serial", "none",
                "--triple-fault", "exit0")  # fmt: skip
    assert p.returncode == ExitStatus.OK, p.stderr
    assert p.stderr.strip() == "emu: guest shut down by a triple fault (--triple-fault=exit0) (exit status 0)"


def test_triple_fault_reset_reboots_the_guest(images: Path, tmp_path: Path) -> None:
    serial = tmp_path / "serial.txt"
    image = str(build_image("pm_switch", images))
    p = emu_run("--image", image, "--load-addr", hex(LOAD_ADDR), "--serial", str(serial), "--triple-fault", "reset",
                "--timeout", "2")  # fmt: skip
    assert p.returncode == ExitStatus.TIMEOUT, p.stderr
    assert serial.read_text().count("pm_switch: entering protected mode\n") >= 2, "the guest never ran again"

    p = emu_run("--image", image, "--load-addr", hex(LOAD_ADDR), "--serial", "none", "--triple-fault", "reset",
                "--no-reboot")  # fmt: skip
    assert p.returncode == ExitStatus.OK, p.stderr
    assert "reset by a triple fault" in p.stderr


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_report_names_the_vcpu_that_faulted(backend: BackendName, images: Path, tmp_path: Path) -> None:
    """--smp 4: AP 2 triple-faults while the others are parked; the report says so and shows them."""
    require(backend)
    data, stderr = run_fault_guest("ap_fault", backend, images, tmp_path, "--smp", "4")
    cpus = data["cpus"]
    assert (cpus["count"], cpus["faulted"]) == (4, 2)
    assert [o["index"] for o in cpus["others"]] == [0, 1, 3]
    assert all(o["status"] == "halted" and o["state"]["mode"] == "long64" for o in cpus["others"]), cpus
    assert data["states"]["final"]["mode"] == "long64"
    if data["chain_source"] == "unicorn":
        assert [c["name"] for c in data["chain"]][:2] == ["#UD", "#GP"]
    assert "vCPU 2 of 4 faulted" in stderr
