"""The options that describe a machine (`emu run` and `emu debug` share them) and the options that
shape how a run ends, turned into a MachineConfig."""

from __future__ import annotations

import argparse
import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emu import layout
from emu.config import (
    BackendName,
    BootKind,
    DiskFormat,
    DiskSpec,
    MachineConfig,
    NetSpec,
    TripleFaultPolicy,
    VirtioSpec,
    VirtioTransport,
    validate,
)
from emu.errors import EmuError
from emu.memory import parse_size

if TYPE_CHECKING:
    from emu.firecracker.vm_description import VmDescription

log = logging.getLogger("emu.options")


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
    """PATH[,ro][,floppy][,transport=mmio|mmio-legacy|pci|pci-legacy|pci-modern][,format=raw|qcow2]"""
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
        elif opt.startswith("format="):
            try:
                spec.format = DiskFormat(opt.removeprefix("format="))
            except ValueError:
                known = ", ".join(f.value for f in DiskFormat)
                raise argparse.ArgumentTypeError(f"unknown disk format in {text!r} (known: {known})") from None
        else:
            known = "ro, floppy, transport=, format="
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


def _cpu_count(text: str) -> int:
    try:
        n = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of CPUs: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"a machine has at least 1 CPU, not {n}")
    return n


def add_machine_options(p: argparse.ArgumentParser) -> None:
    """The options that describe the machine: backend, memory, boot source, devices, policies."""
    p.add_argument("--backend", choices=[b.value for b in BackendName], default="unicorn",
                   help="CPU backend (default: unicorn)")  # fmt: skip
    p.add_argument(
        "-m", "--mem", type=_mem_size, default="256M", help="guest RAM: 64M, 2G, or MiB as a bare number (default 256M)"
    )
    boot = p.add_mutually_exclusive_group()
    boot.add_argument("--bios", type=Path, metavar="FILE", help="firmware image started at the reset vector")
    boot.add_argument("--image", type=Path, metavar="FILE", help="flat real-mode image loaded at --load-addr")
    boot.add_argument("--kernel", type=Path, metavar="FILE",
                      help="boot a kernel directly: vmlinux ELF, bzImage, PVH ELF or multiboot")  # fmt: skip
    boot.add_argument("--config-file", type=Path, metavar="FILE",
                      help="a Firecracker VM configuration (JSON): the machine it describes")  # fmt: skip
    p.add_argument("--load-addr", type=_int, default=layout.BOOT_SECTOR, metavar="ADDR",
                   help="where --image is loaded and entered in real mode (default %(default)#x)")  # fmt: skip
    p.add_argument("--initrd", type=Path, metavar="FILE", help="initial ramdisk for --kernel")
    p.add_argument("--cmdline", "--append", "-append", default="", metavar="TEXT",
                   help="kernel command line for --kernel")  # fmt: skip
    p.add_argument("--boot", choices=[k.value for k in BootKind], default="auto",
                   help="how --kernel is entered (default: detected from the file)")  # fmt: skip
    p.add_argument("--module", type=Path, action="append", default=[], metavar="FILE",
                   help="extra multiboot module (repeatable; the initrd is the first module)")  # fmt: skip
    p.add_argument("--disk", type=_disk, action="append", default=[],
                   metavar="PATH[,ro][,floppy][,transport=mmio|mmio-legacy|pci|pci-legacy|pci-modern][,format=raw|qcow2]",
                   help="disk image, raw or qcow2 (repeatable): a BIOS disk (first hard disk 0x80, a floppy "
                        "0x00), or a virtio-blk disk with --kernel or a transport= (the BIOS boots virtio-pci "
                        "disks too)")  # fmt: skip
    p.add_argument("--virtio-transport", type=_transport, default=VirtioTransport.MMIO,
                   metavar="mmio|mmio-legacy|pci|pci-legacy|pci-modern",
                   help="transport of virtio devices that name none (default mmio: virtio-mmio v2; "
                        "pci: a transitional virtio-pci device)")  # fmt: skip
    p.add_argument("--net", type=_net, action="append", default=[], metavar="tap[=NAME][,mac=MAC][,transport=T]",
                   help="virtio-net NIC on a host tap (repeatable): tap=NAME attaches to an existing tap, "
                        "tap alone creates emutapN (root) and brings it up")  # fmt: skip
    p.add_argument("--rng", type=_virtio_spec, nargs="?", const=VirtioSpec(), metavar="transport=T",
                   help="virtio-rng fed from the host's os.urandom (seeded bytes with --deterministic)")  # fmt: skip
    p.add_argument("--virtio-console", type=_virtio_spec, metavar="FILE|stdio[,transport=T]",
                   help="virtio-console: the guest's hvc0 output to FILE or stdout; with stdio and "
                        "--serial other than stdio, stdin goes to hvc0")  # fmt: skip
    p.add_argument("--snapshot", action="store_true",
                   help="write disk changes to a temporary overlay; the image files stay untouched")  # fmt: skip
    p.add_argument("--serial", default="stdio", metavar="stdio|none|FILE",
                   help="where COM1 output goes (default stdio; input comes from stdin with stdio)")  # fmt: skip
    p.add_argument("--debugcon", default="stdio", metavar="stdio|none|FILE",
                   help="where port 0xE9 output goes (default stdio)")  # fmt: skip
    p.add_argument("--no-reboot", action="store_true", help="exit instead of rebooting when the guest resets")
    p.add_argument("--triple-fault", choices=[p.value for p in TripleFaultPolicy], default="error",
                   help="error: end with status 4 and a fault report (default); reset: reboot as a PC "
                        "does; exit0: end with status 0 (guests that shut down this way on purpose)")  # fmt: skip
    p.add_argument("--deterministic", action="store_true",
                   help="guest time from the code executed, not the host clock (unicorn): the same run every "
                        "time; console input is ignored")  # fmt: skip
    p.add_argument("--acpi", choices=["on", "off"], default="off",
                   help="with --kernel: ACPI tables (RSDP, FADT, DSDT listing the virtio-mmio devices; a MADT "
                        "and HPET table) instead of virtio_mmio.device= command-line words (default off)")  # fmt: skip
    p.add_argument("--boot-timer", action="store_true",
                   help="Firecracker's boot timer: a guest writing 123 at 0xc0000000 (or port 0x3f0) prints "
                        "the time since emu started")  # fmt: skip
    p.add_argument("--smp", type=_cpu_count, default=1, metavar="N",
                   help="vCPUs (default 1): CPU 0 boots, the others wait for INIT-SIPI-SIPI; the MP table "
                        "and the MADT list them all")  # fmt: skip


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options that shape how a run ends and what it reports."""
    p.add_argument("--timeout", type=_seconds, metavar="SECONDS", help="end the run after this long (status 124)")
    p.add_argument("--report", type=Path, metavar="FILE.json",
                   help="on a triple fault, also write the fault report as JSON (docs/report-schema.md)")  # fmt: skip
    p.add_argument("--on-triple-fault", choices=["report", "replay"], default="report",
                   help="replay: after a KVM triple fault, rerun the machine under Unicorn to recover the "
                        "exception chain")  # fmt: skip
    p.add_argument("--expect", action="append", default=[], metavar="TEXT",
                   help="serial output the run must produce (repeatable); missing at the end: status 8")  # fmt: skip
    p.add_argument("--boot-profile", type=Path, metavar="FILE.json",
                   help="write the boot's milestones (host and guest time, guest code) as JSON, and as an SVG "
                        "timeline beside it (FILE.svg); -v also prints them as a table")  # fmt: skip
    p.add_argument("--expect-timeout", type=_seconds, metavar="SECONDS",
                   help="end the run with status 8 if an --expect marker has not appeared by then")  # fmt: skip


def add_output_options(p: argparse.ArgumentParser) -> None:
    """-v and -q."""
    p.add_argument("-v", "--verbose", action="count", default=0, help="debug output on stderr (-vv: more)")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary line on stderr at the end")


#: Machine options a Firecracker config file sets itself: given with --config-file, an error.
_CONFIG_FILE_SETS = {
    "mem": "--mem", "initrd": "--initrd", "cmdline": "--cmdline", "module": "--module", "disk": "--disk",
    "net": "--net", "rng": "--rng", "virtio_console": "--virtio-console", "smp": "--smp", "boot": "--boot",
}  # fmt: skip


@functools.cache
def _machine_defaults() -> dict[str, Any]:
    p = argparse.ArgumentParser()
    add_machine_options(p)
    return vars(p.parse_args([]))


def _from_config_file(args: argparse.Namespace) -> MachineConfig:
    """--config-file: Firecracker's description of the machine, on emu's own run settings."""
    from emu.firecracker.vm_description import VmDescription

    for dest, flag in _CONFIG_FILE_SETS.items():
        if getattr(args, dest) != _machine_defaults()[dest]:
            raise EmuError(f"{flag} cannot be given with --config-file, which describes the machine")
    vm = VmDescription.load(args.config_file)
    for note in vm.notes():
        log.warning("--config-file: %s", note)
    return described_machine(vm, args)


def described_machine(vm: VmDescription, args: argparse.Namespace) -> MachineConfig:
    """A Firecracker VM description (--config-file, emu-firecracker) on the backend and run settings
    of `emu run` options `args`, checked."""
    base = MachineConfig(
        backend=BackendName(args.backend), timeout=args.timeout, triple_fault=TripleFaultPolicy(args.triple_fault),
        deterministic=args.deterministic, boot_timer=args.boot_timer,
    )  # fmt: skip
    cfg = vm.machine_config(base)
    validate(cfg)
    return cfg


def config_from_args(args: argparse.Namespace) -> MachineConfig:
    """The machine the options describe (what `emu run` boots and `emu debug` debugs), checked
    (emu.config.validate) so a bad combination is refused before anything is opened."""
    from emu import roms

    if getattr(args, "config_file", None) is not None:
        return _from_config_file(args)
    disks = args.disk
    if args.bios is None and args.image is None and args.kernel is None and not disks:
        # The bundled demo disk, booted by the BIOS; read-only so the shipped image never changes.
        disks = [DiskSpec(roms.rom_path(roms.DEFAULT_GUEST), readonly=True)]
    cfg = MachineConfig(
        backend=BackendName(args.backend), mem=args.mem, bios=args.bios, image=args.image,
        load_addr=args.load_addr, timeout=args.timeout, no_reboot=args.no_reboot,
        kernel=args.kernel, initrd=args.initrd, cmdline=args.cmdline, boot=BootKind(args.boot),
        modules=args.module, disks=disks, snapshot=args.snapshot, virtio_transport=args.virtio_transport,
        triple_fault=TripleFaultPolicy(args.triple_fault), deterministic=args.deterministic,
        acpi=args.acpi == "on", smp=args.smp, boot_timer=args.boot_timer, nets=args.net, rng=args.rng,
        virtio_console=args.virtio_console,
    )  # fmt: skip
    validate(cfg)
    return cfg
