"""Linux's zero page (struct boot_params, Documentation/arch/x86/zero-page.rst and boot.rst)."""

from __future__ import annotations

import struct

from emu import layout
from emu.errors import EmuError
from emu.firmware.boot.inputs import PlacedFile
from emu.firmware.tables.e820 import E820Entry

ZERO_PAGE_SIZE = 4096
ACPI_RSDP_ADDR = 0x070  # u64 (boot protocol 2.14+): where the RSDP is, so the kernel need not scan
E820_ENTRIES = 0x1E8  # u8
SETUP_HEADER = 0x1F1  # struct setup_header starts here, in the kernel image and in boot_params
SETUP_HEADER_MAX_END = 0x290  # hdr plus its padding; edd_mbr_sig_buffer follows
E820_TABLE = 0x2D0
E820_MAX = 128  # E820_MAX_ENTRIES_ZEROPAGE

# setup_header fields, as offsets into boot_params (= offsets into the kernel image).
SETUP_SECTS = 0x1F1
SYSSIZE = 0x1F4
BOOT_FLAG = 0x1FE
JUMP = 0x200
HEADER = 0x202
VERSION = 0x206
TYPE_OF_LOADER = 0x210
LOADFLAGS = 0x211
CODE32_START = 0x214
RAMDISK_IMAGE = 0x218
RAMDISK_SIZE = 0x21C
CMD_LINE_PTR = 0x228
INITRD_ADDR_MAX = 0x22C
KERNEL_ALIGNMENT = 0x230
RELOCATABLE_KERNEL = 0x234
XLOADFLAGS = 0x236
CMDLINE_SIZE = 0x238
PREF_ADDRESS = 0x258
INIT_SIZE = 0x260

BOOT_FLAG_MAGIC = 0xAA55
HDRS = b"HdrS"
LOADER_UNDEFINED = 0xFF  # type_of_loader for a boot loader without an assigned id
ELF_KERNEL_ALIGNMENT = 16 << 20  # what Firecracker writes for a vmlinux (which has no header)


def build(
    e820: list[E820Entry],
    cmdline_len: int,
    ramdisk: PlacedFile | None,
    setup_header: bytes | None = None,
    code32_start: int | None = None,
) -> bytes:
    """boot_params for a kernel entered at its 32- or 64-bit entry (no real-mode setup code runs).

    `setup_header` is the image's header from 0x1F1 (a bzImage), copied as boot.rst asks; a
    vmlinux has none, so the fields a kernel reads are filled in as Firecracker does.
    `cmdline_len` counts the terminating NUL.
    """
    bp = bytearray(ZERO_PAGE_SIZE)
    if setup_header is not None:
        bp[SETUP_HEADER : SETUP_HEADER + len(setup_header)] = setup_header
    else:
        struct.pack_into("<I", bp, KERNEL_ALIGNMENT, ELF_KERNEL_ALIGNMENT)
        # cmdline_size is the kernel's to announce; for a vmlinux Firecracker writes the length.
        struct.pack_into("<I", bp, CMDLINE_SIZE, cmdline_len)
    struct.pack_into("<H", bp, BOOT_FLAG, BOOT_FLAG_MAGIC)
    bp[HEADER : HEADER + 4] = HDRS
    bp[TYPE_OF_LOADER] = LOADER_UNDEFINED
    if code32_start is not None:
        struct.pack_into("<I", bp, CODE32_START, code32_start)
    struct.pack_into("<I", bp, CMD_LINE_PTR, layout.CMDLINE_ADDR)
    if ramdisk is not None:
        struct.pack_into("<II", bp, RAMDISK_IMAGE, ramdisk.addr, ramdisk.size)
    if len(e820) > E820_MAX:
        raise EmuError(f"the memory map has {len(e820)} entries; the zero page holds {E820_MAX}")
    bp[E820_ENTRIES] = len(e820)
    for i, entry in enumerate(e820):
        bp[E820_TABLE + 20 * i : E820_TABLE + 20 * (i + 1)] = entry.pack()
    return bytes(bp)
