"""Firecracker's front door: its VM description, its API and its command line, over emu's machine."""
