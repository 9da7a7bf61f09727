"""The versioned results JSON of one gate run: build it from an outcome (or an error), write it, read it back.

The layout is ``schemas/results-v1.schema.json`` (shipped with the package). Every result names its
``schema_version``, ``verdict`` (``pass``/``fail``/``error``) and the process's ``exit_code``; a run that
gave no verdict (exit 3 or 4) carries its one-line error and no checks. :func:`read_results` refuses a file
that is not a results JSON of a version this library reads, in one line (exit 4).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..common.version import __version__
from ..common.files import atomic_write_bytes, write_failure
from ..common.errors import EXIT_DRIFT, EXIT_MEASUREMENT_FAILED, EXIT_PASS, EXIT_USAGE, DriftSuiteError
from ..common.provenance import git_provenance

if TYPE_CHECKING:
    from ..gate.compare import Check
    from ..gate.runner import DriftOutcome

SCHEMA_VERSION = 1
SCHEMA_FILE = "results-v1.schema.json"
RUNNERS = ("pytest", "drift-suite check")


class ResultsError(DriftSuiteError):
    """A file that is not a results JSON this library reads, or a results file that cannot be written."""

    exit_code = EXIT_USAGE


def load_schema() -> dict[str, Any]:
    """The JSON Schema of :data:`SCHEMA_VERSION` results, as shipped in ``drift_suite/outputs/schemas/``."""
    return json.loads(resources.files("drift_suite.outputs").joinpath("schemas", SCHEMA_FILE).read_text(encoding="utf-8"))


def _finite(value: Any) -> float | None:
    """A JSON number, or None for NaN/inf (JSON has neither)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _now() -> str:
    # Milliseconds: history files are named and ordered by it, and CI can run twice in a second.
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def verdict_for(exit_code: int, has_outcome: bool) -> str:
    """``pass`` (0) and ``fail`` (1) need a measurement; anything else, or no measurement, is ``error``."""
    if has_outcome and exit_code == EXIT_PASS:
        return "pass"
    if has_outcome and exit_code == EXIT_DRIFT:
        return "fail"
    return "error"


def _error_kind(exit_code: int) -> str:
    return {EXIT_MEASUREMENT_FAILED: "measurement", EXIT_USAGE: "usage"}.get(exit_code, "other")


def check_record(check: "Check", checkpoint: str | None = None) -> dict[str, Any]:
    """One gate check as the results JSON holds it."""
    delta = check.value - check.expected
    layer = re.fullmatch(r"layer (-?\d+)", check.subject)
    signed = delta / check.noise if check.noise > 0 else (math.inf if delta else 0.0)
    return {
        "family": check.family,
        "subject": check.subject,
        "layer": int(layer.group(1)) if layer else None,
        "role": None if layer else check.subject,
        "step": check.step,
        "checkpoint": checkpoint,
        "value": _finite(check.value),
        "baseline": _finite(check.expected),
        "threshold": _finite(check.threshold),
        "noise": _finite(check.noise),
        "delta": _finite(delta),
        "deviation": _finite(check.deviation),
        "sigmas": _finite(check.sigmas),
        "signed_sigmas": _finite(signed),
        "severity": _finite(check.severity),
        "unit": check.unit,
        "direction": check.direction,
        "side": check.side,
        "failing_side": str(check.failing_side),
        "status": check.status,
        "passed": bool(check.passed),
        "warning": bool(check.warning),
        "message": check.message(),
    }


def sides_record(config: Any) -> dict[str, str] | None:
    """The one-sided settings in force (``config.sides``), or None for a config without them."""
    sides = getattr(config, "sides", None)
    if sides is None:
        return None
    return {name: str(getattr(sides, name)) for name in ("projection", "accessibility") if hasattr(sides, name)}


def _versions() -> dict[str, str]:
    from ..measure.placement import library_versions

    try:
        return {"drift_suite": __version__, **library_versions()}
    except ImportError:  # torch or transformers missing: a bad-input error can come before they matter
        return {"drift_suite": __version__}


def _skeleton(runner: str, exit_code: int, checkpoint: str | None, has_outcome: bool) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "drift_suite", "version": __version__},
        "verdict": verdict_for(exit_code, has_outcome),
        "exit_code": int(exit_code),
        "created": _now(),
        "runner": runner,
        "error": None,
        "checkpoint": {"spec": checkpoint, "is_run": False, "targets": []},
        "baseline": None,
        "placement": None,
        "decoder": [],
        "thresholds": None,
        "sides": None,
        "target_layer": None,
        "summary": {"checks": 0, "passed": 0, "warnings": 0, "failed": 0},
        "checks": [],
        "report": None,
        "versions": _versions(),
        "provenance": {"git": git_provenance()},
        "timings": {},
    }


def build_results(outcome: "DriftOutcome", exit_code: int, runner: str = "pytest", report: str | Path | None = None) -> dict[str, Any]:
    """The results dict of a run that measured: every gate check (worst step), placements, provenance."""
    from ..gate.baseline import describe_placement
    from .report_data import target_layer

    baseline = outcome.baseline
    manifest = baseline.manifest
    checkpoint_of_step = {result.step: result.checkpoint for result in outcome.steps}
    checks = sorted(outcome.gate_checks(), key=lambda c: (c.passed, not c.warning, -c.severity))
    records = [check_record(c, checkpoint_of_step.get(c.step)) for c in checks]
    tensors = str(manifest.get("files", {}).get("tensors", ""))
    baseline_id = re.fullmatch(r"baseline-([0-9a-f]+)\.safetensors", tensors)
    placement = outcome.placement
    data = _skeleton(runner, exit_code, outcome.checkpoint, has_outcome=True)
    data.update({
        "checkpoint": {
            "spec": outcome.checkpoint,
            "is_run": outcome.is_run,
            "targets": [{"step": r.step, "path": r.checkpoint, "weights_sha256": r.measurement.weights_digest or None,
                         "decoder": r.measurement.decoder, "from_cache": bool(r.measurement.from_cache)} for r in outcome.steps],
        },
        "baseline": {
            "dir": outcome.baseline_dir,
            "id": baseline_id.group(1) if baseline_id else None,
            "model_id": manifest["model"].get("model_id"),
            "weights_sha256": manifest["model"].get("weights_sha256"),
            "created": manifest.get("created"),
            "placement": describe_placement(manifest["model"]),
            "asserted_layers": [int(layer) for layer in baseline.asserted_layers],
            "persona_set": {k: v for k, v in manifest["persona_set"].items() if k != "roles"},
            "provenance": manifest.get("provenance"),
            "updated": list(outcome.baseline_update) if outcome.baseline_update else None,
        },
        "placement": None if placement is None else {
            "device": placement.device, "device_type": placement.device_type, "dtype": placement.dtype,
            "gpu_name": placement.gpu_name, "device_map": placement.device_map, "description": placement.describe(),
        },
        "decoder": outcome.decoder_notes(),
        "thresholds": {k: float(v) for k, v in vars(outcome.config.thresholds).items()},
        "sides": sides_record(outcome.config),
        "target_layer": target_layer(baseline.asserted_layers) if baseline.asserted_layers else None,
        "summary": {
            "checks": len(records),
            "passed": sum(r["passed"] for r in records),
            "warnings": sum(r["warning"] for r in records),
            "failed": sum(not r["passed"] for r in records),
        },
        "checks": records,
        "report": str(report) if report is not None else None,
        "timings": {name: _finite(seconds) for name, seconds in outcome.timings.items()},
    })
    return data


def error_results(message: str, exit_code: int, runner: str = "pytest", checkpoint: str | None = None) -> dict[str, Any]:
    """The results dict of a run that stopped without a verdict (exit 3 or 4): its one line, no checks."""
    data = _skeleton(runner, exit_code, checkpoint, has_outcome=False)
    data["error"] = {"message": message, "kind": _error_kind(exit_code)}
    return data


def check_output_dir(folder: str | Path, what: str) -> None:
    """Refuse a dir that cannot be made or written, before anything is measured (one line, exit 4)."""
    path = Path(folder)
    probe = path / f".drift-suite-write-probe-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ResultsError(f"cannot write {what} to {path}/ ({write_failure(exc)})") from None


def check_output_file(path: str | Path, what: str) -> None:
    """Refuse an output file whose dir cannot be written, or that names a dir (one line, exit 4)."""
    target = Path(path)
    if target.is_dir():
        raise ResultsError(f"cannot write {what} to {target}: it is a directory")
    check_output_dir(target.parent, what)


def write_results(data: dict[str, Any], path: str | Path) -> Path:
    """Write ``data`` as indented JSON, atomically; a failed write is a one-line :class:`ResultsError`."""
    target = Path(path)
    try:
        atomic_write_bytes(target, json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False).encode() + b"\n")
    except OSError as exc:
        raise ResultsError(f"cannot write results to {target} ({write_failure(exc)})") from None
    return target


def read_results(path: str | Path) -> dict[str, Any]:
    """A results JSON, checked against the schema; anything else is a one-line :class:`ResultsError`."""
    source = Path(path)
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsError(f"{source}: no such results file") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ResultsError(f"{source}: not a drift_suite results JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict) or "schema_version" not in data or "verdict" not in data:
        raise ResultsError(f"{source}: not a drift_suite results JSON (no schema_version and verdict)")
    if data["schema_version"] != SCHEMA_VERSION:
        raise ResultsError(
            f"{source}: results schema_version {data['schema_version']!r}; this drift_suite {__version__} reads version {SCHEMA_VERSION}"
        )
    problems = schema_errors(data, load_schema())
    if problems:
        raise ResultsError(f"{source}: not a valid drift_suite results JSON ({problems[0]})")
    return data


# -- a small JSON Schema validator ---------------------------------------------------------------------
# The keywords results-v1.schema.json uses (type, const, enum, required, properties, additionalProperties,
# items, minimum, oneOf, $ref to #/$defs). jsonschema is a test dependency, not a runtime one; the tests
# check that both agree on real outputs and on broken ones.

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def schema_errors(value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None, where: str = "$") -> list[str]:
    """Where ``value`` breaks ``schema`` (the subset of JSON Schema the results schema uses); [] when valid."""
    root = root if root is not None else schema
    if "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/$defs/"):
            return [f"{where}: unsupported $ref {ref}"]
        return schema_errors(value, root["$defs"][ref.split("/")[-1]], root, where)
    if "const" in schema and value != schema["const"]:
        return [f"{where}: expected {schema['const']!r}, got {value!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} is not one of {schema['enum']}"]
    if "oneOf" in schema:
        matches = sum(not schema_errors(value, option, root, where) for option in schema["oneOf"])
        if matches != 1:
            return [f"{where}: matches {matches} of the allowed forms, not exactly one"]
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](value) for t in types):
            return [f"{where}: expected {' or '.join(types)}, got {type(value).__name__}"]
    errors: list[str] = []
    if isinstance(value, (int, float)) and not isinstance(value, bool) and "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{where}: {value} is below {schema['minimum']}")
    if isinstance(value, dict):
        errors += [f"{where}: missing {key!r}" for key in schema.get("required", []) if key not in value]
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                errors += schema_errors(item, properties[key], root, f"{where}.{key}")
            elif extra is False:
                errors.append(f"{where}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                errors += schema_errors(item, extra, root, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            errors += schema_errors(item, schema["items"], root, f"{where}[{index}]")
    return errors
