"""Real bootloaders from Debian (emu.tools.bootloaders) booting Linux from a disk through emu's BIOS.

Each disk image holds syslinux 6.04 or GRUB 2.06 (i386-pc) and a FAT partition with Debian's
cloud kernel and the busybox initramfs. `emu run --disk IMG` under Unicorn must show the
bootloader's banner, then the kernel's own log must prove the hand-over: the command line the
bootloader composed (BOOT_IMAGE=, and an `emu-boot=` word only that bootloader's config has) and
a RAMDISK exactly the size of the initramfs, after which /init runs and powers off (exit 0).
Nothing is given to emu but the disk: no --kernel, no --initrd.
"""

from __future__ import annotations

import re
import struct

import pytest
from guests.cli import emu_run

from emu.tools.bootloaders import (
    GRUB_BANNER,
    GRUB_LOADING,
    GRUB_WELCOME,
    INITRD_FILE,
    KERNEL_BANNER,
    KERNEL_FILE,
    PARTITION_LBA,
    SECTOR,
    SYSLINUX_BANNER,
    Boot,
    BootloaderImages,
    ensure_bootloader_images,
)
from emu.tools.guests import MARKER_DONE, MARKER_START, GuestUnavailable

FAILURE_SIGNS = ("EMU-INIT-WARN", "segfault", "Kernel panic", "Oops", "BUG:", "general protection fault")
PAGE = 4096


@pytest.fixture(scope="module")
def images() -> BootloaderImages:
    try:
        return ensure_bootloader_images()
    except GuestUnavailable as e:
        pytest.skip(f"bootloader images unavailable: {e.reason}")


def banners(boot: Boot) -> list[str]:
    """What the bootloader itself prints, in order, before the kernel speaks."""
    if boot is Boot.SYSLINUX:
        return [SYSLINUX_BANNER, f"Loading /{KERNEL_FILE}", f"Loading /{INITRD_FILE}"]
    linux = "linux16" if boot is Boot.GRUB_LINUX16 else "linux"
    return [GRUB_LOADING, GRUB_WELCOME, f"{GRUB_BANNER} GRUB 2.06 i386-pc: {linux} /{KERNEL_FILE}"]


@pytest.mark.parametrize("boot", list(Boot), ids=[b.value for b in Boot])
def test_bootloader_boots_linux_to_init(images: BootloaderImages, boot: Boot) -> None:
    disk = f"{images[boot]},ro"
    p = emu_run("--backend", "unicorn", "--disk", disk, "--mem", "256", "--no-reboot", "--timeout", "60", timeout=120)
    out = p.stdout
    assert p.returncode == 0, f"exit {p.returncode}: {p.stderr.strip()}\n{out[-3000:]}"

    # The bootloader's own output comes first, in order, then the kernel's.
    at = 0
    for text in [*banners(boot), f"{KERNEL_BANNER} {images.guest.version}", "Run /init as init process",
                 MARKER_START, MARKER_DONE]:  # fmt: skip
        found = out.find(text, at)
        assert found >= 0, f"{text!r} missing (or out of order) in:\n{out[:3000]}"
        at = found + len(text)

    # The hand-over: the kernel got the command line this bootloader's config composed...
    m = re.search(r"\] Command line: (.*)", out)
    assert m is not None, out[:3000]
    words = m.group(1).split()
    assert words[0] == f"BOOT_IMAGE=/{KERNEL_FILE}", m.group(1)
    assert f"emu-boot={boot.value}" in words and "console=ttyS0" in words, m.group(1)
    # ...and the initramfs the bootloader read from the FAT partition, whole.
    m = re.search(r"RAMDISK: \[mem (0x[0-9a-f]+)-(0x[0-9a-f]+)\]", out)
    assert m is not None, out[:3000]
    size = int(m.group(2), 16) + 1 - int(m.group(1), 16)
    assert size == -(-images.guest.initramfs.stat().st_size // PAGE) * PAGE, m.group(0)

    bad = [line for line in out.splitlines() if any(s in line for s in FAILURE_SIGNS)]
    assert not bad, "\n".join(bad)
    assert "halted" in p.stderr


def test_images_are_laid_out_as_installers_leave_them(images: BootloaderImages) -> None:
    for boot in Boot:
        with open(images[boot], "rb") as f:
            mbr = f.read(SECTOR)
            f.seek(SECTOR)
            lba1 = f.read(SECTOR)
            f.seek(PARTITION_LBA * SECTOR)
            vbr = f.read(SECTOR)
        assert mbr[510:] == b"\x55\xaa"
        status, ptype, start, count = struct.unpack_from("<B3xB3xII", mbr, 0x1BE)
        assert (status, ptype, start) == (0x80, 0x0E, PARTITION_LBA), boot
        assert (PARTITION_LBA + count) * SECTOR == images[boot].stat().st_size
        assert mbr[0x1CE:0x1FE] == bytes(48), "one partition only"
        # The FAT16 boot sector: its hidden sectors are the partition's LBA (syslinux relies on it).
        assert vbr[0x36:0x3E] == b"FAT16   " and struct.unpack_from("<I", vbr, 0x1C)[0] == PARTITION_LBA
        if boot is Boot.SYSLINUX:
            assert b"SYSLINUX" in vbr, "syslinux --install patched the partition's boot sector"
        else:
            # boot.img reads core.img from LBA 1 with the boot drive from DL; diskboot.img's
            # blocklist loads the rest from LBA 2 at 0820:0000 (as grub-bios-setup leaves it).
            assert struct.unpack_from("<QB", mbr, 0x5C) == (1, 0xFF)
            assert mbr[0x66:0x68] == b"\x90\x90"
            start, sectors, segment = struct.unpack_from("<QHH", lba1, SECTOR - 12)
            assert (start, segment) == (2, 0x820) and 2 + sectors <= PARTITION_LBA
