"""bzImage: Linux's boot protocol (Documentation/arch/x86/boot.rst), entered past the real-mode setup.

The protected-mode part is loaded at code32_start (1 MiB in every bzImage), as Firecracker's
loader (rust-vmm linux-loader) does. Boot protocol 2.12+ with XLF_KERNEL_64 is entered at its
64-bit entry (load + 0x200) in long mode; anything else at its 32-bit entry (the load address).
No real-mode setup code runs, so heap_end_ptr and CAN_USE_HEAP (which only it reads) stay as
the image has them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from emu import layout
from emu.cpu.state import CpuState
from emu.errors import EmuError
from emu.firmware.boot import entry, zeropage
from emu.firmware.boot.inputs import KernelInputs, write_cmdline
from emu.firmware.boot.placement import LoadPlan, align_up
from emu.firmware.tables.e820 import e820_map
from emu.memory import GuestMemory

LOADED_HIGH = 0x01
XLF_KERNEL_64 = 0x01
ENTRY64_OFFSET = 0x200
OLD_INITRD_ADDR_MAX = 0x37FF_FFFF  # what boot.rst says to assume before protocol 2.03
OLD_CMDLINE_MAX = 255  # before 2.06


def is_bzimage(data: bytes) -> bool:
    return (
        len(data) >= zeropage.HEADER + 4
        and data[zeropage.HEADER : zeropage.HEADER + 4] == zeropage.HDRS
        and struct.unpack_from("<H", data, zeropage.BOOT_FLAG)[0] == zeropage.BOOT_FLAG_MAGIC
    )


@dataclass(frozen=True)
class SetupHeader:
    raw: bytes  # the header as boot.rst says to copy it: 0x1F1 up to 0x202 + the jump's offset byte
    setup_sects: int
    syssize: int
    version: int
    loadflags: int
    code32_start: int
    initrd_addr_max: int
    kernel_alignment: int
    relocatable: bool
    xloadflags: int
    cmdline_size: int
    pref_address: int
    init_size: int

    @property
    def setup_size(self) -> int:
        return (self.setup_sects + 1) * 512

    @property
    def has_64bit_entry(self) -> bool:
        return self.version >= 0x20C and bool(self.xloadflags & XLF_KERNEL_64)

    @property
    def version_text(self) -> str:
        return f"{self.version >> 8}.{self.version & 0xFF:02d}"

    @classmethod
    def parse(cls, data: bytes, what: str) -> SetupHeader:
        if not is_bzimage(data):
            raise EmuError(f'{what}: not a bzImage (no "HdrS" at 0x202 with boot flag 0xAA55 at 0x1FE)')
        setup_sects = data[zeropage.SETUP_SECTS] or 4  # 0 means 4, for ancient images
        setup_size = (setup_sects + 1) * 512
        if len(data) < max(setup_size, 0x270):
            raise EmuError(f"{what}: truncated bzImage: {len(data)} bytes, its setup alone is {setup_size}")

        def u(fmt: str, off: int) -> int:
            return struct.unpack_from(fmt, data, off)[0]

        version = u("<H", zeropage.VERSION)
        hdr_end = min(zeropage.JUMP + 2 + data[zeropage.JUMP + 1], zeropage.SETUP_HEADER_MAX_END, setup_size)
        return cls(
            raw=data[zeropage.SETUP_HEADER : hdr_end],
            setup_sects=setup_sects,
            syssize=u("<I", zeropage.SYSSIZE),
            version=version,
            loadflags=data[zeropage.LOADFLAGS],
            code32_start=u("<I", zeropage.CODE32_START),
            initrd_addr_max=u("<I", zeropage.INITRD_ADDR_MAX) if version >= 0x203 else OLD_INITRD_ADDR_MAX,
            kernel_alignment=u("<I", zeropage.KERNEL_ALIGNMENT) if version >= 0x205 else 0,
            relocatable=bool(data[zeropage.RELOCATABLE_KERNEL]) if version >= 0x205 else False,
            xloadflags=u("<H", zeropage.XLOADFLAGS) if version >= 0x20C else 0,
            cmdline_size=u("<I", zeropage.CMDLINE_SIZE) if version >= 0x206 else OLD_CMDLINE_MAX,
            pref_address=u("<Q", zeropage.PREF_ADDRESS) if version >= 0x20A else 0,
            init_size=u("<I", zeropage.INIT_SIZE) if version >= 0x20A else 0,
        )


def load(memory: GuestMemory, inp: KernelInputs) -> CpuState:
    what = inp.what
    data = inp.kernel.data
    hdr = SetupHeader.parse(data, what)
    if hdr.version < 0x200 or not hdr.loadflags & LOADED_HIGH:
        raise EmuError(f"{what}: a zImage (boot protocol {hdr.version_text}, not loaded high); emu boots bzImages")
    payload = data[hdr.setup_size :]
    if not payload:
        raise EmuError(f"{what}: truncated bzImage: nothing after the {hdr.setup_size}-byte setup")
    if hdr.version >= 0x204 and hdr.syssize * 16 > len(payload):
        raise EmuError(
            f"{what}: truncated bzImage: the header announces {hdr.syssize * 16} bytes of protected-mode "
            f"code but the file has {len(payload)} after the setup"
        )
    load_addr = hdr.code32_start
    plan = LoadPlan(memory)
    plan.claim("kernel (bzImage protected-mode part)", load_addr, len(payload))
    _claim_decompression_area(plan, hdr, load_addr, len(payload))
    memory.write(load_addr, payload)

    # cmdline_size counts the characters without the NUL; our buffer caps it at CMDLINE_MAX.
    limit = min(hdr.cmdline_size, layout.CMDLINE_MAX - 1)
    cmdline = inp.cmdline_bytes(inp.cmdline, limit, f"this kernel (boot protocol {hdr.version_text})")
    # initrd_addr_max is the highest address the initrd's last byte may occupy.
    placed = inp.place_modules(plan, hdr.initrd_addr_max + 1, include_modules=False)
    ramdisk = placed[0] if placed else None
    write_cmdline(memory, cmdline)
    zp = zeropage.build(e820_map(memory), len(cmdline), ramdisk, setup_header=hdr.raw, code32_start=load_addr)
    memory.write(layout.ZERO_PAGE_ADDR, zp)

    if hdr.has_64bit_entry:
        rip = load_addr + ENTRY64_OFFSET
        if rip >= layout.BOOT_IDENTITY_MAP_END:
            raise EmuError(f"{what}: 64-bit entry {rip:#x} is above the first GiB that the boot page tables map")
        return entry.long_mode_state(memory, rip, layout.ZERO_PAGE_ADDR)
    # boot.rst's 32-bit protocol: __BOOT_CS/__BOOT_DS flat, ESI = boot_params, EBP = EDI = EBX = 0.
    s = entry.protected_mode_state(memory, entry.GDT_LINUX32, load_addr)
    s.rsi = layout.ZERO_PAGE_ADDR
    return s


def _claim_decompression_area(plan: LoadPlan, hdr: SetupHeader, load_addr: int, size: int) -> None:
    """Keep the initrd out of the RAM the kernel decompresses itself into (protocol 2.10+).

    The decompressor runs at pref_address, or for a relocatable kernel at the load address
    rounded up to kernel_alignment if that is higher, and needs init_size bytes there.
    """
    if not hdr.init_size:
        return
    start = hdr.pref_address
    if hdr.relocatable and hdr.kernel_alignment:
        start = max(start, align_up(load_addr, hdr.kernel_alignment))
    end = start + hdr.init_size
    load_end = load_addr + size
    what = f"kernel decompression area (pref_address {hdr.pref_address:#x}, init_size {hdr.init_size:#x})"
    if start < load_addr:
        plan.claim(what, start, min(end, load_addr) - start)
    if end > load_end:
        lo = max(start, load_end)
        plan.claim(what, lo, end - lo)
