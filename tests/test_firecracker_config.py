"""A Firecracker user's own VM description run by emu (`emu run --config-file`), as Firecracker
builds it: Debian's kernel with a root drive and the boot arguments Firecracker adds, the boot
timer's line, and bad files refused with one line and status 2, never a traceback."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from guests.cli import emu_run
from guests.virtio.linux import (
    APPLETS,
    DEVICE_APPLETS,
    DEVICE_MODULES,
    GUEST_IP,
    HOST_IP,
    INIT_HEAD,
    LOAD_MODULES,
    MODULES,
)
from guests.virtio.linux import build_initramfs as build_virtio_initramfs

from emu.config import VirtioTransport
from emu.errors import ExitStatus
from emu.firecracker.vm_description import DEFAULT_BOOT_ARGS, FirecrackerConfigError, VmDescription
from emu.tools.guests import LinuxGuest

# /init: what the root drive holds, then the boot timer (busybox devmem at Firecracker's address).
# The Debian kernel's virtio drivers are modules: /init loads them first.
INIT = (
    INIT_HEAD
    + LOAD_MODULES
    + r"""echo "EMU-CMDLINE $(cat /proc/cmdline)"
echo "EMU-CPUS $(grep -c ^processor /proc/cpuinfo)"
n=0
while [ ! -b /dev/vda ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
echo "EMU-ROOT $(head -c 16 /dev/vda)"
devmem 0xc0000000 8 123
echo EMU-FC-DONE
poweroff -f
"""
)


@pytest.fixture(scope="module")
def initramfs(guest: LinuxGuest) -> Path:
    return build_virtio_initramfs(guest, "initramfs-firecracker.cpio", INIT, MODULES, (*APPLETS, "devmem"))


def vm_json(guest: LinuxGuest, initramfs: Path, rootfs: Path, **extra: Any) -> dict[str, Any]:
    return {
        "boot-source": {"kernel_image_path": str(guest.vmlinux), "initrd_path": str(initramfs),
                        "boot_args": "console=ttyS0 reboot=k panic=1 virtio_mmio.force_legacy=0"},
        "drives": [{"drive_id": "rootfs", "path_on_host": str(rootfs), "is_root_device": True,
                    "is_read_only": True, "cache_type": "Unsafe", "io_engine": None}],
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": False},
        "network-interfaces": [],
        "logger": None,
        **extra,
    }  # fmt: skip


def test_linux_from_a_firecracker_config_file(guest: LinuxGuest, initramfs: Path, tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs.img"
    rootfs.write_bytes(b"ROOTFS-SIGNATURE" + bytes(1 << 20))
    config = tmp_path / "vm.json"
    config.write_text(json.dumps(vm_json(guest, initramfs, rootfs)))
    profile = tmp_path / "boot.json"
    p = emu_run("--config-file", str(config), "--boot-timer", "--boot-profile", str(profile), "--timeout", "90",
                timeout=150)  # fmt: skip
    out = p.stdout
    assert p.returncode == 0 and "EMU-FC-DONE" in out, f"exit {p.returncode}: {p.stderr}\n{out[-3000:]}"
    # Firecracker's root device words, then its virtio-mmio announcement.
    cmdline = re.search(r"EMU-CMDLINE (.*)", out)
    assert cmdline and "root=/dev/vda ro" in cmdline.group(1) and "virtio_mmio.device=" in cmdline.group(1)
    assert "EMU-CPUS 2" in out
    assert "EMU-ROOT ROOTFS-SIGNATURE" in out
    boot = re.search(r"^Guest-boot-time = +(\d+) us (\d+) ms, +(\d+) CPU us (\d+) CPU ms$", p.stderr, re.M)
    assert boot, p.stderr
    assert int(boot.group(1)) // 1000 == int(boot.group(2)) and 0 < int(boot.group(1)) < 150_000_000
    assert "--config-file: drives[rootfs].cache_type is accepted and ignored" in p.stderr
    # The boot profile has the kernel's entry (PVH: 32-bit protected mode) and the boot timer's write.
    milestones = {m["name"]: m for m in json.loads(profile.read_text())["milestones"]}
    assert milestones["kernel entry"]["detail"].startswith("protected32 at ")
    assert milestones["boot timer"]["detail"].startswith(boot.group(1))


def test_the_description_as_firecracker_builds_it(tmp_path: Path) -> None:
    vm = VmDescription.from_json({
        "boot-source": {"kernel_image_path": "/k"},
        "drives": [
            {"drive_id": "data", "path_on_host": "/d", "is_root_device": False},
            {"drive_id": "root", "path_on_host": "/r", "is_root_device": True, "partuuid": "0eaa91a0-01"},
        ],
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"}],
        "entropy": {},
    })  # fmt: skip
    cfg = vm.machine_config()
    assert cfg.cmdline == DEFAULT_BOOT_ARGS + " root=PARTUUID=0eaa91a0-01 rw"
    assert [d.path for d in cfg.disks] == [Path("/r"), Path("/d")]  # the root drive is /dev/vda
    assert all(d.transport is VirtioTransport.MMIO for d in cfg.disks)
    assert cfg.nets[0].tap == "tap0" and cfg.nets[0].mac == bytes.fromhex("0600ac100002")
    assert cfg.rng is not None and cfg.mem == 128 << 20 and cfg.smp == 1 and cfg.no_reboot
    # GET /vm/config's JSON loads back as the same VM.
    assert VmDescription.from_json(vm.to_json()) == vm


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{", "not JSON"),
        ('{"boot-source": {"kernel_image_path": 5}}', "boot-source.kernel_image_path: expected a string"),
        ('{"boot-source": {"kernel_image_path": "/k", "kernel": 1}}', "boot-source: unknown field `kernel`"),
        ('{"vsock": {"guest_cid": 3}}', "vsock: emu has no virtio-vsock device"),
        ('{"boot-source": {"kernel_image_path": "/k"}, "frobnicate": {}}', "unknown key 'frobnicate'"),
        ('{"drives": []}', "boot-source: missing"),
        ('{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 2}}',
         "machine-config: missing field `mem_size_mib`"),
        ('{"boot-source": {"kernel_image_path": "/k"}, "drives": ['
         '{"drive_id": "a", "path_on_host": "/a", "is_root_device": true},'
         '{"drive_id": "b", "path_on_host": "/b", "is_root_device": true}]}',
         "drives[b]: a root block device already exists"),
        ('{"boot-source": {"kernel_image_path": "/k"}, "network-interfaces": ['
         '{"iface_id": "e", "host_dev_name": "t", "guest_mac": "nope"}]}', "is not a MAC address"),
    ],
)  # fmt: skip
def test_bad_descriptions_are_one_line_and_status_2(tmp_path: Path, document: str, message: str) -> None:
    config = tmp_path / "vm.json"
    config.write_text(document)
    with pytest.raises(FirecrackerConfigError, match=re.escape(message)):
        VmDescription.load(config)
    p = emu_run("--config-file", str(config))
    assert p.returncode == ExitStatus.USAGE
    assert p.stderr.count("\n") == 1 and message in p.stderr and "Traceback" not in p.stderr


def test_missing_kernel_and_conflicting_options(tmp_path: Path) -> None:
    config = tmp_path / "vm.json"
    config.write_text('{"boot-source": {"kernel_image_path": "/nonexistent/vmlinux"}}')
    p = emu_run("--config-file", str(config))
    assert p.returncode == ExitStatus.USAGE and "/nonexistent/vmlinux" in p.stderr
    p = emu_run("--config-file", str(config), "--smp", "2")
    assert p.returncode == ExitStatus.USAGE and "--smp cannot be given with --config-file" in p.stderr
    p = emu_run("--config-file", str(tmp_path / "absent.json"))
    assert p.returncode == ExitStatus.USAGE and "absent.json: no such file" in p.stderr


NET_INIT = (
    INIT_HEAD
    + LOAD_MODULES.replace(" ".join(Path(m).name for m in MODULES), " ".join(Path(m).name for m in DEVICE_MODULES))
    + rf"""n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
echo "EMU-NET-MAC $(cat /sys/class/net/eth0/address)"
ip addr add {GUEST_IP}/24 dev eth0 && ip link set eth0 up
ping -c 3 -W 5 {HOST_IP} >/dev/null && echo EMU-PING-OK || echo EMU-PING-FAILED
poweroff -f
"""
)


def test_linux_with_a_tap_from_a_config_file(guest: LinuxGuest, tmp_path: Path) -> None:
    """network-interfaces: an existing tap (in a network namespace the test makes) and guest_mac;
    the guest pings the host's side of the tap."""
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun") or shutil.which("ip") is None:
        pytest.skip("needs root, /dev/net/tun and iproute2 to make a tap in a network namespace")
    initrd = build_virtio_initramfs(guest, "initramfs-firecracker-net.cpio", NET_INIT, DEVICE_MODULES,
                                    DEVICE_APPLETS)  # fmt: skip
    config = tmp_path / "vm.json"
    mac = "06:00:ac:10:00:02"
    config.write_text(json.dumps({
        "boot-source": {"kernel_image_path": str(guest.vmlinux), "initrd_path": str(initrd),
                        "boot_args": "console=ttyS0 reboot=k panic=1"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "fctap0", "guest_mac": mac}],
    }))  # fmt: skip
    ns = f"emu-fc-{os.getpid()}"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)

    try:
        ip("netns", "add", ns)
        ip("-n", ns, "tuntap", "add", "dev", "fctap0", "mode", "tap")
        ip("-n", ns, "addr", "add", f"{HOST_IP}/24", "dev", "fctap0")
        ip("-n", ns, "link", "set", "fctap0", "up")
        p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "emu.cli", "run", "--config-file",
                            str(config), "--timeout", "120"], capture_output=True, text=True, errors="replace",
                           timeout=180)  # fmt: skip
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
    assert p.returncode == 0, f"exit {p.returncode}: {p.stderr}\n{p.stdout[-3000:]}"
    assert f"EMU-NET-MAC {mac}" in p.stdout
    assert "EMU-PING-OK" in p.stdout, p.stdout[-3000:]
