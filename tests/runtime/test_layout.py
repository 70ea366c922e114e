"""The package layout issue 13 asks for: the runtime never imports a calculator, and no two modules
import each other, directly or around a circle (imports inside functions count; type-only imports under
``if TYPE_CHECKING:`` do not, since they never run)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ovms_graph", "calculators")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for file in sorted((ROOT / package).rglob("*.py")):
            if "protos" in file.relative_to(ROOT).parts:
                continue  # generated
            name = ".".join(file.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = file
    return found


MODULES = _modules()


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:``."""
    kept: list[ast.AST] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            pending.extend(node.orelse)
            continue
        kept.append(node)
        pending.extend(ast.iter_child_nodes(node))
    return kept


def imports(name: str) -> set[str]:
    """The modules of PACKAGES that module ``name`` imports (a ``from package import submodule`` names
    the submodule)."""
    file = MODULES[name]
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]) if node.level else ""
            target = ".".join(p for p in (base, node.module or "") if p)
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target)
    return {m for m in found if m in MODULES and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph``: its strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component: list[str] = []
            while not component or component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


GRAPH = {name: imports(name) for name in MODULES}


def test_the_runtime_imports_no_calculator() -> None:
    assert {m: sorted(d for d in deps if d.startswith("calculators"))
            for m, deps in GRAPH.items() if m.startswith("ovms_graph") and any(d.startswith("calculators")
                                                                               for d in deps)} == {}


def test_no_import_cycles() -> None:
    assert cycles(GRAPH) == []


def test_the_checks_see_imports_and_cycles() -> None:
    assert "ovms_graph.settings" in GRAPH["ovms_graph.server"]  # a module-level import
    assert "ovms_graph.serve" in GRAPH["ovms_graph.cli"]  # an import inside a function
    assert "calculators.image_gen.pull" in GRAPH["calculators.image_gen.cli"]  # from package import module
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
