"""The package's import picture: imports run one way, the core never reaches the example plumbing.

Every import inside hf_rpg counts, also those inside functions and under ``TYPE_CHECKING``:
a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

import hf_rpg
from hf_rpg.examples_support import data, demo

PACKAGE = Path(hf_rpg.__file__).parent
DEPRECATED_ALIASES = {"hf_rpg.data", "hf_rpg.demo"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The modules ``node`` may import: ``from .engine import X`` names engine (and engine.X when
    engine is a package); ``from . import engine`` names engine only."""
    if node.level == 0:
        base = node.module or ""
    else:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, node.module]) if node.module else ".".join(anchor)
    submodules = [f"{base}.{alias.name}" for alias in node.names]
    return submodules if node.module is None else [base, *submodules]


def import_graph() -> dict[str, set[str]]:
    """hf_rpg module -> the hf_rpg modules it imports anywhere in its source."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        is_package = path.name == "__init__.py"
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                names.update(_resolve(module, is_package, node))
        graph[module] = {name for name in names if name in paths and name != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_the_graph_sees_lazy_and_type_checking_imports():
    graph = import_graph()
    assert "hf_rpg.runtime.engine" in graph["hf_rpg.runtime.parametrize"]  # under TYPE_CHECKING
    assert "hf_rpg.api.trainer" in graph["hf_rpg"]  # inside __getattr__
    assert "hf_rpg.examples_support.demo" in graph["hf_rpg.api.cli"]  # inside a function


def test_no_import_cycles():
    graph = import_graph()
    # The package's __init__ re-exports the API; a module importing ``hf_rpg`` itself would be a cycle.
    assert not [m for m, deps in graph.items() if "hf_rpg" in deps and m not in DEPRECATED_ALIASES]
    assert _cycles({m: deps - {"hf_rpg"} for m, deps in graph.items()}) == []


# The layers, bottom-up: a module imports only from its own layer, the layers below it and
# the foundation (errors, version, describe: imported by every layer, importing nothing).
LAYERS = ("spec", "format", "runtime", "api")
FOUNDATION = {"hf_rpg.errors", "hf_rpg.version", "hf_rpg.describe"}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_library_module_sits_in_a_layer():
    outside = {m for m in import_graph() if _layer(m) is None} - FOUNDATION - {"hf_rpg"}
    studies = {m for m in outside if m.startswith("hf_rpg.examples_support") or m in DEPRECATED_ALIASES}
    assert outside - studies == {"hf_rpg.sweep"}


def test_imports_run_one_way_between_the_layers():
    # (the study code outside the layers is kept apart by the test below)
    graph = import_graph()
    for module in FOUNDATION:
        assert graph[module] == set(), module
    upward = {
        (module, dep)
        for module, deps in graph.items()
        if (level := _layer(module)) is not None
        for dep in deps
        if dep not in FOUNDATION and (_layer(dep) or 0) > level
    }
    assert upward == set()


def test_the_layering_test_would_see_an_upward_import():
    graph = import_graph()
    assert "hf_rpg.spec.generator" in graph["hf_rpg.format.manifest"]  # a downward import is seen
    assert _layer("hf_rpg.format.manifest") < _layer("hf_rpg.api.config")


def test_the_core_never_imports_the_example_plumbing():
    graph = import_graph()
    core = [m for m in graph if not m.startswith("hf_rpg.examples_support") and m not in DEPRECATED_ALIASES]
    allowed = {"hf_rpg.api.cli", "hf_rpg.sweep"}  # ``hf-rpg demo`` and ``hf-rpg sweep`` run the examples
    offenders = {m: sorted(d for d in graph[m] if d.startswith("hf_rpg.examples_support")) for m in core}
    assert {m: d for m, d in offenders.items() if d and m not in allowed} == {}
    assert "hf_rpg.examples_support.demo" not in graph["hf_rpg.examples_support.data"]


def test_old_example_module_names_warn_and_give_the_moved_modules(monkeypatch):
    for old, moved in (("hf_rpg.data", data), ("hf_rpg.demo", demo)):
        monkeypatch.delitem(sys.modules, old, raising=False)
        with pytest.warns(FutureWarning, match=f"{old} moved to {moved.__name__}"):
            assert importlib.import_module(old) is moved
