"""Real-Linux guest assets for tests and benchmarks, fetched from Debian and cached in .cache/guests/.

- linux/bzImage, linux/version: Debian bookworm's cloud kernel (linux-image-cloud-amd64 -> its
  versioned linux-image-6.1.0-*-cloud-amd64 package), fetched with `apt-get download`;
- linux/vmlinux: the ELF extracted from that bzImage by emu.tools.extract_vmlinux;
- initramfs.cpio: busybox-static plus an /init that prints markers, times `sleep 1` and powers
  off, written by emu.tools.cpio (uncompressed newc: device nodes without root, no decompression
  at boot).

`ensure_linux_guest()` builds what is missing and returns the paths; once built, a call only
stats the files against their stamps (no network, no extraction). Every file is written to a
temporary name and renamed, stamps last, so an interrupted run leaves nothing that looks done.
Run `scripts/fetch-guests` (or `python -m emu.tools.guests`) to fetch ahead of time.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from emu.errors import HostError
from emu.tools import cpio, debcache
from emu.tools.debcache import GuestUnavailable
from emu.tools.extract_vmlinux import extract_vmlinux

CACHE_DIR = Path(__file__).resolve().parents[2] / ".cache" / "guests"
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
_KERNEL_PACKAGE_RE = re.compile(r"^linux-image-\d+\.\d+\.\d+-\d+-cloud-amd64$")

# The applets /init calls by name (sh builtins such as echo, printf and read need none).
APPLETS = ("sh", "mount", "umount", "uname", "cat", "sleep", "poweroff", "reboot", "grep", "mkdir", "ls",
           "dmesg", "awk", "sed", "cut", "date", "true", "false")  # fmt: skip

# Markers a test looks for on the console. EMU-SLEEP-OK is followed by the seconds `sleep 1` took
# by /proc/uptime (centisecond resolution), e.g. "EMU-SLEEP-OK 1.01".
MARKER_START = "EMU-INIT-START"
MARKER_SLEEP = "EMU-SLEEP-OK"
MARKER_DONE = "EMU-INIT-DONE"
SLEEP_RE = re.compile(rb"EMU-SLEEP-OK (\d+\.\d\d)")

# No `set -e`: every step reports its own failure and the script always reaches poweroff.
INIT_SCRIPT = r"""#!/bin/sh
export PATH=/bin
warn() { echo "EMU-INIT-WARN $*"; }
mount -t proc proc /proc || warn "mount proc failed"
mount -t sysfs sysfs /sys || warn "mount sysfs failed"
if grep -q devtmpfs /proc/filesystems 2>/dev/null; then
    mount -t devtmpfs devtmpfs /dev || warn "mount devtmpfs failed"
fi
echo EMU-INIT-START
uname -a || warn "uname failed"
cat /proc/uptime || warn "no /proc/uptime"
# /proc/uptime in centiseconds ("12.34 56.78" -> 1234); 0 when unreadable.
centis() {
    read -r up _ </proc/uptime 2>/dev/null || { echo 0; return; }
    s=${up%.*}; c=${up#*.}; c=${c#0}
    echo $((s * 100 + ${c:-0}))
}
t0=$(centis)
sleep 1 || warn "sleep failed"
t1=$(centis)
echo "uptime before sleep: $t0 cs, after: $t1 cs"
d=$((t1 - t0))
if [ "$t0" -gt 0 ] && [ "$t1" -gt 0 ]; then
    printf 'EMU-SLEEP-OK %d.%02d\n' $((d / 100)) $((d % 100))
else
    warn "could not time sleep"
fi
echo EMU-INIT-DONE
poweroff -f
echo "EMU-INIT-WARN poweroff failed"
reboot -f
exit 1
"""

# Bump to rebuild every asset (e.g. after a fix to the extractor or the cpio writer).
ASSET_FORMAT = 1


@dataclass(frozen=True)
class LinuxGuest:
    bzimage: Path
    vmlinux: Path
    initramfs: Path
    version: str  # kernel release, e.g. "6.1.0-56-cloud-amd64"


def _kernel_package() -> str:
    """The versioned package the cloud meta-package depends on, e.g. linux-image-6.1.0-56-cloud-amd64."""
    debcache.ensure_apt_knows(KERNEL_META_PACKAGE)
    p = debcache.run(["apt-cache", "depends", KERNEL_META_PACKAGE])
    for line in p.stdout.splitlines():
        key, _, value = line.strip().partition(":")
        name = value.strip()
        if key.strip().lstrip("|") == "Depends" and _KERNEL_PACKAGE_RE.match(name):
            return name
    raise GuestUnavailable(f"{KERNEL_META_PACKAGE} does not depend on a linux-image-*-cloud-amd64 package")


# --------------------------------------------------------------------------------------------
# The assets


def _log(verbose: bool, msg: str) -> None:
    debcache.log("fetch-guests", verbose, msg)


def _ensure_kernel(cache: Path, verbose: bool) -> str:
    linux = cache / "linux"
    files = [linux / "bzImage", linux / "vmlinux", linux / "version"]
    stamp = linux / "stamp.json"
    recipe = debcache.recipe_hash(ASSET_FORMAT, "kernel")
    info = debcache.stamp_ok(stamp, recipe, files)
    if info is not None:
        return str(info["version"])
    linux.mkdir(parents=True, exist_ok=True)
    with debcache.download_dir("emu-guests-") as tmp:
        t = time.monotonic()
        deb = debcache.fetch_deb(_kernel_package, cache / "debs", tmp, kept="linux-image-*-cloud-amd64_*.deb")
        _log(verbose, f"{deb.name}: {deb.stat().st_size / 1e6:.1f} MB ({time.monotonic() - t:.1f} s)")
        root = tmp / "root"
        debcache.unpack(deb, root)
        images = sorted((root / "boot").glob("vmlinuz-*"))
        if len(images) != 1:
            raise HostError(f"{deb.name} holds {len(images)} /boot/vmlinuz-* files, expected one")
        version = images[0].name.removeprefix("vmlinuz-")
        bzimage = images[0].read_bytes()
    t = time.monotonic()
    vmlinux = extract_vmlinux(bzimage)
    _log(verbose, f"vmlinux extracted: {len(vmlinux) / 1e6:.1f} MB in {time.monotonic() - t:.2f} s")
    debcache.write_atomic(linux / "bzImage", bzimage)
    debcache.write_atomic(linux / "vmlinux", vmlinux)
    debcache.write_atomic(linux / "version", (version + "\n").encode())
    debcache.write_stamp(stamp, recipe, files, version=version, package=deb.name)
    return version


def build_initramfs(
    busybox: bytes, init_script: str = INIT_SCRIPT, applets: Iterable[str] = APPLETS, extra: Iterable[cpio.Entry] = ()
) -> bytes:
    """The initramfs (newc) around a static busybox binary (linked as `applets`), `extra` entries
    (e.g. kernel modules, parents first) and the /init script."""
    entries = [
        cpio.directory("bin"), cpio.directory("dev"), cpio.directory("proc"), cpio.directory("sys"),
        cpio.directory("tmp", 0o1777),
        cpio.chardev("dev/console", 5, 1), cpio.chardev("dev/null", 1, 3, 0o666),
        cpio.file("bin/busybox", busybox, 0o755),
        *(cpio.symlink(f"bin/{applet}", "busybox") for applet in applets),
        *extra,
        cpio.file("init", init_script.encode(), 0o755),
    ]  # fmt: skip
    return cpio.write_newc(entries)


def _ensure_initramfs(cache: Path, verbose: bool) -> None:
    out = cache / "initramfs.cpio"
    busybox = cache / "busybox"
    stamp = cache / "initramfs.stamp.json"
    recipe = debcache.recipe_hash(ASSET_FORMAT, "initramfs", INIT_SCRIPT, *APPLETS)
    if debcache.stamp_ok(stamp, recipe, [out, busybox]) is not None:
        return
    if not busybox.exists():
        with debcache.download_dir("emu-guests-") as tmp:
            deb = debcache.fetch_deb(BUSYBOX_PACKAGE, cache / "debs", tmp)
            _log(verbose, f"{deb.name}: {deb.stat().st_size / 1e6:.1f} MB")
            debcache.unpack(deb, tmp / "root")
            binary = tmp / "root" / "bin" / "busybox"
            if not binary.is_file():
                raise HostError(f"{deb.name} has no /bin/busybox")
            debcache.write_atomic(busybox, binary.read_bytes(), 0o755)
    debcache.write_atomic(out, build_initramfs(busybox.read_bytes()))
    _log(verbose, f"initramfs written: {out.stat().st_size / 1e6:.1f} MB")
    debcache.write_stamp(stamp, recipe, [out, busybox])


def ensure_linux_guest(cache_dir: Path | None = None, *, verbose: bool = False) -> LinuxGuest:
    """The Debian cloud kernel + busybox initramfs, built into the cache on first use.

    Raises GuestUnavailable when the host cannot fetch them (no apt-get, no network, not root
    to run apt-get update).
    """
    cache = cache_dir or CACHE_DIR
    with debcache.locked(cache):
        version = _ensure_kernel(cache, verbose)
        _ensure_initramfs(cache, verbose)
    return LinuxGuest(
        bzimage=cache / "linux" / "bzImage",
        vmlinux=cache / "linux" / "vmlinux",
        initramfs=cache / "initramfs.cpio",
        version=version,
    )


def _report(guest: LinuxGuest) -> None:
    print(f"kernel {guest.version}")
    for name in ("bzimage", "vmlinux", "initramfs"):
        print(f"{name}: {getattr(guest, name)}")


def main(argv: list[str] | None = None) -> int:
    return debcache.cli_main("fetch-guests", __doc__, argv, CACHE_DIR, ensure_linux_guest, _report)


if __name__ == "__main__":
    sys.exit(main())
