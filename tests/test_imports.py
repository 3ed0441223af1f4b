"""The package's import graph: no cycles, counting function-level imports too (a cycle hidden by a
lazy import still ties two modules together and breaks when the import moves to the top), and the
modules that used to form cycles import on their own in a fresh interpreter."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fastif_core"


def package_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of fastif_core (Alembic's migration scripts aside)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        if "migrations" in rel.parts:
            continue
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The fastif_core modules ``name`` imports anywhere in its file (module level or inside functions)."""

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {resolve(a.name) for a in node.names if a.name.startswith("fastif_core")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            if base.startswith("fastif_core"):
                found |= {resolve(f"{base}.{a.name}") or resolve(base) for a in node.names}
    return {m for m in found if m is not None and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a path ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_function_level_cycle(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    pkg = tmp_path / "fastif_core"
    pkg.mkdir()
    (pkg / "x.py").write_text("def f():\n    from fastif_core.y import g\n")
    (pkg / "y.py").write_text("from fastif_core import x\n")
    mods = {"fastif_core.x": pkg / "x.py", "fastif_core.y": pkg / "y.py"}
    graph = {m: imported_modules(m, p, mods) for m, p in mods.items()}
    assert find_cycle(graph) == ["fastif_core.x", "fastif_core.y", "fastif_core.x"]


def test_the_package_import_graph_has_no_cycles():
    modules = package_modules()
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    assert {
        "fastif_core.cli.main",
        "fastif_core.worker.loop",
        "fastif_core.data.hub",
        "fastif_core.apps.graph.job",
    } <= set(graph)
    assert "fastif_core.workspace.layout" in graph["fastif_core.workspace.prepare"]  # edges are really read
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


@pytest.mark.parametrize(
    "module",
    ["fastif_core.cli.main", "fastif_core.worker.loop", "fastif_core.benchmarks", "fastif_core.workspace.prepare",
     "fastif_core.workspace.layout", "fastif_core.data.hub", "fastif_core.data.loaders", "fastif_core.apps",
     "fastif_core.apps.graph.job", "fastif_core.apps.correct.job", "fastif_core.apps.simulate.job"],
)  # fmt: skip
def test_module_imports_alone_in_a_fresh_interpreter(module):
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    out = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, env=env,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
