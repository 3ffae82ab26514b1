"""`python -m emu.cli` in a child process, the way the tests run the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def emu(command: str, *args: str, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`emu COMMAND ARGS...` from the repository root. stdin is `stdin` and then end of file (never
    the terminal pytest runs in); the output is text, undecodable bytes replaced (a guest's console
    may send any byte)."""
    return subprocess.run(
        [sys.executable, "-m", "emu.cli", command, *args],
        cwd=REPO, input=stdin, capture_output=True, text=True, errors="replace", timeout=timeout,
    )  # fmt: skip


def emu_run(*args: str, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return emu("run", *args, stdin=stdin, timeout=timeout)
