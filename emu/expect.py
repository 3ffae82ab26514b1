"""--expect: serial markers a CI run requires, found as the output streams past."""

from __future__ import annotations

import threading
from collections.abc import Callable

from emu.errors import ExitStatus


class ExpectWatch:
    """A serial sink that looks for each marker (text, in order of arrival, any order between
    markers) and calls `on_all_seen` once every one has appeared. Thread-safe: the vCPU thread
    feeds it while the main thread may read `missing`."""

    def __init__(self, markers: list[str], on_all_seen: Callable[[], None] | None = None,
                 on_marker: Callable[[str], None] | None = None) -> None:  # fmt: skip
        self._markers = [m.encode() for m in markers]
        self._missing = list(self._markers)
        self._keep = max((len(m) for m in self._markers), default=1) - 1  # a marker may span writes
        self._tail = b""
        self._lock = threading.Lock()
        self._on_all_seen = on_all_seen
        self.on_marker = on_marker  # each marker as it is first seen (the boot profile)
        self.all_seen = threading.Event()
        if not self._missing:
            self.all_seen.set()

    def __call__(self, data: bytes) -> None:
        with self._lock:
            if not self._missing:
                return
            window = self._tail + data
            seen = [m for m in self._missing if m in window]
            self._missing = [m for m in self._missing if m not in seen]
            self._tail = window[-self._keep :] if self._keep else b""
            done = not self._missing
        if self.on_marker is not None:
            for m in seen:
                self.on_marker(m.decode(errors="replace"))
        if done and not self.all_seen.is_set():
            self.all_seen.set()
            if self._on_all_seen is not None:
                self._on_all_seen()

    @property
    def missing(self) -> list[str]:
        with self._lock:
            return [m.decode(errors="replace") for m in self._missing]


def apply_expectations(status: int, reason: str, missing: list[str], expect_timed_out: bool) -> tuple[int, str]:
    """The run's final status and reason once the markers are accounted for: a run that ended
    well (status 0) or by --expect-timeout with a marker missing ends with EXPECT_MISSING; any
    other ending keeps its status, and its reason names what was missing."""
    if not missing:
        return status, reason
    names = ", ".join(repr(m) for m in missing)
    what = f"required serial output never appeared: {names}"
    if expect_timed_out:
        return ExitStatus.EXPECT_MISSING, f"{what} (--expect-timeout expired)"
    if status == ExitStatus.OK:
        return ExitStatus.EXPECT_MISSING, f"{what} ({reason})"
    return status, f"{reason}; {what}"
