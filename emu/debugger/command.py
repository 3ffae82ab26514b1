"""`emu debug`: the boot options of `emu run`, paused at the first instruction, driven by the
Textual UI (emu/debugger/tui/) or by a script of debugger commands (`--script FILE`, or `-` for
stdin)."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from typing import Any

from emu.errors import EmuError, ExitStatus
from emu.options import add_machine_options, add_output_options, add_run_options, config_from_args

log = logging.getLogger("emu.debugger")

DEBUG_HELP = """exit statuses:
  0     the UI was quit, or every command of the script ran (the guest may have ended on the way:
        the script goes on with its views)
  2     bad usage (also: no terminal for the UI), or a script command failed (unknown command, bad
        argument, a feature the backend does not have): one `emu: error: line N: ...` line on
        stderr, the rest is skipped (in the UI a failing command is one red line in its Output tab)
  70    emulator error (e.g. an unusable /dev/kvm with --backend kvm)

commands (gdb names and short forms, Bochs extras):
"""
NO_TERMINAL = (
    "emu: the debugger's UI needs a terminal (stdin and stdout); run commands headless with --script FILE "
    "(or --script - to read them from stdin); `help` in a script lists them"
)


def add_debug_parser(sub: Any) -> None:
    """`emu debug`: the machine and run options of `emu run`, plus --script."""
    from emu.debugger.script import COMMANDS

    debug = sub.add_parser(
        "debug",
        help="debug a machine from its first instruction (a terminal UI; --script: headless)",
        description="Build the machine `emu run` would boot with the same options, paused at its first "
        "instruction, and run debugger commands on it. Options that only shape a run's end (--expect, "
        "--report, --timeout, --on-triple-fault) are accepted and ignored.",
        epilog=DEBUG_HELP + COMMANDS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_machine_options(debug)
    add_run_options(debug)
    add_output_options(debug)
    debug.add_argument("--script", metavar="FILE|-", help="run debugger commands from FILE (- for stdin) and exit")
    debug.add_argument("--symbols", action="append", default=[], metavar="FILE[@OFFSET]",
                       help="symbols for breakpoints and listings (repeatable): an ELF with a symbol table, a "
                            "System.map or a kallsyms copy, each address plus OFFSET (KASLR, relocation)")  # fmt: skip
    debug.set_defaults(handler=cmd_debug)


def cmd_debug(args: argparse.Namespace) -> int:
    from emu.debugger.script import ScriptError, ScriptRunner
    from emu.debugger.session import DebugSession

    if args.script is None:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            sys.stderr.write(NO_TERMINAL + "\n")
            return ExitStatus.USAGE
        from emu.debugger.tui import run_tui

        return run_tui(config_from_args(args))
    if args.script == "-":
        lines = sys.stdin.read().splitlines()
    else:
        try:
            with open(args.script, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise EmuError(f"--script {args.script}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise EmuError(f"--script {args.script}: not a text file") from None
    cfg = config_from_args(args)
    session = DebugSession.open(cfg, symbol_files=args.symbols)
    try:
        runner = ScriptRunner(session, sys.stdout)
        try:
            runner.run(lines)
        except ScriptError as e:
            sys.stdout.flush()
            sys.stderr.write(f"emu: error: {e}\n")
            return ExitStatus.USAGE
        except EmuError:
            raise
        except Exception as e:  # a bug in emu: one line, never a traceback
            log.debug("internal error\n%s", traceback.format_exc())
            sys.stdout.flush()
            sys.stderr.write(f"emu: error: internal error: {type(e).__name__}: {e}\n")
            return ExitStatus.SOFTWARE
    finally:
        session.close()
    sys.stdout.flush()
    return ExitStatus.OK
