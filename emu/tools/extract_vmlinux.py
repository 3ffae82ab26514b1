"""Extract the vmlinux ELF from a Linux bzImage, and a pure-Python LZ4 (legacy frame) decoder.

A bzImage is the real-mode setup ((setup_sects + 1) sectors) followed by the protected-mode part,
which holds the compressed kernel at `payload_offset` (boot protocol >= 2.08, Documentation/arch/
x86/boot.rst). The payload decompresses to the kernel's vmlinux ELF (on relocatable x86 kernels
followed by the relocation table, which we keep: it does not disturb ELF readers).
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from emu.errors import EmuError


class VmlinuxError(EmuError):
    """The input is not a bzImage we can extract, or its payload is corrupt or unsupported."""


class LZ4Error(VmlinuxError):
    """A malformed LZ4 stream (reported with the position in the input)."""


class Compression(Enum):
    GZIP = "gzip"
    XZ = "xz"
    LZMA = "lzma"
    BZIP2 = "bzip2"
    LZ4 = "lz4"
    LZO = "lzo"
    ZSTD = "zstd"


# Leading bytes of each payload format, as the kernel's Makefile writes them.
_MAGICS: tuple[tuple[bytes, Compression], ...] = (
    (b"\x1f\x8b", Compression.GZIP),
    (b"\xfd7zXZ\x00", Compression.XZ),
    (b"\x5d\x00\x00", Compression.LZMA),
    (b"BZh", Compression.BZIP2),
    (b"\x02\x21\x4c\x18", Compression.LZ4),
    (b"\x89LZO", Compression.LZO),
    (b"\x28\xb5\x2f\xfd", Compression.ZSTD),
)

_STDLIB: dict[Compression, Callable[[], Any]] = {
    Compression.GZIP: lambda: zlib.decompressobj(16 + zlib.MAX_WBITS),
    Compression.XZ: lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ),
    Compression.LZMA: lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE),
    Compression.BZIP2: bz2.BZ2Decompressor,
}

LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_LEGACY_BLOCK = 8 << 20  # every legacy-frame block decodes to at most 8 MiB


@dataclass(frozen=True)
class BzImageHeader:
    setup_sects: int
    protocol: tuple[int, int]
    payload_offset: int  # from the start of the protected-mode part
    payload_length: int

    @property
    def pm_offset(self) -> int:
        """Offset of the protected-mode part in the file."""
        return (self.setup_sects + 1) * 512


def parse_header(bzimage: bytes) -> BzImageHeader:
    if len(bzimage) < 0x250:
        raise VmlinuxError(f"not a bzImage: only {len(bzimage)} bytes")
    if bzimage[0x202:0x206] != b"HdrS":
        raise VmlinuxError("not a bzImage: no 'HdrS' signature at 0x202")
    setup_sects = bzimage[0x1F1] or 4  # 0 means 4, for very old images
    (version,) = struct.unpack_from("<H", bzimage, 0x206)
    protocol = (version >> 8, version & 0xFF)
    if version < 0x0208:
        raise VmlinuxError(f"boot protocol {protocol[0]}.{protocol[1]:02d} has no payload fields (needs >= 2.08)")
    payload_offset, payload_length = struct.unpack_from("<II", bzimage, 0x248)
    hdr = BzImageHeader(setup_sects, protocol, payload_offset, payload_length)
    end = hdr.pm_offset + payload_offset + payload_length
    if payload_length == 0 or end > len(bzimage):
        raise VmlinuxError(
            f"payload {payload_offset:#x}+{payload_length:#x} lies outside the file ({len(bzimage):#x} bytes)"
        )
    return hdr


def detect(payload: bytes) -> Compression:
    for magic, kind in _MAGICS:
        if payload.startswith(magic):
            return kind
    raise VmlinuxError(f"unknown payload compression (first bytes {payload[:6].hex(' ')})")


def extract_vmlinux(bzimage: bytes) -> bytes:
    """Return the decompressed vmlinux ELF of `bzimage`; VmlinuxError says why when it cannot."""
    hdr = parse_header(bzimage)
    start = hdr.pm_offset + hdr.payload_offset
    payload = bytes(bzimage[start : start + hdr.payload_length])
    kind = detect(payload)
    if kind is Compression.LZ4:
        out = lz4_legacy_decompress(payload)
    elif kind in _STDLIB:
        # Decompressor objects stop at the end of the stream (ignoring the kernel's size trailer)
        # and say whether they reached it, which catches a truncated payload.
        d = _STDLIB[kind]()
        try:
            out = d.decompress(payload)
        except (zlib.error, lzma.LZMAError, OSError, EOFError) as e:
            raise VmlinuxError(f"corrupt {kind.value} payload: {e}") from None
        if not d.eof:
            raise VmlinuxError(f"corrupt {kind.value} payload: the stream is truncated")
    else:
        raise VmlinuxError(f"{kind.value}-compressed kernels are not supported (gzip, xz, lzma, bzip2, lz4 are)")
    if not out.startswith(b"\x7fELF"):
        raise VmlinuxError(f"the {kind.value} payload did not decompress to an ELF (starts {out[:4].hex(' ')})")
    return out


def lz4_legacy_decompress(data: bytes | bytearray | memoryview) -> bytes:
    """Decode an LZ4 legacy frame (`lz4 -l`), as the kernel's lz4 payload is.

    Layout: magic 0x184C2102 (LE), then blocks, each a LE u32 compressed size followed by an
    independent LZ4 block of at most 8 MiB output. A frame ends at the end of the data, at another
    magic (a concatenated frame follows), or — as the kernel's build appends — at a final u32 equal
    to the total uncompressed size (mod 2**32).
    """
    src = bytes(data)
    n = len(src)
    if n < 4 or struct.unpack_from("<I", src, 0)[0] != LZ4_LEGACY_MAGIC:
        raise LZ4Error(f"bad magic: not an LZ4 legacy frame (first bytes {src[:4].hex(' ')})")
    chunks: list[bytes] = []
    total = 0
    pos = 4
    while pos < n:
        if n - pos < 4:
            raise LZ4Error(f"truncated block size at input offset {pos}")
        (size,) = struct.unpack_from("<I", src, pos)
        if size == LZ4_LEGACY_MAGIC:
            pos += 4
            continue
        if n - pos == 4 and size == total & 0xFFFFFFFF:
            break  # the kernel's appended uncompressed size
        pos += 4
        if size == 0 or size > n - pos:
            raise LZ4Error(f"block at input offset {pos - 4} claims {size} bytes, {n - pos} remain")
        block = lz4_block_decompress(src, pos, pos + size, LZ4_LEGACY_BLOCK)
        chunks.append(block)
        total += len(block)
        pos += size
    return b"".join(chunks)


def lz4_block_decompress(src: bytes, start: int, end: int, max_out: int) -> bytes:
    """Decode one LZ4 block src[start:end] (no dictionary) into at most `max_out` bytes.

    Every sequence: a token (literal length in the high nibble, match length - 4 in the low one,
    15 meaning "more length bytes follow, each added, until one is not 255"), the literals, a LE
    u16 offset back into the output, then the extra match length bytes. The last sequence has
    literals only. Bounds are checked per sequence so corrupt input fails with LZ4Error.
    """
    out = bytearray()
    i = start
    while True:
        token = src[i]
        i += 1
        lit = token >> 4
        if lit == 15:
            lit, i = _extra_length(src, i, end, lit, "literal")
        if lit:
            if i + lit > end:
                raise LZ4Error(f"literals run past the block end at input offset {i} ({lit} bytes)")
            out += src[i : i + lit]
            i += lit
        if i == end:  # the literals stop at `end` at the latest (checked above)
            break  # a block ends with a literals-only sequence
        if i + 2 > end:
            raise LZ4Error(f"truncated match offset at input offset {i}")
        offset = src[i] | (src[i + 1] << 8)
        i += 2
        mlen = (token & 15) + 4
        if mlen == 19:
            mlen, i = _extra_length(src, i, end, mlen, "match")
        olen = len(out)
        if offset == 0 or offset > olen:
            raise LZ4Error(f"match offset {offset} points before the output start (at output {olen}, input {i})")
        if olen + mlen > max_out:
            raise LZ4Error(f"block output exceeds {max_out} bytes at input offset {i}")
        m = olen - offset
        if mlen <= offset:
            out += out[m : m + mlen]
        else:
            # Overlapping match: the copy rereads bytes it has just written, i.e. it repeats the
            # last `offset` bytes; build that repetition in one step.
            reps, rest = divmod(mlen, offset)
            pattern = out[m:]
            out += pattern * reps + pattern[:rest]
        if i >= end:
            raise LZ4Error(f"block ends after a match at input offset {i} (the last sequence must be literals)")
    if len(out) > max_out:  # matches are checked as they go; this catches the last literals
        raise LZ4Error(f"block output exceeds {max_out} bytes")
    return bytes(out)


def _extra_length(src: bytes, i: int, end: int, n: int, what: str) -> tuple[int, int]:
    """`n` plus the length bytes at src[i:] (each added, until one is not 255), and the index after them."""
    while True:
        if i >= end:
            raise LZ4Error(f"truncated {what} length at input offset {i}")
        b = src[i]
        i += 1
        n += b
        if b != 255:
            return n, i
