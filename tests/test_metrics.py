"""Known-answer tests of the pure metric functions (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from drift_suite.common import metrics

rng = np.random.default_rng(0)


def rotation_matrix(dim: int, a: np.ndarray, b: np.ndarray, theta_deg: float) -> np.ndarray:
    """Rotate by theta in the plane of orthonormal a, b; identity elsewhere."""
    t = np.radians(theta_deg)
    return (
        np.eye(dim)
        + (np.cos(t) - 1) * (np.outer(a, a) + np.outer(b, b))
        + np.sin(t) * (np.outer(b, a) - np.outer(a, b))
    )


def test_axis_is_default_minus_role_mean():
    default = rng.normal(size=(3, 8))
    roles = rng.normal(size=(5, 3, 8))
    np.testing.assert_allclose(metrics.assistant_axis(default, roles), default - roles.mean(0))


def test_projection_shift_recovers_planted_vector():
    axis = rng.normal(size=(4, 16))
    base = rng.normal(size=(4, 16))
    planted = np.array([0.0, 1.5, -2.0, 0.25])
    other = rng.normal(size=(4, 16))
    other -= np.sum(other * metrics.unit(axis), -1, keepdims=True) * metrics.unit(axis)  # orthogonal part
    moved = base + planted[:, None] * metrics.unit(axis) + other
    np.testing.assert_allclose(metrics.projection_shift(base, moved, axis), planted, atol=1e-12)


@pytest.mark.parametrize("theta", [0.0, 1.0, 7.5, 45.0, 90.0, 170.0])
def test_angle_recovers_planted_rotation(theta):
    dim = 12
    axis = rng.normal(size=dim)
    a = axis / np.linalg.norm(axis)
    b = rng.normal(size=dim)
    b -= b @ a * a
    b /= np.linalg.norm(b)
    rotated = rotation_matrix(dim, a, b, theta) @ axis
    assert metrics.angle_deg(axis, rotated) == pytest.approx(theta, abs=1e-6)


def test_accessibility_known_ratios():
    default = rng.normal(size=(2, 8))
    roles = default[None] + rng.normal(size=(3, 2, 8))
    scale = np.array([1.0, 0.0, 0.5])  # unchanged, unreachable, half as far
    moved_roles = default[None] + scale[:, None, None] * (roles - default[None])
    np.testing.assert_allclose(metrics.accessibility(default, roles, default, moved_roles), scale, atol=1e-12)
    shifted = 3.0 * rng.normal(size=(2, 8))  # a global shift moves default and roles alike: no change
    np.testing.assert_allclose(metrics.accessibility(default, roles, default + shifted, roles + shifted), 1.0, atol=1e-12)


def test_accessibility_layer_pooling_uses_only_given_layers():
    default = np.zeros((3, 4))
    roles = np.ones((1, 3, 4))
    moved = roles.copy()
    moved[0, 2] = 0.0  # the role stopped moving layer 2 only
    assert metrics.accessibility(default, roles, default, moved, [0, 1])[0] == pytest.approx(1.0)
    assert metrics.accessibility(default, roles, default, moved, [2])[0] == pytest.approx(0.0)
    assert metrics.accessibility(default, roles, default, moved)[0] == pytest.approx(2 / 3)


def test_spearman_exact_values():
    assert metrics.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert metrics.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # 1 - 6 Σd² / (n(n²-1)) with ranks (1,2,3,4,5) vs (2,1,4,3,5): Σd² = 4 → 0.8
    assert metrics.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert np.isnan(metrics.spearman([1, 2, 3], [5, 5, 5]))


def test_spearman_ties_use_average_ranks():
    from scipy.stats import spearmanr

    x, y = [1, 2, 2, 3, 5, 5, 7], [3, 1, 4, 1, 5, 9, 2]
    assert metrics.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)


def test_spearman_ci_brackets_estimate():
    x = np.arange(12.0)
    y = x + rng.normal(scale=2.0, size=12)
    low, high = metrics.spearman_bootstrap_ci(x, y, n_boot=500)
    assert low <= metrics.spearman(x, y) <= high
    assert -1.0 <= low < high <= 1.0


def test_noise_floor_scales_with_noise_and_shrinks_with_samples():
    def sample(noise: float, per_group: int) -> tuple[np.ndarray, np.ndarray]:
        centres = {"default": np.ones((2, 6)), "a": -np.ones((2, 6)), "b": np.zeros((2, 6))}
        labels = np.repeat(list(centres), per_group)
        means = np.stack([centres[label] + noise * rng.normal(size=(2, 6)) for label in labels])
        return means, labels

    floors = {}
    for noise, n in [(0.1, 16), (0.4, 16), (0.1, 64)]:
        means, labels = sample(noise, n)
        floors[noise, n] = metrics.bootstrap_noise_floor(means, labels, ["a", "b"], "default", [0, 1], n_boot=300)
    # standard error ∝ noise / sqrt(n): 4x noise → ~4x, 4x samples → ~1/2
    ratio_noise = floors[0.4, 16].projection.mean() / floors[0.1, 16].projection.mean()
    ratio_n = floors[0.1, 64].projection.mean() / floors[0.1, 16].projection.mean()
    assert 3.0 < ratio_noise < 5.3
    assert 0.35 < ratio_n < 0.7
    # the standard error of a mean of 16 samples with per-coordinate σ=0.1 along a unit direction is 0.1/4
    assert floors[0.1, 16].projection.mean() == pytest.approx(0.1 / 4, rel=0.3)


def test_pca_signs_are_deterministic():
    vectors = rng.normal(size=(10, 5))
    mean, components, explained = metrics.pca_fit(vectors)
    _, components2, _ = metrics.pca_fit(vectors[::-1].copy())
    np.testing.assert_allclose(components, components2, atol=1e-10)
    coords = metrics.pca_transform(vectors, mean, components)
    assert coords.shape == (10, 2)
    assert np.var(coords[:, 0]) >= np.var(coords[:, 1])
    assert explained[0] >= explained[1] and explained.sum() <= 1.0


def test_spearman_bootstrap_equals_resampling_by_hand():
    x, y = rng.normal(size=9), rng.normal(size=9)
    index = np.random.default_rng(4).integers(0, 9, (50, 9))
    by_hand = [metrics.spearman(x[i], y[i]) for i in index]
    np.testing.assert_allclose(metrics.spearman_bootstrap(x, y, n_boot=50, seed=4), by_hand, equal_nan=True)


def test_spearman_ci_only_where_the_bootstrap_has_support():
    # 4 saved steps (as in the demo, docs/demo.md): too few for an interval
    reward, drift = np.array([0.1, 0.4, 0.2, 0.5]), np.array([1.0, 2.0, 3.0, 4.0])
    assert metrics.spearman(reward, drift) == pytest.approx(0.8)
    assert all(np.isnan(metrics.spearman_bootstrap_ci(reward, drift)))
    # a perfectly monotone sample: every resample gives 1, and "[1, 1]" would claim certainty
    steps = np.arange(12.0)
    assert all(np.isnan(metrics.spearman_bootstrap_ci(steps, steps ** 2)))
    assert all(np.isnan(metrics.spearman_bootstrap_ci(steps[:4], steps[:4] ** 2, min_pairs=0)))  # degenerate, not short
    # enough noisy pairs: a real interval around the estimate
    x = np.arange(float(metrics.MIN_PAIRS_FOR_CI))
    y = x + np.random.default_rng(1).normal(scale=3.0, size=len(x))
    low, high = metrics.spearman_bootstrap_ci(x, y)
    assert low < metrics.spearman(x, y) < high and -1 <= low and high <= 1
    assert all(np.isnan(metrics.spearman_bootstrap_ci(x[:-1], y[:-1])))  # one pair fewer than the minimum
