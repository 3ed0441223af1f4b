"""The package's import graph: no cycles, counting function-level imports too (a cycle hidden by a
lazy import still ties two modules together and breaks when the import moves to the top); every edge is
an import statement (no module imported by a name in a string); a lower layer never imports a higher
one; the dashboard (``app/``) never imports torch; and the modules that used to form cycles import on
their own in a fresh interpreter."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fastif_core"
APP = PACKAGE.parent / "app"
# bottom up; a module may import its own layer and the layers below it (see docs/ARCHITECTURE.md)
LAYERS = (
    "vocabulary",
    "data",
    "engine",
    "modeling",
    "store",
    "workspace",
    "jobs",
    "queries",
    "parallel",
    "apps",
    "worker",
    "benchmarks",
    "cli",
    "front door",
)
VOCABULARY = {"config", "errors", "device", "progress", "processes", "measure"}


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


def layer(module: str) -> str:
    """The layer of a fastif_core module: its sub-package, with three refinements inside ``apps/``: an
    application's ``config`` is settings (vocabulary, the job queue lists it), its ``job`` is a worker
    handler, its ``cli`` a subcommand."""
    parts = module.split(".")[1:]
    if not parts or parts[0] == "__main__":
        return "front door"
    if parts[0] in VOCABULARY:
        return "vocabulary"
    if parts[0] == "apps" and len(parts) == 3:
        return {"config": "vocabulary", "job": "worker", "cli": "cli"}.get(parts[2], "apps")
    return parts[0]


def top_level_imports(path: Path) -> set[str]:
    """Root names of everything ``path`` imports when it is imported (not inside functions or under
    ``TYPE_CHECKING``): what importing the module costs."""
    out: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                out.update([node.module] + [f"{node.module}.{a.name}" for a in node.names])
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body])

    visit(ast.parse(path.read_text(), str(path)).body)
    return out


def module_name_strings(path: Path) -> list[str]:
    """String constants (docstrings aside) that name a fastif_core module, ``'pkg.mod'`` or ``'pkg.mod:fn'``."""
    tree = ast.parse(path.read_text(), str(path))
    docs = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and n.body
        and isinstance(n.body[0], ast.Expr)
    }
    pattern = re.compile(r"fastif_core(\.\w+)+(:\w+)?")
    return [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant)
        and isinstance(n.value, str)
        and id(n) not in docs
        and pattern.fullmatch(n.value)
    ]


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
        "fastif_core.cli.commands",
        "fastif_core.worker.loop",
        "fastif_core.data.hub",
        "fastif_core.apps.graph.job",
    } <= set(graph)
    assert "fastif_core.workspace.layout" in graph["fastif_core.workspace.prepare"]  # edges are really read
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def upward_imports(modules: dict[str, Path]) -> list[str]:
    """Every import of a module from a higher layer, as ``'a (layer) imports b (layer)'``."""
    rank = {name: i for i, name in enumerate(LAYERS)}
    return [
        f"{m} ({layer(m)}) imports {d} ({layer(d)})"
        for m, path in sorted(modules.items())
        for d in sorted(imported_modules(m, path, modules))
        if rank[layer(d)] > rank[layer(m)]
    ]


def test_a_lower_layer_never_imports_a_higher_one():
    modules = package_modules()
    assert {layer(m) for m in modules} == set(LAYERS)
    assert upward_imports(modules) == []
    engine = {d for m, p in modules.items() if layer(m) == "engine" for d in imported_modules(m, p, modules)}
    assert {layer(d) for d in engine} == {
        "vocabulary",
        "engine",
    }  # tensors in, tensors out: no store, no files


def test_the_layer_rule_catches_an_upward_import(tmp_path):
    pkg = tmp_path / "fastif_core"
    (pkg / "engine").mkdir(parents=True)
    (pkg / "engine" / "solvers.py").write_text("def f():\n    from fastif_core.store import Store\n")
    (pkg / "store.py").write_text("from fastif_core.engine import solvers\n")
    mods = {
        "fastif_core.engine.solvers": pkg / "engine" / "solvers.py",
        "fastif_core.store": pkg / "store.py",
    }
    assert upward_imports(mods) == ["fastif_core.engine.solvers (engine) imports fastif_core.store (store)"]


def test_no_module_is_named_by_a_string():
    """Every edge of the graph is an import statement: no importlib, no ``'package.module:function'``."""
    named = {str(p.relative_to(PACKAGE.parent)): module_name_strings(p) for p in PACKAGE.rglob("*.py")}
    assert {k: v for k, v in named.items() if v} == {}
    by_name = [
        str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "importlib" in top_level_imports(p)
    ]
    assert by_name == ["worker/registry.py"]  # only $FASTIF_WORKER_MODULES: names the user gives


def test_the_string_check_finds_a_planted_module_name(tmp_path):
    planted = tmp_path / "x.py"
    planted.write_text(
        '"""Calls fastif_core.engine.solvers by name."""\nQUERY = "fastif_core.parallel.spmd:run"\n'
    )
    assert module_name_strings(planted) == ["fastif_core.parallel.spmd:run"]  # the docstring is not code


def test_the_dashboard_never_imports_torch():
    """app/ and every fastif_core module it imports, transitively at import time: no torch."""
    modules = package_modules()

    def owner(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    seen: set[str] = set()
    third_party: dict[str, str] = {}
    todo = [p for p in APP.rglob("*.py")]
    names = {p: str(p.relative_to(APP.parent)) for p in todo}
    while todo:
        path = todo.pop()
        for name in top_level_imports(path):
            mod = owner(name) if name.startswith("fastif_core") else None
            parts = mod.split(".") if mod is not None else []
            for pkg in [".".join(parts[: i + 1]) for i in range(len(parts))]:  # a.b.c runs a and a.b first
                if pkg in modules and pkg not in seen:
                    seen.add(pkg)
                    todo.append(modules[pkg])
                    names[modules[pkg]] = pkg
            if mod is None and not name.startswith(("fastif_core", "app")):
                third_party.setdefault(name.split(".")[0], names[path])
    assert {"fastif_core", "fastif_core.jobs"} <= seen  # edges are really followed, packages included
    assert "torch" not in third_party, f"{third_party['torch']} imports torch"


@pytest.mark.parametrize(
    "module",
    [
        "fastif_core.cli.commands",
        "fastif_core.worker.loop",
        "fastif_core.benchmarks",
        "fastif_core.workspace.prepare",
        "fastif_core.workspace.layout",
        "fastif_core.data.hub",
        "fastif_core.data.loaders",
        "fastif_core.apps",
        "fastif_core.apps.graph.job",
        "fastif_core.apps.correct.job",
        "fastif_core.apps.simulate.job",
    ],
)
def test_module_imports_alone_in_a_fresh_interpreter(module):
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    out = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
