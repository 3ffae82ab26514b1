"""`emu` command line: `emu run` boots a machine with its console on stdio."""

from __future__ import annotations

import argparse
import io
import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from emu import __version__
from emu.boot_profile import BootProfile
from emu.debugger.command import add_debug_parser
from emu.errors import EmuError, ExitStatus
from emu.expect import ExpectWatch, apply_expectations
from emu.options import add_machine_options, add_output_options, add_run_options, config_from_args
from emu.timers import ProcessStart

if TYPE_CHECKING:
    from emu.config import MachineConfig
    from emu.machine import Machine, RunResult, Sink
    from emu.report import FaultReport
    from emu.terminal import StdioConsole

#: When this process started, for the boot timer (Firecracker counts from its own start).
STARTED = ProcessStart.now()

EXIT_STATUS_HELP = """exit statuses:
  0     the guest powered off or halted for good (cli; hlt), or you quit (Ctrl-A x);
        also a triple fault with --triple-fault=exit0
  odd   the guest wrote v to the debug-exit port 0xF4: status (v << 1) | 1
  2     bad usage or bad input (missing file, image too large, bad option)
  4     triple fault (a fault report goes to stderr; --report FILE writes it as JSON)
  8     a required --expect marker never appeared on the serial console
  70    emulator error (including an unusable /dev/kvm)
  124   --timeout expired
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"emu: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(ExitStatus.USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="emu", description="A full-system x86 PC emulator for debugging early boot.")
    p.add_argument("--version", action="version", version=f"emu {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    run = sub.add_parser(
        "run",
        help="boot a machine with its console on stdio",
        description="Boot a machine. With no boot source, boots the bundled demo guest.",
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_machine_options(run)
    add_run_options(run)
    add_output_options(run)
    ext = sub.add_parser(
        "extract-vmlinux",
        help="extract the vmlinux ELF from a bzImage",
        description="Decompress the kernel in a bzImage (gzip, xz, lzma, bzip2 or lz4) to its vmlinux ELF.",
    )
    ext.add_argument("bzimage", type=Path, metavar="BZIMAGE")
    ext.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="where the ELF is written")
    ext.set_defaults(handler=cmd_extract_vmlinux, verbose=0)
    add_debug_parser(sub)
    return p


def _open_sink(spec: str, what: str) -> io.FileIO | None:
    if spec in ("stdio", "none"):
        return None
    try:
        return open(spec, "wb", buffering=0)
    except OSError as e:
        raise EmuError(f"{what} {spec}: {e.strerror}") from None


def cmd_run(args: argparse.Namespace) -> int:
    return run_config(config_from_args(args), args)


def run_config(cfg: MachineConfig, args: argparse.Namespace, *,
               on_machine: Callable[[Machine | None], None] | None = None) -> int:  # fmt: skip
    """Run the machine `cfg` as `emu run` does with `args`' run and output options (the console
    on stdio, --expect, the fault report, the summary line); its exit status. `on_machine` is told
    of the machine once it is built and again (None) once it is closed (Firecracker's API)."""
    from emu.machine import Machine
    from emu.report.fault import fault_report, rerun_settings
    from emu.terminal import StdioConsole

    if args.expect_timeout is not None and not args.expect:
        raise EmuError("--expect-timeout needs at least one --expect TEXT")
    if args.report is not None and not args.report.parent.is_dir():
        raise EmuError(f"--report {args.report}: no such directory")
    profile = BootProfile(STARTED) if getattr(args, "boot_profile", None) is not None else None
    if profile is not None and not args.boot_profile.parent.is_dir():
        raise EmuError(f"--boot-profile {args.boot_profile}: no such directory")
    watch = ExpectWatch(args.expect, on_marker=(lambda m: profile.mark("expect", repr(m))) if profile else None)
    serial_file = _open_sink(args.serial, "--serial")
    debug_file = _open_sink(args.debugcon, "--debugcon")
    files = [f for f in (serial_file, debug_file) if f is not None]
    machine: Machine | None = None
    console: StdioConsole | None = None
    try:
        console = StdioConsole(on_quit=lambda: machine.request_quit() if machine else None)
        serial_sinks = _sinks(serial_file, console, args.serial)
        debug_sinks = _sinks(debug_file, console, args.debugcon)
        machine = Machine(cfg, serial_sinks=[*serial_sinks, watch], debugcon_sinks=debug_sinks,
                          messages=getattr(args, "messages", None) or _message_line, started=STARTED,
                          profile=profile)  # fmt: skip
        if on_machine is not None:
            on_machine(machine)
        # stdin feeds COM1 when it is on stdio, else a virtio-console on stdio (hvc0).
        stdin_feed = machine.serial.feed if args.serial == "stdio" else _virtio_console_feed(args, machine)
        if stdin_feed is not None:
            # Host input arrives at host times: a deterministic run ignores it (Ctrl-A x still quits).
            console.start(stdin_feed if not args.deterministic else lambda _data: None)
        expect_timer = _expect_timer(args.expect_timeout, watch, machine)
        try:
            result = machine.run()
        finally:
            if expect_timer is not None:
                expect_timer.cancel()
            if stdin_feed is not None:
                console.stop()
        rerun = rerun_settings(args.argv, machine)
        report = fault_report(machine, result, rerun, replay=args.on_triple_fault == "replay")
        where = _where(machine, result)
    finally:
        if machine is not None:
            if on_machine is not None:
                on_machine(None)
            machine.close()
        for f in files:
            f.close()
    status, reason = apply_expectations(result.status, result.reason, watch.missing,
                                        result.status == ExitStatus.EXPECT_MISSING)  # fmt: skip
    if report is not None:
        _write_report(report, args.report, show=status == ExitStatus.TRIPLE_FAULT)
    if profile is not None:
        try:
            profile.write(args.boot_profile)
        except OSError as e:
            raise EmuError(f"--boot-profile {args.boot_profile}: {e.strerror}") from None
        if args.verbose:
            sys.stderr.write(profile.table() + "\n")
    if not args.quiet:
        for line in where:
            sys.stderr.write(f"emu: {line}\n")
        sys.stderr.write(f"emu: {reason} (exit status {status})\n")
    return status


def _where(machine: Machine, result: RunResult) -> list[str]:
    """Where the CPU was, for a run emu ended (timeouts, Ctrl-A x) rather than the guest."""
    from emu.machine import ENDED_BY_EMU
    from emu.report.where import where_lines

    if result.state is None or not result.reason.startswith(ENDED_BY_EMU):
        return []
    cpu = result.exit.detail.get("cpu", 0) if result.exit is not None and machine.cfg.smp > 1 else None
    try:
        return where_lines(result.state, machine.memory, machine.backend.block_trace(), cpu)
    except Exception as e:  # the summary must come out whatever this finds
        return [f"(where the CPU was: not known: {e})"]


def _message_line(line: str) -> None:
    """A line for the user while the guest runs (the boot timer's), on stderr as Firecracker's."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _sinks(file: io.FileIO | None, console: StdioConsole, spec: str) -> list[Sink]:
    """Where an output (--serial, --debugcon) goes: its file, the console with stdio, or nowhere."""
    if file is not None:
        return [file.write]
    return [console.write] if spec == "stdio" else []


def _virtio_console_feed(args: argparse.Namespace, machine: Machine) -> Callable[[bytes], None] | None:
    from emu.devices.virtio.attach import find_console

    if args.virtio_console is None or args.virtio_console.target != "stdio":
        return None
    device = find_console(machine.virtio)
    return device.feed if device is not None else None


def _expect_timer(seconds: float | None, watch: ExpectWatch, machine: Machine) -> threading.Timer | None:
    """--expect-timeout: end the run if a marker is still missing by then."""
    if seconds is None:
        return None
    timer = threading.Timer(seconds, lambda: None if watch.all_seen.is_set() else machine.request_expect_timeout())
    timer.daemon = True
    timer.start()
    return timer


def _write_report(report: FaultReport, path: Path | None, show: bool) -> None:
    from emu.report import render as render_report

    if show:
        sys.stderr.write(render_report(report))
    if path is not None:
        try:
            path.write_text(report.to_json())
        except OSError as e:
            raise EmuError(f"--report {path}: {e.strerror}") from None


def cmd_extract_vmlinux(args: argparse.Namespace) -> int:
    from emu.tools.extract_vmlinux import extract_vmlinux

    try:
        elf = extract_vmlinux(args.bzimage.read_bytes())
        args.output.write_bytes(elf)
    except OSError as e:
        raise EmuError(f"{e.filename}: {e.strerror}") from None
    sys.stderr.write(f"emu: wrote {args.output} ({len(elf)} bytes)\n")
    return ExitStatus.OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # for the fault report's rerun line
    if args.command is None:
        parser.print_help()
        return ExitStatus.USAGE
    level = logging.DEBUG if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="emu: %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.handler(args) if "handler" in args else cmd_run(args)
    except EmuError as e:
        sys.stderr.write(f"emu: error: {e}\n")
        return e.status
    except KeyboardInterrupt:
        return ExitStatus.OK


if __name__ == "__main__":
    sys.exit(main())
