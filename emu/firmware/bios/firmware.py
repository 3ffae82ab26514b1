"""The Python half of emu's BIOS: POST, boot and the service dispatcher behind the BIOS call port."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from emu import layout
from emu.bus import Bus
from emu.config import DiskSpec
from emu.errors import EmuError, GuestMemoryError
from emu.firmware.bios import bda
from emu.firmware.bios.clock import Clock
from emu.firmware.bios.disk import SECTOR, Disk
from emu.firmware.bios.disk_services import DiskServices
from emu.firmware.bios.keyboard import Keyboard
from emu.firmware.bios.pci_bios import PCI_FUNCTION_ID, PciBios
from emu.firmware.bios.regs import Regs
from emu.firmware.bios.system import SystemServices
from emu.firmware.bios.video import ConsoleEcho, Video
from emu.memory import GuestMemory

log = logging.getLogger("emu.bios")

BIOS_ROM = "bios.bin"  # in roms/: the image emu boots disks with
SVC_POST = 0x00  # roms/bios.asm: services that are not interrupt vectors have no caller frame
SVC_BOOT_FAILED = 0x18
SVC_BOOT = 0x19
BOOT_SIGNATURE = b"\x55\xaa"
EBDA_KIB = (layout.REAL_MODE_END - layout.EBDA_START) >> 10
NO_BOOTABLE_DISK = "no bootable disk"

# Equipment word (int 11h): x87 present, 80x25 colour, one serial port; floppy bits added.
EQUIPMENT_FPU = 0x0002
EQUIPMENT_VIDEO_80X25 = 0x0020
EQUIPMENT_ONE_SERIAL = 0x0200


@dataclass
class BiosHost:
    """What the BIOS needs from the machine, as plain callables."""

    console: list[Callable[[bytes], object]]  # emu's console: the sinks the serial output goes to
    serial_used: Callable[[], bool]  # has the guest transmitted anything on COM1 yet?
    set_a20: Callable[[bool], None]
    a20: Callable[[], bool]
    invalidate_code: Callable[[int, int], None]
    milestone: Callable[[str, str], None] | None = None  # the boot profile's (emu/boot_profile.py)


def number_disks(specs: list[DiskSpec]) -> list[tuple[DiskSpec, int]]:
    """BIOS drive numbers in command-line order: floppies 00h, 01h; hard disks 80h, 81h..."""
    floppies, hard = 0, 0
    out = []
    for spec in specs:
        if spec.floppy:
            out.append((spec, floppies))
            floppies += 1
        else:
            out.append((spec, 0x80 + hard))
            hard += 1
    return out


class Bios:
    """Services for roms/bios.asm: register on the bus, then reset() with the machine."""

    def __init__(self, mem: GuestMemory, bus: Bus, disks: list[DiskSpec], snapshot: bool, host: BiosHost) -> None:
        self.mem = mem
        self.host = host
        self.echo = ConsoleEcho(self._to_console, host.serial_used)
        self.disks: list[Disk] = []
        try:
            for spec, number in number_disks(disks):
                self.disks.append(Disk(spec, number, snapshot))
        except EmuError:
            self.close()
            raise
        if self.disks and not any(self._bootable(d) for d in self.disks):
            names = ", ".join(str(d.spec.path) for d in self.disks)
            self.close()
            raise EmuError(f"{NO_BOOTABLE_DISK}: sector 0 of {names} does not end with the boot signature 55 AA")
        self.video = Video(mem, self.echo)
        self.disk_services = DiskServices(mem, self.disks, host.invalidate_code)
        self.system = SystemServices(mem, host.set_a20, host.a20)
        self.keyboard = Keyboard(mem, bus)
        self.clock = Clock(mem, bus)
        self.pci = PciBios(bus)
        self.calls = 0
        self._services: dict[int, Callable[[Regs], None]] = {
            0x10: self.video.service, 0x11: self.system.equipment, 0x12: self.system.memory_size,
            0x13: self.disk_services.service, 0x15: self.system.service, 0x16: self.keyboard.service,
            0x1A: self._int1a,
        }  # fmt: skip

    def _int1a(self, r: Regs) -> None:
        (self.pci.service if r.ah == PCI_FUNCTION_ID else self.clock.service)(r)

    def _to_console(self, data: bytes) -> None:
        for sink in self.host.console:
            sink(data)

    def register(self, bus: Bus) -> None:
        bus.register_pio(layout.PORT_BIOS_CALL, 1, self, "BIOS call")

    def reset(self) -> None:
        self.echo.reset()
        self.system.reset()

    def close(self) -> None:
        for d in self.disks:
            d.close()
        self.echo.close()

    # -- port -----------------------------------------------------------------------------------
    def io_read(self, offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def io_write(self, offset: int, size: int, value: int) -> None:
        service = value & 0xFF
        self.calls += 1
        try:
            if service == SVC_POST:
                self._post()
            elif service == SVC_BOOT:
                self._boot()
            elif service == SVC_BOOT_FAILED:
                self._boot_failed()
            else:
                handler = self._services.get(service)
                if handler is None:
                    log.debug("BIOS call port: unknown service %#x ignored", service)
                    return
                r = Regs.load(self.mem)
                handler(r)
                r.store(self.mem)
        except GuestMemoryError as e:  # the caller's stack is not in RAM: nothing to answer
            log.debug("BIOS service %#x: %s", service, e)

    # -- POST and boot --------------------------------------------------------------------------
    def _post(self) -> None:
        m = self.mem
        m.fill(layout.BDA_START, bda.BDA_SIZE)
        m.write_u16(bda.COM1_BASE, layout.PORT_COM1)
        equipment = EQUIPMENT_FPU | EQUIPMENT_VIDEO_80X25 | EQUIPMENT_ONE_SERIAL
        floppies = self.disk_services.floppies
        if floppies:
            equipment |= 0x0001 | ((floppies - 1) << 6)
        m.write_u16(bda.EQUIPMENT, equipment)
        m.write_u16(bda.BASE_MEMORY_KIB, layout.EBDA_START >> 10)
        m.write_u16(bda.EBDA_SEGMENT, layout.EBDA_START >> 4)
        m.fill(layout.EBDA_START, layout.REAL_MODE_END - layout.EBDA_START)
        m.write_u8(layout.EBDA_START, EBDA_KIB)  # the EBDA's first byte: its size in KiB
        m.write_u8(bda.HARD_DISKS, self.disk_services.hard_disks)
        self.keyboard.post()
        self.clock.post()
        self.video.post()

    @staticmethod
    def _bootable(disk: Disk) -> bool:
        return disk.read(0, 1)[510:512] == BOOT_SIGNATURE

    def _boot(self) -> None:
        """Load sector 0 of the first bootable disk at 0000:7C00; AL = 0 and DL = the drive, or
        AL = 1 when no disk is bootable."""
        r = Regs.load(self.mem, with_frame=False)
        r.al = 1
        for disk in self.disks:
            sector = disk.read(0, 1)
            if sector[510:512] == BOOT_SIGNATURE:
                self.mem.write(layout.BOOT_SECTOR, sector)
                self.host.invalidate_code(layout.BOOT_SECTOR, SECTOR)
                log.info("booting from drive %#04x (%s)", disk.number, disk.spec.path)
                if self.host.milestone is not None:  # the ROM jumps to 0000:7C00 as this trap returns
                    self.host.milestone("MBR loaded and entered", f"drive {disk.number:#04x}, {disk.spec.path.name}")
                r.al = 0
                r.dl = disk.number
                break
        r.store(self.mem, with_frame=False)

    def _boot_failed(self) -> None:
        self.video.message(f"emu BIOS: {NO_BOOTABLE_DISK}\r\n")
