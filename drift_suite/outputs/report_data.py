"""Turn a :class:`~drift_suite.gate.runner.DriftOutcome` into the JSON-able dict the HTML report renders."""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..gate.baseline import describe_placement, update_command
from ..gate.runner import DriftOutcome, trajectory


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
    """The report's data dict (see :func:`drift_suite.outputs.report.render_report`) for one run's outcome."""
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
        "live_probe": live_probe(outcome.checkpoint, outcome) if outcome.is_run else None,
    }
    return _clean(data)


TRAIN_LOG = "train_log.jsonl"
RUN_MANIFEST = "run_manifest.json"
PROBE_KEYS = ("projection", "rotation_deg", "projection_sigma", "rotation_rms")
"""``drift/<key>`` values the training-time probe logs (train.py's ``--drift_every``); the σ ones may be absent."""


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    entries = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:  # a run killed mid-write leaves a partial last line
            continue
        if isinstance(entry, dict) and isinstance(entry.get("step"), (int, float)):
            entries.append(entry)
    return entries


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def live_probe(run_dir: str | Path, outcome: DriftOutcome | None = None) -> dict[str, Any] | None:
    """The probe's trajectory while the run trained, from ``train_log.jsonl``; None when it logged no probe.

    ``steps`` and one list per :data:`PROBE_KEYS` (None where a key was not logged at a step), the logged
    reward, the stop of ``--drift_stop`` from ``run_manifest.json`` (None when it did not fire), the stop
    threshold the run was given, and, with ``outcome``, each checkpoint's gate result beside its step.
    """
    root = Path(run_dir)
    log_path = root / TRAIN_LOG
    if not log_path.is_file():
        return None
    entries = _read_jsonl(log_path)
    probe = [e for e in entries if _number(e.get("drift/projection")) is not None]
    if not probe:
        return None
    manifest = _read_manifest(root / RUN_MANIFEST)
    stop = manifest.get("drift_stop") if isinstance(manifest.get("drift_stop"), dict) else None
    arguments = manifest.get("arguments") if isinstance(manifest.get("arguments"), dict) else {}
    threshold = _number((stop or {}).get("threshold_sigma")) or _number(arguments.get("drift_stop"))
    rewards = [(int(e["step"]), _number(e.get("reward"))) for e in entries if _number(e.get("reward")) is not None]
    gate = []
    for result in (outcome.steps if outcome is not None else []):
        if result.step is None:
            continue
        checks = result.comparison.checks
        failed = [c for c in checks if not c.passed]
        worst = max(checks, key=lambda c: c.severity, default=None)
        gate.append({"step": result.step, "passed": not failed, "failed": len(failed), "total": len(checks),
                     "warnings": sum(c.warning for c in checks), "worst": worst.message() if worst is not None else ""})
    return {
        "steps": [int(e["step"]) for e in probe],
        **{key: [_number(e.get(f"drift/{key}")) for e in probe] for key in PROBE_KEYS},
        "reward": {"steps": [s for s, _ in rewards], "values": [r for _, r in rewards]},
        "stop": stop,
        "threshold_sigma": threshold,
        "gate": gate,
    }
