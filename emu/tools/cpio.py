"""A writer (and a reader, for checks) of the cpio "newc" format that Linux unpacks as initramfs.

newc entries: a 110-byte ASCII header ("070701" and 13 eight-digit hex fields), the NUL-terminated
name, padding to 4 bytes, the data, padding to 4 bytes; the archive ends with "TRAILER!!!".
Owner, mode and device numbers are just header fields, so device nodes need no root to write.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor", "devminor",
           "rdevmajor", "rdevminor", "namesize", "check")  # fmt: skip
HEADER_SIZE = 6 + 8 * len(_FIELDS)


class CpioError(ValueError):
    """An archive that is not well-formed newc."""


@dataclass(frozen=True)
class Entry:
    name: str  # without a leading "/" (the kernel unpacks relative to /)
    mode: int  # S_IFxxx | permissions
    data: bytes = b""  # file contents, or the target of a symlink
    rdev: tuple[int, int] = (0, 0)  # (major, minor) of a device node
    uid: int = 0
    gid: int = 0
    mtime: int = 0

    @property
    def kind(self) -> str:
        return stat.filemode(self.mode)[0]


def directory(name: str, perm: int = 0o755) -> Entry:
    return Entry(name, stat.S_IFDIR | perm)


def file(name: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(name, stat.S_IFREG | perm, data)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, stat.S_IFLNK | 0o777, target.encode())


def chardev(name: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(name, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, e: Entry, name: bytes, nlink: int) -> bytes:
    values = (ino, e.mode, e.uid, e.gid, nlink, e.mtime, len(e.data), 0, 0, e.rdev[0], e.rdev[1], len(name) + 1, 0)
    return MAGIC + b"".join(b"%08X" % v for v in values)


def write_newc(entries: list[Entry]) -> bytes:
    """Serialize `entries` in order (parents before children) and the trailer."""
    parts: list[bytes] = []
    for ino, e in enumerate([*entries, Entry(TRAILER, 0)], start=1):
        name = e.name.lstrip("/").encode()
        if not name:
            raise CpioError("empty entry name")
        if e.rdev != (0, 0) and not (stat.S_ISCHR(e.mode) or stat.S_ISBLK(e.mode)):
            raise CpioError(f"{e.name}: only device nodes have a device number")
        nlink = 2 if stat.S_ISDIR(e.mode) else 1
        # The trailer gets inode 0 and nlink 1, as GNU cpio writes it.
        if e.name == TRAILER:
            ino, nlink = 0, 1
        head = _header(ino, e, name, nlink) + name + b"\0"
        parts += [head, _pad4(len(head)), e.data, _pad4(len(e.data))]
    return b"".join(parts)


def read_newc(data: bytes) -> list[Entry]:
    """Parse a newc archive (up to its trailer) back into entries; CpioError when malformed."""
    entries: list[Entry] = []
    pos = 0
    while True:
        if data[pos : pos + 6] != MAGIC:
            raise CpioError(f"bad magic at offset {pos}: {data[pos : pos + 6]!r}")
        if pos + HEADER_SIZE > len(data):
            raise CpioError(f"truncated header at offset {pos}")
        try:
            f = {k: int(data[pos + 6 + 8 * j : pos + 14 + 8 * j], 16) for j, k in enumerate(_FIELDS)}
        except ValueError:
            raise CpioError(f"non-hex header field at offset {pos}") from None
        name_at = pos + HEADER_SIZE
        name_end = name_at + f["namesize"]
        if f["namesize"] < 1 or name_end > len(data) or data[name_end - 1] != 0:
            raise CpioError(f"bad name at offset {name_at}")
        name = data[name_at : name_end - 1].decode()
        data_at = name_end + (-name_end % 4)
        data_end = data_at + f["filesize"]
        if data_end > len(data):
            raise CpioError(f"{name}: data runs past the archive end")
        if name == TRAILER:
            return entries
        entries.append(
            Entry(name, f["mode"], data[data_at:data_end], (f["rdevmajor"], f["rdevminor"]), f["uid"], f["gid"],
                  f["mtime"])
        )  # fmt: skip
        pos = data_end + (-data_end % 4)
