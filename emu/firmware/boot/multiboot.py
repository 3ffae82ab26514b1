"""Multiboot v1 (the Multiboot Specification 0.6.96): header search, a.out kludge or ELF loading,
the multiboot information structure, and the 32-bit entry with EAX = 0x2BADB002.

Like GRUB and QEMU, the kernel's command line is its file name followed by --cmdline (kernels such
as kvm-unit-tests read their program name from the first word), and each module's command line is
its file name. The initrd is the first module, then each --module in order.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from emu import layout
from emu.cpu.state import CpuState
from emu.errors import EmuError
from emu.firmware.boot import elf as elfmod
from emu.firmware.boot import entry
from emu.firmware.boot.inputs import KernelInputs, StringArea, write_cmdline
from emu.firmware.boot.placement import LIMIT_4G, LoadPlan
from emu.firmware.tables.e820 import E820Type, e820_map
from emu.memory import GuestMemory

HEADER_MAGIC = 0x1BAD_B002
BOOTLOADER_MAGIC = 0x2BAD_B002
MULTIBOOT2_MAGIC = 0xE852_50D6
SEARCH_BYTES = 8192

# Header flags. Bits 0-15 are requirements a loader must refuse if it cannot meet them.
PAGE_ALIGN = 1 << 0  # modules page-aligned: emu always does this
MEMORY_INFO = 1 << 1  # mem_* and mmap_*: emu always provides them
VIDEO_MODE = 1 << 2  # a framebuffer mode: emu has no display
AOUT_KLUDGE = 1 << 16  # load addresses are in the header
REQUIRED_MASK = 0xFFFF

# Information structure flags.
INFO_MEMORY = 1 << 0
INFO_CMDLINE = 1 << 2
INFO_MODS = 1 << 3
INFO_MMAP = 1 << 6
INFO_LOADER_NAME = 1 << 9
INFO_SIZE = 116  # up to and including the framebuffer fields (left zero)
MOD_ENTRY = struct.Struct("<IIII")  # mod_start, mod_end (exclusive, as GRUB), string, reserved
MMAP_ENTRY = struct.Struct("<IQQI")  # size (of the rest: 20), base_addr, length, type
LOADER_NAME = "emu"


@dataclass(frozen=True)
class MultibootHeader:
    offset: int  # file offset of the magic
    flags: int
    header_addr: int = 0
    load_addr: int = 0
    load_end_addr: int = 0
    bss_end_addr: int = 0
    entry_addr: int = 0


def find_header(data: bytes) -> MultibootHeader | None:
    """The first 4-byte aligned header in the first 8 KiB whose checksum is valid."""
    limit = min(len(data), SEARCH_BYTES) - 12
    for off in range(0, limit + 1, 4):
        magic, flags, checksum = struct.unpack_from("<III", data, off)
        if magic == HEADER_MAGIC and (magic + flags + checksum) & 0xFFFF_FFFF == 0:
            if flags & AOUT_KLUDGE and off + 32 <= len(data):
                return MultibootHeader(off, flags, *struct.unpack_from("<5I", data, off + 12))
            return MultibootHeader(off, flags)
    return None


def has_bad_header(data: bytes) -> bool:
    """A multiboot magic in the search area, but with a wrong checksum (for a clearer error)."""
    magic = struct.pack("<I", HEADER_MAGIC)
    return any(data[off : off + 4] == magic for off in range(0, min(len(data), SEARCH_BYTES) - 3, 4))


def has_multiboot2_header(data: bytes) -> bool:
    magic = struct.pack("<I", MULTIBOOT2_MAGIC)
    return any(data[off : off + 4] == magic for off in range(0, min(len(data), 32768) - 3, 8))


def load(memory: GuestMemory, inp: KernelInputs, hdr: MultibootHeader) -> CpuState:
    what = inp.what
    if hdr.flags & VIDEO_MODE:
        raise EmuError(f"{what}: the multiboot header requires a video mode (flag bit 2); emu has no display")
    unknown = hdr.flags & REQUIRED_MASK & ~(PAGE_ALIGN | MEMORY_INFO | VIDEO_MODE)
    if unknown:
        raise EmuError(f"{what}: the multiboot header requires features emu does not know (flags {unknown:#x})")
    plan = LoadPlan(memory)
    rip = _load_aout(plan, inp, hdr) if hdr.flags & AOUT_KLUDGE else _load_elf(plan, inp)

    text = str(inp.kernel.path) + (f" {inp.cmdline}" if inp.cmdline else "")
    cmdline = inp.cmdline_bytes(text, layout.CMDLINE_MAX - 1, "emu's command line area (file name included)")
    placed = inp.place_modules(plan, LIMIT_4G, include_modules=True)
    max_mods = (layout.MULTIBOOT_MMAP_ADDR - layout.MULTIBOOT_MODS_ADDR) // MOD_ENTRY.size
    if len(placed) > max_mods:
        raise EmuError(f"{len(placed)} modules given; emu's multiboot module list holds {max_mods}")
    strings = StringArea(memory)
    mods = b"".join(MOD_ENTRY.pack(p.addr, p.addr + p.size, strings.add(str(p.file.path)), 0) for p in placed)
    memory.write(layout.MULTIBOOT_MODS_ADDR, mods)

    e820 = e820_map(memory)
    mmap = b"".join(MMAP_ENTRY.pack(MMAP_ENTRY.size - 4, e.addr, e.size, e.type) for e in e820)
    if layout.MULTIBOOT_MMAP_ADDR + len(mmap) > layout.BOOT_INFO_END:
        raise EmuError(f"the memory map has {len(e820)} entries, too many for emu's multiboot area")
    memory.write(layout.MULTIBOOT_MMAP_ADDR, mmap)
    # mem_lower: RAM from 0 (at most 640 KiB); mem_upper: RAM from 1 MiB up to the first hole.
    lower = next((e.size for e in e820 if e.addr == 0 and e.type == E820Type.RAM), 0)
    upper = next((e.size for e in e820 if e.addr == layout.HIGH_MEMORY and e.type == E820Type.RAM), 0)

    info = bytearray(INFO_SIZE)
    flags = INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MMAP | INFO_LOADER_NAME
    struct.pack_into("<IIII", info, 0, flags, min(lower, 640 << 10) >> 10, upper >> 10, 0)
    struct.pack_into("<III", info, 16, write_cmdline(memory, cmdline), len(placed), layout.MULTIBOOT_MODS_ADDR)
    struct.pack_into("<II", info, 44, len(mmap), layout.MULTIBOOT_MMAP_ADDR)
    struct.pack_into("<I", info, 64, strings.add(LOADER_NAME))
    memory.write(layout.BOOT_INFO_ADDR, bytes(info))

    s = entry.protected_mode_state(memory, entry.GDT_FLAT32, rip)
    s.rax = BOOTLOADER_MAGIC
    s.rbx = layout.BOOT_INFO_ADDR
    return s


def _load_aout(plan: LoadPlan, inp: KernelInputs, hdr: MultibootHeader) -> int:
    """Flag 16: the header says where the file goes (load_addr corresponds to the header's offset
    minus (header_addr - load_addr)), how much of it (load_end_addr, 0 = to the end of the file),
    how much bss follows (bss_end_addr, 0 = none) and where to enter."""
    what, data = inp.what, inp.kernel.data
    if hdr.offset + 32 > len(data):
        raise EmuError(f"{what}: truncated multiboot header (the address fields are missing)")
    if hdr.load_addr > hdr.header_addr:
        raise EmuError(f"{what}: multiboot load_addr {hdr.load_addr:#x} is above header_addr {hdr.header_addr:#x}")
    file_start = hdr.offset - (hdr.header_addr - hdr.load_addr)
    if file_start < 0:
        raise EmuError(f"{what}: multiboot header_addr - load_addr points before the start of the file")
    if hdr.load_end_addr:
        if hdr.load_end_addr <= hdr.load_addr:
            raise EmuError(f"{what}: multiboot load_end_addr {hdr.load_end_addr:#x} is not above load_addr")
        size = hdr.load_end_addr - hdr.load_addr
        if file_start + size > len(data):
            raise EmuError(
                f"{what}: truncated: the multiboot header loads {size} bytes from file offset {file_start:#x} "
                f"but the file has {len(data)} bytes"
            )
    else:
        size = len(data) - file_start
    end = hdr.load_addr + size
    bss_end = hdr.bss_end_addr or end
    if bss_end < end:
        raise EmuError(f"{what}: multiboot bss_end_addr {bss_end:#x} is below load_end_addr {end:#x}")
    if bss_end > LIMIT_4G:
        raise EmuError(f"{what}: a multiboot kernel must load below 4 GiB")
    plan.claim("kernel", hdr.load_addr, bss_end - hdr.load_addr)
    plan.memory.write(hdr.load_addr, data[file_start : file_start + size])
    plan.memory.fill(end, bss_end - end)
    if not hdr.load_addr <= hdr.entry_addr < bss_end:
        raise EmuError(f"{what}: multiboot entry_addr {hdr.entry_addr:#x} is outside the loaded kernel")
    return hdr.entry_addr


def _load_elf(plan: LoadPlan, inp: KernelInputs) -> int:
    what, data = inp.what, inp.kernel.data
    if not elfmod.is_elf(data):
        raise EmuError(f"{what}: the multiboot header has no load addresses (flag 16) and the file is not an ELF")
    kernel = elfmod.parse(data, what)
    if not kernel.is_x86:
        raise EmuError(f"{what}: a {kernel.arch} ELF, not an x86 kernel")
    if kernel.end > LIMIT_4G:
        raise EmuError(f"{what}: a multiboot kernel must load below 4 GiB")
    kernel.load(data, plan, "kernel")
    rip = kernel.physical_entry(what)
    if rip >= LIMIT_4G:
        raise EmuError(f"{what}: multiboot entry {rip:#x} is above 4 GiB")
    return rip
