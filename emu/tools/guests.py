"""Real-Linux guest assets for tests and benchmarks, fetched from Debian and cached in .cache/guests/.

- linux/bzImage, linux/version: Debian bookworm's cloud kernel (linux-image-cloud-amd64 -> its
  versioned linux-image-6.1.0-*-cloud-amd64 package), fetched with `apt-get download`;
- linux/vmlinux: the ELF extracted from that bzImage by emu.tools.vmlinux;
- initramfs.cpio: busybox-static plus an /init that prints markers, times `sleep 1` and powers
  off, written by emu.tools.cpio (uncompressed newc: device nodes without root, no decompression
  at boot).

`ensure_linux_guest()` builds what is missing and returns the paths; once built, a call only
stats the files against their stamps (no network, no extraction). Every file is written to a
temporary name and renamed, stamps last, so an interrupted run leaves nothing that looks done.
Run `scripts/fetch-guests` (or `python -m emu.tools.guests`) to fetch ahead of time.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from emu.errors import EmuError, HostError
from emu.tools import cpio
from emu.tools.vmlinux import extract_vmlinux

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


class GuestUnavailable(Exception):
    """The host cannot provide the guest (no apt-get, no network, not root...): tests skip with `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class LinuxGuest:
    bzimage: Path
    vmlinux: Path
    initramfs: Path
    version: str  # kernel release, e.g. "6.1.0-56-cloud-amd64"


# --------------------------------------------------------------------------------------------
# Files: atomic writes and stamps


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    tmp.replace(path)


def _stamp_ok(stamp: Path, recipe: str, files: list[Path]) -> dict[str, object] | None:
    """The stamp's contents when it matches `recipe` and every file has its recorded size."""
    try:
        info = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None
    if info.get("recipe") != recipe:
        return None
    sizes = info.get("sizes", {})
    for f in files:
        try:
            if f.stat().st_size != sizes.get(f.name):
                return None
        except OSError:
            return None
    return info


def _write_stamp(stamp: Path, recipe: str, files: list[Path], **extra: object) -> None:
    info = {"recipe": recipe, "sizes": {f.name: f.stat().st_size for f in files}, **extra}
    _write_atomic(stamp, (json.dumps(info, indent=1) + "\n").encode())


@contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """One builder at a time (parallel test processes share the cache)."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# --------------------------------------------------------------------------------------------
# Debian packages


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})


def _tail(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def _apt_known(package: str) -> bool:
    p = _run(["apt-cache", "show", "--no-all-versions", package])
    return p.returncode == 0 and "Package:" in p.stdout


def _apt_update() -> None:
    if os.geteuid() != 0:
        raise GuestUnavailable("apt's package lists lack or misplace the guest packages; run apt-get update as root")
    p = _run(["apt-get", "update", "-qq"])
    if p.returncode != 0:
        raise GuestUnavailable(f"apt-get update failed: {_tail(p.stderr or p.stdout)}")


def _ensure_apt_knows(package: str) -> None:
    """Run `apt-get update` if the package lists do not have `package` yet (root only)."""
    if shutil.which("apt-get") is None or shutil.which("apt-cache") is None:
        raise GuestUnavailable("apt-get is not available (the guest assets come from Debian packages)")
    if _apt_known(package):
        return
    _apt_update()
    if not _apt_known(package):
        raise GuestUnavailable(f"no Debian package {package} in this machine's apt sources")


def _kernel_package() -> str:
    """The versioned package the cloud meta-package depends on, e.g. linux-image-6.1.0-56-cloud-amd64."""
    _ensure_apt_knows(KERNEL_META_PACKAGE)
    p = _run(["apt-cache", "depends", KERNEL_META_PACKAGE])
    for line in p.stdout.splitlines():
        key, _, value = line.strip().partition(":")
        name = value.strip()
        if key.strip().lstrip("|") == "Depends" and _KERNEL_PACKAGE_RE.match(name):
            return name
    raise GuestUnavailable(f"{KERNEL_META_PACKAGE} does not depend on a linux-image-*-cloud-amd64 package")


def _download(package: str, into: Path) -> Path:
    """`apt-get download` one package into `into` (as root, apt's sandbox user needs to write there)."""
    _ensure_apt_knows(package)
    p = _run(["apt-get", "download", "-q", package], cwd=into)
    debs = sorted(into.glob(f"{package}_*.deb"))
    if p.returncode != 0 or not debs:
        raise GuestUnavailable(f"apt-get download {package} failed: {_tail(p.stderr or p.stdout)}")
    return debs[0]


def _download_fresh(resolve: Callable[[], str], into: Path) -> Path:
    """Download the package `resolve()` names; on failure refresh stale lists once (a security
    update removes the old .deb from the mirror, and may rename the kernel package) and retry."""
    try:
        return _download(resolve(), into)
    except GuestUnavailable:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise
    _apt_update()
    return _download(resolve(), into)


def _unpack(deb: Path, into: Path) -> None:
    tool = shutil.which("dpkg-deb")
    if tool is None:
        raise GuestUnavailable("dpkg-deb is not available to unpack Debian packages")
    p = _run([tool, "-x", str(deb), str(into)])
    if p.returncode != 0:
        raise HostError(f"dpkg-deb -x {deb.name} failed: {_tail(p.stderr)}")


def _fetch_deb(package: str | Callable[[], str], debs: Path, tmp: Path) -> Path:
    """The package's .deb (`package` is a name or finds it), kept in `debs` so later rebuilds need
    no network."""
    if isinstance(package, str):
        kept = sorted(debs.glob(f"{package}_*.deb"))
        if kept:
            return kept[-1]
    deb = _download_fresh(package if callable(package) else lambda: package, tmp)
    debs.mkdir(parents=True, exist_ok=True)
    dest = debs / deb.name
    shutil.copyfile(deb, dest.with_suffix(".tmp"))
    dest.with_suffix(".tmp").replace(dest)
    return dest


# --------------------------------------------------------------------------------------------
# The assets


def _recipe(*parts: str) -> str:
    h = hashlib.sha256(str(ASSET_FORMAT).encode())
    for p in parts:
        h.update(p.encode() + b"\0")
    return h.hexdigest()[:16]


def _log(verbose: bool, msg: str) -> None:
    if verbose:
        print(f"fetch-guests: {msg}", file=sys.stderr, flush=True)


def _ensure_kernel(cache: Path, verbose: bool) -> str:
    linux = cache / "linux"
    files = [linux / "bzImage", linux / "vmlinux", linux / "version"]
    stamp = linux / "stamp.json"
    recipe = _recipe("kernel")
    info = _stamp_ok(stamp, recipe, files)
    if info is not None:
        return str(info["version"])
    linux.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="emu-guests-") as tmpname:
        tmp = Path(tmpname)
        tmp.chmod(0o755)  # apt's _apt sandbox user writes the download here
        kept = sorted((cache / "debs").glob("linux-image-*-cloud-amd64_*.deb"))
        t = time.monotonic()
        deb = kept[-1] if kept else _fetch_deb(_kernel_package, cache / "debs", tmp)
        _log(verbose, f"{deb.name}: {deb.stat().st_size / 1e6:.1f} MB ({time.monotonic() - t:.1f} s)")
        root = tmp / "root"
        _unpack(deb, root)
        images = sorted((root / "boot").glob("vmlinuz-*"))
        if len(images) != 1:
            raise HostError(f"{deb.name} holds {len(images)} /boot/vmlinuz-* files, expected one")
        version = images[0].name.removeprefix("vmlinuz-")
        bzimage = images[0].read_bytes()
    t = time.monotonic()
    vmlinux = extract_vmlinux(bzimage)
    _log(verbose, f"vmlinux extracted: {len(vmlinux) / 1e6:.1f} MB in {time.monotonic() - t:.2f} s")
    _write_atomic(linux / "bzImage", bzimage)
    _write_atomic(linux / "vmlinux", vmlinux)
    _write_atomic(linux / "version", (version + "\n").encode())
    _write_stamp(stamp, recipe, files, version=version, package=deb.name)
    return version


def build_initramfs(busybox: bytes, init_script: str = INIT_SCRIPT) -> bytes:
    """The initramfs (newc) around a static busybox binary and the /init script."""
    entries = [
        cpio.directory("bin"), cpio.directory("dev"), cpio.directory("proc"), cpio.directory("sys"),
        cpio.directory("tmp", 0o1777),
        cpio.chardev("dev/console", 5, 1), cpio.chardev("dev/null", 1, 3, 0o666),
        cpio.file("bin/busybox", busybox, 0o755),
        *(cpio.symlink(f"bin/{applet}", "busybox") for applet in APPLETS),
        cpio.file("init", init_script.encode(), 0o755),
    ]  # fmt: skip
    return cpio.write_newc(entries)


def _ensure_initramfs(cache: Path, verbose: bool) -> None:
    out = cache / "initramfs.cpio"
    busybox = cache / "busybox"
    stamp = cache / "initramfs.stamp.json"
    recipe = _recipe("initramfs", INIT_SCRIPT, *APPLETS)
    if _stamp_ok(stamp, recipe, [out, busybox]) is not None:
        return
    if not busybox.exists():
        with tempfile.TemporaryDirectory(prefix="emu-guests-") as tmpname:
            tmp = Path(tmpname)
            tmp.chmod(0o755)
            deb = _fetch_deb(BUSYBOX_PACKAGE, cache / "debs", tmp)
            _log(verbose, f"{deb.name}: {deb.stat().st_size / 1e6:.1f} MB")
            _unpack(deb, tmp / "root")
            binary = tmp / "root" / "bin" / "busybox"
            if not binary.is_file():
                raise HostError(f"{deb.name} has no /bin/busybox")
            _write_atomic(busybox, binary.read_bytes(), 0o755)
    _write_atomic(out, build_initramfs(busybox.read_bytes()))
    _log(verbose, f"initramfs written: {out.stat().st_size / 1e6:.1f} MB")
    _write_stamp(stamp, recipe, [out, busybox])


def ensure_linux_guest(cache_dir: Path | None = None, *, verbose: bool = False) -> LinuxGuest:
    """The Debian cloud kernel + busybox initramfs, built into the cache on first use.

    Raises GuestUnavailable when the host cannot fetch them (no apt-get, no network, not root
    to run apt-get update).
    """
    cache = cache_dir or CACHE_DIR
    with _locked(cache):
        version = _ensure_kernel(cache, verbose)
        _ensure_initramfs(cache, verbose)
    return LinuxGuest(
        bzimage=cache / "linux" / "bzImage",
        vmlinux=cache / "linux" / "vmlinux",
        initramfs=cache / "initramfs.cpio",
        version=version,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fetch-guests", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help=f"where the assets go (default {CACHE_DIR})")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    args = p.parse_args(argv)
    try:
        guest = ensure_linux_guest(args.cache_dir, verbose=not args.quiet)
    except GuestUnavailable as e:
        print(f"fetch-guests: unavailable: {e.reason}", file=sys.stderr)
        return 1
    except EmuError as e:
        print(f"fetch-guests: error: {e}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"kernel {guest.version}")
        for name in ("bzimage", "vmlinux", "initramfs"):
            print(f"{name}: {getattr(guest, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
