"""drift_suite: a pytest regression gate for Assistant-Axis persona drift after RL fine-tuning.

The public API, importable from here (each name loads its stage on first use, so ``import drift_suite`` and
the pytest plugin stay cheap)::

    from drift_suite import DriftCheck
    outcome = DriftCheck("checkpoints/final", baseline_dir="baselines").run()

The stages, data flowing down (``docs/api.md`` has the map):

* ``drift_suite.measure``: load a model, build conversations, generate and capture, reduce, cache;
* ``drift_suite.gate``: config and sides, baselines, the checks, the runner;
* ``drift_suite.train``: GRPO training, the drift probe, rewards (beside the gate);
* ``drift_suite.outputs``: report, results JSON, summaries, history, compare;
* ``drift_suite.common``: pure metrics, errors, process identity, progress, files (underneath all);
* ``drift_suite.cli``, ``drift_suite.plugin``, ``drift_suite.demo`` on top.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .common.version import __version__

# name -> module (under drift_suite) that defines it
_PUBLIC: dict[str, str] = {
    # gate
    "DriftCheck": "gate.runner",
    "DriftOutcome": "gate.runner",
    "DriftConfig": "gate.config",
    "Thresholds": "gate.config",
    "Sides": "gate.config",
    "load_config": "gate.config",
    "Baseline": "gate.baseline",
    "create_baseline": "gate.baseline",
    "save_baseline": "gate.baseline",
    "load_baseline": "gate.baseline",
    "Check": "gate.compare",
    "Comparison": "gate.compare",
    "compare": "gate.compare",
    # measure
    "load_model": "measure.models",
    "LoadedModel": "measure.models",
    "Measurement": "measure.measurement",
    "Design": "measure.conversations",
    "PersonaSet": "measure.personas",
    "builtin_persona_set": "measure.personas",
    "load_persona_dir": "measure.personas",
    # train
    "DriftProbeCallback": "train.callbacks",
    "TrainingLogCallback": "train.callbacks",
    "resolve_reward": "train.rewards",
    # outputs
    "build_report_data": "outputs.report_data",
    "render_report": "outputs.report",
    "build_results": "outputs.results",
    "write_results": "outputs.results",
    "read_results": "outputs.results",
    "diff_results": "outputs.diff",
    "CIOutputs": "outputs.publish",
    # common
    "DriftSuiteError": "common.errors",
    "CheckpointError": "common.errors",
    "BaselineError": "common.errors",
    "ConfigError": "common.errors",
}

__all__ = [
    "__version__",
    "DriftCheck",
    "DriftOutcome",
    "DriftConfig",
    "Thresholds",
    "Sides",
    "load_config",
    "Baseline",
    "create_baseline",
    "save_baseline",
    "load_baseline",
    "Check",
    "Comparison",
    "compare",
    "load_model",
    "LoadedModel",
    "Measurement",
    "Design",
    "PersonaSet",
    "builtin_persona_set",
    "load_persona_dir",
    "DriftProbeCallback",
    "TrainingLogCallback",
    "resolve_reward",
    "build_report_data",
    "render_report",
    "build_results",
    "write_results",
    "read_results",
    "diff_results",
    "CIOutputs",
    "DriftSuiteError",
    "CheckpointError",
    "BaselineError",
    "ConfigError",
]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'drift_suite' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from .common.errors import BaselineError, CheckpointError, ConfigError, DriftSuiteError
    from .gate.baseline import Baseline, create_baseline, load_baseline, save_baseline
    from .gate.compare import Check, Comparison, compare
    from .gate.config import DriftConfig, Sides, Thresholds, load_config
    from .gate.runner import DriftCheck, DriftOutcome
    from .measure.conversations import Design
    from .measure.measurement import Measurement
    from .measure.models import LoadedModel, load_model
    from .measure.personas import PersonaSet, builtin_persona_set, load_persona_dir
    from .outputs.diff import diff_results
    from .outputs.publish import CIOutputs
    from .outputs.report import render_report
    from .outputs.report_data import build_report_data
    from .outputs.results import build_results, read_results, write_results
    from .train.callbacks import DriftProbeCallback, TrainingLogCallback
    from .train.rewards import resolve_reward
