"""The 8-bit checksum of firmware tables (ACPI, MP, EDD device path): everything sums to 0 mod 256."""

from __future__ import annotations


def checksum(data: bytes) -> int:
    """The byte that makes `data` (with that byte counted as zero) sum to 0 mod 256."""
    return -sum(data) & 0xFF
