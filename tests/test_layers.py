"""The import structure of engine/ and studio/ (issue #32), read from the source with `ast`:
no import circles among modules, engine imports only run down its layers
(base < gan < models < training < tools < recipes, with engine/__main__.py on top), and
engine never imports studio. Function-level (lazy) imports count like top-level ones: a
lazy import still ties the two modules together.

Anyone can print the graph: `python tests/test_layers.py`."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("base", "gan", "models", "training", "tools", "recipes")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of engine/ and studio/ by dotted name."""
    return {module_name(p, root): p for top in ("engine", "studio")
            for p in sorted((root / top).rglob("*.py"))}


def imports_of(path: Path, known: set[str], name: str) -> set[str]:
    """The known modules `path` imports, anywhere in it. `from a import b` counts as a.b when
    a.b is a module, else as a; a relative import is resolved against the module's package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else base)
    return {m for m in found if m in known and m != name}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    found = modules(root)
    return {name: imports_of(path, set(found), name) for name, path in found.items()}


def layer_of(name: str) -> int | None:
    """A module's floor: its layer's index, len(LAYERS) for engine.__main__; None for engine's
    own __init__ (it imports lazily from the top for `engine.render`) and studio."""
    parts = name.split(".")
    if parts[0] != "engine" or len(parts) == 1:
        return None
    if parts[1] == "__main__":
        return len(LAYERS)
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else -1


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for name, deps in sorted(graph.items()):
        floor = layer_of(name)
        for dep in sorted(deps):
            if dep.startswith("studio") and name.startswith("engine"):
                bad.append(f"{name} -> {dep} (engine never imports studio)")
            elif floor is not None and (layer_of(dep) or 0) > floor:
                bad.append(f"{name} -> {dep} (up from {LAYERS[floor]})")
    return bad


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_every_engine_module_sits_in_a_layer(graph):
    strays = [n for n in graph if layer_of(n) == -1]
    assert not strays, f"engine modules outside the layer packages {LAYERS}: {strays}"


def test_no_import_circles(graph):
    assert circles(graph) == []


def test_engine_imports_only_run_down_the_layers_and_never_into_studio(graph):
    assert upward_imports(graph) == []


def test_the_checks_catch_an_upward_import_and_a_circle(tmp_path):
    """A scratch copy of engine/ with one added lazy upward import (base.files -> tools.latents,
    which imports base.files: a circle too) fails both checks."""
    import shutil

    shutil.copytree(ROOT / "engine", tmp_path / "engine",
                    ignore=shutil.ignore_patterns("default_model", "*.json", "__pycache__"))
    shutil.copytree(ROOT / "studio", tmp_path / "studio",
                    ignore=shutil.ignore_patterns("static", "__pycache__"))
    files = tmp_path / "engine" / "base" / "files.py"
    files.write_text(files.read_text() + "\n\ndef _up():\n    from engine.tools import latents\n")
    graph = import_graph(tmp_path)
    assert "engine.base.files -> engine.tools.latents (up from base)" in upward_imports(graph)
    assert any({"engine.base.files", "engine.tools.latents"} <= set(c) for c in circles(graph))


if __name__ == "__main__":
    g = import_graph()
    for name in sorted(g):
        print(f"{name} -> {', '.join(sorted(g[name])) or '-'}")
    print("circles:", circles(g) or "none")
    print("upward imports:", upward_imports(g) or "none")
