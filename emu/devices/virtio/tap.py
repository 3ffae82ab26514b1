"""Linux tap interfaces (Documentation/networking/tuntap.rst): attach to an existing one by name,
or create `emutapN` (needs CAP_NET_ADMIN; it disappears when emu closes it).

Frames cross the tap without the virtio-net header (no IFF_VNET_HDR): emu offers no checksum or
segmentation offloads, so the header carries nothing the host needs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from pathlib import Path

from emu.errors import EmuError

TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA  # _IOW('T', 202, int)
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000  # no 4-byte packet-information prefix
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
IFF_UP = 0x1
CREATE_PATTERN = "emutap%d"  # the kernel picks the first free number
_IFREQ = struct.Struct("16sH22x")


def _ifname_ok(name: str) -> bool:
    return 0 < len(name.encode()) < 16 and "/" not in name and not name.isspace()


def open_tap(name: str | None) -> tuple[int, str]:
    """(non-blocking fd, interface name) of the tap `name`, or of a new emutapN when None."""
    if name is not None:
        if not _ifname_ok(name):
            raise EmuError(f"--net tap={name}: not an interface name (1-15 characters)")
        if not Path("/sys/class/net", name).exists():
            raise EmuError(f"--net tap={name}: no such interface (create it, e.g. `ip tuntap add {name} mode tap`)")
    try:
        fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise EmuError(f"--net: {TUN_DEVICE}: {e.strerror}") from None
    try:
        ifr = fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack((name or CREATE_PATTERN).encode(), IFF_TAP | IFF_NO_PI))
    except OSError as e:
        os.close(fd)
        what = f"tap={name}" if name else "creating a tap"
        why = {
            errno.EPERM: "not permitted (needs root or CAP_NET_ADMIN, or a tap owned by you)",
            errno.EBUSY: "the interface is busy (another process holds it, or it is not a tap)",
        }.get(e.errno or 0, e.strerror)
        raise EmuError(f"--net {what}: {why}") from None
    actual = _IFREQ.unpack(ifr)[0].rstrip(b"\0").decode()
    if name is None:
        _bring_up(actual)
    return fd, actual


def _bring_up(name: str) -> None:
    """Set IFF_UP on a tap emu created (addresses and routes stay the user's business)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            flags = _IFREQ.unpack(fcntl.ioctl(s, SIOCGIFFLAGS, _IFREQ.pack(name.encode(), 0)))[1]
            fcntl.ioctl(s, SIOCSIFFLAGS, _IFREQ.pack(name.encode(), flags | IFF_UP))
        except OSError:
            pass  # the interface still works once the user brings it up


def parse_mac(text: str) -> bytes:
    """'52:54:00:12:34:56' → 6 bytes; a unicast address (multicast bit clear)."""
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"MAC address {text!r} is not six hex octets separated by ':'")
    try:
        mac = bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"MAC address {text!r} is not six hex octets separated by ':'") from None
    if mac[0] & 1:
        raise ValueError(f"MAC address {text!r} is a multicast address")
    return mac


def default_mac(index: int) -> bytes:
    """QEMU's default 52:54:00:12:34:56, counted up per NIC."""
    return bytes([0x52, 0x54, 0x00, 0x12, 0x34, (0x56 + index) & 0xFF])
