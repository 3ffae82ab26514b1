"""Unicorn (software emulation) backend."""

from emu.backends.unicorn.backend import UnicornBackend

__all__ = ["UnicornBackend"]
