"""The fault report as data: what `emu run` prints on a triple fault and writes with --report.

Every field maps one to one onto the JSON schema (docs/report-schema.md,
docs/report.schema.json). Register values and addresses are hex strings ("0x813c") so 64-bit
values survive JSON readers that parse numbers as doubles; counts and indexes are numbers.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from emu.cpu.tables import Descriptor

SCHEMA_ID = "emu-fault-report/2"


def hx(value: int) -> str:
    return f"{value:#x}"


@dataclass
class ChainEntry:
    """One event of the exception chain, in the order the CPU met them."""

    vector: int
    name: str  # "#PF"
    kind: str  # "exception", "int n", "external interrupt", ...
    error_code: str | None  # hex
    error_code_text: str | None  # the error code in words
    cr2: str | None  # hex, for #PF
    cs: str  # CS selector when the event was raised
    rip: str
    mode: str
    delivery_failure: str | None  # why delivering it faulted (None: delivered)


@dataclass
class FirstFault:
    vector: int
    name: str
    rip: str
    cs: str
    linear_pc: str
    mode: str
    error_code: str | None
    cr2: str | None
    cause: str  # what went wrong, in words


@dataclass
class Instruction:
    address: str  # linear
    bytes: str  # hex digits, e.g. "48 8b 04 25"
    text: str
    repeat: int = 1  # for the trace: times its block ran back to back


@dataclass
class Code:
    """The instructions at the faulting RIP."""

    address: str  # linear
    bits: int
    instructions: list[Instruction]
    error: str | None = None  # why nothing could be read


@dataclass
class Trace:
    available: bool
    note: str
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Replay:
    """A KVM triple fault rerun under Unicorn to recover the chain."""

    backend: str
    status: int
    reason: str
    reproduced: bool  # the replay ended in a triple fault at the same final RIP
    original_rip: str
    replay_rip: str | None


@dataclass
class OtherCpu:
    """A vCPU that did not fault, as the machine stopped it (--smp)."""

    index: int
    status: str  # running, halted, wait-for-sipi
    state: dict[str, Any] | None


@dataclass
class Cpus:
    """Which vCPU faulted, and the others' states."""

    count: int
    faulted: int
    others: list[OtherCpu]


@dataclass
class FaultReport:
    backend: str
    status: int
    reason: str
    summary: str  # the chain in one line
    chain_source: str  # "unicorn" (exact), "replay" (rerun under Unicorn), "none" (KVM: final state only)
    chain: list[ChainEntry]
    first_fault: FirstFault | None
    states: dict[str, dict[str, Any] | None]  # "first_fault", "final"
    descriptors: list[Descriptor]
    code: Code | None
    trace: Trace
    serial_tail: str
    replay: Replay | None
    rerun: dict[str, Any]
    emu_version: str
    cpus: Cpus = dataclasses.field(default_factory=lambda: Cpus(1, 0, []))
    schema: str = SCHEMA_ID

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        # The schema id first: readers can check it before anything else.
        return {"schema": d.pop("schema"), **d}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"
