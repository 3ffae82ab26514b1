"""An initramfs for Debian's cloud kernel that loads its virtio modules (from the kernel .deb the
Linux guest was built from), then checksums /dev/vda and writes a marker sector to /dev/vdb.

Built into .cache/guests/virtio/ once (stamped by the module list and the /init script). Used by
tests/test_virtio_linux.py over virtio-pci: Debian's cloud kernel has no
CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES (it logs "virtio_mmio: unknown parameter 'device' ignored"), so
it finds no virtio-mmio device from the command line."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from emu.tools import cpio
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

INIT = rf"""#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo EMU-VIRTIO-START
# modprobe (kmod) would hand a module its parameters from /proc/cmdline (virtio_pci.force_legacy=1,
# virtio_mmio.device=...); busybox insmod does not, so /init does.
for m in {" ".join(Path(m).name for m in MODULES)}; do
    name=${{m%.ko}}
    args=
    for w in $(cat /proc/cmdline); do
        case $w in $name.*) args="$args ${{w#$name.}}" ;; esac
    done
    insmod /lib/modules/$m $args || echo "EMU-VIRTIO-WARN insmod $m failed"
done
n=0
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


def _extract_modules(deb: Path, version: str, into: Path) -> list[Path]:
    members = [f"./lib/modules/{version}/kernel/{m}" for m in MODULES]
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as tar_in:
        subprocess.run(["tar", "-x", "-C", str(into), *members], stdin=tar_in.stdout, check=True)
    return [into / m for m in members]


def virtio_initramfs(guest: LinuxGuest) -> Path:
    """The cached initramfs (built on first use from the cached kernel .deb)."""
    out_dir = CACHE_DIR / "virtio"
    out = out_dir / "initramfs-virtio.cpio"
    stamp = out_dir / "stamp"
    recipe = f"{guest.version}\n{INIT}\n{MODULES}\n{APPLETS}"
    if out.exists() and stamp.exists() and stamp.read_text() == recipe:
        return out
    debs = sorted((CACHE_DIR / "debs").glob(f"linux-image-{guest.version}_*.deb"))
    if not debs or shutil.which("dpkg-deb") is None:
        raise FileNotFoundError(f"no cached linux-image-{guest.version} .deb or no dpkg-deb")
    busybox = (CACHE_DIR / "busybox").read_bytes()
    with tempfile.TemporaryDirectory(prefix="emu-virtio-") as tmp:
        kos = _extract_modules(debs[-1], guest.version, Path(tmp))
        entries = [
            cpio.directory("bin"), cpio.directory("dev"), cpio.directory("proc"), cpio.directory("sys"),
            cpio.directory("lib"), cpio.directory("lib/modules"),
            cpio.chardev("dev/console", 5, 1), cpio.chardev("dev/null", 1, 3, 0o666),
            cpio.file("bin/busybox", busybox, 0o755),
            *(cpio.symlink(f"bin/{a}", "busybox") for a in APPLETS),
            *(cpio.file(f"lib/modules/{ko.name}", ko.read_bytes()) for ko in kos),
            cpio.file("init", INIT.encode(), 0o755),
        ]  # fmt: skip
        data = cpio.write_newc(entries)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    tmp_out.write_bytes(data)
    tmp_out.replace(out)
    stamp.write_text(recipe)
    return out
