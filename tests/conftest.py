"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest

from emu.tools.guests import GuestUnavailable, LinuxGuest, ensure_linux_guest


@pytest.fixture(scope="session")
def guest() -> LinuxGuest:
    """The Debian kernel and busybox initramfs (fetched and built once, then cached)."""
    try:
        return ensure_linux_guest()
    except GuestUnavailable as e:
        pytest.skip(f"Linux guest unavailable: {e.reason}")
