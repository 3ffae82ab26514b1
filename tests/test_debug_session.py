"""The debugger's session API on both backends, driven through the debug test guest
(tests/guests/debug/modes.asm: real -> protected -> long mode with every stop kind on the way).
Each stop is checked where a user would look: the stop's kind and message, the CPU's position
and mode, guest memory."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from guests import kernels
from guests.backends import BACKEND_PARAMS, require

from emu import layout
from emu.config import BackendName, MachineConfig
from emu.cpu.state import Mode
from emu.debugger import views
from emu.debugger.session import DebugSession
from emu.debugger.stops import CatchKind, StopKind, Unsupported, WatchKind
from emu.errors import EmuError
from emu.tools.asm import assemble_file

GUEST = Path(__file__).parent / "guests" / "debug" / "modes.asm"
LOAD = 0x8000


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("debug") / "modes.bin"
    path.write_bytes(assemble_file(GUEST))
    return path


@pytest.fixture(params=BACKEND_PARAMS)
def session(request: pytest.FixtureRequest, image: Path):  # type: ignore[no-untyped-def]
    backend: BackendName = request.param
    require(backend)
    s = DebugSession.open(MachineConfig(image=image, load_addr=LOAD, backend=backend))
    yield s
    s.close()


def pc(s: DebugSession) -> int:
    return s.state().flat_pc


def on_kvm(s: DebugSession) -> bool:
    return s.machine.cfg.backend is BackendName.KVM


def test_starts_paused_at_the_first_instruction(session: DebugSession) -> None:
    assert pc(session) == 0x8000
    assert session.state().mode is Mode.REAL
    assert session.last_stop.message == "paused at the first instruction"


def test_stepi_executes_exactly_n_instructions(session: DebugSession) -> None:
    stop = session.stepi(3)  # cli; xor ax, ax; mov ds, ax
    assert (stop.kind, stop.executed, pc(session)) == (StopKind.STEP, 3, 0x8005)
    assert session.stepi().executed == 1 and pc(session) == 0x8007


def test_breakpoint_by_seg_off_linear_and_physical(session: DebugSession) -> None:
    b1 = session.add_breakpoint("0000:8030")
    b2 = session.add_breakpoint("phys 0x8040")
    b3 = session.add_breakpoint("0x8060")
    for b in (b1, b2, b3):
        stop = session.cont()
        assert (stop.kind, stop.number, pc(session)) == (StopKind.BREAKPOINT, b.number, b.address)
    assert b1.hits == b2.hits == b3.hits == 1


def test_temporary_breakpoint_is_deleted_when_hit(session: DebugSession) -> None:
    session.add_breakpoint("0x8030", temporary=True)
    stop = session.cont()
    assert stop.kind is StopKind.BREAKPOINT and "temporary breakpoint" in stop.message
    assert not session.points.breakpoints


def test_nexti_steps_over_a_call(session: DebugSession) -> None:
    session.add_breakpoint("0:8030")
    session.cont()
    stop = session.nexti()
    assert stop.kind is StopKind.STEP and pc(session) == 0x8033
    assert session.state().rbx == 7  # the call ran


def test_conditional_breakpoint_reads_memory(session: DebugSession) -> None:
    session.add_breakpoint("0x8240", "dword [0x700] == 5 && rip == 0x8240")
    stop = session.cont()
    assert stop.kind is StopKind.BREAKPOINT and pc(session) == 0x8240
    assert int.from_bytes(session.read_physical(0x700, 4), "little") == 5
    assert session.state().mode is Mode.LONG


def test_bad_condition_is_one_error(session: DebugSession) -> None:
    with pytest.raises(EmuError, match="unknown register 'foo'"):
        session.add_breakpoint("0x8240", "foo == 1")
    with pytest.raises(EmuError, match="no symbol or address"):
        session.add_breakpoint("start_kernel")


def test_until_runs_to_an_address(session: DebugSession) -> None:
    stop = session.until("0x8100")
    assert stop.kind is StopKind.UNTIL and pc(session) == 0x8100
    assert session.state().mode is Mode.PROTECTED32


def test_catch_mode_changes(session: DebugSession) -> None:
    session.add_catch(CatchKind.MODE)
    seen = []
    for _ in range(4):
        stop = session.cont()
        assert stop.kind is StopKind.MODE_CHANGE, stop.message
        seen.append((stop.detail["old_mode"], stop.detail["new_mode"], stop.detail["paging"]))
    assert seen == [
        ("real", "protected16", False),
        ("protected16", "protected32", False),
        ("protected32", "compat", True),
        ("compat", "long64", True),
    ]
    assert pc(session) == 0x8200


def test_catch_control_register_writes(session: DebugSession) -> None:
    session.add_catch(CatchKind.CR_WRITE)
    regs = []
    for _ in range(5):
        stop = session.cont()
        assert stop.kind is StopKind.CR_WRITE, stop.message
        regs.append(stop.detail["register"])
    assert regs == ["cr0", "cr3", "cr4", "efer", "cr0"]
    assert session.state().cr3 == 0x1000 and session.state().paging


def test_after_n_instructions(session: DebugSession) -> None:
    stop = session.cont(max_instructions=10)
    assert (stop.kind, stop.executed) == (StopKind.COUNT, 10)


def test_runs_to_the_end(session: DebugSession) -> None:
    stop = session.cont()
    assert stop.kind is StopKind.HALTED and stop.exit_status == 0 and stop.finished
    assert views.serial_text(session) == "RPL"
    with pytest.raises(EmuError, match="the machine has ended"):
        session.stepi()


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_stop_from_another_thread(tmp_path: Path, backend: BackendName) -> None:
    require(backend)
    spin = tmp_path / "spin.bin"
    spin.write_bytes(b"\xeb\xfe")  # jmp $
    with DebugSession.open(MachineConfig(image=spin, backend=backend)) as s:
        threading.Timer(0.3, s.stop).start()
        stop = s.cont()
        assert stop.kind is StopKind.USER
        assert s.state().flat_pc == 0x7C00
        assert s.stepi().kind is StopKind.STEP  # still usable afterwards


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_acpi_pm_timer_stands_still_while_paused(tmp_path: Path, backend: BackendName) -> None:
    """Guest time stops while the debugger holds the guest, for every device: the ACPI PM timer
    (3.579545 MHz) reads the same before and after a host pause, and advances while the guest runs."""
    require(backend)
    kernel = tmp_path / "pvh"
    kernel.write_bytes(kernels.build("pvh"))
    port = layout.PORT_ACPI_PM_BASE + layout.ACPI_PM_TMR_OFF
    with DebugSession.open(MachineConfig(backend=backend, mem=64 << 20, kernel=kernel, acpi=True)) as s:
        bus = s.machine.bus
        before = bus.pio_read(port, 4)
        time.sleep(0.2)  # 0.2 s of host time is ~716,000 PM timer ticks
        assert bus.pio_read(port, 4) == before
        started = time.monotonic()
        s.stepi(100)
        ran = time.monotonic() - started
        advanced = (bus.pio_read(port, 4) - before) & 0xFF_FFFF
        assert 0 < advanced <= ran * 3_579_545 + 1
        time.sleep(0.2)
        assert (bus.pio_read(port, 4) - before) & 0xFF_FFFF == advanced


# -- Unicorn only: watchpoints, catches of interrupts and exceptions, history --------------------
def test_watchpoints(session: DebugSession) -> None:
    if on_kvm(session) and not session.backend.capabilities.data_breakpoints:
        with pytest.raises(Unsupported, match="PVM"):
            session.add_watchpoint("0x600")
        pytest.skip("this host's KVM (PVM) ignores data breakpoints: emu refuses watchpoints (checked above)")
    w = session.add_watchpoint("0x600", 1, WatchKind.WRITE)
    stop = session.cont()
    assert (stop.kind, stop.number, pc(session)) == (StopKind.WATCHPOINT, w.number, 0x8045)  # after the store
    assert session.read_physical(0x600, 1) == b"\x11"
    if not on_kvm(session):
        assert (stop.detail["old"], stop.detail["new"]) == (0, 0x11)
        session.delete(w.number)
        r = session.add_watchpoint("0x600", 1, WatchKind.READ)
        stop = session.cont()
        assert (stop.kind, stop.number, pc(session)) == (StopKind.WATCHPOINT, r.number, 0x8048)
        assert stop.detail["value"] == 0x11


def test_catch_interrupts_and_exceptions(session: DebugSession) -> None:
    if on_kvm(session):
        for kind in (CatchKind.INTERRUPT, CatchKind.EXCEPTION):
            with pytest.raises(Unsupported, match="inside the kernel"):
                session.add_catch(kind, 6)
        return
    c = session.add_catch(CatchKind.INTERRUPT)
    stop = session.cont()
    assert (stop.kind, stop.detail["vector"], pc(session)) == (StopKind.INTERRUPT, 0x50, 0x809B)
    session.delete(c.number)
    session.add_catch(CatchKind.EXCEPTION, 6)
    stop = session.cont()  # the int3 on the way is vector 3: not caught
    assert (stop.kind, stop.detail["vector"], pc(session)) == (StopKind.EXCEPTION, 6, 0x809C)
    assert "(UD)" in stop.message


def test_physical_breakpoint_with_paging(session: DebugSession) -> None:
    session.until("0x8200")  # long mode, paging on
    if on_kvm(session):
        with pytest.raises(Unsupported, match="linear addresses"):
            session.add_breakpoint("phys 0x8240")
        return
    session.add_breakpoint("phys 0x8240")
    assert session.cont().kind is StopKind.BREAKPOINT and pc(session) == 0x8240


def test_step_back_restores_registers_and_memory(session: DebugSession) -> None:
    session.add_breakpoint("0x8240", "dword [0x700] == 3")
    session.cont()
    session.delete()
    before = session.state().copy()
    session.stepi(6)  # two rounds of inc/cmp/jne: the counter goes to 5
    assert int.from_bytes(session.read_physical(0x700, 4), "little") == 5
    if on_kvm(session):
        with pytest.raises(Unsupported, match="Unicorn only"):
            session.step_back()
        return
    stop = session.step_back(6)
    assert stop.message == "stepped back 6 instructions"
    after = session.state()
    assert (after.rip, after.rflags, after.gprs()) == (before.rip, before.rflags, before.gprs())
    assert int.from_bytes(session.read_physical(0x700, 4), "little") == 3
    assert session.stepi(6).executed == 6  # and forward again
    assert int.from_bytes(session.read_physical(0x700, 4), "little") == 5


def test_views_in_long_mode(session: DebugSession) -> None:
    session.add_breakpoint("0x8240")
    session.cont()
    rv = views.register_view(session.state())
    assert rv.mode == "long64" and {"PE", "PG"} <= set(rv.cr0) and {"LME", "LMA"} <= set(rv.efer)
    assert "PAE" in rv.cr4
    gdt = views.gdt_view(session)
    assert [e.index for e in gdt] == [0, 1, 2, 3] and "code segment 64-bit" in gdt[3].text
    t = views.translate_view(session, 0x8240)
    assert [st.level for st in t.walk.steps] == ["PML4", "PDPT", "PD"]
    assert (t.walk.physical, t.walk.page_size) == (0x8240, 2 << 20)
    assert views.vga_text(session)[0] == "OK"
    lines = views.disassembly(session, 0x824F, 1)
    assert lines[0].text.startswith("jne") and lines[0].target == 0x8240
    maps = views.page_mappings(session)
    assert [(m.linear, m.physical, m.size) for m in maps] == [(0, 0, 2 << 20)]
    stack = views.stack_view(session, 2)
    assert stack.address == 0x7000 and stack.unit == 8
