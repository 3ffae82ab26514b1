"""Direct kernel boot (`--kernel`): detect the kind of kernel, load it, return its entry state.

Detection order for `--boot auto` (the same as QEMU's -kernel):
  1. bzImage: "HdrS" at 0x202 and boot flag 0xAA55 at 0x1FE. Fixed offsets, and a bzImage is
     never an ELF, so nothing else can be mistaken for one.
  2. multiboot v1: a header with a valid checksum in the first 8 KiB. The header is an explicit
     request for this protocol; a multiboot kernel that happens to be an ELF (with or without a
     PVH note, as Xen's own image) is entered the way it asked to be.
  3. PVH: an ELF with the XEN_ELFNOTE_PHYS32_ENTRY note. Firecracker prefers it over the
     vmlinux entry for an ELF that has it, and so does emu.
  4. a 64-bit x86-64 ELF: Linux's vmlinux, entered in long mode at e_entry.
`--boot elf|pvh|multiboot|bzimage` forces one protocol (e.g. `elf` for a vmlinux with a PVH note).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

from emu import layout
from emu.config import BootKind
from emu.cpu.state import CpuState
from emu.errors import EmuError, GuestMemoryError
from emu.firmware.boot import bzimage, multiboot, pvh, vmlinux, zeropage
from emu.firmware.boot import elf as elfmod
from emu.firmware.boot.flat import read_image
from emu.firmware.boot.inputs import BootFile, KernelInputs
from emu.firmware.tables.mptable import PciRoute, write_mptable
from emu.memory import GuestMemory


def detect(data: bytes, what: str = "kernel") -> BootKind:
    """The protocol `--boot auto` picks for this file; EmuError when there is none."""
    if bzimage.is_bzimage(data):
        return BootKind.BZIMAGE
    if multiboot.find_header(data) is not None:
        return BootKind.MULTIBOOT
    if elfmod.is_elf(data):
        kernel = elfmod.parse(data, what)
        if kernel.pvh_entry is not None and kernel.is_x86:
            return BootKind.PVH
        if kernel.is_x86_64:
            return BootKind.ELF
        if kernel.is_x86:
            raise EmuError(
                f"{what}: a {kernel.arch} ELF without a PVH note or multiboot header; emu enters an ELF "
                f"kernel through PVH, multiboot, or Linux's 64-bit entry (x86-64 ELF64 only)"
            )
        raise EmuError(f"{what}: a {kernel.arch} ELF, not an x86 kernel")
    if multiboot.has_bad_header(data):
        raise EmuError(f"{what}: has a multiboot magic in its first 8 KiB but no header with a valid checksum")
    if multiboot.has_multiboot2_header(data):
        raise EmuError(f"{what}: a multiboot2 kernel; emu supports multiboot v1 only")
    raise EmuError(
        f"{what}: not a kernel emu can boot (no bzImage header, no multiboot header in the first "
        f"8 KiB, not an ELF file)"
    )


def read_inputs(kernel: Path, initrd: Path | None, modules: Sequence[Path], cmdline: str) -> KernelInputs:
    """Read --kernel, --initrd and every --module (once: a reboot loads them again from memory)."""
    return KernelInputs(
        kernel=BootFile(kernel, read_image(kernel, "kernel")),
        initrd=BootFile(initrd, read_image(initrd, "initrd")) if initrd is not None else None,
        modules=[BootFile(p, read_image(p, "module")) for p in modules],
        cmdline=cmdline,
    )


def load_kernel(
    memory: GuestMemory,
    inp: KernelInputs,
    boot: BootKind,
    rsdp: int = 0,
    pci: Sequence[PciRoute] = (),
    cpus: int = 1,
) -> CpuState:
    """Write the kernel, initrd and modules into guest RAM with the MP table (listing the `pci`
    slots' interrupt wiring), entered by protocol `boot` (AUTO: detected); return the entry state.

    `rsdp` (ACPI tables already written) goes where the protocol carries it: boot_params.
    acpi_rsdp_addr for bzImage and vmlinux, hvm_start_info.rsdp_paddr for PVH; multiboot has no
    field, so such a kernel finds it by scanning 0xE0000-0xFFFFF, where emu puts it."""
    state, kind = _load(memory, inp, boot)
    write_mptable(memory, cpus, pci=pci)
    if rsdp:
        if kind in (BootKind.BZIMAGE, BootKind.ELF):
            memory.write(layout.ZERO_PAGE_ADDR + zeropage.ACPI_RSDP_ADDR, struct.pack("<Q", rsdp))
        elif kind is BootKind.PVH:
            memory.write(layout.BOOT_INFO_ADDR + pvh.START_INFO_RSDP, struct.pack("<Q", rsdp))
    return state


def _load(memory: GuestMemory, inp: KernelInputs, boot: BootKind) -> tuple[CpuState, BootKind]:
    data, what = inp.kernel.data, inp.what
    kind = detect(data, what) if boot is BootKind.AUTO else boot
    if inp.modules and kind not in (BootKind.MULTIBOOT, BootKind.PVH):
        raise EmuError(f"--module applies to multiboot and PVH kernels; {what} is booted as {kind.value}")
    try:
        if kind is BootKind.BZIMAGE:
            return bzimage.load(memory, inp), kind
        if kind is BootKind.MULTIBOOT:
            hdr = multiboot.find_header(data)
            if hdr is None:
                raise EmuError(f"{what}: no multiboot header with a valid checksum in the first 8 KiB")
            return multiboot.load(memory, inp, hdr), kind
        if not elfmod.is_elf(data):
            raise EmuError(f"{what}: not an ELF file, so it cannot be booted as {kind.value}")
        kernel = elfmod.parse(data, what)
        if kind is BootKind.PVH:
            return pvh.load(memory, inp, kernel), kind
        return vmlinux.load(memory, inp, kernel), kind
    except GuestMemoryError as e:  # the checks above should make this unreachable; never a traceback
        raise EmuError(f"{what}: {e}") from None
