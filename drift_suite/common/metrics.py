"""Drift metrics: pure numpy functions on activation means, testable without a model.

Shapes: ``L`` layers, ``H`` hidden size, ``R`` roles, ``N`` conversations. Vectors per layer are ``(L, H)``.
The Assistant Axis follows Lu et al., "The Assistant Axis" (2026): mean activation under the default
assistant prompts minus the mean over role-play personas, per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EPS = 1e-12


def assistant_axis(default_mean: np.ndarray, role_means: np.ndarray) -> np.ndarray:
    """``default_mean (L,H) - mean(role_means (R,L,H))``: points from the role-play cloud to the assistant."""
    return default_mean - role_means.mean(axis=0)


def unit(vectors: np.ndarray) -> np.ndarray:
    """Normalise along the last axis."""
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), _EPS)


def project(vectors: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Coordinate of ``vectors (..., L, H)`` along the unit ``axis (L, H)``, per layer: ``(..., L)``."""
    return np.einsum("...lh,lh->...l", vectors, unit(axis))


def projection_shift(base_default: np.ndarray, checkpoint_default: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """How far the default persona moved along the baseline axis, per layer (negative = away from assistant)."""
    return project(checkpoint_default - base_default, axis)


def angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle in degrees between ``a`` and ``b`` along the last axis (e.g. per layer for ``(L, H)``)."""
    cos = np.sum(unit(a) * unit(b), axis=-1)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def accessibility(
    base_default: np.ndarray,
    base_roles: np.ndarray,
    checkpoint_default: np.ndarray,
    checkpoint_roles: np.ndarray,
    layers: list[int] | np.ndarray | None = None,
) -> np.ndarray:
    """Per role: how far role-play still moves the model from its default, along the role's baseline direction.

    The baseline direction of role ``r`` is ``base_roles[r] - base_default``; the checkpoint's move is
    ``checkpoint_roles[r] - checkpoint_default``. The ratio of the move's component along the direction to
    the direction's length is 1.0 when nothing changed and 0.0 when the role no longer moves the model.
    Pooled over ``layers`` (all when None) by summing dot products, so a layer weighs by its own scale.
    Returns ``(R,)``.
    """
    index = slice(None) if layers is None else np.asarray(layers)
    base_move = (base_roles - base_default[None])[:, index]
    checkpoint_move = (checkpoint_roles - checkpoint_default[None])[:, index]
    numerator = np.einsum("rlh,rlh->r", checkpoint_move, base_move)
    denominator = np.einsum("rlh,rlh->r", base_move, base_move)
    return numerator / np.maximum(denominator, _EPS)


def group_means(means: np.ndarray, labels: np.ndarray, groups: list[str]) -> np.ndarray:
    """Mean of ``means (N, L, H)`` over the rows of each group in ``groups``: ``(len(groups), L, H)``."""
    return np.stack([means[labels == g].mean(axis=0) for g in groups])


@dataclass
class NoiseFloor:
    """Spread of each metric under resampling of the conversations, measured at baseline time."""

    projection: np.ndarray
    """``(L,)`` standard deviation of the default persona's projection on the axis."""
    angle_deg: np.ndarray
    """``(L,)`` root-mean-square angle between the axis and its resampled estimates."""
    accessibility: np.ndarray
    """``(R,)`` standard deviation of each role's accessibility ratio (at least the median over roles)."""
    n_boot: int
    seed: int


def bootstrap_noise_floor(
    means: np.ndarray,
    labels: np.ndarray,
    roles: list[str],
    default_label: str,
    access_layers: list[int] | np.ndarray,
    n_boot: int = 200,
    seed: int = 0,
    projection_axis: np.ndarray | None = None,
) -> NoiseFloor:
    """Stratified bootstrap over conversations (resampled within each persona) of every metric.

    It answers: how much would each number move if the same model had been asked a different draw of
    equally valid conversations? Differences within a few of these are indistinguishable from noise.
    ``projection_axis (L, H)``: the axis the projection is read on (default: the one of ``means`` itself;
    the training probe passes the baseline's when it projects on that).
    """
    rng = np.random.default_rng(seed)
    groups = [default_label, *roles]
    rows_by_group = [np.flatnonzero(labels == g) for g in groups]
    full = group_means(means, labels, groups)
    full_default, full_roles = full[0], full[1:]
    full_axis = assistant_axis(full_default, full_roles)
    on_axis = full_axis if projection_axis is None else projection_axis
    projections, angles, access = [], [], []
    for _ in range(n_boot):
        resampled = np.stack([means[rng.choice(rows, size=len(rows))].mean(axis=0) for rows in rows_by_group])
        default, role_means = resampled[0], resampled[1:]
        projections.append(project(default, on_axis))
        angles.append(angle_deg(assistant_axis(default, role_means), full_axis))
        access.append(accessibility(full_default, full_roles, default, role_means, access_layers))
    access_sigma = np.std(access, axis=0, ddof=1)
    return NoiseFloor(
        projection=np.std(projections, axis=0, ddof=1),
        angle_deg=np.sqrt(np.mean(np.square(angles), axis=0)),
        # A role's spread comes from a handful of conversations, so its own estimate is itself very uncertain;
        # flooring it at the median over roles keeps one lucky, tight role from a hair trigger.
        accessibility=np.maximum(access_sigma, np.median(access_sigma)),
        n_boot=n_boot,
        seed=seed,
    )


MIN_PAIRS_FOR_CI = 7
"""Fewest (x, y) pairs for which :func:`spearman_bootstrap_ci` gives an interval. Below it the percentile
bootstrap of a rank correlation covers the true value far less often than its level says: many resamples
hold only two or three distinct pairs, whose ρ is ±1. Measured by ``scripts/spearman_ci_coverage.py``
(coverage per n in ``docs/noise-floor.md``)."""


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman ρ of each row pair of ``x (B, n)`` and ``y (B, n)``: ``(B,)``, NaN where a row is constant."""
    rx, ry = _ranks_rows(x), _ranks_rows(y)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    denominator = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rx * ry).sum(axis=1) / denominator
    return np.where(denominator > 0, rho, np.nan)


def _ranks_rows(values: np.ndarray) -> np.ndarray:
    """0-based ranks within each row of ``values (B, n)``, ties sharing their average rank."""
    ranks = np.empty(values.shape, float)
    n = values.shape[1]
    chunk = max(1, 4_000_000 // max(n * n, 1))  # bounds the (chunk, n, n) comparison cube's memory
    for start in range(0, len(values), chunk):
        block = values[start:start + chunk]
        below = (block[:, None, :] < block[:, :, None]).sum(axis=2)
        tied = (block[:, None, :] == block[:, :, None]).sum(axis=2)
        ranks[start:start + chunk] = below + (tied - 1) / 2
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    return float(_spearman_rows(np.asarray(x, float)[None], np.asarray(y, float)[None])[0])


def spearman_bootstrap(x: np.ndarray, y: np.ndarray, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """Spearman ρ of ``n_boot`` resamples (with replacement) of the (x, y) pairs: ``(n_boot,)``, NaN where a
    resample is constant on one side."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    index = np.random.default_rng(seed).integers(0, len(x), (n_boot, len(x)))
    return _spearman_rows(x[index], y[index])


def spearman_bootstrap_ci(
    x: np.ndarray, y: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0,
    min_pairs: int = MIN_PAIRS_FOR_CI,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the Spearman correlation over (x, y) pairs.

    ``(nan, nan)`` where the bootstrap lacks the support for an interval: fewer than ``min_pairs`` pairs, or
    a degenerate resampling distribution whose interval does not hold the estimate strictly inside it (e.g.
    ρ = 1 on a monotone sample, where every resample gives 1 and "[1, 1]" would claim certainty).
    """
    if len(x) < max(min_pairs, 3):
        return float("nan"), float("nan")
    samples = spearman_bootstrap(x, y, n_boot, seed)
    samples = samples[~np.isnan(samples)]
    rho = spearman(x, y)
    if not len(samples) or np.isnan(rho):
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    if not low < rho < high:
        return float("nan"), float("nan")
    return float(low), float(high)


def pca_fit(vectors: np.ndarray, n_components: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA of ``vectors (n, H)``: ``(mean (H,), components (k, H), explained variance ratio (k,))``.

    Signs are fixed (largest-magnitude entry positive) because sklearn's are arbitrary across versions.
    """
    from sklearn.decomposition import PCA

    pca = PCA(n_components=min(n_components, *vectors.shape), svd_solver="full").fit(vectors)
    components = pca.components_
    signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])
    return pca.mean_, components * signs[:, None], pca.explained_variance_ratio_


def pca_transform(vectors: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Coordinates of ``vectors (n, H)`` in a fitted PCA: ``(n, k)``."""
    return (vectors - mean) @ components.T
