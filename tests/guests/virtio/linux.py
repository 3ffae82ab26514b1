"""Initramfs images for Debian's cloud kernel that load its virtio modules (from the kernel .deb the
Linux guest was built from). `virtio_initramfs`: checksums /dev/vda and writes a marker sector to
/dev/vdb. `devices_initramfs`: reads /dev/hwrng, writes to hvc0 and, when eth0 exists, configures
it, pings the host side and moves 10 MiB over TCP each way (tests/test_virtio_net_linux.py).

Built into .cache/guests/virtio/ once (stamped by the module list and the /init script). Used by
tests/test_virtio_linux.py over virtio-pci: Debian's cloud kernel has no
CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES (it logs "virtio_mmio: unknown parameter 'device' ignored"), so
it finds no virtio-mmio device from the command line."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from emu.tools import cpio, debcache, guests
from emu.tools.guests import CACHE_DIR, LinuxGuest

# Load order from ../shared/notes/boot-facts.md, cut to what a virtio disk needs (the .deb has no
# modules.dep; each module's `depends=` modinfo field gives the same order).
MODULES = (
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_mmio.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "drivers/block/virtio_blk.ko",
)
APPLETS = ("sh", "mount", "insmod", "cat", "ls", "sleep", "sha256sum", "dd", "sync", "poweroff", "head", "grep", "echo")
WRITE_SECTOR = 3  # /init writes WRITE_TEXT at this sector of /dev/vdb
WRITE_TEXT = "written by linux over virtio-blk"

# What every /init here starts with: busybox's applets on PATH and the kernel's file systems.
INIT_HEAD = """#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
"""

# modprobe (kmod) would hand a module its parameters from /proc/cmdline (virtio_pci.force_legacy=1,
# virtio_mmio.device=...); busybox insmod does not, so /init does.
LOAD_MODULES = rf"""for m in {" ".join(Path(m).name for m in MODULES)}; do
    name=${{m%.ko}}
    args=
    for w in $(cat /proc/cmdline); do
        case $w in $name.*) args="$args ${{w#$name.}}" ;; esac
    done
    insmod /lib/modules/$m $args || echo "EMU-VIRTIO-WARN insmod $m failed"
done
"""

INIT = rf"""{INIT_HEAD}echo EMU-VIRTIO-START
{LOAD_MODULES}n=0
while [ ! -b /dev/vdb ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
ls /sys/block
echo "EMU-VDA-SIZE $(cat /sys/block/vda/size)"
echo "EMU-VDA-SHA256 $(sha256sum /dev/vda)"
# Which interface the driver chose (feature bit 32, VERSION_1: modern) and that interrupts came.
for d in vda vdb; do echo "EMU-FEATURES $d $(cat /sys/block/$d/device/features)"; done
grep virtio /proc/interrupts | while read -r line; do echo "EMU-IRQ $line"; done
printf '{WRITE_TEXT}' | dd of=/dev/vdb bs=512 seek={WRITE_SECTOR} conv=notrunc,fsync 2>/dev/null \
    || echo "EMU-VIRTIO-WARN write failed"
sync
echo EMU-VIRTIO-DONE
poweroff -f
"""


def _extract_modules(deb: Path, version: str, into: Path, modules: tuple[str, ...] = MODULES) -> list[Path]:
    members = [f"./lib/modules/{version}/kernel/{m}" for m in modules]
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as tar_in:
        subprocess.run(["tar", "-x", "-C", str(into), *members], stdin=tar_in.stdout, check=True)
    return [into / m for m in members]


def virtio_initramfs(guest: LinuxGuest) -> Path:
    """The cached virtio-blk initramfs (built on first use from the cached kernel .deb)."""
    return build_initramfs(guest, "initramfs-virtio.cpio", INIT, MODULES, APPLETS)


def build_initramfs(
    guest: LinuxGuest, name: str, init: str, modules: tuple[str, ...], applets: tuple[str, ...]
) -> Path:
    """tests/../.cache/guests/virtio/NAME: busybox with `applets`, `modules` from the kernel .deb, /init."""
    out_dir = CACHE_DIR / "virtio"
    out = out_dir / name
    stamp = out_dir / f"{name}.stamp"
    recipe = f"{guest.version}\n{init}\n{modules}\n{applets}"
    if out.exists() and stamp.exists() and stamp.read_text() == recipe:
        return out
    debs = sorted((CACHE_DIR / "debs").glob(f"linux-image-{guest.version}_*.deb"))
    if not debs or shutil.which("dpkg-deb") is None:
        raise FileNotFoundError(f"no cached linux-image-{guest.version} .deb or no dpkg-deb")
    with tempfile.TemporaryDirectory(prefix="emu-virtio-") as tmp:
        kos = _extract_modules(debs[-1], guest.version, Path(tmp), modules)
        lib = [cpio.directory("lib"), cpio.directory("lib/modules")]
        lib += [cpio.file(f"lib/modules/{ko.name}", ko.read_bytes()) for ko in kos]
        data = guests.build_initramfs((CACHE_DIR / "busybox").read_bytes(), init, applets, lib)
    out_dir.mkdir(parents=True, exist_ok=True)
    debcache.write_atomic(out, data)
    debcache.write_atomic(stamp, recipe.encode())  # last: an interrupted build leaves no stamp
    return out


# rng, console and net: the rest of the load order in ../shared/notes/boot-facts.md.
DEVICE_MODULES = (
    *MODULES[:6],
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
    "drivers/char/hw_random/virtio-rng.ko",
    "drivers/char/virtio_console.ko",
)
DEVICE_APPLETS = (*APPLETS, "ip", "ping", "nc", "wget", "wc", "tr", "mkdir")
HVC_TEXT = "EMU-HVC written by linux to /dev/hvc0"
GUEST_IP, HOST_IP = "10.0.2.15", "10.0.2.1"
HTTP_PORT, SINK_PORT = 8000, 8001  # the host serves /blob on the first, swallows uploads on the second
NET_BYTES = 10 * 1024 * 1024

DEVICES_INIT = rf"""{INIT_HEAD}echo EMU-DEVICES-START
for m in {" ".join(Path(m).name for m in DEVICE_MODULES)}; do
    insmod /lib/modules/$m || echo "EMU-VIRTIO-WARN insmod $m failed"
done
n=0
while {{ [ ! -c /dev/hwrng ] || [ ! -c /dev/hvc0 ]; }} && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
echo "EMU-RNG-CURRENT $(cat /sys/class/misc/hw_random/rng_current)"
# 4096 bytes from the device; all-zero bytes would mean the buffers were never filled.
echo "EMU-RNG-NONZERO $(head -c 4096 /dev/hwrng | tr -d '\000' | wc -c)"
echo "{HVC_TEXT}" > /dev/hvc0 || echo "EMU-VIRTIO-WARN hvc0 write failed"
if [ -e /sys/class/net/eth0 ]; then
    echo "EMU-NET-MAC $(cat /sys/class/net/eth0/address)"
    ip link set lo up
    ip addr add {GUEST_IP}/24 dev eth0 && ip link set eth0 up || echo "EMU-VIRTIO-WARN eth0 setup failed"
    ping -c 3 -W 5 {HOST_IP} >/dev/null && echo EMU-PING-OK || echo "EMU-VIRTIO-WARN ping failed"
    echo "EMU-RX-SHA256 $(wget -q -O - http://{HOST_IP}:{HTTP_PORT}/blob | sha256sum)"
    dd if=/dev/urandom of=/tmp/tx bs=1048576 count={NET_BYTES >> 20} 2>/dev/null
    echo "EMU-TX-SHA256 $(sha256sum /tmp/tx)"
    nc {HOST_IP} {SINK_PORT} < /tmp/tx || echo "EMU-VIRTIO-WARN nc failed"
    grep -E 'virtio|eth0' /proc/interrupts | while read -r line; do echo "EMU-IRQ $line"; done
fi
echo EMU-DEVICES-DONE
poweroff -f
"""


def devices_initramfs(guest: LinuxGuest) -> Path:
    """The cached rng/console/net initramfs."""
    return build_initramfs(guest, "initramfs-devices.cpio", DEVICES_INIT, DEVICE_MODULES, DEVICE_APPLETS)
