"""Disk images that boot Linux through real bootloaders from Debian, cached in .cache/guests/bootloaders/.

Each image is what an installer would leave on a PC's disk, built without root or loop mounts:
sector 0 holds the bootloader's MBR code and a partition table with one FAT16 partition at LBA
2048 (1 MiB), which holds Debian's cloud kernel as /vmlinuz and the busybox initramfs as
/initrd.img (emu.tools.guests). The packages come from `apt-get download` + `dpkg-deb -x`; the
FAT partition is written by mtools (the host's, or extracted from Debian's mtools package).

- syslinux.img: syslinux 6.04 (syslinux, syslinux-common): mbr.bin in sector 0, the partition set
  up with `syslinux --install` (which drives mtools on the image file) and a syslinux.cfg that
  turns on the serial console and boots the kernel at once.
- grub-linux.img, grub-linux16.img: GRUB 2.06 i386-pc (grub-pc-bin, grub-common): boot.img in
  sector 0 and a core.img from grub-mkimage in the gap before the partition, patched the way
  grub-bios-setup does for an embedded core. core.img carries its config: serial console, one
  echo line, then `linux` (32-bit boot protocol) or `linux16` (the kernel's real-mode setup).

The kernel command line names the path (`emu-boot=syslinux`, ...), so a test can tell from the
kernel's own "Command line:" log which bootloader and entry handed over. `ensure_bootloader_images()`
builds what is missing and returns the paths; once built, a call only stats files against stamps.
Run `scripts/fetch-bootloaders` (or `python -m emu.tools.bootloaders`) to build ahead of time; it
exits 0 when the images are ready and 1, with one line on stderr, when they cannot be fetched or
built.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from emu.errors import HostError
from emu.tools import debcache
from emu.tools.guests import ASSET_FORMAT, CACHE_DIR, LinuxGuest, ensure_linux_guest

SYSLINUX_PACKAGES = ("syslinux", "syslinux-common")
GRUB_PACKAGES = ("grub-pc-bin", "grub-common")
MTOOLS_PACKAGE = "mtools"
# mformat/mcopy write the partition; `syslinux --install` runs mattrib, mcopy and mmove itself.
MTOOLS_COMMANDS = ("mformat", "mcopy", "mattrib", "mmove")

KERNEL_CMDLINE = "console=ttyS0 panic=-1"
KERNEL_FILE = "vmlinuz"
INITRD_FILE = "initrd.img"

# Console text a user (and the tests) look for.
SYSLINUX_BANNER = "SYSLINUX 6.04"
GRUB_LOADING = "GRUB loading"  # boot.img + diskboot.img, through int 10h
GRUB_WELCOME = "Welcome to GRUB!"  # GRUB's kernel, through its int 10h console
GRUB_BANNER = "EMU-GRUB"  # the echo line of the embedded config, on the serial port
KERNEL_BANNER = "Linux version"

SECTOR = 512
PARTITION_LBA = 2048  # 1 MiB, as fdisk aligns it; GRUB's core.img lives in the sectors before
MIN_PARTITION_MIB = 32
SLACK_MIB = 4
CLUSTER_SECTORS = 4  # 2 KiB clusters: >= 16 Ki clusters in 32 MiB, so mformat makes FAT16
FAT16_LBA = 0x0E  # partition type: FAT16 addressed by LBA
BOOTABLE = 0x80
# CHS in the partition table and the BPB use the geometry emu and SeaBIOS report for a disk this
# small (16 heads, 63 sectors per track), so a bootloader that trusts CHS lands on the same sector.
HEADS = 16
SECTORS_PER_TRACK = 63
VOLUME_LABEL = "EMUBOOT"

# grub-bios-setup's patches (grub-core/boot/i386/pc/boot.S, include/grub/i386/pc/boot.h).
GRUB_KERNEL_SECTOR = 0x5C  # u64: LBA of core.img's first sector (diskboot.img)
GRUB_BOOT_DRIVE = 0x64  # u8: 0xFF = the drive the BIOS booted from (DL)
GRUB_DRIVE_CHECK = 0x66  # a `jmp` that grub-bios-setup turns into two `nop`s on hard disks
GRUB_BLOCKLIST = SECTOR - 12  # diskboot.img's first blocklist: u64 start, u16 sectors, u16 segment
GRUB_CORE_SEGMENT = 0x820  # where diskboot.img loads the rest of core.img (0x800 + one sector)
GRUB_MODULES = ("biosdisk", "part_msdos", "fat", "linux", "linux16", "serial", "terminal", "echo", "boot")
MBR_CODE_END = 440  # boot code ends where the disk signature (0x1B8) starts
DISK_SIGNATURE = 0x1B8
PARTITION_TABLE = 0x1BE

# Bump to rebuild every image (e.g. after a change to the layout or a config).
IMAGE_FORMAT = 1


class Boot(Enum):
    """The bootloader paths, each one disk image."""

    SYSLINUX = "syslinux"
    GRUB_LINUX = "grub-linux"
    GRUB_LINUX16 = "grub-linux16"

    @property
    def image_name(self) -> str:
        return f"{self.value}.img"

    @property
    def cmdline(self) -> str:
        return f"{KERNEL_CMDLINE} emu-boot={self.value}"

    @property
    def signature(self) -> int:
        """The MBR's disk signature: "EMU" and the image's number, so each disk is told apart."""
        return 0x454D5530 + list(Boot).index(self)


@dataclass(frozen=True)
class BootloaderImages:
    images: dict[Boot, Path]
    syslinux_version: str  # Debian package versions, e.g. "3:6.04~git20190206.bf6db5b4+dfsg1-3"
    grub_version: str  # e.g. "2.06-13+deb12u2"
    guest: LinuxGuest

    def __getitem__(self, boot: Boot) -> Path:
        return self.images[boot]


def syslinux_config() -> str:
    # SERIAL first: syslinux only guarantees it when it is the first directive.
    return "\n".join([
        "SERIAL 0 115200", "DEFAULT linux", "PROMPT 0", "TIMEOUT 0", "LABEL linux",
        f"  KERNEL /{KERNEL_FILE}", f"  INITRD /{INITRD_FILE}", f"  APPEND {Boot.SYSLINUX.cmdline}", "",
    ])  # fmt: skip


def grub_config(boot: Boot, grub_version: str) -> str:
    """core.img's embedded config, run by GRUB's kernel before it would look for normal.mod."""
    linux, initrd = ("linux16", "initrd16") if boot is Boot.GRUB_LINUX16 else ("linux", "initrd")
    return "\n".join([
        "serial --unit=0 --speed=115200", "terminal_input serial", "terminal_output serial",
        f"echo {GRUB_BANNER} GRUB {grub_version} i386-pc: {linux} /{KERNEL_FILE}",
        "set root=(hd0,msdos1)",
        f"{linux} /{KERNEL_FILE} {boot.cmdline}", f"{initrd} /{INITRD_FILE}", "boot", "",
    ])  # fmt: skip


# --------------------------------------------------------------------------------------------
# Disk layout


def chs(lba: int) -> bytes:
    """A partition-table CHS triple; addresses past cylinder 1023 saturate as fdisk writes them."""
    cylinder, rest = divmod(lba, HEADS * SECTORS_PER_TRACK)
    head, sector = divmod(rest, SECTORS_PER_TRACK)
    if cylinder > 1023:
        cylinder, head, sector = 1023, HEADS - 1, SECTORS_PER_TRACK - 1
    return bytes([head, ((cylinder >> 2) & 0xC0) | (sector + 1), cylinder & 0xFF])


def mbr_sector(code: bytes, partition_sectors: int, signature: int) -> bytes:
    """Sector 0: `code` (up to 440 bytes), a disk signature and one bootable FAT16 partition."""
    if len(code) > MBR_CODE_END:
        raise HostError(f"MBR code is {len(code)} bytes, more than {MBR_CODE_END}")
    sector = bytearray(SECTOR)
    sector[: len(code)] = code
    struct.pack_into("<I", sector, DISK_SIGNATURE, signature)
    last = PARTITION_LBA + partition_sectors - 1
    entry = struct.pack("<B3sB3sII", BOOTABLE, chs(PARTITION_LBA), FAT16_LBA, chs(last), PARTITION_LBA,
                        partition_sectors)  # fmt: skip
    sector[PARTITION_TABLE : PARTITION_TABLE + 16] = entry
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def grub_boot_sectors(boot_img: bytes, core_img: bytes) -> tuple[bytes, bytes]:
    """boot.img's first 440 bytes and core.img, patched for core.img at LBA 1 as grub-bios-setup
    embeds it: boot.img reads core.img's first sector (diskboot.img) from LBA 1, whose blocklist
    then loads the rest (LBA 2 on) at 0820:0000."""
    if len(boot_img) != SECTOR:
        raise HostError(f"boot.img is {len(boot_img)} bytes, expected {SECTOR}")
    core = bytearray(core_img) + bytes(-len(core_img) % SECTOR)
    sectors = len(core) // SECTOR
    if not 2 <= sectors <= PARTITION_LBA - 1:
        raise HostError(f"core.img is {sectors} sectors: it must fit between the MBR and LBA {PARTITION_LBA}")
    _, _, segment = struct.unpack_from("<QHH", core, GRUB_BLOCKLIST)
    if segment != GRUB_CORE_SEGMENT:
        raise HostError(f"core.img's blocklist loads at segment {segment:#x}, expected {GRUB_CORE_SEGMENT:#x}")
    struct.pack_into("<QHH", core, GRUB_BLOCKLIST, 2, sectors - 1, GRUB_CORE_SEGMENT)
    struct.pack_into("<QHH", core, GRUB_BLOCKLIST - 12, 0, 0, 0)  # terminator
    boot = bytearray(boot_img)
    struct.pack_into("<Q", boot, GRUB_KERNEL_SECTOR, 1)
    boot[GRUB_BOOT_DRIVE] = 0xFF
    boot[GRUB_DRIVE_CHECK : GRUB_DRIVE_CHECK + 2] = b"\x90\x90"
    return bytes(boot[:MBR_CODE_END]), bytes(core)


def write_disk(path: Path, sector0: bytes, gap: bytes, partition: Path) -> None:
    """sector 0, then `gap` (up to the partition), then the partition image; atomically."""
    if len(gap) > (PARTITION_LBA - 1) * SECTOR:
        raise HostError("the post-MBR gap overflows into the partition")
    tmp = debcache.temp_name(path)
    with open(tmp, "wb") as out, open(partition, "rb") as src:
        out.write(sector0)
        out.write(gap)
        out.seek(PARTITION_LBA * SECTOR)
        shutil.copyfileobj(src, out, 1 << 20)
    tmp.replace(path)


# --------------------------------------------------------------------------------------------
# Host tools from Debian packages


@dataclass(frozen=True)
class Tools:
    root: Path  # the unpacked packages
    env: dict[str, str]  # PATH with the packages' binaries first

    def run(self, *cmd: str | Path) -> None:
        try:
            p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=self.env)
        except OSError as e:
            raise HostError(f"cannot run {cmd[0]}: {e.strerror}") from None
        if p.returncode != 0:
            raise HostError(f"{cmd[0]} failed: {debcache.tail(p.stderr or p.stdout)}")


def _deb_version(deb: Path) -> str:
    p = debcache.run(["dpkg-deb", "--field", str(deb), "Version"])
    if p.returncode != 0 or not p.stdout.strip():
        raise HostError(f"dpkg-deb --field {deb.name} Version failed: {debcache.tail(p.stderr)}")
    return p.stdout.strip()


@contextmanager
def _tools(cache: Path, packages: tuple[str, ...]) -> Iterator[tuple[Tools, dict[str, str]]]:
    """The packages unpacked into a temporary root, and each package's version."""
    with debcache.download_dir("emu-bootloaders-") as tmp:
        root = tmp / "root"
        versions = {}
        for package in packages:
            deb = debcache.fetch_deb(package, cache / "debs", tmp)
            debcache.unpack(deb, root)  # first: it says so when dpkg-deb is missing
            versions[package] = _deb_version(deb)
        path = os.pathsep.join([str(root / "usr" / "bin"), str(root / "usr" / "sbin"), os.environ.get("PATH", "")])
        env = {**os.environ, "PATH": path, "LC_ALL": "C", "MTOOLS_SKIP_CHECK": "1"}
        yield Tools(root, env), versions


def _tool_packages() -> tuple[str, ...]:
    """mtools comes from Debian too unless the host has every command syslinux needs."""
    have_mtools = all(shutil.which(c) for c in MTOOLS_COMMANDS)
    return (*SYSLINUX_PACKAGES, *GRUB_PACKAGES, *(() if have_mtools else (MTOOLS_PACKAGE,)))


# --------------------------------------------------------------------------------------------
# The images


def partition_sectors(guest: LinuxGuest) -> int:
    payload = guest.bzimage.stat().st_size + guest.initramfs.stat().st_size
    mib = max(MIN_PARTITION_MIB, -(-payload // (1 << 20)) + SLACK_MIB)
    return mib * (1 << 20) // SECTOR


def fat_partition(tools: Tools, path: Path, sectors: int) -> None:
    """An empty FAT16 file system image of `sectors` sectors, for a partition at PARTITION_LBA."""
    path.unlink(missing_ok=True)
    tools.run("mformat", "-i", path, "-C", "-T", str(sectors), "-h", str(HEADS), "-s", str(SECTORS_PER_TRACK),
              "-H", str(PARTITION_LBA), "-c", str(CLUSTER_SECTORS), "-v", VOLUME_LABEL, "::")  # fmt: skip


def add_files(tools: Tools, path: Path, files: dict[str, Path]) -> None:
    """Copy `files` (name in the root directory -> host file) into the FAT image."""
    for name, src in files.items():
        tools.run("mcopy", "-i", path, src, f"::{name}")


def _build_syslinux(tools: Tools, guest: LinuxGuest, work: Path, out: Path) -> None:
    cfg = work / "syslinux.cfg"
    cfg.write_text(syslinux_config())
    part = work / "syslinux-part.img"
    fat_partition(tools, part, partition_sectors(guest))
    tools.run("syslinux", "--install", part)  # ldlinux.sys + ldlinux.c32, boot sector patched
    add_files(tools, part, {KERNEL_FILE: guest.bzimage, INITRD_FILE: guest.initramfs, "syslinux.cfg": cfg})
    mbr = (tools.root / "usr" / "lib" / "syslinux" / "mbr" / "mbr.bin").read_bytes()
    write_disk(out, mbr_sector(mbr, part.stat().st_size // SECTOR, Boot.SYSLINUX.signature), b"", part)


def _build_grub(tools: Tools, version: str, boot: Boot, part: Path, work: Path, out: Path) -> None:
    moddir = tools.root / "usr" / "lib" / "grub" / "i386-pc"
    cfg = work / f"{boot.value}.cfg"
    cfg.write_text(grub_config(boot, version))
    core = work / f"{boot.value}-core.img"
    tools.run("grub-mkimage", "-d", moddir, "-O", "i386-pc", "-o", core, "-c", cfg, "-p", "(hd0,msdos1)/boot/grub",
              *GRUB_MODULES)  # fmt: skip
    code, core_img = grub_boot_sectors((moddir / "boot.img").read_bytes(), core.read_bytes())
    write_disk(out, mbr_sector(code, part.stat().st_size // SECTOR, boot.signature), core_img, part)


def _ensure_images(cache: Path, guest: LinuxGuest, verbose: bool) -> tuple[str, str]:
    out_dir = cache / "bootloaders"
    stamp = out_dir / "stamp.json"
    outputs = [out_dir / b.image_name for b in Boot]
    inputs = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in (guest.bzimage, guest.initramfs)]
    packages = _tool_packages()
    parts = ("bootloaders", str(IMAGE_FORMAT), guest.version, *inputs, syslinux_config(), *packages)
    recipe = debcache.recipe_hash(ASSET_FORMAT, *parts)
    info = debcache.stamp_ok(stamp, recipe, outputs)
    if info is not None:
        return str(info["syslinux_version"]), str(info["grub_version"])
    out_dir.mkdir(parents=True, exist_ok=True)
    with _tools(cache, packages) as (tools, versions), tempfile.TemporaryDirectory() as workname:
        work = Path(workname)
        syslinux_version, grub_version = versions["syslinux"], versions["grub-pc-bin"]
        _build_syslinux(tools, guest, work, out_dir / Boot.SYSLINUX.image_name)
        _log(verbose, f"{Boot.SYSLINUX.image_name}: syslinux {syslinux_version}")
        part = work / "grub-part.img"
        fat_partition(tools, part, partition_sectors(guest))
        add_files(tools, part, {KERNEL_FILE: guest.bzimage, INITRD_FILE: guest.initramfs})
        for boot in (Boot.GRUB_LINUX, Boot.GRUB_LINUX16):
            _build_grub(tools, grub_version.split("-")[0], boot, part, work, out_dir / boot.image_name)
            _log(verbose, f"{boot.image_name}: GRUB {grub_version}")
    debcache.write_stamp(stamp, recipe, outputs, syslinux_version=syslinux_version, grub_version=grub_version)
    return syslinux_version, grub_version


def _log(verbose: bool, msg: str) -> None:
    debcache.log("fetch-bootloaders", verbose, msg)


def ensure_bootloader_images(cache_dir: Path | None = None, *, verbose: bool = False) -> BootloaderImages:
    """The three disk images (and the Linux guest they boot), built into the cache on first use.

    Raises GuestUnavailable when the host cannot fetch the packages, HostError when a tool fails.
    """
    cache = cache_dir or CACHE_DIR
    guest = ensure_linux_guest(cache, verbose=verbose)
    with debcache.locked(cache / "bootloaders"):
        syslinux_version, grub_version = _ensure_images(cache, guest, verbose)
    images = {b: cache / "bootloaders" / b.image_name for b in Boot}
    return BootloaderImages(images, syslinux_version, grub_version, guest)


def _report(built: BootloaderImages) -> None:
    print(f"syslinux {built.syslinux_version}, GRUB {built.grub_version}, kernel {built.guest.version}")
    for boot, path in built.images.items():
        print(f"{boot.value}: {path}")


def main(argv: list[str] | None = None) -> int:
    return debcache.cli_main("fetch-bootloaders", __doc__, argv, CACHE_DIR, ensure_bootloader_images, _report)


if __name__ == "__main__":
    sys.exit(main())
