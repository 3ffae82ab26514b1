"""The project's own test kernels (nasm sources here) and a builder for hand-made ELF files.

Each *.asm is a complete kernel image assembled with `nasm -f bin`; ELF headers are written by
hand (elf.inc). The kernels use tests/guests/snippets/lib.inc for their serial output.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from emu.tools.asm import assemble

KERNELS = Path(__file__).parent
SNIPPETS = KERNELS.parent / "snippets"
NAMES = ("vmlinux", "bzimage64", "bzimage32", "pvh", "multiboot_elf", "multiboot_aout")

EM_386 = 3
EM_ARM = 40
EM_X86_64 = 62
EM_AARCH64 = 183
PT_LOAD = 1
PT_NOTE = 4


def build(name: str) -> bytes:
    """Assemble tests/guests/kernels/<name>.asm (cached by content, includes and lib.inc too)."""
    return assemble((KERNELS / f"{name}.asm").read_text(), name=f"kernel-{name}", include_dirs=(KERNELS, SNIPPETS))


@dataclass
class Seg:
    paddr: int
    data: bytes
    memsz: int | None = None  # default: len(data)
    vaddr: int | None = None  # default: paddr


def xen_pvh_note(entry: int, descsz: int = 8) -> bytes:
    desc = struct.pack("<Q", entry)[:descsz].ljust((descsz + 3) & ~3, b"\0")
    return struct.pack("<III", 4, descsz, 18) + b"Xen\0" + desc


def make_elf(
    segments: list[Seg],
    entry: int,
    *,
    bits: int = 64,
    machine: int = EM_X86_64,
    note: bytes = b"",
    after_headers: bytes = b"",
    e_type: int = 2,
) -> bytes:
    """A minimal little-endian ELF: headers, `after_headers` (e.g. a multiboot header), an
    optional PT_NOTE blob, then each segment's bytes."""
    ehsize, phsize = (64, 56) if bits == 64 else (52, 32)
    nph = len(segments) + (1 if note else 0)
    off = ehsize + phsize * nph
    extra_at = off
    off += len(after_headers)
    off = (off + 3) & ~3
    note_at = off
    off += len(note)
    placed = []
    for s in segments:
        off = (off + 15) & ~15
        placed.append(off)
        off += len(s.data)
    out = bytearray(off)
    ident = b"\x7fELF" + bytes([2 if bits == 64 else 1, 1, 1, 0]) + bytes(8)
    if bits == 64:
        hdr = struct.pack(
            "<16sHHIQQQIHHHHHH", ident, e_type, machine, 1, entry, ehsize, 0, 0, ehsize, phsize, nph, 64, 0, 0
        )
    else:
        hdr = struct.pack(
            "<16sHHIIIIIHHHHHH", ident, e_type, machine, 1, entry, ehsize, 0, 0, ehsize, phsize, nph, 40, 0, 0
        )
    out[: len(hdr)] = hdr
    phdrs = []
    for s, at in zip(segments, placed, strict=True):
        memsz = len(s.data) if s.memsz is None else s.memsz
        vaddr = s.paddr if s.vaddr is None else s.vaddr
        phdrs.append((PT_LOAD, at, vaddr, s.paddr, len(s.data), memsz))
        out[at : at + len(s.data)] = s.data
    if note:
        phdrs.append((PT_NOTE, note_at, 0, 0, len(note), len(note)))
        out[note_at : note_at + len(note)] = note
    for i, (ptype, poff, vaddr, paddr, filesz, memsz) in enumerate(phdrs):
        if bits == 64:
            ph = struct.pack("<IIQQQQQQ", ptype, 7, poff, vaddr, paddr, filesz, memsz, 0x1000)
        else:
            ph = struct.pack("<IIIIIIII", ptype, poff, vaddr, paddr, filesz, memsz, 7, 0x1000)
        out[ehsize + i * phsize : ehsize + (i + 1) * phsize] = ph
    out[extra_at : extra_at + len(after_headers)] = after_headers
    return bytes(out)


def multiboot_header(flags: int, *, checksum: int | None = None, addresses: tuple[int, ...] = ()) -> bytes:
    magic = 0x1BADB002
    if checksum is None:
        checksum = -(magic + flags) & 0xFFFF_FFFF
    return struct.pack("<III", magic, flags, checksum) + struct.pack(f"<{len(addresses)}I", *addresses)
