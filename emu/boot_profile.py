"""The boot timeline (`emu run --boot-profile FILE`): a run's milestones with host time, guest
time and guest code executed, as JSON and as an SVG a person reads at a glance.

Milestones: the machine built, the first instruction (or, for a direct boot, the kernel entry),
the MBR loaded and entered (emu's BIOS), each CPU mode change, the first byte on each console, each
boot-timer write, each --expect marker, the end. Mode changes are seen when the vCPU next stops
for the machine (an I/O exit, a timer, at most about 1 ms under Unicorn), so their times are upper
bounds. Guest code is the bytes of the translation blocks Unicorn started (it counts no
instructions); KVM counts nothing, and its guest time is host time.
"""

from __future__ import annotations

import html
import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from emu.timers import ProcessStart

SCHEMA = "emu-boot-profile/1"
SHOWN_REPEATS = 3  # mode changes of one kind the SVG draws (the JSON has all)


@dataclass(frozen=True)
class Milestone:
    name: str
    detail: str
    host_ms: float  # since the process started
    guest_ms: float | None  # the machine's clock since the machine was built (None: before that)
    guest_code_bytes: int | None  # guest code executed so far (None: the backend cannot count it)


class BootProfile:
    """Collects milestones from any thread; `clock`/`code` are set once the machine exists."""

    def __init__(self, started: ProcessStart) -> None:
        self._started = started
        self._lock = threading.Lock()
        self.milestones: list[Milestone] = []
        self._seen: set[str] = set()
        self.clock_ns: Any = None  # () -> int: the machine's guest time
        self.code_bytes: Any = None  # () -> int | None: guest code executed
        self._guest_zero = 0
        self.backend = ""

    def attach(self, clock_ns: Any, code_bytes: Any, backend: str) -> None:
        self.clock_ns, self.code_bytes, self.backend = clock_ns, code_bytes, backend
        self._guest_zero = clock_ns()

    def mark(self, name: str, detail: str = "", *, once: bool = False) -> None:
        host_ms = (time.monotonic_ns() - self._started.wall_ns) / 1e6
        guest_ms = (self.clock_ns() - self._guest_zero) / 1e6 if self.clock_ns is not None else None
        code = self.code_bytes() if self.code_bytes is not None else None
        with self._lock:
            if once and name in self._seen:
                return
            self._seen.add(name)
            self.milestones.append(Milestone(name, detail, round(host_ms, 3),
                                             None if guest_ms is None else round(guest_ms, 3), code))  # fmt: skip

    # -- output ---------------------------------------------------------------------------------
    def to_json(self) -> str:
        doc = {"schema": SCHEMA, "backend": self.backend, "milestones": [asdict(m) for m in self.milestones]}
        return json.dumps(doc, indent=2) + "\n"

    def table(self) -> str:
        rows = [f"{'host ms':>10} {'guest ms':>10} {'guest code':>12}  milestone"]
        for m in self.milestones:
            guest = f"{m.guest_ms:10.1f}" if m.guest_ms is not None else f"{'-':>10}"
            code = f"{m.guest_code_bytes:12d}" if m.guest_code_bytes is not None else f"{'-':>12}"
            rows.append(f"{m.host_ms:10.1f} {guest} {code}  {m.name}{': ' + m.detail if m.detail else ''}")
        return "\n".join(rows)

    def _shown(self) -> tuple[list[Milestone], int]:
        """The milestones the SVG draws: every one but the repeats of a mode change beyond the
        first SHOWN_REPEATS of its kind (a loader that goes back and forth per disk read), and
        how many were left out."""
        counts: dict[str, int] = {}
        shown = []
        for m in self.milestones:
            kind = m.name + ": " + m.detail.split(" (")[0] if m.name == "mode change" else m.name + m.detail
            counts[kind] = counts.get(kind, 0) + 1
            if counts[kind] <= SHOWN_REPEATS:
                shown.append(m)
        return shown, len(self.milestones) - len(shown)

    def to_svg(self) -> str:
        """A timeline: one row per milestone, a bar from 0 to its host time, labelled."""
        ms, hidden = self._shown()
        if hidden:
            last = self.milestones[-1]
            ms = [*ms[:-1], Milestone(f"(+{hidden} more mode changes: the JSON has them)", "", 0.0, None, None), last]
        end = max((m.host_ms for m in ms), default=1.0) or 1.0
        row, left, width = 22, 330, 560
        height = row * (len(ms) + 2) + 10
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 90}" height="{height}" '
               'font-family="monospace" font-size="12">',
               f'<text x="8" y="16" font-weight="bold">emu boot timeline ({html.escape(self.backend)}), '
               f'host time from process start, 0 to {end:.0f} ms</text>']  # fmt: skip
        for i, m in enumerate(ms):
            y = row * (i + 1) + 14
            w = max(1.0, width * m.host_ms / end)
            label = html.escape(m.name + (f": {m.detail}" if m.detail else ""))[:48]
            out.append(f'<text x="8" y="{y + 12}">{label}</text>')
            out.append(f'<rect x="{left}" y="{y + 2}" width="{w:.1f}" height="12" fill="#4a90d9"/>')
            out.append(f'<text x="{left + w + 4:.1f}" y="{y + 12}">{m.host_ms:.1f} ms</text>')
        out.append("</svg>")
        return "\n".join(out) + "\n"

    def write(self, path: Path) -> Path:
        """The JSON at `path` and the SVG beside it (`path` with .svg); the SVG's path."""
        path.write_text(self.to_json())
        svg = path.with_suffix(".svg")
        svg.write_text(self.to_svg())
        return svg
