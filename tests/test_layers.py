"""The guard of the package layout: imports point down the layers, and nothing imports in a circle.

Layers, bottom to top (a module may import its own layer and the ones below)::

    benchmark.core  <-  benchmark.data  <-  pretrain  <-  tasks  <-  benchmark.harness  <-  benchmark.cli

``tasks`` sits above ``pretrain`` because the adapters evaluate encoders: they build
them from the shared encoder registry and read the one checkpoint format
(``pretrain.encoders``, ``pretrain.checkpoint``). ``pretrain`` never imports ``tasks``.
Every import counts, including the ones inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("benchmark", "pretrain", "tasks")
LAYERS = (
    "benchmark.core",
    "benchmark.data",
    "pretrain",
    "tasks",
    "benchmark.harness",
    "benchmark.cli",
)


def layer_of(module: str) -> int:
    """Index of ``module``'s layer in :data:`LAYERS` (the bare ``benchmark`` package is core)."""
    if module == "benchmark":
        return 0
    for i, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return i
    raise AssertionError(f"{module} belongs to no layer; add its folder to LAYERS")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {
        module_name(p): p
        for pkg in PACKAGES
        for p in sorted((REPO / pkg).rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules that ``name`` imports (absolute and relative, at any depth)."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from pkg import sub`` imports the module ``pkg.sub`` when there is one
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        for t in targets:
            while t and t not in known:  # ``a.b.func`` -> ``a.b``
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def test_every_module_has_a_layer() -> None:
    for name in modules():
        layer_of(name)


def test_imports_point_down_the_layers() -> None:
    wrong = [
        f"{src} ({LAYERS[layer_of(src)]}) imports {dst} ({LAYERS[layer_of(dst)]})"
        for src, dsts in sorted(graph().items())
        for dst in sorted(dsts)
        if layer_of(dst) > layer_of(src)
    ]
    assert wrong == [], "wrong-way imports:\n" + "\n".join(wrong)


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles() -> None:
    cycles = find_cycles(graph())
    assert cycles == [], "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    ("edges", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": set()}, []),
    ],
)
def test_cycle_finder(edges: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert find_cycles(edges) == expected


def test_guard_sees_a_wrong_way_import(tmp_path: Path) -> None:
    """The parser resolves absolute, relative and from-package imports to modules."""
    mod = tmp_path / "m.py"
    mod.write_text(
        "from benchmark.harness import runner\n"
        "def f():\n    from . import stages\n    import benchmark.cli.main\n"
    )
    known = {"benchmark.harness.runner", "benchmark.harness.stages", "benchmark.cli.main"}
    got = imports_of("benchmark.harness.x", mod, known)
    assert got == known
    assert layer_of("benchmark.cli.main") > layer_of("benchmark.data.h5format")
