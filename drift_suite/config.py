"""Settings of a drift check: thresholds, asserted layers, design and generation, from pyproject and options.

Precedence: built-in defaults < ``[tool.drift_suite]`` in the nearest ``pyproject.toml`` < command-line
options. Unknown keys are rejected so a typo never silently falls back to a default.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .conversations import Design
from .errors import DriftSuiteError
from .extract import GenerationSettings


@dataclass(frozen=True)
class Thresholds:
    """When a difference from the baseline counts as drift. See README "Thresholds" for the measurements."""

    k_sigma: float = 3.0
    """Projection and accessibility fail beyond ``k_sigma`` bootstrap standard deviations from the baseline ..."""
    k_rotation: float = 1.5
    """... the rotation beyond ``k_rotation`` × the bootstrap RMS angle (an angle between two noisy estimates
    of one direction concentrates near that RMS instead of near 0, so it takes a multiple, not k σ) ..."""
    min_projection_frac: float = 0.05
    """... and, for the projection, more than this fraction of the axis length at that layer,"""
    min_angle_deg: float = 3.0
    """for the rotation, more than this many degrees,"""
    min_accessibility: float = 0.15
    """and for accessibility, more than this from the baseline's ratio of 1.0."""


@dataclass(frozen=True)
class DriftConfig:
    thresholds: Thresholds = field(default_factory=Thresholds)
    layers: str | tuple[int, ...] = "auto"
    """Asserted layers: ``"auto"`` (the middle band, see :func:`resolve_layers`) or explicit indices."""
    design: Design = field(default_factory=Design)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    persona_set: str = "builtin"
    n_boot: int = 200
    device: str = "auto"
    """``auto`` (the GPU where there is one), ``cpu``, ``cuda`` or ``cuda:N``; see :mod:`drift_suite.placement`."""
    dtype: str = "auto"
    """``auto`` (bfloat16 on a GPU that supports it, else float32), ``float32``, ``bfloat16`` or ``float16``."""
    device_map: str | None = None
    """``"auto"`` shards a model too large for one GPU over all visible GPUs."""


def resolve_layers(spec: str | tuple[int, ...] | list[int], num_layers: int) -> list[int]:
    """Asserted layer indices. ``"auto"`` is the band from 55 % to 90 % of depth.

    On the demo model the projection noise floor is at most 4.7 % of the axis length in that band and
    6-9 % below it (docs/noise-floor.md); the last layers are left out because they mostly encode the
    next-token distribution rather than the persona.
    """
    if spec == "auto" or spec is None:
        low = min(round(0.55 * num_layers), num_layers - 1)
        high = max(min(round(0.9 * num_layers), num_layers), low + 1)
        return list(range(low, high))
    if isinstance(spec, str):
        try:
            spec = tuple(int(part) for part in spec.replace(" ", "").split(",") if part)
        except ValueError:
            raise DriftSuiteError(f"layers: expected 'auto' or comma-separated integers, got {spec!r}") from None
    layers = [layer % num_layers if layer < 0 else layer for layer in spec]
    bad = [layer for layer in layers if not 0 <= layer < num_layers]
    if bad or not layers:
        raise DriftSuiteError(f"layers {list(spec)}: the model has layers 0..{num_layers - 1}")
    return sorted(set(layers))


def find_pyproject(start: Path) -> Path | None:
    for folder in [start, *start.parents]:
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _apply(obj: Any, values: dict[str, Any], where: str) -> Any:
    known = {f.name for f in fields(obj)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise DriftSuiteError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    return replace(obj, **values)


def load_config(start: Path | None = None, overrides: dict[str, Any] | None = None) -> DriftConfig:
    """Defaults, then ``[tool.drift_suite]`` (with sub-tables thresholds/design/generation), then overrides."""
    config = DriftConfig()
    pyproject = find_pyproject(start or Path.cwd())
    table: dict[str, Any] = {}
    if pyproject is not None:
        try:
            table = tomllib.loads(pyproject.read_text()).get("tool", {}).get("drift_suite", {})
        except tomllib.TOMLDecodeError as exc:
            raise DriftSuiteError(f"{pyproject}: invalid TOML ({exc})") from None
    merged = {**table, **(overrides or {})}
    nested = {}
    for name, cls_value in (("thresholds", config.thresholds), ("design", config.design), ("generation", config.generation)):
        section = dict(table.get(name, {}))
        section.update((overrides or {}).get(name, {}))
        nested[name] = _apply(cls_value, section, f"[tool.drift_suite.{name}]")
        merged.pop(name, None)
    if "layers" in merged and isinstance(merged["layers"], list):
        merged["layers"] = tuple(merged["layers"])
    config = _apply(config, merged, "[tool.drift_suite]")
    return replace(config, **nested)


def config_from_options(
    start: Path,
    layers: str | None = None,
    k_sigma: float | None = None,
    max_batch_tokens: int | None = None,
    thorough: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    device_map: str | None = None,
) -> DriftConfig:
    """The config for command-line options (pytest's or the CLI's) over ``pyproject.toml`` and defaults."""
    overrides: dict[str, Any] = {}
    for name, value in (("device", device), ("dtype", dtype), ("device_map", device_map)):
        if value:
            overrides[name] = value
    if layers:
        overrides["layers"] = layers
    if k_sigma:
        overrides["thresholds"] = {"k_sigma": k_sigma}
    if max_batch_tokens:
        overrides["generation"] = {"max_batch_tokens": max_batch_tokens}
    config = load_config(start, overrides)
    return replace(config, design=Design.thorough()) if thorough else config
