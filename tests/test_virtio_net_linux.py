"""Debian's cloud kernel drives emu's virtio-rng, virtio-console and virtio-net over virtio-pci
under the Unicorn backend (issue 5), in one boot (~10-20 s).

The guest (tests/guests/virtio/linux.py, DEVICES_INIT) reads /dev/hwrng, writes a line to
/dev/hvc0 (emu's --virtio-console FILE) and, on eth0, pings the host side, downloads 10 MiB over
HTTP and uploads 10 MiB with nc; both sides print sha256 sums. The host side of the tap lives in a
network namespace the test creates (`ip netns`), so the host's own interfaces and routes are never
touched; emu and the peer (tests/guests/virtio/netpeer.py) run inside it. Without root or
/dev/net/tun the boot still checks rng and console and the network test is skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from guests.virtio.linux import HOST_IP, HVC_TEXT, NET_BYTES, devices_initramfs

from emu import layout
from emu.tools.guests import LinuxGuest

REPO = Path(__file__).resolve().parents[1]
TAP = "emutap0"
MAC = "52:54:00:ab:cd:01"
FAILURE_SIGNS = ("EMU-VIRTIO-WARN", "Kernel panic", "Oops", "BUG:", "general protection fault", "segfault")


def _net_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a network namespace and a tap"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    return None


@dataclass
class Boot:
    out: str  # the guest's serial console
    hvc: bytes  # what reached the --virtio-console file
    peer: str  # the host side's output (empty without the network)
    net_skipped: str | None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@pytest.fixture(scope="module")
def boot(guest: LinuxGuest, tmp_path_factory: pytest.TempPathFactory) -> Boot:
    try:
        initrd = devices_initramfs(guest)
    except FileNotFoundError as e:
        pytest.skip(f"devices initramfs unavailable: {e}")
    tmp = tmp_path_factory.mktemp("devices")
    hvc = tmp / "hvc0.out"
    skipped = _net_unavailable()
    ns = f"emu-test-{os.getpid()}"
    prefix: list[str] = []
    peer: subprocess.Popen[str] | None = None
    emu = [sys.executable, "-m", "emu.cli", "run", "--backend", "unicorn", "--kernel", str(guest.vmlinux),
           "--boot", "pvh", "--initrd", str(initrd), "--cmdline", "console=ttyS0 panic=-1", "--mem", "256",
           "--no-reboot", "--timeout", "150", "--virtio-transport", "pci", "--rng",
           "--virtio-console", str(hvc)]  # fmt: skip
    try:
        if skipped is None:
            _ip("netns", "add", ns)
            _ip("-n", ns, "tuntap", "add", "dev", TAP, "mode", "tap")
            _ip("-n", ns, "addr", "add", f"{HOST_IP}/24", "dev", TAP)
            _ip("-n", ns, "link", "set", TAP, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            prefix = ["ip", "netns", "exec", ns]
            env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
            peer = subprocess.Popen([*prefix, sys.executable, "-m", "guests.virtio.netpeer"], cwd=REPO, env=env,
                                    stdout=subprocess.PIPE, text=True)  # fmt: skip
            assert peer.stdout is not None
            lines = [peer.stdout.readline(), peer.stdout.readline()]
            assert lines[1].strip() == "READY", lines
            emu += ["--net", f"tap={TAP},mac={MAC}"]
        p = subprocess.run([*prefix, *emu], cwd=REPO, capture_output=True, text=True, errors="replace", timeout=200)
        assert p.returncode == 0, f"exit {p.returncode}: {p.stderr.strip()}\n{p.stdout[-3000:]}"
        peer_out = ""
        if peer is not None:
            rest, _ = peer.communicate(timeout=30)
            peer_out = "".join(lines) + rest
        return Boot(p.stdout, hvc.read_bytes(), peer_out, skipped)
    finally:
        if peer is not None and peer.poll() is None:
            peer.kill()
            peer.wait()
        if skipped is None:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def test_linux_boot_has_no_failures(boot: Boot) -> None:
    bad = [line for line in boot.out.splitlines() if any(s in line for s in FAILURE_SIGNS)]
    assert not bad, "\n".join(bad)
    assert "EMU-DEVICES-DONE" in boot.out, boot.out[-3000:]


def test_linux_reads_hwrng(boot: Boot) -> None:
    assert "EMU-RNG-CURRENT virtio_rng.0" in boot.out, boot.out[-3000:]
    nonzero = int(re.search(r"EMU-RNG-NONZERO (\d+)", boot.out).group(1))  # type: ignore[union-attr]
    assert nonzero > 4000  # 4096 random bytes hold ~16 zero bytes


def test_linux_writes_hvc0_to_the_host_file(boot: Boot) -> None:
    assert boot.hvc.replace(b"\r\n", b"\n") == (HVC_TEXT + "\n").encode()


def test_linux_network_over_a_tap(boot: Boot) -> None:
    if boot.net_skipped:
        pytest.skip(boot.net_skipped)
    assert f"EMU-NET-MAC {MAC}" in boot.out
    assert "EMU-PING-OK" in boot.out, boot.out[-3000:]
    served = re.search(r"RX-SHA256 ([0-9a-f]{64})", boot.peer).group(1)  # type: ignore[union-attr]
    assert f"EMU-RX-SHA256 {served}  -" in boot.out, boot.out[-3000:]
    sent = re.search(r"EMU-TX-SHA256 ([0-9a-f]{64})  /tmp/tx", boot.out).group(1)  # type: ignore[union-attr]
    assert f"TX-SHA256 {sent} {NET_BYTES}" in boot.peer, boot.peer
    irqs = {int(n): int(c) for n, c in re.findall(r"EMU-IRQ (\d+):\s+(\d+)\s+XT-PIC\s+\S*virtio", boot.out)}
    assert set(irqs) <= set(layout.PCI_INTX_IRQS) and sum(irqs.values()) > 0, irqs
