"""The package's modules import one another one way: no circle, whichever way an import is written.

Every import of a drift_suite module counts as an arrow, wherever it stands: at module level, under
``if TYPE_CHECKING:``, or inside a function (a lazy import is still a dependency; deferring it only hides
a circle until the function runs).
"""

from __future__ import annotations

import ast
from pathlib import Path

import drift_suite

PACKAGE = Path(drift_suite.__file__).parent


def imported_modules(source: str, modules: set[str]) -> set[str]:
    """The package modules ``source`` imports, relative (``from .x``, ``from . import x``) or absolute."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 or (node.level == 0 and node.module and node.module.split(".")[0] == "drift_suite"):
                parts = (node.module or "").split(".")
                parts = parts[1:] if node.level == 0 else parts
                if parts and parts[0]:
                    found.add(parts[0])
                else:  # ``from . import x`` / ``from drift_suite import x``: x may be a module
                    found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "drift_suite" and len(parts) > 1:
                    found.add(parts[1])
    return found & modules


def import_graph() -> dict[str, set[str]]:
    """``{module: modules it imports}`` over drift_suite/*.py."""
    modules = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    return {
        path.stem: imported_modules(path.read_text(), modules) - {path.stem}
        for path in PACKAGE.glob("*.py")
        if path.stem in modules
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of ``graph`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_finder_sees_lazy_and_type_checking_imports_and_finds_a_planted_circle():
    source = (
        "from __future__ import annotations\nfrom typing import TYPE_CHECKING\nfrom .a import x\n"
        "if TYPE_CHECKING:\n    from .b import y\n"
        "def f():\n    from . import c\n    import drift_suite.d\n    from drift_suite.e import z\n    from . import not_a_module\n"
    )
    assert imported_modules(source, {"a", "b", "c", "d", "e"}) == {"a", "b", "c", "d", "e"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None


def test_no_import_circle_among_the_package_modules():
    graph = import_graph()
    assert {"process", "distributed", "placement", "measure"} <= graph.keys()
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph))}"


def test_process_identity_sits_below_placement_and_the_measurement_gather_above_measure():
    graph = import_graph()
    assert graph["process"] <= {"errors"}
    assert "distributed" not in graph["placement"] and "process" in graph["placement"]
    assert "measure" in graph["distributed"]


def test_every_public_name_of_the_split_is_still_importable_from_distributed():
    from drift_suite import distributed, process

    moved = [name for name in vars(process) if not name.startswith("_") and callable(getattr(process, name))
             and getattr(getattr(process, name), "__module__", "") == process.__name__]
    assert {"ProcessContext", "process_context", "is_main_process", "barrier", "on_main_then_share"} <= set(moved)
    for name in moved:
        assert getattr(distributed, name) is getattr(process, name), name
