"""Assemble guest programs from source with nasm, cached by content hash.

Used by the test suite and the ROM build; emu itself never needs an assembler at run time.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from emu.errors import HostError

CACHE_DIR = Path(__file__).resolve().parents[2] / ".cache" / "asm"


def nasm_path() -> str:
    path = shutil.which("nasm")
    if path is None:
        raise HostError("nasm is not installed (scripts/setup installs it: apt-get install nasm)")
    return path


def assemble(source: str, *, name: str = "guest", include_dirs: tuple[Path, ...] = ()) -> bytes:
    """Assemble `source` (a flat `-f bin` program) and return the bytes; cached on disk."""
    key_src = source + "".join(str(p) for p in include_dirs)
    for d in include_dirs:
        for inc in sorted(d.glob("*.inc")):
            key_src += inc.read_text()
    key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
    cached = CACHE_DIR / f"{name}-{key}.bin"
    if cached.exists():
        return cached.read_bytes()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"{name}.asm"
        out = Path(tmp) / f"{name}.bin"
        src.write_text(source)
        cmd = [nasm_path(), "-f", "bin", "-o", str(out), str(src)]
        for d in include_dirs:
            cmd[1:1] = ["-I", str(d) + "/"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"nasm failed for {name}:\n{proc.stderr}")
        data = out.read_bytes()
    tmp_out = cached.with_suffix(".tmp")
    tmp_out.write_bytes(data)
    tmp_out.replace(cached)
    return data


def assemble_file(path: Path) -> bytes:
    return assemble(path.read_text(), name=path.stem, include_dirs=(path.parent,))
