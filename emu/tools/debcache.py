"""The cache machinery behind emu.tools.guests and emu.tools.bootloaders: Debian packages fetched
with `apt-get download` and kept, unpacked with `dpkg-deb -x`; files written atomically; stamps
that say a build is complete; one builder at a time; and the `fetch-*` command-line shape."""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from emu.errors import EmuError, HostError

T = TypeVar("T")


class GuestUnavailable(Exception):
    """The host cannot provide the guest (no apt-get, no network, not root...): tests skip with `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------------------------
# Files: atomic writes and stamps


def temp_name(path: Path) -> Path:
    """Where a file is written before it is renamed to `path` (per process: builders may race)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = temp_name(path)
    tmp.write_bytes(data)
    tmp.chmod(mode)
    tmp.replace(path)


def recipe_hash(fmt: int, *parts: str) -> str:
    """A short hash of a format number and the parts a build depends on."""
    h = hashlib.sha256(str(fmt).encode())
    for p in parts:
        h.update(p.encode() + b"\0")
    return h.hexdigest()[:16]


def stamp_ok(stamp: Path, recipe: str, files: list[Path]) -> dict[str, object] | None:
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


def write_stamp(stamp: Path, recipe: str, files: list[Path], **extra: object) -> None:
    info = {"recipe": recipe, "sizes": {f.name: f.stat().st_size for f in files}, **extra}
    write_atomic(stamp, (json.dumps(info, indent=1) + "\n").encode())


@contextmanager
def locked(cache: Path) -> Iterator[None]:
    """One builder at a time (parallel test processes share the cache)."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# --------------------------------------------------------------------------------------------
# Debian packages


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})


def tail(text: str) -> str:
    """The last non-blank line of a tool's output, for a one-line error."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def _apt_known(package: str) -> bool:
    p = run(["apt-cache", "show", "--no-all-versions", package])
    return p.returncode == 0 and "Package:" in p.stdout


def _apt_update() -> None:
    if os.geteuid() != 0:
        raise GuestUnavailable("apt's package lists lack or misplace the guest packages; run apt-get update as root")
    p = run(["apt-get", "update", "-qq"])
    if p.returncode != 0:
        raise GuestUnavailable(f"apt-get update failed: {tail(p.stderr or p.stdout)}")


def ensure_apt_knows(package: str) -> None:
    """Run `apt-get update` if the package lists do not have `package` yet (root only)."""
    if shutil.which("apt-get") is None or shutil.which("apt-cache") is None:
        raise GuestUnavailable("apt-get is not available (the guest assets come from Debian packages)")
    if _apt_known(package):
        return
    _apt_update()
    if not _apt_known(package):
        raise GuestUnavailable(f"no Debian package {package} in this machine's apt sources")


def download(package: str, into: Path) -> Path:
    """`apt-get download` one package into `into` (as root, apt's sandbox user needs to write there)."""
    ensure_apt_knows(package)
    p = run(["apt-get", "download", "-q", package], cwd=into)
    debs = sorted(into.glob(f"{package}_*.deb"))
    if p.returncode != 0 or not debs:
        raise GuestUnavailable(f"apt-get download {package} failed: {tail(p.stderr or p.stdout)}")
    return debs[0]


def _download_fresh(resolve: Callable[[], str], into: Path) -> Path:
    """Download the package `resolve()` names; on failure refresh stale lists once (a security
    update removes the old .deb from the mirror, and may rename the kernel package) and retry."""
    try:
        return download(resolve(), into)
    except GuestUnavailable:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise
    _apt_update()
    return download(resolve(), into)


def unpack(deb: Path, into: Path) -> None:
    tool = shutil.which("dpkg-deb")
    if tool is None:
        raise GuestUnavailable("dpkg-deb is not available to unpack Debian packages")
    p = run([tool, "-x", str(deb), str(into)])
    if p.returncode != 0:
        raise HostError(f"dpkg-deb -x {deb.name} failed: {tail(p.stderr)}")


def fetch_deb(package: str | Callable[[], str], debs: Path, tmp: Path, kept: str | None = None) -> Path:
    """The package's .deb, kept in `debs` so later rebuilds need no network. `package` is a name or
    a function that finds one (asking apt), in which case `kept` globs for the .deb it kept."""
    pattern = kept or (f"{package}_*.deb" if isinstance(package, str) else None)
    found = sorted(debs.glob(pattern)) if pattern else []
    if found:
        return found[-1]
    deb = _download_fresh(package if callable(package) else lambda: package, tmp)
    debs.mkdir(parents=True, exist_ok=True)
    dest = debs / deb.name
    shutil.copyfile(deb, dest.with_suffix(".tmp"))
    dest.with_suffix(".tmp").replace(dest)
    return dest


@contextmanager
def download_dir(prefix: str) -> Iterator[Path]:
    """A temporary directory that apt's _apt sandbox user may download into."""
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        tmp = Path(name)
        tmp.chmod(0o755)
        yield tmp


# --------------------------------------------------------------------------------------------
# The fetch-* commands


def log(prog: str, verbose: bool, msg: str) -> None:
    """A progress line on stderr, shown unless the command runs with -q."""
    if verbose:
        print(f"{prog}: {msg}", file=sys.stderr, flush=True)


def cli_main(
    prog: str, doc: str | None, argv: list[str] | None, default_cache: Path,
    build: Callable[..., T], report: Callable[[T], None],
) -> int:  # fmt: skip
    """`prog [--cache-dir DIR] [-q]`: build(cache, verbose=...), then report(result) unless quiet.
    Exits 0 when built and 1, with one line on stderr, when it cannot be fetched or built."""
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0] if doc else None)
    p.add_argument("--cache-dir", type=Path, default=default_cache,
                   help=f"where the assets go (default {default_cache})")  # fmt: skip
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    args = p.parse_args(argv)
    try:
        built = build(args.cache_dir, verbose=not args.quiet)
    except GuestUnavailable as e:
        print(f"{prog}: unavailable: {e.reason}", file=sys.stderr)
        return 1
    except EmuError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the cache directory is not writable, the disk is full...
        print(f"{prog}: error: {e.filename or ''}: {e.strerror}", file=sys.stderr)
        return 1
    if not args.quiet:
        report(built)
    return 0
