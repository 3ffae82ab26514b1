"""`emu-firecracker`: Firecracker's command line over emu, so that tools which start the binary
named by FIRECRACKER_PATH (or `firecracker` on PATH) drive emu unchanged.

Firecracker's options: --api-sock PATH (default /run/firecracker.socket), --config-file FILE,
--no-api (needs --config-file), --boot-timer, --id; accepted and without effect under emu:
--level, --log-path (the boot timer's line is written there too), --show-level,
--show-log-origin, --seccomp-filter, --no-seccomp, --metrics-path, --http-api-max-payload-size,
--mmds-size-limit, --start-time-us, --start-time-cpu-us, --parent-cpu-time-us.
emu's own choices come from the environment: EMU_FIRECRACKER_ARGS holds `emu run` options
(e.g. "--backend kvm --timeout 60 --report fault.json").
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from emu.errors import EmuError, ExitStatus
from emu.firecracker.rest_api import FIRECRACKER_API_VERSION, Api, ApiServer, Vmm
from emu.firecracker.vm_description import VmDescription

log = logging.getLogger("emu.firecracker")

ENV_ARGS = "EMU_FIRECRACKER_ARGS"
DEFAULT_API_SOCK = "/run/firecracker.socket"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="emu-firecracker",
        description="Firecracker's command line, run by emu (emu's own options: $EMU_FIRECRACKER_ARGS)",
    )
    p.add_argument("--api-sock", type=Path, default=Path(DEFAULT_API_SOCK), metavar="PATH")
    p.add_argument("--config-file", type=Path, metavar="FILE")
    p.add_argument("--no-api", action="store_true", help="no API socket (needs --config-file)")
    p.add_argument("--boot-timer", action="store_true")
    p.add_argument("--id", default="anonymous-instance")
    p.add_argument("--log-path", type=Path, metavar="PATH")
    p.add_argument("--version", action="store_true")
    for flag in ("--level", "--metrics-path", "--seccomp-filter", "--http-api-max-payload-size", "--mmds-size-limit",
                 "--start-time-us", "--start-time-cpu-us", "--parent-cpu-time-us", "--module"):  # fmt: skip
        p.add_argument(flag, metavar="VALUE", help=argparse.SUPPRESS)
    for flag in ("--show-level", "--show-log-origin", "--no-seccomp", "--describe-snapshot"):
        p.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    return p


def _emu_args(fc: argparse.Namespace) -> argparse.Namespace:
    """`emu run`'s options from EMU_FIRECRACKER_ARGS, plus what Firecracker's command line sets."""
    from emu.cli import build_parser as emu_parser

    extra = shlex.split(os.environ.get(ENV_ARGS, ""))
    try:
        args = emu_parser().parse_args(["run", *extra])
    except SystemExit:
        raise EmuError(f"${ENV_ARGS}: not emu run options: {os.environ.get(ENV_ARGS)!r}") from None
    args.argv = ["firecracker", *sys.argv[1:]]
    args.boot_timer = args.boot_timer or fc.boot_timer
    log_path: Path | None = fc.log_path

    def message(line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
        if log_path is not None:
            try:
                with log_path.open("a") as f:
                    f.write(line + "\n")
            except OSError as e:
                log.warning("--log-path %s: %s", log_path, e.strerror)

    args.messages = message
    return args


def _start(args: argparse.Namespace) -> Any:
    """The function the Vmm runs at InstanceStart: emu's run of the described machine."""
    from emu.cli import run_config
    from emu.options import described_machine

    def start(vm: VmDescription, vmm: Vmm) -> int:
        cfg = described_machine(vm, args)

        def on_machine(machine: Any) -> None:
            with vmm.lock:
                vmm.machine = machine

        return run_config(cfg, args, on_machine=on_machine)

    return start


def run(argv: list[str] | None = None) -> int:
    fc = build_parser().parse_args(argv)
    if fc.version:
        print(f"Firecracker v{FIRECRACKER_API_VERSION} (emu)")
        return ExitStatus.OK
    if fc.no_api and fc.config_file is None:
        raise EmuError("--no-api needs --config-file (nothing could configure the microVM)")
    args = _emu_args(fc)
    vmm = Vmm(fc.id, _start(args))
    if fc.config_file is not None:
        vmm.vm = VmDescription.load(fc.config_file)
        for note in vmm.vm.notes():
            log.warning("--config-file: %s", note)
    server: ApiServer | None = None
    if not fc.no_api:
        try:
            server = ApiServer(fc.api_sock, Api(vmm))
        except OSError as e:
            raise EmuError(f"--api-sock {fc.api_sock}: {e.strerror}") from None
        threading.Thread(target=server.serve_forever, name="firecracker-api", daemon=True).start()
    try:
        if fc.config_file is not None:
            vmm.instance_start()
        # Without a config file the API starts the VM; the process ends when the VM does.
        while not vmm.done.wait(0.2):
            pass
    except KeyboardInterrupt:
        machine = vmm.machine
        if machine is not None:
            machine.request_quit()
        vmm.done.wait(5)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    return vmm.status if vmm.status is not None else ExitStatus.OK


def main(argv: list[str] | None = None) -> int:
    level = logging.DEBUG if os.environ.get("EMU_FIRECRACKER_DEBUG") else logging.WARNING
    logging.basicConfig(level=level, format="emu: %(name)s: %(message)s", stream=sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(ExitStatus.OK))
    try:
        return run(argv)
    except EmuError as e:
        sys.stderr.write(f"emu: error: {e}\n")
        return e.status


if __name__ == "__main__":
    sys.exit(main())
