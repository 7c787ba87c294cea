"""The layers depend one way: pauserec <- probes <- analysis <- driver (bench and tests sit on top);
inside the library, rooms depend one way too, and no module imports itself round a circle.

Walks every module's imports (module level and inside functions) and fails on any import of a higher
layer or room from a lower one, including ``importlib.import_module("probes...")``-style strings.
The command-line entry point ``pauserec/__main__.py`` sits above every layer (it names drivers by
module path) and is exempt; nothing imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["pauserec", "probes", "analysis", "driver"]
# Inside the library, lowest first: a room may import its own modules and those of the rooms before
# it. "" = the top files
ROOMS = ["", "data", "sid", "model", "decoding", "evaluation", "teacher", "training"]
ENTRY_POINTS = {Path("pauserec/__main__.py")}


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every absolute import in a module (``from a.b import c`` gives
    ``a.b.c`` when ``a/b/c.py`` exists, else ``a.b``), and of string module paths passed to
    importlib.import_module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                is_module = (ROOT / (sub.replace(".", "/") + ".py")).is_file() or (
                    ROOT / sub.replace(".", "/") / "__init__.py"
                ).is_file()
                found.append((node.lineno, sub if is_module else node.module))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", "") == "import_module"
            and node.args
        ):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append((node.lineno, arg.value))
    return found


def modules() -> list[Path]:
    return sorted(p.relative_to(ROOT) for layer in LAYERS for p in (ROOT / layer).rglob("*.py"))


def dotted(path: Path) -> str:
    parts = list(path.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str:
    """The room of a ``pauserec`` module: its subpackage, or "" for the files at the top."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ROOMS) else ""


def test_every_layer_and_room_exists_and_has_modules():
    assert all((ROOT / layer / "__init__.py").is_file() for layer in LAYERS)
    assert all((ROOT / "pauserec" / r / "__init__.py").is_file() for r in ROOMS if r)
    assert not sorted(
        p.name
        for p in (ROOT / "pauserec").iterdir()
        if p.is_dir() and p.name not in ROOMS and p.name != "__pycache__"
    )
    assert len(modules()) > 40


@pytest.mark.parametrize("path", modules(), ids=str)
def test_no_import_from_a_higher_layer_or_room(path):
    if path in ENTRY_POINTS:
        return
    own = LAYERS.index(path.parts[0])
    found = imported(ROOT / path)
    upward = [
        (line, mod)
        for line, mod in found
        if mod.split(".")[0] in LAYERS and LAYERS.index(mod.split(".")[0]) > own
    ]
    assert not upward, f"{path} imports a higher layer: " + ", ".join(
        f"{m} (line {n})" for n, m in upward
    )
    if path.parts[0] == "pauserec":
        mine = ROOMS.index(room(dotted(path)))
        higher = [
            (line, mod)
            for line, mod in found
            if mod.startswith("pauserec.") and ROOMS.index(room(mod)) > mine
        ]
        assert not higher, f"{path} imports a higher room: " + ", ".join(
            f"{m} (line {n})" for n, m in higher
        )


def graph() -> dict[str, set[str]]:
    known = {dotted(p) for p in modules()}
    return {
        dotted(p): {m for _, m in imported(ROOT / p) if m in known and m != dotted(p)}
        for p in modules()
        if p not in ENTRY_POINTS
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), i.e. each import circle."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert cycles(graph()) == []


def test_the_checks_catch_an_upward_import_and_a_circle(tmp_path):
    bad = tmp_path / "mod.py"
    bad.write_text(
        "def f():\n    from analysis import theme\n    import importlib\n"
        "    return importlib.import_module('driver.demo')\n"
    )
    assert [m for _, m in imported(bad)] == ["analysis.theme", "importlib", "driver.demo"]
    assert room("pauserec.training.loop") == "training" and room("pauserec.files") == ""
    assert room("pauserec.data") == "data"
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
