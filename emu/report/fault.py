"""The fault report of a finished `emu run`, with the optional replay of a KVM triple fault
under Unicorn (--on-triple-fault replay)."""

from __future__ import annotations

import dataclasses
import logging
import traceback
from typing import Any

from emu.backends.base import ExitKind
from emu.config import BackendName, MachineConfig, TripleFaultPolicy
from emu.deterministic import FIXED_EPOCH
from emu.errors import EmuError
from emu.machine import Machine, RunResult
from emu.report.build import build_report, state_dict, with_replay
from emu.report.model import Cpus, FaultReport, OtherCpu, Replay

log = logging.getLogger("emu.report")

REPLAY_TIMEOUT = 120.0  # seconds, when the original run had no --timeout


def rerun_settings(argv: list[str], machine: Machine) -> dict[str, Any]:
    """What the report records to run the same machine again. Call it while the machine is
    open: the virtual-time constants come from its backend and are copied here."""
    cfg = machine.cfg
    rerun: dict[str, Any] = {"argv": ["emu", *argv], "backend": cfg.backend.value, "deterministic": cfg.deterministic}
    virtual = machine.backend.virtual_time()
    if virtual is not None:  # --deterministic
        rerun["virtual_time"] = {
            "bytes_per_ns": virtual.code_bytes_per_ns, "tsc_khz": virtual.tsc_khz, "rtc_epoch": FIXED_EPOCH,
        }  # fmt: skip
    return rerun


def fault_report(machine: Machine, result: RunResult, rerun: dict[str, Any], replay: bool) -> FaultReport | None:
    """The report of a run that ended in a triple fault (None for any other ending). Call it
    before the machine is closed: it reads guest memory."""
    if result.exit_kind is not ExitKind.SHUTDOWN:
        return None
    try:
        return _fault_report(machine, result, rerun, replay)
    except Exception as e:  # a bug in the report must not hide the run's status behind a traceback
        log.debug("fault report failed\n%s", traceback.format_exc())
        log.warning("no fault report: internal error: %s: %s", type(e).__name__, e)
        return None


def _fault_report(machine: Machine, result: RunResult, rerun: dict[str, Any], replay: bool) -> FaultReport:
    report = build_report(result, machine.memory, machine.backend.name, machine.backend.block_trace(), rerun,
                          cpus=cpus_of(machine, result))  # fmt: skip
    if replay and machine.cfg.backend is BackendName.KVM:
        final_rip = result.state.rip if result.state is not None else None
        try:
            replayed = replay_under_unicorn(machine.cfg)
        except EmuError as e:  # e.g. Unicorn's native hook not built: the KVM report stands
            report.replay = Replay("unicorn", int(e.status), f"the replay could not run: {e}", False,
                                   hex(final_rip) if final_rip is not None else "unknown", None)  # fmt: skip
            return report
        report = with_replay(report, replayed, final_rip)
    return report


def cpus_of(machine: Machine, result: RunResult) -> Cpus:
    """Which vCPU faulted and how the others stand (`--smp`)."""
    backend = machine.backend
    faulted = result.exit.detail.get("cpu", 0) if result.exit is not None else 0
    others = []
    for cpu in range(backend.cpus):
        if cpu != faulted:
            try:
                state: dict[str, Any] | None = state_dict(backend.get_state(cpu))
            except Exception:  # the report stands without it
                state = None
            others.append(OtherCpu(cpu, backend.cpu_status(cpu), state))
    return Cpus(backend.cpus, faulted, others)


def replay_under_unicorn(cfg: MachineConfig) -> FaultReport:
    """Run the same machine under Unicorn, from the same boot source, and report how it ended.
    Disks are opened copy-on-write so the replay never changes them."""
    replay_cfg = dataclasses.replace(
        cfg, backend=BackendName.UNICORN, snapshot=True, timeout=cfg.timeout or REPLAY_TIMEOUT,
        triple_fault=TripleFaultPolicy.ERROR,
    )  # fmt: skip
    with Machine(replay_cfg) as m:
        result = m.run()
        return build_report(result, m.memory, m.backend.name, m.backend.block_trace(), {}, cpus=cpus_of(m, result))
