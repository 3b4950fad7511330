"""studio/'s shape (issue 32): no import circles among its modules (imports inside functions
counted too: a lazy import hides a circle, it does not remove it), and no function over 80
lines. Run alone to list the imports: python -m pytest tests/test_studio_structure.py -q."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def studio_imports() -> dict[str, set[str]]:
    """studio module -> the studio modules it imports (anywhere in its body)."""
    paths = sorted((ROOT / "studio").rglob("*.py"))
    names = {_module_name(p) for p in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        me, found = _module_name(path), set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                # `from studio import x` names the module studio.x when x is one.
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[me] = {n for n in found if n in names and n != me and n != "studio"}
        graph[me] -= {"studio.tabs"}  # the package's empty __init__
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def long_functions(folder: Path) -> list[str]:
    """'path:line name (N lines)' for every function longer than MAX_FUNCTION_LINES."""
    out = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_the_checker_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_studio_has_no_import_circles():
    graph = studio_imports()
    assert "studio.tabs.model_bar" in graph and "studio.models" in graph["studio.tabs.model_bar"]
    assert cycles(graph) == []


def test_no_studio_function_is_over_80_lines():
    assert long_functions(ROOT / "studio") == []


def test_every_tab_keeps_the_contract():
    """Each tab in the strip has LABEL, ID, layout, wire, show, reset and outputs, and what
    show and reset may change is among its outputs (model_bar shows a session through them)."""
    import inspect

    from studio.tabs import model_bar

    for tab in model_bar.TABS:
        for name, params in (("layout", ["ui"]), ("wire", ["ui", "page"]),
                             ("show", ["ui", "sess"]), ("reset", ["ui", "sess"]),
                             ("outputs", ["ui"])):
            assert list(inspect.signature(getattr(tab, name)).parameters) == params, \
                (tab.__name__, name)
        assert isinstance(tab.LABEL, str) and isinstance(tab.ID, str)
