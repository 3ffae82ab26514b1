"""A small AML encoder (ACPI 6.5 section 20, "ACPI Machine Language Specification"): only the terms
emu's DSDT needs (Scope, Device, Name, integers, strings, buffers, packages) and the resource
descriptors of a device's _CRS (section 6.4: Memory32Fixed, Extended Interrupt, End Tag).

Every function returns the encoded bytes; callers concatenate them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from emu.errors import EmuError


class Op(IntEnum):
    ZERO = 0x00
    ONE = 0x01
    NAME = 0x08
    BYTE_PREFIX = 0x0A
    WORD_PREFIX = 0x0B
    DWORD_PREFIX = 0x0C
    STRING_PREFIX = 0x0D
    QWORD_PREFIX = 0x0E
    SCOPE = 0x10
    BUFFER = 0x11
    PACKAGE = 0x12
    EXT_PREFIX = 0x5B
    ROOT_CHAR = 0x5C  # '\'
    DUAL_NAME_PREFIX = 0x2E
    MULTI_NAME_PREFIX = 0x2F
    ONES = 0xFF


EXT_DEVICE = 0x82  # DeviceOp = ExtOpPrefix 0x82
PKG_LENGTH_MAX = (1 << 28) - 1
_SEG_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789")


def pkg_length(body_len: int) -> bytes:
    """PkgLength for a body of `body_len` bytes; the encoded length counts its own bytes too."""
    for extra in range(4):
        total = body_len + 1 + extra
        if extra == 0 and total <= 0x3F:
            return bytes([total])
        if extra and total < 1 << (4 + 8 * extra):
            lead = (extra << 6) | (total & 0x0F)
            return bytes([lead]) + (total >> 4).to_bytes(extra, "little")
    raise EmuError(f"AML package of {body_len} bytes is longer than a PkgLength can say")


def name_seg(seg: str) -> bytes:
    """One 4-character NameSeg, padded with '_' (a leading digit is not allowed)."""
    if not 1 <= len(seg) <= 4 or not set(seg) <= _SEG_CHARS or seg[0].isdigit():
        raise EmuError(f"bad AML name segment {seg!r}")
    return seg.ljust(4, "_").encode()


def name_string(path: str) -> bytes:
    """A NameString: optional root prefix ('\\'), then one, two (DualNamePath) or more segments."""
    prefix = b""
    if path.startswith("\\"):
        prefix, path = bytes([Op.ROOT_CHAR]), path[1:]
    segs = [name_seg(s) for s in path.split(".")] if path else []
    if not segs:
        return prefix + b"\0"  # NullName
    if len(segs) == 1:
        return prefix + segs[0]
    if len(segs) == 2:
        return prefix + bytes([Op.DUAL_NAME_PREFIX]) + b"".join(segs)
    return prefix + bytes([Op.MULTI_NAME_PREFIX, len(segs)]) + b"".join(segs)


def integer(value: int) -> bytes:
    """The shortest integer encoding (Zero/One/Ones, then byte/word/dword/qword constants)."""
    if value < 0 or value >= 1 << 64:
        raise EmuError(f"AML integer {value} is out of range")
    if value in (0, 1):
        return bytes([value])
    for prefix, fmt, limit in ((Op.BYTE_PREFIX, "<B", 8), (Op.WORD_PREFIX, "<H", 16), (Op.DWORD_PREFIX, "<I", 32)):
        if value < 1 << limit:
            return bytes([prefix]) + struct.pack(fmt, value)
    return bytes([Op.QWORD_PREFIX]) + struct.pack("<Q", value)


def eisa_id(text: str) -> bytes:
    """EISAID("PNP0A03"): three letters in 5 bits each and four hex digits, as a DWord constant."""
    if len(text) != 7 or not text[:3].isalpha() or not text[:3].isupper():
        raise EmuError(f"bad EISA id {text!r}")
    letters = [ord(c) - 0x40 for c in text[:3]]
    raw = (letters[0] << 10 | letters[1] << 5 | letters[2]).to_bytes(2, "big") + bytes.fromhex(text[3:])
    return integer(int.from_bytes(raw, "little"))


def string(text: str) -> bytes:
    raw = text.encode("ascii")
    if b"\0" in raw:
        raise EmuError("AML strings cannot contain NUL")
    return bytes([Op.STRING_PREFIX]) + raw + b"\0"


def buffer(data: bytes) -> bytes:
    body = integer(len(data)) + data
    return bytes([Op.BUFFER]) + pkg_length(len(body)) + body


def package(*elements: bytes) -> bytes:
    """Package(){...} of already-encoded data objects (at most 255 of them)."""
    if len(elements) > 0xFF:
        raise EmuError("an AML Package holds at most 255 elements")
    body = bytes([len(elements)]) + b"".join(elements)
    return bytes([Op.PACKAGE]) + pkg_length(len(body)) + body


def name(path: str, value: bytes) -> bytes:
    """Name(path, value): `value` is an encoded data object (integer, string, buffer, package)."""
    return bytes([Op.NAME]) + name_string(path) + value


def scope(path: str, *terms: bytes) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([Op.SCOPE]) + pkg_length(len(body)) + body


def device(seg: str, *terms: bytes) -> bytes:
    body = name_seg(seg) + b"".join(terms)
    return bytes([Op.EXT_PREFIX, EXT_DEVICE]) + pkg_length(len(body)) + body


# -- Resource descriptors (ACPI 6.5 section 6.4) -----------------------------------------------------


class Trigger(IntEnum):
    LEVEL = 0
    EDGE = 1


class Polarity(IntEnum):
    ACTIVE_HIGH = 0
    ACTIVE_LOW = 1


LARGE_MEMORY32_FIXED = 0x86
LARGE_DWORD_ADDRESS = 0x87
LARGE_WORD_ADDRESS = 0x88
LARGE_EXTENDED_IRQ = 0x89
SMALL_END_TAG = 0x79  # small item 0x0F, length 1


def memory32_fixed(base: int, size: int, writable: bool = True) -> bytes:
    """Memory32Fixed(ReadWrite|ReadOnly, base, size): 12 bytes."""
    if base < 0 or size <= 0 or base + size > 1 << 32:
        raise EmuError(f"Memory32Fixed window {base:#x}+{size:#x} is not below 4 GiB")
    return struct.pack("<BHBII", LARGE_MEMORY32_FIXED, 9, int(writable), base, size)


@dataclass(frozen=True)
class ExtendedInterrupt:
    """Interrupt(ResourceConsumer, trigger, polarity, Exclusive|Shared){irqs}."""

    irqs: tuple[int, ...]
    trigger: Trigger = Trigger.EDGE
    polarity: Polarity = Polarity.ACTIVE_HIGH
    shared: bool = False

    def encode(self) -> bytes:
        if not 1 <= len(self.irqs) <= 0xFF:
            raise EmuError("an Extended Interrupt descriptor lists 1 to 255 interrupts")
        # Flags: bit 0 consumer, bit 1 edge, bit 2 active low, bit 3 shared.
        flags = 1 | self.trigger << 1 | self.polarity << 2 | int(self.shared) << 3
        body = struct.pack("<BB", flags, len(self.irqs)) + b"".join(struct.pack("<I", i) for i in self.irqs)
        return struct.pack("<BH", LARGE_EXTENDED_IRQ, len(body)) + body


class Space(IntEnum):
    MEMORY = 0
    IO = 1
    BUS = 2


# General flags of an address space descriptor: a producer (a bridge window) with both ends fixed.
_MIN_MAX_FIXED_PRODUCER = 1 << 3 | 1 << 2
# Type-specific flags: I/O windows decode the ISA and non-ISA ranges; memory is read-write, uncached.
_TYPE_FLAGS = {Space.MEMORY: 1, Space.IO: 3, Space.BUS: 0}


def address_window(space: Space, lo: int, hi: int, dword: bool = False) -> bytes:
    """WordBusNumber/WordIO (16-bit fields) or DWordMemory (32-bit) window [lo, hi] of a bridge."""
    fmt, kind, limit = ("<IIIII", LARGE_DWORD_ADDRESS, 1 << 32) if dword else ("<HHHHH", LARGE_WORD_ADDRESS, 1 << 16)
    if not 0 <= lo <= hi < limit:
        raise EmuError(f"address window {lo:#x}-{hi:#x} does not fit the descriptor")
    body = struct.pack("<BBB", space, _MIN_MAX_FIXED_PRODUCER, _TYPE_FLAGS[space])
    body += struct.pack(fmt, 0, lo, hi, 0, hi - lo + 1)  # granularity, min, max, translation, length
    return struct.pack("<BH", kind, len(body)) + body


def resource_template(*descriptors: bytes) -> bytes:
    """ResourceTemplate(){...}: a Buffer of the descriptors and an End Tag (checksum 0: "valid")."""
    return buffer(b"".join(descriptors) + bytes([SMALL_END_TAG, 0]))
