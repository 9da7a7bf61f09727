"""Turn a :class:`~drift_suite.runner.DriftOutcome` into the JSON-able dict the HTML report renders."""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any

import numpy as np

from .baseline import describe_placement, update_command
from .runner import DriftOutcome, trajectory


def _clean(value: Any) -> Any:
    """NaN/inf become None so the dict is valid JSON and the report shows a dash."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, np.generic):
        return _clean(value.item())
    return value


def target_layer(asserted: list[int]) -> int:
    """The single layer used for PCA and trajectory plots: the middle of the asserted band."""
    return asserted[len(asserted) // 2]


def build_report_data(outcome: DriftOutcome) -> dict[str, Any]:
    """The report's data dict (see :func:`drift_suite.report.render_report`) for one run's outcome."""
    baseline = outcome.baseline
    final = outcome.final.comparison
    axis_norm = np.linalg.norm(baseline.axis, axis=-1)
    gate = outcome.gate_checks()
    gate.sort(key=lambda c: (c.passed, -c.severity))
    asserted = baseline.asserted_layers
    data = {
        "title": f"drift_suite report: {outcome.checkpoint}",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "verdict": "PASS" if outcome.passed else "FAIL",
        "step": outcome.final.step,  # the step plots (1)-(5) show; None for a single checkpoint
        "checkpoint": outcome.checkpoint,
        "baseline_dir": outcome.baseline_dir,
        "model": baseline.manifest["model"],
        "persona_set": baseline.manifest["persona_set"],
        "thresholds": outcome.config.thresholds.__dict__,
        "sides": outcome.config.sides.__dict__ | {"text": outcome.config.sides.describe()},
        "timings": outcome.timings,
        "versions": baseline.manifest.get("versions", {}),
        "placement": {
            "run": describe_placement(outcome.final.measurement.model_info),
            "baseline": describe_placement(baseline.manifest["model"]),
        },
        "layers": {"all": list(range(baseline.num_layers)), "asserted": asserted, "target": target_layer(asserted)},
        "checks": [check.to_dict() | {"message": check.message()} for check in gate],
        "projection": {
            "baseline": final.projection_baseline,
            "checkpoint": final.projection_checkpoint,
            "threshold": final.projection_threshold,
            "noise": baseline.noise.projection,
            "axis_norm": axis_norm,
        },
        "rotation": {"deg": final.rotation_deg, "threshold": final.rotation_threshold, "noise": baseline.noise.angle_deg},
        "accessibility": {
            "roles": baseline.roles,
            "ratio": final.accessibility,
            "threshold": final.accessibility_threshold,
            "noise": baseline.noise.accessibility,
            "by_layer": final.accessibility_by_layer,
        },
        "layer_profile": {"shift_over_axis": np.abs(final.projection_shift) / axis_norm, "rotation_deg": final.rotation_deg},
        "samples": {"baseline": baseline.samples, "checkpoint": outcome.final.measurement.samples()},
        "baseline_update": outcome.baseline_update,
        "update_command": update_command(outcome.baseline_dir, outcome.final.checkpoint),
        "trajectory": trajectory(outcome, target_layer(asserted)) if outcome.is_run else None,
    }
    return _clean(data)
