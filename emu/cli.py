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

from emu import __version__, layout
from emu.config import (
    BackendName,
    BootKind,
    DiskSpec,
    MachineConfig,
    NetSpec,
    TripleFaultPolicy,
    VirtioSpec,
    VirtioTransport,
)
from emu.errors import EmuError, ExitStatus
from emu.expect import ExpectWatch, apply_expectations
from emu.memory import parse_size

if TYPE_CHECKING:
    from emu.machine import Machine
    from emu.report import FaultReport

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


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _mem_size(text: str) -> int:
    try:
        return parse_size(text, default_unit=layout.MiB)  # `--mem 256` is 256 MiB, as QEMU's -m
    except EmuError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def _disk(text: str) -> DiskSpec:
    """PATH[,ro][,floppy][,transport=mmio|mmio-legacy|pci|pci-legacy|pci-modern]"""
    path, *opts = text.split(",")
    if not path:
        raise argparse.ArgumentTypeError(f"no file name in {text!r}")
    spec = DiskSpec(Path(path))
    for opt in opts:
        if opt in ("ro", "readonly"):
            spec.readonly = True
        elif opt in ("floppy", "if=floppy"):
            spec.floppy = True
        elif opt.startswith("transport="):
            spec.transport = _transport(opt.removeprefix("transport="))
        else:
            known = "ro, floppy, transport="
            raise argparse.ArgumentTypeError(f"unknown disk option {opt!r} in {text!r} (known: {known})")
    if spec.floppy and spec.transport is not None:
        raise argparse.ArgumentTypeError(f"a floppy is a BIOS drive, not a virtio disk: {text!r}")
    return spec


def _transport(text: str) -> VirtioTransport:
    try:
        return VirtioTransport(text)
    except ValueError:
        known = ", ".join(t.value for t in VirtioTransport)
        raise argparse.ArgumentTypeError(f"unknown virtio transport {text!r} (known: {known})") from None


def _net(text: str) -> NetSpec:
    """tap[=NAME][,mac=52:54:..][,transport=T]"""
    from emu.devices.virtio.tap import parse_mac

    kind, *opts = text.split(",")
    if kind != "tap" and not kind.startswith("tap="):
        raise argparse.ArgumentTypeError(f"{text!r}: the only network backend is tap (tap or tap=NAME)")
    spec = NetSpec(tap=kind.removeprefix("tap=") if kind != "tap" else None)
    if spec.tap == "":
        raise argparse.ArgumentTypeError(f"no interface name in {text!r}")
    for opt in opts:
        if opt.startswith("mac="):
            try:
                spec.mac = parse_mac(opt.removeprefix("mac="))
            except ValueError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        elif opt.startswith("transport="):
            spec.transport = _transport(opt.removeprefix("transport="))
        else:
            raise argparse.ArgumentTypeError(f"unknown net option {opt!r} in {text!r} (known: mac=, transport=)")
    return spec


def _virtio_spec(text: str) -> VirtioSpec:
    """[TARGET][,transport=T] (--rng takes no target, --virtio-console a file or stdio)."""
    target, *opts = text.split(",")
    if target.startswith("transport="):
        target, opts = "", [target, *opts]
    spec = VirtioSpec(target)
    for opt in opts:
        if not opt.startswith("transport="):
            raise argparse.ArgumentTypeError(f"unknown option {opt!r} in {text!r} (known: transport=)")
        spec.transport = _transport(opt.removeprefix("transport="))
    return spec


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
    run.add_argument("--backend", choices=[b.value for b in BackendName], default="unicorn",
                     help="CPU backend (default: unicorn)")  # fmt: skip
    run.add_argument(
        "-m", "--mem", type=_mem_size, default="256M", help="guest RAM: 64M, 2G, or MiB as a bare number (default 256M)"
    )
    boot = run.add_mutually_exclusive_group()
    boot.add_argument("--bios", type=Path, metavar="FILE", help="firmware image started at the reset vector")
    boot.add_argument("--image", type=Path, metavar="FILE", help="flat real-mode image loaded at --load-addr")
    boot.add_argument("--kernel", type=Path, metavar="FILE",
                      help="boot a kernel directly: vmlinux ELF, bzImage, PVH ELF or multiboot")  # fmt: skip
    run.add_argument("--load-addr", type=_int, default=layout.BOOT_SECTOR, metavar="ADDR",
                     help="where --image is loaded and entered in real mode (default %(default)#x)")  # fmt: skip
    run.add_argument("--initrd", type=Path, metavar="FILE", help="initial ramdisk for --kernel")
    run.add_argument("--cmdline", "--append", "-append", default="", metavar="TEXT",
                     help="kernel command line for --kernel")  # fmt: skip
    run.add_argument("--boot", choices=[k.value for k in BootKind], default="auto",
                     help="how --kernel is entered (default: detected from the file)")  # fmt: skip
    run.add_argument("--module", type=Path, action="append", default=[], metavar="FILE",
                     help="extra multiboot module (repeatable; the initrd is the first module)")  # fmt: skip
    run.add_argument("--disk", type=_disk, action="append", default=[],
                     metavar="PATH[,ro][,floppy][,transport=mmio|mmio-legacy|pci|pci-legacy|pci-modern]",
                     help="disk image (repeatable): a BIOS disk (first hard disk 0x80, a floppy 0x00), or "
                          "a virtio-blk disk with --kernel or a transport=")  # fmt: skip
    run.add_argument("--virtio-transport", type=_transport, default=VirtioTransport.MMIO,
                     metavar="mmio|mmio-legacy|pci|pci-legacy|pci-modern",
                     help="transport of virtio devices that name none (default mmio: virtio-mmio v2; "
                          "pci: a transitional virtio-pci device)")  # fmt: skip
    run.add_argument("--net", type=_net, action="append", default=[], metavar="tap[=NAME][,mac=MAC][,transport=T]",
                     help="virtio-net NIC on a host tap (repeatable): tap=NAME attaches to an existing tap, "
                          "tap alone creates emutapN (root) and brings it up")  # fmt: skip
    run.add_argument("--rng", type=_virtio_spec, nargs="?", const=VirtioSpec(), metavar="transport=T",
                     help="virtio-rng fed from the host's os.urandom (seeded bytes with --deterministic)")  # fmt: skip
    run.add_argument("--virtio-console", type=_virtio_spec, metavar="FILE|stdio[,transport=T]",
                     help="virtio-console: the guest's hvc0 output to FILE or stdout; with stdio and "
                          "--serial other than stdio, stdin goes to hvc0")  # fmt: skip
    run.add_argument("--snapshot", action="store_true",
                     help="write disk changes to a temporary overlay; the image files stay untouched")  # fmt: skip
    run.add_argument("--serial", default="stdio", metavar="stdio|none|FILE",
                     help="where COM1 output goes (default stdio; input comes from stdin with stdio)")  # fmt: skip
    run.add_argument("--debugcon", default="stdio", metavar="stdio|none|FILE",
                     help="where port 0xE9 output goes (default stdio)")  # fmt: skip
    run.add_argument("--timeout", type=_seconds, metavar="SECONDS", help="end the run after this long (status 124)")
    run.add_argument("--no-reboot", action="store_true", help="exit instead of rebooting when the guest resets")
    run.add_argument("--triple-fault", choices=[p.value for p in TripleFaultPolicy], default="error",
                     help="error: end with status 4 and a fault report (default); reset: reboot as a PC "
                          "does; exit0: end with status 0 (guests that shut down this way on purpose)")  # fmt: skip
    run.add_argument("--report", type=Path, metavar="FILE.json",
                     help="on a triple fault, also write the fault report as JSON (docs/report-schema.md)")  # fmt: skip
    run.add_argument("--on-triple-fault", choices=["report", "replay"], default="report",
                     help="replay: after a KVM triple fault, rerun the machine under Unicorn to recover the "
                          "exception chain")  # fmt: skip
    run.add_argument("--expect", action="append", default=[], metavar="TEXT",
                     help="serial output the run must produce (repeatable); missing at the end: status 8")  # fmt: skip
    run.add_argument("--expect-timeout", type=_seconds, metavar="SECONDS",
                     help="end the run with status 8 if an --expect marker has not appeared by then")  # fmt: skip
    run.add_argument("--deterministic", action="store_true",
                     help="guest time from the code executed, not the host clock (unicorn): the same run every "
                          "time; console input is ignored")  # fmt: skip
    run.add_argument("--acpi", choices=["on", "off"], default="off",
                     help="with --kernel: ACPI tables (RSDP, FADT, DSDT listing the virtio-mmio devices; a MADT "
                          "under kvm) instead of virtio_mmio.device= command-line words (default off)")  # fmt: skip
    run.add_argument("-v", "--verbose", action="count", default=0, help="debug output on stderr (-vv: more)")
    run.add_argument("-q", "--quiet", action="store_true", help="no summary line on stderr at the end")
    ext = sub.add_parser(
        "extract-vmlinux",
        help="extract the vmlinux ELF from a bzImage",
        description="Decompress the kernel in a bzImage (gzip, xz, lzma, bzip2 or lz4) to its vmlinux ELF.",
    )
    ext.add_argument("bzimage", type=Path, metavar="BZIMAGE")
    ext.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="where the ELF is written")
    ext.set_defaults(handler=cmd_extract_vmlinux, verbose=0)
    from emu.debugger.cli import add_debug_parser

    add_debug_parser(sub, run)  # `emu debug`: run's boot options plus --script
    return p


def _open_sink(spec: str, what: str) -> io.FileIO | None:
    if spec in ("stdio", "none"):
        return None
    try:
        return open(spec, "wb", buffering=0)
    except OSError as e:
        raise EmuError(f"{what} {spec}: {e.strerror}") from None


def config_from_args(args: argparse.Namespace) -> MachineConfig:
    """The machine `emu run`'s boot options describe (also what `emu debug` debugs)."""
    from emu import roms

    disks = args.disk
    if args.bios is None and args.image is None and args.kernel is None and not disks:
        # The bundled demo disk, booted by the BIOS; read-only so the shipped image never changes.
        disks = [DiskSpec(roms.rom_path(roms.DEFAULT_GUEST), readonly=True)]
    if args.kernel is None and (args.initrd or args.cmdline or args.module or args.boot != "auto"):
        raise EmuError("--initrd, --cmdline, --module and --boot only apply with --kernel")
    cfg = MachineConfig(
        backend=BackendName(args.backend), mem=args.mem, bios=args.bios, image=args.image,
        load_addr=args.load_addr, timeout=args.timeout, no_reboot=args.no_reboot,
        kernel=args.kernel, initrd=args.initrd, cmdline=args.cmdline, boot=BootKind(args.boot),
        modules=args.module, disks=disks, snapshot=args.snapshot, virtio_transport=args.virtio_transport,
        triple_fault=TripleFaultPolicy(args.triple_fault), deterministic=args.deterministic,
        acpi=args.acpi == "on", nets=args.net, rng=args.rng,
    )  # fmt: skip
    if cfg.acpi and args.kernel is None:
        raise EmuError("--acpi on only applies with --kernel (the BIOS path has no ACPI tables)")
    if args.virtio_console is not None:
        if not args.virtio_console.target:
            raise EmuError("--virtio-console needs a FILE or stdio")
        cfg.virtio_console = args.virtio_console
    if args.deterministic and args.backend != BackendName.UNICORN.value:
        raise EmuError("--deterministic needs --backend unicorn (KVM runs on host time)")
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    from emu.console import StdioConsole
    from emu.machine import Machine
    from emu.report.session import fault_report, rerun_settings

    cfg = config_from_args(args)
    if args.expect_timeout is not None and not args.expect:
        raise EmuError("--expect-timeout needs at least one --expect TEXT")
    if args.report is not None and not args.report.parent.is_dir():
        raise EmuError(f"--report {args.report}: no such directory")
    watch = ExpectWatch(args.expect)
    serial_file = _open_sink(args.serial, "--serial")
    debug_file = _open_sink(args.debugcon, "--debugcon")
    files = [f for f in (serial_file, debug_file) if f is not None]
    machine: Machine | None = None
    console: StdioConsole | None = None
    try:
        console = StdioConsole(on_quit=lambda: machine.request_quit() if machine else None)
        serial_sinks = [serial_file.write] if serial_file else ([console.write] if args.serial == "stdio" else [])
        debug_sinks = [debug_file.write] if debug_file else ([console.write] if args.debugcon == "stdio" else [])
        machine = Machine(cfg, serial_sinks=[*serial_sinks, watch], debugcon_sinks=debug_sinks)
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
        rerun = rerun_settings(args.argv, args.backend, args.deterministic)
        report = fault_report(machine, result, rerun, replay=args.on_triple_fault == "replay")
    finally:
        if machine is not None:
            machine.close()
        for f in files:
            f.close()
    status, reason = apply_expectations(result.status, result.reason, watch.missing,
                                        result.status == ExitStatus.EXPECT_MISSING)  # fmt: skip
    if report is not None:
        _write_report(report, args.report, show=status == ExitStatus.TRIPLE_FAULT)
    if not args.quiet:
        sys.stderr.write(f"emu: {reason} (exit status {status})\n")
    return status


def _virtio_console_feed(args: argparse.Namespace, machine: Machine) -> Callable[[bytes], None] | None:
    from emu.devices.virtio.slots import find_console

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
    from emu.tools.vmlinux import extract_vmlinux

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
