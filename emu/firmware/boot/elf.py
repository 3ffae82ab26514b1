"""ELF kernels: program headers, the PVH note, and loading PT_LOAD segments at their physical addresses."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from emu.errors import EmuError
from emu.firmware.boot.placement import LoadPlan

ELF_MAGIC = b"\x7fELF"
XEN_ELFNOTE_PHYS32_ENTRY = 18
EM_NAMES = {"EM_386": "i386", "EM_X86_64": "x86-64", "EM_AARCH64": "AArch64", "EM_ARM": "ARM", "EM_RISCV": "RISC-V"}


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


@dataclass(frozen=True)
class Segment:
    offset: int
    paddr: int
    vaddr: int
    filesz: int
    memsz: int


@dataclass(frozen=True)
class ElfKernel:
    bits: int  # 32 or 64 (ELF class)
    machine: str  # pyelftools' name, e.g. "EM_X86_64"
    entry: int  # e_entry as written in the file
    segments: tuple[Segment, ...]  # PT_LOAD with memsz > 0
    pvh_entry: int | None  # XEN_ELFNOTE_PHYS32_ENTRY, if the file has it

    @property
    def arch(self) -> str:
        return f"{self.bits}-bit {EM_NAMES.get(self.machine, self.machine)}"

    @property
    def is_x86(self) -> bool:
        return self.machine in ("EM_386", "EM_X86_64")

    @property
    def is_x86_64(self) -> bool:
        """An ELF64 x86-64 file: what Linux's 64-bit entry needs."""
        return self.bits == 64 and self.machine == "EM_X86_64"

    @property
    def end(self) -> int:
        """The physical end of the highest loadable segment."""
        return max(s.paddr + s.memsz for s in self.segments)

    def physical_entry(self, what: str) -> int:
        """e_entry as a physical address.

        Linux's vmlinux already has a physical e_entry (its linker script says
        ENTRY(phys_startup_64)), and Firecracker uses e_entry unchanged. An ELF whose e_entry is
        a virtual address inside a segment is translated through that segment's p_paddr, as GRUB
        does for multiboot ELFs, instead of handing the CPU an address nothing is loaded at.
        """
        for s in self.segments:
            if s.paddr <= self.entry < s.paddr + s.memsz:
                return self.entry
        for s in self.segments:
            if s.vaddr <= self.entry < s.vaddr + s.memsz:
                return self.entry - s.vaddr + s.paddr
        raise EmuError(f"{what}: entry point {self.entry:#x} is not inside any loadable segment")

    def contains_physical(self, addr: int) -> bool:
        return any(s.paddr <= addr < s.paddr + s.memsz for s in self.segments)

    def load(self, data: bytes, plan: LoadPlan, what: str) -> None:
        """Write every PT_LOAD at p_paddr (bss zeroed)."""
        for i, s in enumerate(self.segments):
            plan.claim(f"{what} segment {i}", s.paddr, s.memsz)
            plan.memory.write(s.paddr, data[s.offset : s.offset + s.filesz])
            if s.memsz > s.filesz:
                plan.memory.fill(s.paddr + s.filesz, s.memsz - s.filesz)


def parse(data: bytes, what: str) -> ElfKernel:
    """Read the ELF header, PT_LOAD segments and PVH note; EmuError for anything malformed."""
    try:
        elf = ELFFile(io.BytesIO(data))
        if elf.little_endian is False:
            raise EmuError(f"{what}: big-endian ELF; x86 kernels are little-endian")
        hdr = elf.header
        if hdr["e_type"] not in ("ET_EXEC", "ET_DYN"):
            raise EmuError(f"{what}: ELF type {hdr['e_type']} is not a linked executable kernel")
        segments: list[Segment] = []
        notes: list[bytes] = []
        for seg in elf.iter_segments():
            h = seg.header
            if h["p_type"] not in ("PT_LOAD", "PT_NOTE"):
                continue
            if h["p_filesz"] and h["p_offset"] + h["p_filesz"] > len(data):
                raise EmuError(
                    f"{what}: truncated ELF: a {h['p_type']} segment needs file bytes up to "
                    f"{h['p_offset'] + h['p_filesz']:#x} but the file has {len(data):#x}"
                )
            if h["p_type"] == "PT_NOTE":
                notes.append(data[h["p_offset"] : h["p_offset"] + h["p_filesz"]])
            elif h["p_memsz"]:
                if h["p_filesz"] > h["p_memsz"]:
                    raise EmuError(f"{what}: a PT_LOAD segment has p_filesz larger than p_memsz")
                segments.append(Segment(h["p_offset"], h["p_paddr"], h["p_vaddr"], h["p_filesz"], h["p_memsz"]))
        kernel = ElfKernel(
            bits=elf.elfclass,
            machine=hdr["e_machine"],
            entry=hdr["e_entry"],
            segments=tuple(segments),
            pvh_entry=_pvh_entry(notes, what),
        )
    except (ELFError, struct.error, ValueError) as e:
        raise EmuError(f"{what}: not a valid ELF file ({e})") from None
    if not kernel.segments:
        raise EmuError(f"{what}: the ELF file has no loadable (PT_LOAD) segment")
    return kernel


def _pvh_entry(notes: list[bytes], what: str) -> int | None:
    """The 32-bit physical entry from an owner "Xen", type 18 note (4-byte aligned, as Linux emits)."""
    for blob in notes:
        pos = 0
        while pos + 12 <= len(blob):
            namesz, descsz, ntype = struct.unpack_from("<III", blob, pos)
            name_at = pos + 12
            desc_at = name_at + ((namesz + 3) & ~3)
            nxt = desc_at + ((descsz + 3) & ~3)
            if nxt > len(blob):
                raise EmuError(f"{what}: truncated ELF note")
            if ntype == XEN_ELFNOTE_PHYS32_ENTRY and blob[name_at : name_at + namesz] == b"Xen\0":
                if descsz < 4:
                    raise EmuError(f"{what}: the PVH entry note is {descsz} bytes; it must hold a 32-bit address")
                desc = blob[desc_at : desc_at + descsz]
                entry = struct.unpack_from("<I", desc)[0]
                # Linux writes the note with _ASM_PTR: 8 bytes in a 64-bit kernel, high half zero.
                if descsz >= 8 and struct.unpack_from("<I", desc, 4)[0]:
                    raise EmuError(f"{what}: the PVH entry note holds an address above 4 GiB")
                return entry
            pos = nxt
    return None
