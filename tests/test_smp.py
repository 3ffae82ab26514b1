"""Several vCPUs as a machine: a reset returns every AP to wait-for-SIPI and the guest starts them
again; under --deterministic the interleaving of the vCPUs, and so the whole run, repeats
exactly; the machine is halted for good only when every vCPU is."""

from __future__ import annotations

from pathlib import Path

import pytest
from guests.backends import BACKEND_PARAMS, require

from emu.config import BackendName, MachineConfig
from emu.errors import ExitStatus
from emu.machine import Machine
from emu.tools.asm import assemble, assemble_file

SNIPPETS = Path(__file__).parent / "guests" / "snippets"


@pytest.fixture(scope="module")
def startup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("smp") / "smp_startup.bin"
    path.write_bytes(assemble_file(SNIPPETS / "smp_startup.asm"))
    return path


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_reset_sends_every_ap_back_to_wait_for_sipi(backend: BackendName, startup: Path) -> None:
    require(backend)
    cfg = MachineConfig(backend=backend, mem=32 << 20, image=startup, load_addr=0x8000, smp=4, timeout=60)
    with Machine(cfg) as m:
        first = m.run()
        assert first.status == ExitStatus.OK, first.reason
        assert [m.backend.cpu_status(c) for c in range(4)] == ["halted"] * 4
        m.backend.reset_platform()
        assert [m.backend.cpu_status(c) for c in range(1, 4)] == ["wait-for-sipi"] * 3
        m.request_reset()  # the machine's own reset path: RAM cleared, the image loaded again
        second = m.run()
        assert second.status == ExitStatus.OK and second.resets == 1, second.reason
        assert second.serial.count(b"smp_startup: APs 1 2 3 checked in (3)") == 2, second.serial.decode()


def test_deterministic_smp_runs_repeat_exactly(tmp_path: Path) -> None:
    image = tmp_path / "smp_lock.bin"
    image.write_bytes(assemble_file(SNIPPETS / "smp_lock.asm"))
    cfg = MachineConfig(mem=32 << 20, image=image, load_addr=0x8000, smp=4, deterministic=True, timeout=60)
    outcomes = []
    for _ in range(2):
        with Machine(cfg) as m:
            result = m.run()
            assert result.status == ExitStatus.OK, result.reason
            states = [m.backend.get_state(c) for c in range(4)]
            outcomes.append((result.serial, [(s.rip, s.rsp, s.rflags, s.rax) for s in states], m.clock.now_ns()))
    assert b"lock inc total 40000" in outcomes[0][0]
    assert outcomes[0] == outcomes[1]


# The BSP starts AP 1, which spins until the BSP has parked in cli; hlt (and 20 ms more), then
# writes to the debug-exit port: the machine must not end when the BSP halts for good.
BSP_HALTS_FIRST = """
%include "lib.inc"
%include "apic.inc"
%include "smp.inc"
%define PARKED SVARS
    SNIPPET_START
    ENTER_LONG_APIC
    call start_aps
    mov dword [PARKED], 1
    HALT
ap_main:
    WAIT_AT_LEAST PARKED, 1, MS(2000)
    mov rcx, MS(20)
    call ref_wait
    mov al, 0x21                    ; debug-exit: status (0x21 << 1) | 1
    out 0xf4, al
    HALT
    SMP_GUEST_END
"""


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_the_machine_runs_on_while_any_vcpu_can(backend: BackendName, tmp_path: Path) -> None:
    require(backend)
    image = tmp_path / "bsp_halts_first.bin"
    image.write_bytes(assemble(BSP_HALTS_FIRST, name="bsp_halts_first", include_dirs=(SNIPPETS,)))
    cfg = MachineConfig(backend=backend, mem=32 << 20, image=image, load_addr=0x8000, smp=2, timeout=60)
    with Machine(cfg) as m:
        result = m.run()
    assert result.status == (0x21 << 1) | 1, result.reason
