"""The rules of emu's shape, checked on its source (docs/architecture.md): layers that never import
each other, no pair of modules importing each other, backends asked through what they declare."""

from __future__ import annotations

import ast
from itertools import combinations
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "emu"
CONCRETE = {"UnicornBackend", "KvmBackend", "UnicornEngine", "KvmEngine"}


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = ast.parse(path.read_text(), str(path))
    return out


MODULES = _modules()
MODULE_NAMES = set(MODULES)


def _imports(name: str, tree: ast.Module) -> set[str]:
    """Every emu module `name` imports, at any depth (function-local imports count too)."""
    found = set()
    package = name if (ROOT.parent / name.replace(".", "/") / "__init__.py").exists() else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import submodule` imports the submodule, not the package's own code.
            subs = {f"{base}.{a.name}" for a in node.names} & MODULE_NAMES
            found |= subs or {base}
    return {m for m in found if m in MODULES and m != name}


IMPORTS = {name: _imports(name, tree) for name, tree in MODULES.items()}


def test_the_rules_see_the_whole_tree() -> None:
    # A rule over an empty or misread tree would pass for nothing.
    assert len(MODULES) > 100
    assert "emu.backends.base" in IMPORTS["emu.machine"]


def test_no_two_modules_import_each_other() -> None:
    pairs = [
        f"{a} <-> {b}" for a, b in combinations(sorted(IMPORTS), 2) if b in IMPORTS[a] and a in IMPORTS[b]
    ]  # fmt: skip
    assert pairs == []


def test_devices_and_backends_never_import_each_other() -> None:
    wrong = []
    for name, deps in IMPORTS.items():
        for dep in deps:
            if name.startswith("emu.devices") and dep.startswith("emu.backends"):
                wrong.append(f"{name} imports {dep}")
            if name.startswith("emu.backends") and dep.startswith(("emu.devices", "emu.firmware", "emu.machine")):
                wrong.append(f"{name} imports {dep}")
    assert wrong == []


def test_nothing_outside_a_backend_probes_or_names_a_concrete_backend() -> None:
    """A backend's optional features are declared (emu/backends/base.py): no getattr/hasattr on
    a backend and no isinstance on a concrete backend or debugger engine elsewhere."""
    wrong = []
    for name, tree in MODULES.items():
        if name.startswith("emu.backends"):
            continue
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args):
                continue
            what = ast.unparse(node.args[0])
            if node.func.id in ("getattr", "hasattr") and "backend" in what:
                wrong.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
            if node.func.id == "isinstance" and len(node.args) == 2:
                classes = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
                classes |= {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
                if classes & CONCRETE:
                    wrong.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert wrong == []


def test_module_names_are_unique_where_it_matters() -> None:
    """Two modules with one name (two cli.py, two session.py) make a reader guess which is meant."""
    stems: dict[str, list[str]] = {}
    for name in MODULES:
        stem = name.rpartition(".")[2]
        if stem not in ("__init__", "emu") and not (ROOT.parent / name.replace(".", "/")).is_dir():
            stems.setdefault(stem, []).append(name)
    doubles = {stem: names for stem, names in stems.items() if len(names) > 1}
    # Each backend has its own backend.py and irqchip.py behind the shared interface; the debugger
    # has an engine per backend. Everything else is named once.
    allowed = {"backend", "irqchip"}
    assert {stem: names for stem, names in doubles.items() if stem not in allowed} == {}
