"""Known-answer tests on a tiny model: plant a vector, a rotation or an unreachable role into the residual
stream, then check the full pipeline (generation, capture, reduction, metrics) measures what was planted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drift_suite.gate.baseline import create_baseline
from drift_suite.gate.compare import compare
from drift_suite.gate.config import Thresholds
from drift_suite.measure.conversations import Design
from drift_suite.measure.extract import GenerationSettings
from drift_suite.measure.measurement import measure
from drift_suite.measure.models import embedding_fingerprint
from planting import add_vector, contains_tokens, planted, rotate, rotation_in_plane

DESIGN = Design(default_questions=4, role_prompts=2, role_questions=3)
SETTINGS = GenerationSettings(max_new_tokens=12)
STRICT = Thresholds(k_sigma=4.0, min_projection_frac=0.0, min_angle_deg=0.0, min_accessibility=0.0)


@pytest.fixture()
def measured(tiny, tiny_personas):
    """The tiny model's baseline (all layers asserted) and a function measuring it again, uncached."""
    reference = measure(tiny, tiny_personas, DESIGN, SETTINGS, cache_dir=None, progress=False)
    layers = list(range(tiny.info.num_layers))
    baseline = create_baseline(reference, tiny_personas, DESIGN, SETTINGS, layers, embedding_fingerprint(tiny.model), n_boot=50)

    def again():
        # hooks do not change the weights, so the cache would wrongly return the unplanted measurement
        return measure(tiny, tiny_personas, DESIGN, SETTINGS, cache_dir=None, progress=False)

    return baseline, reference, again


def test_unchanged_model_measures_zero_drift(measured):
    baseline, _, again = measured
    comparison = compare(baseline, again(), STRICT)
    np.testing.assert_allclose(comparison.projection_shift, 0.0, atol=1e-5)
    np.testing.assert_allclose(comparison.rotation_deg, 0.0, atol=0.05)
    np.testing.assert_allclose(comparison.accessibility, 1.0, atol=1e-5)
    assert comparison.passed


@pytest.mark.parametrize("layer,amount", [(1, 2.0), (2, -0.5), (3, 1.0)])
def test_planted_vector_along_axis_shifts_projection_by_planted_amount(tiny, measured, layer, amount):
    baseline, reference, again = measured
    axis_norm = np.linalg.norm(baseline.axis[layer])
    planted_shift = amount * axis_norm  # in units of the axis length at that layer
    direction = torch.tensor(baseline.axis[layer] / axis_norm)
    with planted(tiny.model, layer, *add_vector(planted_shift * direction)):
        comparison = compare(baseline, again(), STRICT)
    assert comparison.projection_shift[layer] == pytest.approx(planted_shift, rel=0.05)
    # a planted move along the axis (which points at the assistant) is named by its sign
    check = next(c for c in comparison.checks_for("projection") if c.subject == f"layer {layer}")
    assert check.direction == ("toward the assistant" if amount > 0 else "toward the roles")
    assert not check.passed and f"drifted {check.direction}:" in check.message()
    others = [i for i in range(len(baseline.axis)) if i != layer]
    np.testing.assert_allclose(comparison.projection_shift[others], 0.0, atol=1e-4 * axis_norm)
    # the same vector moves default and roles alike: the axis and the roles' reach do not change
    assert comparison.rotation_deg[layer] < 0.1
    np.testing.assert_allclose(comparison.accessibility, 1.0, atol=1e-3)
    failed = [c.subject for c in comparison.checks if not c.passed]
    assert failed == [f"layer {layer}"]


def test_planted_vector_orthogonal_to_axis_does_not_shift_projection(tiny, measured):
    baseline, _, again = measured
    layer = 2
    axis_unit = baseline.axis[layer] / np.linalg.norm(baseline.axis[layer])
    other = np.random.default_rng(1).normal(size=axis_unit.shape)
    other -= other @ axis_unit * axis_unit
    other *= 3 * np.linalg.norm(baseline.axis[layer]) / np.linalg.norm(other)
    with planted(tiny.model, layer, *add_vector(torch.tensor(other))):
        comparison = compare(baseline, again(), STRICT)
    assert abs(comparison.projection_shift[layer]) < 1e-4 * np.linalg.norm(baseline.axis[layer])


@pytest.mark.parametrize("theta", [2.0, 10.0, 35.0])
def test_planted_rotation_is_measured_as_its_angle(tiny, measured, theta):
    baseline, _, again = measured
    layer = 1
    a = torch.tensor(baseline.axis[layer], dtype=torch.float64)
    a /= a.norm()
    b = torch.randn(len(a), dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    b -= (b @ a) * a
    b /= b.norm()
    with planted(tiny.model, layer, *rotate(rotation_in_plane(a, b, theta))):
        comparison = compare(baseline, again(), STRICT)
    assert comparison.rotation_deg[layer] == pytest.approx(theta, abs=1.0)
    others = [i for i in range(len(baseline.axis)) if i != layer]
    assert np.all(comparison.rotation_deg[others] < 0.1)


def test_role_made_unreachable_has_accessibility_near_zero(tiny, tiny_personas, measured):
    baseline, reference, again = measured
    role = "pirate"
    role_index = baseline.roles.index(role)
    offset = baseline.role_means[role_index] - baseline.default_mean  # (L, H): what role-play adds
    # identify the role's conversations by their system prompts' tokens, then remove its offset everywhere
    prompt_filters = [contains_tokens(tiny.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in tiny_personas.roles[role][: DESIGN.role_prompts]]

    def is_role(ids):
        return torch.stack([f(ids) for f in prompt_filters]).any(0)

    from contextlib import ExitStack

    with ExitStack() as stack:
        for layer in range(len(offset)):
            stack.enter_context(planted(tiny.model, layer, *add_vector(-torch.tensor(offset[layer])), row_filter=is_role))
        comparison = compare(baseline, again(), STRICT)
    assert comparison.accessibility[role_index] == pytest.approx(0.0, abs=0.02)
    others = [i for i, r in enumerate(baseline.roles) if r != role]
    np.testing.assert_allclose(comparison.accessibility[others], 1.0, atol=1e-3)
    failed = {c.subject for c in comparison.checks_for("accessibility") if not c.passed}
    assert failed == {role}
