"""emu's PC BIOS: roms/bios.asm traps each service to the Python code in this package."""

from emu.firmware.bios.firmware import BIOS_ROM, Bios, BiosHost

__all__ = ["BIOS_ROM", "Bios", "BiosHost"]
