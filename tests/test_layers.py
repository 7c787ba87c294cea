"""The layers depend one way: pauserec <- probes <- analysis <- driver (bench and tests sit on top).

Walks every module's imports (module level and inside functions) and fails on any import of a higher
layer from a lower one, including ``importlib.import_module("probes...")``-style strings. The command-line
entry point ``pauserec/__main__.py`` sits above every layer (it names drivers by module path) and is
exempt; nothing imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["pauserec", "probes", "analysis", "driver"]
ENTRY_POINTS = {Path("pauserec/__main__.py")}


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in a module, and of string module paths passed to
    importlib.import_module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append((node.lineno, arg.value.split(".")[0]))
    return found


def modules() -> list[Path]:
    return sorted(p.relative_to(ROOT) for layer in LAYERS for p in (ROOT / layer).rglob("*.py"))


def test_every_layer_exists_and_has_modules():
    assert all((ROOT / layer / "__init__.py").is_file() for layer in LAYERS)
    assert len(modules()) > 40


@pytest.mark.parametrize("path", modules(), ids=str)
def test_no_import_from_a_higher_layer(path):
    if path in ENTRY_POINTS:
        return
    own = LAYERS.index(path.parts[0])
    upward = [(line, pkg) for line, pkg in imported(ROOT / path) if pkg in LAYERS and LAYERS.index(pkg) > own]
    assert not upward, f"{path} imports a higher layer: " + ", ".join(f"{pkg} (line {n})" for n, pkg in upward)


def test_the_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "mod.py"
    bad.write_text("def f():\n    from analysis import theme\n    import importlib\n"
                   "    return importlib.import_module('driver.demo')\n")
    assert [pkg for _, pkg in imported(bad)] == ["analysis", "importlib", "driver"]
