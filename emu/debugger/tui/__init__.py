"""`emu debug` without --script: the Textual debugger (app.py) over a DebugSession."""

from __future__ import annotations

from emu.config import MachineConfig


def run_tui(cfg: MachineConfig) -> int:
    """Open a session on `cfg`, run the app until the user quits; the exit status is 0."""
    from emu.debugger.session import DebugSession
    from emu.debugger.tui.app import DebuggerApp

    session = DebugSession.open(cfg)
    try:
        status = DebuggerApp(session).run()
    finally:
        session.close()
    return status or 0
