"""Compare a checkpoint's measurement with a baseline: one :class:`Check` per metric and layer or persona."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .baseline import Baseline
from .config import BOTH, SIDES, Sides, Thresholds, fails_on_side, side_of
from ..measure.measurement import Measurement
from ..common.metrics import accessibility, angle_deg, assistant_axis, project

PROJECTION, ROTATION, ACCESSIBILITY = "projection", "rotation", "accessibility"
__all__ = ["ACCESSIBILITY", "BOTH", "PROJECTION", "ROTATION", "SIDES", "Check", "Comparison", "DriftWarning", "compare",
           "verdict_line"]


class DriftWarning(UserWarning):
    """A check beyond its threshold on a side that does not fail (see :class:`~drift_suite.gate.config.Sides`).

    The suites' tests emit it, so it shows in pytest's warnings summary; ``-W error::drift_suite.gate.compare.DriftWarning``
    makes it fail like the other side.
    """


@dataclass
class Check:
    """One asserted number: passes when ``|value - expected| <= threshold``."""

    family: str
    subject: str
    """``"layer 12"`` or a persona name."""
    value: float
    expected: float
    threshold: float
    noise: float
    """One noise-floor unit for this metric, so ``(value - expected) / noise`` reads in σ."""
    unit: str = ""
    step: int | None = None
    detail: str = ""
    failing_side: str = BOTH
    """Which direction of a change beyond the threshold fails: ``both``, or one side of the family
    (projection ``toward_roles``/``toward_assistant``, accessibility ``more``/``less``); a change beyond the
    threshold on the other side is a warning. Rotation has no side and always fails."""

    @property
    def deviation(self) -> float:
        return abs(self.value - self.expected)

    @property
    def exceeded(self) -> bool:
        """The change is beyond the threshold, in either direction (not-finite values count as beyond)."""
        return not bool(self.deviation <= self.threshold)

    @property
    def side(self) -> str:
        """The side the value moved to, as named in ``failing_side`` ("" without a sign or change)."""
        return side_of(self.family, self.value - self.expected)

    @property
    def passed(self) -> bool:
        """Within tolerance, or beyond it only on a side that does not fail (then :attr:`warning`)."""
        return not self.exceeded or not fails_on_side(self.family, self.value - self.expected, self.failing_side)

    @property
    def warning(self) -> bool:
        """Beyond the threshold on a side that does not fail: listed, never a failure."""
        return self.exceeded and self.passed

    @property
    def status(self) -> str:
        """``"pass"``, ``"warn"`` or ``"fail"``."""
        return "fail" if not self.passed else "warn" if self.warning else "pass"

    @property
    def severity(self) -> float:
        """``|Δ| / threshold``: above 1 fails; ranks checks of different metrics on one scale."""
        return self.deviation / self.threshold if self.threshold > 0 else float("inf")

    @property
    def sigmas(self) -> float:
        return self.deviation / self.noise if self.noise > 0 else float("inf")

    @property
    def direction(self) -> str:
        """Which way the value moved, in words ("" for rotation, which has no sign, and for no change).

        The Assistant Axis points from the role-play personas to the assistant (:func:`~.metrics.assistant_axis`),
        so a projection above baseline moved toward the assistant and one below it toward the roles.
        """
        delta = self.value - self.expected
        if not np.isfinite(delta) or delta == 0:
            return ""
        if self.family == PROJECTION:
            return "toward the assistant" if delta > 0 else "toward the roles"
        if self.family == ACCESSIBILITY:
            return "more accessible" if delta > 0 else "less accessible"
        return ""

    def message(self) -> str:
        where = f" at step {self.step}" if self.step is not None else ""
        verdict = "drifted" if not self.passed else "within tolerance"
        if self.warning:
            verdict = f"beyond tolerance, {self.direction} (warning: only {self.failing_side} fails)"
        elif self.direction:
            verdict += f" ({self.direction})" if self.passed else f" {self.direction}"
        return (
            f"{self.family} {self.subject}{where} {verdict}: {self.value:.4g}{self.unit} vs baseline "
            f"{self.expected:.4g}{self.unit} (|Δ| = {self.deviation:.4g}{self.unit} = {self.sigmas:.1f}× noise floor; "
            f"threshold {self.threshold:.4g}{self.unit}){' ' + self.detail if self.detail else ''}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"passed": self.passed, "sigmas": self.sigmas, "deviation": self.deviation,
                               "direction": self.direction, "status": self.status}


def verdict_line(checks: list[Check]) -> str:
    """``PASS (47/47 checks within tolerance)``, ``PASS with 11 warnings (36/47 ...)``, ``FAIL ...``: the summary's verdict.

    Without warnings (always so with the default sides) it is the same text as before sides existed.
    """
    failed = sum(check.status == "fail" for check in checks)
    warned = sum(check.status == "warn" for check in checks)
    verdict = "FAIL" if failed else "PASS"
    if not warned:
        return f"{verdict} ({len(checks) - failed}/{len(checks)} checks within tolerance)"
    plural = "s" if warned != 1 else ""
    failed_text = f"{failed} failed, " if failed else ""
    return (f"{verdict} with {warned} warning{plural} ({len(checks) - failed - warned}/{len(checks)} checks within tolerance, "
            f"{failed_text}{warned} beyond it on a side that only warns)")


@dataclass
class Comparison:
    """All metrics of one checkpoint against the baseline, per layer (all layers) and per persona."""

    projection_baseline: np.ndarray
    """``(L,)`` the baseline default persona on the baseline axis."""
    projection_checkpoint: np.ndarray
    """``(L,)`` the checkpoint's default persona on the baseline axis."""
    projection_threshold: np.ndarray
    rotation_deg: np.ndarray
    rotation_threshold: np.ndarray
    accessibility: np.ndarray
    """``(R,)`` ratio, 1.0 = as reachable as at baseline."""
    accessibility_threshold: np.ndarray
    accessibility_by_layer: np.ndarray
    """``(R, L)`` the same ratio at each layer, for the report's heat map."""
    checks: list[Check] = field(default_factory=list)
    step: int | None = None

    @property
    def projection_shift(self) -> np.ndarray:
        return self.projection_checkpoint - self.projection_baseline

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def checks_for(self, family: str) -> list[Check]:
        return [c for c in self.checks if c.family == family]


def compare(
    baseline: Baseline, measurement: Measurement, thresholds: Thresholds, step: int | None = None, sides: Sides = Sides()
) -> Comparison:
    """Every metric of ``measurement`` against ``baseline``; checks only at the baseline's asserted layers.

    ``sides`` sets each check's ``failing_side``: beyond the threshold on the other side it warns instead of failing.
    """
    axis = baseline.axis
    axis_norm = np.linalg.norm(axis, axis=-1)
    layers = baseline.asserted_layers
    checkpoint_default, checkpoint_roles = measurement.default_mean, measurement.role_means
    base_projection = project(baseline.default_mean, axis)
    checkpoint_projection = project(checkpoint_default, axis)
    noise = baseline.noise
    projection_threshold = np.maximum(thresholds.k_sigma * noise.projection, thresholds.min_projection_frac * axis_norm)
    rotation = angle_deg(axis, assistant_axis(checkpoint_default, checkpoint_roles))
    rotation_threshold = np.maximum(thresholds.k_rotation * noise.angle_deg, thresholds.min_angle_deg)
    access = accessibility(baseline.default_mean, baseline.role_means, checkpoint_default, checkpoint_roles, layers)
    access_threshold = np.maximum(thresholds.k_sigma * noise.accessibility, thresholds.min_accessibility)
    access_by_layer = np.stack(
        [accessibility(baseline.default_mean, baseline.role_means, checkpoint_default, checkpoint_roles, [layer]) for layer in range(len(axis))],
        axis=1,
    )
    checks = []
    for layer in layers:
        checks.append(
            Check(
                "projection", f"layer {layer}", float(checkpoint_projection[layer]), float(base_projection[layer]),
                float(projection_threshold[layer]), float(noise.projection[layer]), step=step,
                failing_side=sides.failing_side(PROJECTION),
                detail=f"[shift {(checkpoint_projection[layer] - base_projection[layer]) / axis_norm[layer]:+.1%} of axis length]",
            )
        )
        checks.append(
            Check(
                "rotation", f"layer {layer}", float(rotation[layer]), 0.0, float(rotation_threshold[layer]),
                float(noise.angle_deg[layer]), unit="°", step=step,
            )
        )
    for index, role in enumerate(baseline.roles):
        checks.append(
            Check(
                "accessibility", role, float(access[index]), 1.0, float(access_threshold[index]),
                float(noise.accessibility[index]), step=step, failing_side=sides.failing_side(ACCESSIBILITY),
            )
        )
    return Comparison(
        projection_baseline=base_projection,
        projection_checkpoint=checkpoint_projection,
        projection_threshold=projection_threshold,
        rotation_deg=rotation,
        rotation_threshold=rotation_threshold,
        accessibility=access,
        accessibility_threshold=access_threshold,
        accessibility_by_layer=access_by_layer,
        checks=checks,
        step=step,
    )
