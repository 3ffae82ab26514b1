"""The Textual debugger driven as a user drives it (Textual's Pilot: keys, clicks, the command
line) on the debug test guest (tests/guests/debug/modes.asm) and the demo disk; layout tests
pin the panes' structure from the exported screen (text and SVG)."""

from __future__ import annotations

import asyncio
import html
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from guests.backends import require
from textual.pilot import Pilot

from emu.cli import build_parser
from emu.config import BackendName, MachineConfig
from emu.debugger.session import DebugSession
from emu.debugger.stops import StopKind
from emu.debugger.tui.app import DebuggerApp
from emu.debugger.tui.widgets import CommandLine, HelpScreen
from emu.options import config_from_args
from emu.tools.asm import assemble_file

GUEST = Path(__file__).parent / "guests" / "debug" / "modes.asm"
SIZE = (160, 50)
Scenario = Callable[[DebuggerApp, Pilot[int]], Awaitable[None]]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tui") / "modes.bin"
    path.write_bytes(assemble_file(GUEST))
    return path


def drive(cfg: MachineConfig, scenario: Scenario) -> DebuggerApp:
    """Run the app headless on a session for `cfg` through `scenario`; the session is closed after."""
    session = DebugSession.open(cfg)

    async def main() -> DebuggerApp:
        app = DebuggerApp(session)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await scenario(app, pilot)
        return app

    try:
        return asyncio.run(main())
    finally:
        session.close()


async def settle(app: DebuggerApp, pilot: Pilot[int]) -> None:
    """Wait for the command's worker and the redraw after it."""
    await app.workers.wait_for_complete()
    await pilot.pause()


async def key(app: DebuggerApp, pilot: Pilot[int], *keys: str) -> None:
    app.query_one("#disasm").focus()  # letter keys act outside the command line
    for k in keys:
        await pilot.press(k)
        await settle(app, pilot)


async def command(app: DebuggerApp, pilot: Pilot[int], line: str) -> None:
    app.query_one("#cmd").focus()
    await pilot.press(*line, "enter")
    await settle(app, pilot)


def log_text(app: DebuggerApp) -> str:
    from textual.widgets import RichLog

    return "\n".join(strip.text for strip in app.query_one("#log", RichLog).lines)


def modes(image: Path, backend: BackendName = BackendName.UNICORN) -> MachineConfig:
    return MachineConfig(image=image, load_addr=0x8000, backend=backend)


def test_layout_paused_at_the_demo_disks_reset_vector() -> None:
    """The first screen: every pane where the README's screenshot shows it."""
    screens: list[str] = []

    async def look(app: DebuggerApp, pilot: Pilot[int]) -> None:
        screens.append(app.screen_text())
        screens.append(app.export_screenshot())

    drive(config_from_args(build_parser().parse_args(["debug"])), look)
    text, svg = screens
    lines = text.splitlines()
    assert len(lines) == SIZE[1]
    # Top row: disassembly (left) and registers (right); memory under the disassembly, the stack
    # under the registers; then the tabs, the status line and the command line.
    assert re.match(r"╭─ disassembly \(16-bit, real; F9 toggles a breakpoint\) ─+╮╭─ registers ─+╮$", lines[0])
    mem_row = next(i for i, line in enumerate(lines) if "╭─ memory (linear, follows rip; p)" in line)
    assert "╭─ stack" in lines[mem_row + 1] and "╰" in lines[mem_row]  # the registers end beside it
    tabs_row = next(i for i, line in enumerate(lines) if line.lstrip().startswith("Output"))
    assert lines[tabs_row].split() == ["Output", "Breakpoints", "GDT", "LDT", "IDT", "IVT", "TSS", "Page", "walk",
                                       "Boot/e820", "Serial", "VGA", "PIC", "History", "Backend"]  # fmt: skip
    assert "▶ f000:fff0 0xfffffff0  ea 00 00 00 f0" in lines[1] and "ljmp 0xf000:0" in lines[1]
    assert lines[-2].split()[:5] == ["real", "paging", "off,", "CPL", "0"]
    assert "stopped (step): paused at the first instruction" in lines[-2] and "unicorn: every feature" in lines[-2]
    assert "command (help, si, c" in lines[-1]
    assert "cs   f000  00000000ffff0000 0000ffff  code 16-bit readable, dpl 0" in text
    assert "cr0  60000010 ET NW CD" in text
    # The SVG carries the same text (spaces as &#160;), which is what the README shows.
    svg_text = html.unescape(svg).replace("\xa0", " ")
    assert svg.startswith("<svg") and "emu debug" in svg_text
    assert "ljmp 0xf000:0" in svg_text and "registers" in svg_text


def test_step_keys_and_changed_registers(image: Path) -> None:
    async def steps(app: DebuggerApp, pilot: Pilot[int]) -> None:
        s = app.session
        await key(app, pilot, "f7", "f7", "f7")  # cli; xor ax, ax; mov ds, ax
        assert s.state().flat_pc == 0x8005 and app.changed == {"rip"}  # ds was 0 already
        await key(app, pilot, "s")
        assert s.state().flat_pc == 0x8007 and "rip" in app.changed
        await command(app, pilot, "until 0x8030")
        await key(app, pilot, "f8")  # nexti over the call
        assert s.state().flat_pc == 0x8033 and s.state().rbx == 7 and "rbx" in app.changed
        await key(app, pilot, "n")
        assert s.state().flat_pc == 0x8036
        assert "▶ 0000:8036" in app.screen_text()
        assert "stepped over the call to 0x8033" in log_text(app)

    drive(modes(image), steps)


def test_breakpoint_by_click_and_f9_then_continue(image: Path) -> None:
    async def points(app: DebuggerApp, pilot: Pilot[int]) -> None:
        s = app.session
        lines = app._lines
        index = next(i for i, line in enumerate(lines) if line.address == 0x800C)
        # Click the line (the border is row 0), then F9 sets a breakpoint there.
        await pilot.click("#disasm", offset=(20, 1 + index))
        await pilot.pause()
        assert app.query_one("#disasm").highlighted == index  # type: ignore[attr-defined]
        await pilot.press("f9")
        await settle(app, pilot)
        (bp,) = s.points.breakpoints.values()
        assert bp.address == 0x800C
        assert any("●  0000:800c" in line for line in app.screen_text().splitlines())
        await key(app, pilot, "f5")
        assert s.last_stop.kind is StopKind.BREAKPOINT and s.state().flat_pc == 0x800C
        assert "stopped (breakpoint" in app.screen_text().splitlines()[-2]
        await key(app, pilot, "b")  # the Breakpoints tab
        assert "break   linear 0x800c (*0x800c), hit 1" in app.screen_text()
        # F9 on the same line deletes it; c then runs to the end of the guest.
        app.query_one("#disasm").highlighted = next(  # type: ignore[attr-defined]
            i for i, line in enumerate(app._lines) if line.address == 0x800C
        )
        await key(app, pilot, "f9")
        assert not s.points.breakpoints
        await key(app, pilot, "c")
        assert s.last_stop.kind is StopKind.HALTED

    drive(modes(image), points)


def test_command_line_history_errors_and_views(image: Path) -> None:
    async def commands(app: DebuggerApp, pilot: Pilot[int]) -> None:
        await command(app, pilot, "info mode")
        assert "real (16-bit code), paging off, CPL 0" in log_text(app)
        await command(app, pilot, "frobnicate")
        assert "error: unknown command 'frobnicate' (try `help`)" in log_text(app)
        await command(app, pilot, "until 0x8200")
        cmd = app.query_one("#cmd", CommandLine)
        await pilot.press("up")
        assert cmd.value == "until 0x8200"
        await pilot.press("up", "up")
        assert cmd.value == "info mode"
        await pilot.press("down", "down", "down")
        assert cmd.value == ""
        # The GDT view from its key, the page walk from `mem` and the Page walk tab.
        await key(app, pilot, "g")
        screen = app.screen_text()
        assert "code segment 64-bit, readable" in screen
        await command(app, pilot, "mem 0x8240")
        await command(app, pilot, "view walk")
        screen = app.screen_text()
        assert "PD    table 0x3000 [  0] = 0x00000000000000a3 [P W A PS]" in screen
        assert "0x8240 -> physical 0x8240, 2048 KiB page" in screen
        await command(app, pilot, "view nonsense")
        assert "error: view takes one of: output points gdt" in log_text(app)
        await key(app, pilot, "p")  # the memory pane by physical address
        assert "memory (physical; p)" in app.screen_text()

    drive(modes(image), commands)


def test_escape_and_ctrl_c_stop_a_running_continue(tmp_path: Path) -> None:
    loop = tmp_path / "loop.bin"
    loop.write_bytes(b"\xeb\xfe")  # jmp $: runs until stopped

    async def stop(app: DebuggerApp, pilot: Pilot[int]) -> None:
        # (Pilot's press waits for the process to go idle, up to a second or so, while the guest
        # runs: the few keys here are the ones a user needs.)
        for stop_key in ("escape", "ctrl+c"):
            app.query_one("#disasm").focus()
            await pilot.press("f5")
            assert app.running and "RUNNING" in app.screen_text().splitlines()[-2]
            # The UI stays responsive while the guest runs in the worker...
            worst = 0.0
            for _ in range(20):
                t = time.monotonic()
                await asyncio.sleep(0.01)
                worst = max(worst, time.monotonic() - t - 0.01)
            assert worst < 0.1, f"the event loop lagged {worst:.3f} s"
            # ...refuses a second command with a hint instead of queueing it...
            app.run_command("info mode")
            assert "the guest is running: Esc or Ctrl-C stops it first" in log_text(app)
            await pilot.press(stop_key)
            await settle(app, pilot)
            # ...and the stop lands where the loop is, with the panes redrawn.
            assert not app.running
            assert app.session.last_stop.kind is StopKind.USER and app.session.state().flat_pc == 0x8000
            assert "stopped (user" in app.screen_text().splitlines()[-2]

    drive(MachineConfig(image=loop, load_addr=0x8000), stop)


def test_help_screen_and_quit(image: Path) -> None:
    async def helpq(app: DebuggerApp, pilot: Pilot[int]) -> None:
        await key(app, pilot, "f1")
        assert isinstance(app.screen, HelpScreen)
        assert "F9            toggle a breakpoint" in app.screen_text()
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)
        await key(app, pilot, "question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await key(app, pilot, "q")

    app = drive(modes(image), helpq)
    assert app.return_value == 0


def test_kvm_greys_out_what_it_cannot_do(image: Path) -> None:
    require(BackendName.KVM)

    async def backend(app: DebuggerApp, pilot: Pilot[int]) -> None:
        await command(app, pilot, "view backend")
        screen = app.screen_text()
        assert "✗ physical breakpoint with paging: debug registers take linear addresses" in screen
        assert "✓ stepi" in screen
        assert "kvm: " in screen.splitlines()[-2] and "features unavailable" in screen.splitlines()[-2]
        await key(app, pilot, "f7")
        assert app.session.state().flat_pc == 0x8001

    drive(modes(image, BackendName.KVM), backend)


def test_the_status_line_says_whose_state_the_panes_show(tmp_path: Path) -> None:
    """--smp 4: the status line and the registers pane name the vCPU; `cpu N` changes them."""
    image = tmp_path / "smp_startup.bin"
    image.write_bytes(assemble_file(Path(__file__).parent / "guests" / "snippets" / "smp_startup.asm"))

    async def cpus(app: DebuggerApp, pilot: Pilot[int]) -> None:
        assert "vCPU 0/4" in app.screen_text()
        await command(app, pilot, "c")  # to the end: every vCPU parked in cli; hlt
        await command(app, pilot, "cpu 2")
        screen = app.screen_text()
        assert "vCPU 2/4" in screen and "vCPU 2, long64" in screen
        assert app.session.state().mode.value == "long64"

    drive(MachineConfig(image=image, load_addr=0x8000, smp=4), cpus)
