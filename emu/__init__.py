"""emu: a full-system x86 PC emulator and VMM for debugging early boot."""

__version__ = "0.1.0"
