"""`emu run --boot-profile`: a boot's milestones as JSON and an SVG timeline, as a user reads them
for OSv's MBR boot (its loader's trips between real and protected mode, the switch to long mode,
its first console byte, an --expect marker) and for a tiny guest under each backend."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from guests.backends import BACKEND_PARAMS, require
from guests.cli import emu_run

from emu.config import BackendName
from emu.tools.asm import assemble_file

OSV_RAW = Path(__file__).resolve().parents[2] / "shared" / "guests" / "osv" / "ramfs" / "usr.raw"
SNIPPETS = Path(__file__).parent / "guests" / "snippets"


def load(path: Path) -> list[dict[str, object]]:
    doc = json.loads(path.read_text())
    assert doc["schema"] == "emu-boot-profile/1"
    ET.parse(path.with_suffix(".svg"))  # the timeline is well-formed SVG
    return list(doc["milestones"])


def test_osv_mbr_boot_timeline(tmp_path: Path) -> None:
    if not OSV_RAW.is_file():
        pytest.skip(f"the OSv test guests are not beside this checkout ({OSV_RAW})")
    out = tmp_path / "boot.json"
    p = emu_run("-v", "--disk", f"{OSV_RAW},ro", "--no-reboot", "--boot-profile", str(out),
                "--expect", "Hello from C code", "--timeout", "60")  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    ms = load(out)
    names = [m["name"] for m in ms]
    assert names[0] == "first instruction" and ms[0]["detail"] == "real at f000:0xfff0"
    assert names.index("MBR loaded and entered") < names.index("mode change") < names.index("first byte on COM1")
    changes = [m["detail"] for m in ms if m["name"] == "mode change"]
    assert any(c.startswith("real -> protected32") for c in changes)
    assert any(c.startswith("protected32 -> long64") for c in changes)
    assert ms[names.index("expect")]["detail"] == "'Hello from C code'"
    assert names[-1] == "end"
    hosts = [float(m["host_ms"]) for m in ms]
    assert hosts == sorted(hosts)
    codes = [int(m["guest_code_bytes"]) for m in ms]  # type: ignore[call-overload]
    assert codes == sorted(codes) and codes[-1] > codes[0]
    assert "mode change: protected32 -> long64" in p.stderr  # -v: the table


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_each_backend_profiles_a_mode_switch(backend: BackendName, tmp_path: Path) -> None:
    require(backend)
    image = tmp_path / "long_mode.bin"
    image.write_bytes(assemble_file(SNIPPETS / "long_mode.asm"))
    out = tmp_path / "boot.json"
    p = emu_run("--backend", backend.value, "--image", str(image), "--load-addr", "0x8000", "--mem", "32M",
                "--boot-profile", str(out), "--timeout", "30")  # fmt: skip
    assert p.returncode == 0, p.stderr
    ms = load(out)
    assert ms[0]["name"] == "first instruction" and str(ms[0]["detail"]).startswith("real at 0000:0x8000")
    assert any(str(m["detail"]).endswith("long64") or "-> long64" in str(m["detail"]) for m in ms[1:])
    assert ms[-1]["name"] == "end"
    if backend is BackendName.KVM:
        assert all(m["guest_code_bytes"] is None for m in ms)  # KVM counts no guest code


def test_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    p = emu_run("--boot-profile", str(tmp_path / "no" / "such" / "p.json"))
    assert p.returncode == 2 and "--boot-profile" in p.stderr and "no such directory" in p.stderr
