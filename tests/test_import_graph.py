"""The package's imports run one way: down the stages, and never in a circle.

Stages, data flowing down: ``common`` (underneath everything) <- ``measure`` <- ``gate`` <- ``train`` and
``outputs`` (side by side: neither imports the other) <- ``cli``, ``plugin``, ``demo`` on top. Nothing below
the top imports the package's face (``drift_suite/__init__.py``, which only names the public API).

Every import of a drift_suite module counts as an arrow, wherever it stands: at module level, under
``if TYPE_CHECKING:``, or inside a function (a lazy import is still a dependency; deferring it only hides
a circle or a wrong-way arrow until the function runs).
"""

from __future__ import annotations

import ast
from pathlib import Path

import drift_suite

PACKAGE = Path(drift_suite.__file__).parent
TOP = "top"
FACE = "face"
# stage -> the stages its modules may import (itself included)
ALLOWED: dict[str, set[str]] = {
    "common": {"common"},
    "measure": {"common", "measure"},
    "gate": {"common", "measure", "gate"},
    "train": {"common", "measure", "gate", "train"},
    "outputs": {"common", "measure", "gate", "outputs"},
    TOP: {"common", "measure", "gate", "train", "outputs", TOP},
    FACE: {"common", "measure", "gate", "train", "outputs", TOP},
}


def package_modules(root: Path = PACKAGE) -> dict[str, Path]:
    """``{dotted name under drift_suite: file}`` for every module and subpackage (``""`` is the face)."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def stage_of(module: str) -> str:
    """The stage a module belongs to: its first folder, ``top`` for the modules beside the face."""
    if module == "":
        return FACE
    head = module.split(".")[0]
    return head if head in ALLOWED and head not in (TOP, FACE) else TOP


def resolve(current: str, is_package: bool, node: ast.ImportFrom | ast.Import, modules: set[str]) -> set[str]:
    """The package modules one import statement in ``current`` loads (longest known module name wins)."""
    targets: list[str] = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            parts = alias.name.split(".")
            if parts[0] == "drift_suite":
                targets.append(".".join(parts[1:]))
    else:
        if node.level:
            base = current.split(".") if current else []
            if not is_package:
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            prefix = ".".join([*base, *(node.module.split(".") if node.module else [])])
        elif node.module and node.module.split(".")[0] == "drift_suite":
            prefix = ".".join(node.module.split(".")[1:])
        else:
            return set()
        for alias in node.names:
            sub = f"{prefix}.{alias.name}" if prefix else alias.name
            targets.append(sub if sub in modules else prefix)
    found = set()
    for target in targets:
        parts = target.split(".") if target else []
        while parts and ".".join(parts) not in modules:
            parts.pop()
        found.add(".".join(parts))
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: package modules it imports}`` over every file of the package."""
    files = package_modules(root)
    names = set(files)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        arrows: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                arrows |= resolve(module, path.name == "__init__.py", node, names)
        graph[module] = arrows - {module}
    return graph


def wrong_way(graph: dict[str, set[str]]) -> list[str]:
    """Every arrow that runs from a lower stage to one it may not import, as ``a -> b (stage -> stage)``."""
    wrong = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            source_stage, target_stage = stage_of(module), stage_of(target)
            own_stage_package = target == module.split(".")[0] and source_stage == target_stage
            if target_stage not in ALLOWED[source_stage] and not own_stage_package:
                wrong.append(f"{module or 'drift_suite'} -> {target or 'drift_suite'} ({source_stage} -> {target_stage})")
    return wrong


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


def plant(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "drift_suite"
    for name, source in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source)
    for folder in {p.parent for p in root.rglob("*.py")}:
        (folder / "__init__.py").touch()
    return root


def test_the_reader_sees_every_kind_of_import(tmp_path):
    root = plant(tmp_path, {
        "common/errors.py": "",
        "measure/models.py": (
            "from __future__ import annotations\nfrom typing import TYPE_CHECKING\nfrom ..common.errors import E\n"
            "if TYPE_CHECKING:\n    from ..gate.runner import R\n"
            "def f():\n    from ..outputs import report\n    import drift_suite.train.trainer\n"
            "    from drift_suite.cli import main\n    from . import not_a_module\n    from .. import __version__\n"
        ),
        "gate/runner.py": "", "outputs/report.py": "", "train/trainer.py": "", "cli.py": "",
    })
    graph = import_graph(root)
    assert graph["measure.models"] == {"common.errors", "gate.runner", "outputs.report", "train.trainer", "cli", "measure", ""}


def test_a_lower_stage_importing_a_higher_one_is_caught(tmp_path):
    clean = {"common/errors.py": "", "measure/models.py": "from ..common.errors import E\n",
             "gate/runner.py": "from ..measure.models import load\n", "outputs/report.py": "from ..gate import runner\n",
             "train/trainer.py": "from ..gate.runner import DriftCheck\n", "cli.py": "from .outputs.report import r\n"}
    assert wrong_way(import_graph(plant(tmp_path / "clean", clean))) == []
    for module, line, expected in [
        ("measure/models.py", "def f():\n    from ..gate.runner import DriftCheck\n", "measure.models -> gate.runner (measure -> gate)"),
        ("common/errors.py", "from ..measure import models\n", "common.errors -> measure.models (common -> measure)"),
        ("outputs/report.py", "from ..train.trainer import t\n", "outputs.report -> train.trainer (outputs -> train)"),
        ("train/trainer.py", "from ..outputs import report\n", "train.trainer -> outputs.report (train -> outputs)"),
        ("gate/runner.py", "import drift_suite.cli\n", "gate.runner -> cli (gate -> top)"),
        ("gate/runner.py", "from .. import __version__\n", "gate.runner -> drift_suite (gate -> face)"),
    ]:
        planted = dict(clean)
        planted[module] = planted[module] + line
        assert expected in wrong_way(import_graph(plant(tmp_path / module.replace("/", "_") / str(len(line)), planted)))


def test_imports_run_down_the_stages():
    graph = import_graph()
    assert {"common.errors", "measure.models", "gate.runner", "train.trainer", "outputs.report", "cli", "plugin"} <= graph.keys()
    assert wrong_way(graph) == []


def test_the_circle_finder_finds_a_planted_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None


def test_no_import_circle_among_the_package_modules():
    graph = import_graph()
    graph.pop("", None)  # the face names everything; nothing imports it
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph))}"


def test_process_identity_sits_below_placement_and_the_measurement_gather_above_measure():
    graph = import_graph()
    assert graph["common.process"] <= {"common.errors", "common"}
    assert "measure.distributed" not in graph["measure.placement"] and "common.process" in graph["measure.placement"]
    assert "measure.measurement" in graph["measure.distributed"]


def test_the_public_api_is_importable_from_the_package_and_documented():
    import drift_suite as face

    assert {"DriftCheck", "DriftProbeCallback", "load_model", "render_report", "build_results"} <= set(face.__all__)
    for name in face.__all__:
        value = getattr(face, name)
        assert name == "__version__" or (value.__doc__ or "").strip(), f"drift_suite.{name} has no docstring"
