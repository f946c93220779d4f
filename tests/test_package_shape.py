"""The package's import picture: imports run one way between the layers, the library never
imports the study code (``hf_rpg_studies``).

Every import inside hf_rpg counts, also those inside functions and under ``TYPE_CHECKING``:
a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import hf_rpg

PACKAGE = Path(hf_rpg.__file__).parent


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
    assert "hf_rpg.format.metadata" in graph["hf_rpg.api.cli"]  # inside a function


def _import_time_names(module: str, is_package: bool, body: list[ast.stmt]) -> set[str]:
    """What running ``body`` imports: module-level statements, into ``if``/``try`` blocks, not
    under ``TYPE_CHECKING`` and not inside functions or classes."""
    names: set[str] = set()
    for node in body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.update(_resolve(module, is_package, node))
        elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            names |= _import_time_names(module, is_package, node.body + node.orelse)
        elif isinstance(node, ast.Try):
            blocks = node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
            names |= _import_time_names(module, is_package, blocks)
    return names


def import_time_graph() -> dict[str, set[str]]:
    """hf_rpg module -> the hf_rpg modules that importing it imports (lazy imports left out)."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        module: {
            name
            for name in _import_time_names(module, path.name == "__init__.py", ast.parse(path.read_text()).body)
            if name in paths and name != module
        }
        for module, path in paths.items()
    }


def _levels(graph: dict[str, set[str]]) -> dict[str, int]:
    """Each module's level: 1 for a module importing none, else one more than its highest import."""
    levels: dict[str, int] = {}

    def level(module: str) -> int:
        if module not in levels:
            levels[module] = 1 + max((level(dep) for dep in graph[module]), default=0)
        return levels[module]

    for module in graph:
        level(module)
    return levels


def _runtime_names(module: str, is_package: bool, tree: ast.AST) -> set[str]:
    """Every import that can run: at module level or inside functions, not under ``TYPE_CHECKING``."""
    names: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" in ast.unparse(node.test):
                for child in node.orelse:
                    self.visit(child)
            else:
                self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            names.update(alias.name for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            names.update(_resolve(module, is_package, node))

    Visitor().visit(tree)
    return names


def runtime_graph() -> dict[str, set[str]]:
    """hf_rpg module -> the hf_rpg modules it can import when it runs (lazy imports included,
    type-only imports left out)."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        module: {
            name
            for name in _runtime_names(module, path.name == "__init__.py", ast.parse(path.read_text()))
            if name in paths and name != module
        }
        for module, path in paths.items()
    }


def test_the_import_graph_is_at_most_nine_levels_deep():
    """Issue 21's goal, read two ways: the modules ``import hf_rpg`` runs, and every import that
    can run (inside functions too, type-only ones left out), chain at most 9 modules."""
    for graph in (import_time_graph(), runtime_graph()):
        levels = _levels(graph)
        assert max(levels.values()) <= 9, sorted(levels.items(), key=lambda kv: -kv[1])[:3]
        assert levels["hf_rpg.api.model"] > levels["hf_rpg.spec.generator"]  # the measure sees the layers
    assert "hf_rpg.api.checkpoint_reading" in runtime_graph()["hf_rpg.api.adapter_methods"]  # a lazy import


def test_no_import_cycles():
    graph = import_graph()
    # The package's __init__ re-exports the API; a module importing ``hf_rpg`` itself would be a cycle.
    assert not [m for m, deps in graph.items() if "hf_rpg" in deps]
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
    assert outside == set()


def test_imports_run_one_way_between_the_layers():
    graph = import_graph()
    for module in FOUNDATION:
        assert graph[module] == set(), module
    upward = {
        (module, dep)
        for module, deps in graph.items()
        if (level := _layer(module)) is not None
        for dep in deps
        if dep not in FOUNDATION and _layer(dep) > level
    }
    assert upward == set()


def test_the_layering_test_would_see_an_upward_import():
    graph = import_graph()
    assert "hf_rpg.spec.generator" in graph["hf_rpg.format.manifest"]  # a downward import is seen
    assert _layer("hf_rpg.format.manifest") < _layer("hf_rpg.api.config")


def test_the_library_never_imports_the_study_code():
    """``hf_rpg_studies`` builds on the library, never the other way round: only the
    ``hf-rpg demo`` and ``hf-rpg sweep`` commands load it, by name, when they run."""
    mentions = {
        _module_name(path): [n for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if _imports_studies(n)]
        for path in PACKAGE.rglob("*.py")
    }
    assert {m: n for m, n in mentions.items() if n} == {}
    cli = (PACKAGE / "api" / "cli.py").read_text(encoding="utf-8")
    assert 'importlib.import_module(f"hf_rpg_studies.{name}")' in cli


def _imports_studies(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(alias.name.split(".")[0] == "hf_rpg_studies" for alias in node.names)
    return isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "hf_rpg_studies"


def test_the_design_notes_map_every_module():
    """docs/design-notes.md's package map lists each module of the package, and no other."""
    notes = (PACKAGE.parent / "docs" / "design-notes.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| [a-z]* *\| `([\w/]+\.py)` \|", notes, re.M))
    modules = {
        "__init__.py" if m == "hf_rpg" else m.removeprefix("hf_rpg.").replace(".", "/") + ".py"
        for m in import_graph()
        if m.count(".") != 1 or m.split(".")[1] not in LAYERS  # the subpackages' own __init__
    }
    assert listed == modules
