"""Firecracker's front door as its users use it: `emu-firecracker` started the way tools start the
binary named by FIRECRACKER_PATH, driven with curl over its API socket (each status as
Firecracker's), or with --no-api --config-file; GET /vm/config fed back as a config file boots the
same VM; OSv's Firecracker set-up both ways; pause and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from emu.tools.guests import MARKER_DONE, LinuxGuest, build_initramfs

FIRECRACKER = Path(sys.executable).parent / "emu-firecracker"  # what FIRECRACKER_PATH names
OSV = Path(__file__).resolve().parents[2] / "shared" / "guests" / "osv"


class Microvm:
    """emu-firecracker on an API socket in `tmp`, and curl to talk to it."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.sock = tmp / "firecracker.socket"
        self.out = (tmp / "out.txt").open("w+")
        self.err = (tmp / "err.txt").open("w+")
        self.proc = subprocess.Popen([str(FIRECRACKER), "--api-sock", str(self.sock), *args],
                                     stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.err)  # fmt: skip
        deadline = time.monotonic() + 10
        while not self.sock.exists():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.stderr()
            time.sleep(0.05)

    def curl(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        cmd = ["curl", "-s", "--unix-socket", str(self.sock), "-X", method, f"http://localhost{path}",
               "-w", "\n%{http_code}"]  # fmt: skip
        if body is not None:
            cmd += ["-H", "Content-Type: application/json", "-d", body if isinstance(body, str) else json.dumps(body)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True)
        text, _, code = p.stdout.rpartition("\n")
        return int(code), json.loads(text) if text else None

    def wait(self, timeout: float = 120) -> int:
        return self.proc.wait(timeout)

    def stdout(self) -> str:
        self.out.seek(0)
        return self.out.read()

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.out.close()
        self.err.close()


def boot_source(guest: LinuxGuest) -> dict[str, Any]:
    return {"kernel_image_path": str(guest.vmlinux), "initrd_path": str(guest.initramfs),
            "boot_args": "console=ttyS0 reboot=k panic=1"}  # fmt: skip


def test_curl_configures_and_starts_a_microvm(guest: LinuxGuest, tmp_path: Path) -> None:
    vm = Microvm(tmp_path)
    try:
        assert vm.curl("GET", "/")[1]["state"] == "Not started"
        assert vm.curl("PUT", "/boot-source", boot_source(guest)) == (204, None)
        assert vm.curl("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 256}) == (204, None)
        assert vm.curl("PATCH", "/machine-config", {"mem_size_mib": 192}) == (204, None)
        assert vm.curl("GET", "/machine-config")[1]["mem_size_mib"] == 192
        # Firecracker's refusals: 400 with a fault_message, never a hang.
        code, body = vm.curl("PUT", "/machine-config", {"vcpu_count": "two", "mem_size_mib": 256})
        assert code == 400 and "vcpu_count: expected an integer" in body["fault_message"]
        code, body = vm.curl("PUT", "/drives/a", {"drive_id": "b", "path_on_host": "/x", "is_root_device": False})
        assert code == 400 and "does not match" in body["fault_message"]
        code, body = vm.curl("PUT", "/vsock", {"guest_cid": 3, "uds_path": "/tmp/v"})
        assert code == 400 and "vsock" in body["fault_message"]
        code, body = vm.curl("PUT", "/boot-source", "{not json")
        assert code == 400 and "not JSON" in body["fault_message"]
        code, body = vm.curl("GET", "/no/such/path")
        assert code == 400 and "Invalid request method and/or path" in body["fault_message"]
        assert vm.curl("PUT", "/logger", {"log_path": str(tmp_path / "log"), "level": "Info"}) == (204, None)
        config = vm.curl("GET", "/vm/config")[1]
        assert config["machine-config"]["vcpu_count"] == 2
        assert vm.curl("PUT", "/actions", {"action_type": "InstanceStart"}) == (204, None)
        code, body = vm.curl("PUT", "/boot-source", boot_source(guest))
        assert code == 400 and "after starting" in body["fault_message"]
        assert vm.curl("GET", "/")[1]["state"] == "Running"
        assert vm.wait() == 0, vm.stderr()
        assert MARKER_DONE in vm.stdout()
    finally:
        vm.close()
    # GET /vm/config, fed back as a config file, boots the same VM.
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(config))
    p = subprocess.run([str(FIRECRACKER), "--no-api", "--config-file", str(saved)], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, errors="replace", timeout=150)  # fmt: skip
    assert p.returncode == 0 and MARKER_DONE in p.stdout, p.stderr
    assert "smp: Brought up 1 node, 2 CPUs" in p.stdout


def test_pause_and_resume(guest: LinuxGuest, tmp_path: Path) -> None:
    config = tmp_path / "vm.json"
    config.write_text(json.dumps({"boot-source": boot_source(guest),
                                  "machine-config": {"vcpu_count": 1, "mem_size_mib": 256}}))  # fmt: skip
    vm = Microvm(tmp_path, "--config-file", str(config))
    try:
        time.sleep(0.5)
        assert vm.curl("PATCH", "/vm", {"state": "Paused"}) == (204, None)
        assert vm.curl("GET", "/")[1]["state"] == "Paused"
        size = len(vm.stdout())
        time.sleep(1.5)
        assert len(vm.stdout()) == size  # no guest output while paused
        assert vm.curl("PATCH", "/vm", {"state": "Resumed"}) == (204, None)
        assert vm.wait() == 0, vm.stderr()
        assert MARKER_DONE in vm.stdout()
    finally:
        vm.close()


@pytest.fixture(scope="module")
def osv_rofs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (OSV / "rofs" / "usr.img").is_file():
        pytest.skip(f"the OSv test guests are not beside this checkout ({OSV})")
    raw = tmp_path_factory.mktemp("osv") / "usr.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(OSV / "rofs" / "usr.img"), str(raw)], check=True)
    return raw


def osv_config(rofs: Path) -> dict[str, Any]:
    """OSv's scripts/firecracker.py set-up: one vCPU, 128 MiB, the rofs as drive `rootfs`."""
    return {
        "boot-source": {"kernel_image_path": str(OSV / "rofs" / "loader-stripped.elf"),
                        "boot_args": "--nopci --rootfs=rofs /hello"},
        "drives": [{"drive_id": "rootfs", "path_on_host": str(rofs), "is_root_device": False,
                    "is_read_only": False}],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
    }  # fmt: skip


def test_osv_from_a_config_file_without_api(osv_rofs: Path, tmp_path: Path) -> None:
    config = tmp_path / "osv.json"
    config.write_text(json.dumps(osv_config(osv_rofs)))
    env = {**os.environ, "EMU_FIRECRACKER_ARGS": "--timeout 60"}
    p = subprocess.run([str(FIRECRACKER), "--no-api", "--config-file", str(config)], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, errors="replace", timeout=120, env=env)  # fmt: skip
    assert p.returncode == 0 and "Hello from C code" in p.stdout, p.stderr + p.stdout[-2000:]


def test_osv_through_the_api_socket(osv_rofs: Path, tmp_path: Path) -> None:
    vm = Microvm(tmp_path)
    try:
        cfg = osv_config(osv_rofs)
        assert vm.curl("PUT", "/boot-source", cfg["boot-source"]) == (204, None)
        assert vm.curl("PUT", "/drives/rootfs", cfg["drives"][0]) == (204, None)
        assert vm.curl("PUT", "/machine-config", cfg["machine-config"]) == (204, None)
        assert vm.curl("PUT", "/actions", {"action_type": "InstanceStart"}) == (204, None)
        assert vm.wait() == 0, vm.stderr()
        assert "Hello from C code" in vm.stdout()
    finally:
        vm.close()


def test_command_line_mistakes_are_one_line(tmp_path: Path) -> None:
    p = subprocess.run([str(FIRECRACKER), "--no-api"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "--no-api needs --config-file" in p.stderr and "Traceback" not in p.stderr
    sock = tmp_path / "taken.socket"
    sock.write_text("")
    p = subprocess.run([str(FIRECRACKER), "--api-sock", str(sock)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "the path exists" in p.stderr
    p = subprocess.run([str(FIRECRACKER), "--version"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and p.stdout.startswith("Firecracker v")


def test_send_ctrl_alt_del_reboots_linux(guest: LinuxGuest, tmp_path: Path) -> None:
    """Firecracker's way to stop a guest: the i8042 bytes of Ctrl-Alt-Del; Linux restarts, and with
    reboot=k the microVM ends (status 0)."""
    busybox = (guest.initramfs.parent / "busybox").read_bytes()
    initramfs = tmp_path / "wait.cpio"
    initramfs.write_bytes(build_initramfs(busybox, "#!/bin/sh\nexport PATH=/bin\necho EMU-READY\nsleep 60\n"))
    config = tmp_path / "vm.json"
    config.write_text(json.dumps({"boot-source": {**boot_source(guest), "initrd_path": str(initramfs)},
                                  "machine-config": {"vcpu_count": 1, "mem_size_mib": 256}}))  # fmt: skip
    vm = Microvm(tmp_path, "--config-file", str(config))
    try:
        deadline = time.monotonic() + 90
        while "EMU-READY" not in vm.stdout():
            assert vm.proc.poll() is None and time.monotonic() < deadline, vm.stderr()
            time.sleep(0.1)
        assert vm.curl("PUT", "/actions", {"action_type": "SendCtrlAltDel"}) == (204, None)
        assert vm.wait(30) == 0, vm.stderr()
        assert "reboot: Restarting system" in vm.stdout()
    finally:
        vm.close()
