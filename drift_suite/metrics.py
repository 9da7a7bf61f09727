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
) -> NoiseFloor:
    """Stratified bootstrap over conversations (resampled within each persona) of every metric.

    It answers: how much would each number move if the same model had been asked a different draw of
    equally valid conversations? Differences within a few of these are indistinguishable from noise.
    """
    rng = np.random.default_rng(seed)
    groups = [default_label, *roles]
    rows_by_group = [np.flatnonzero(labels == g) for g in groups]
    full = group_means(means, labels, groups)
    full_default, full_roles = full[0], full[1:]
    full_axis = assistant_axis(full_default, full_roles)
    projections, angles, access = [], [], []
    for _ in range(n_boot):
        resampled = np.stack([means[rng.choice(rows, size=len(rows))].mean(axis=0) for rows in rows_by_group])
        default, role_means = resampled[0], resampled[1:]
        projections.append(project(default, full_axis))
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


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    rx, ry = _rank(np.asarray(x, float)), _rank(np.asarray(y, float))
    if np.std(rx) == 0 or np.std(ry) == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _rank(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), float)
    ranks[order] = np.arange(len(values), dtype=float)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman_bootstrap_ci(
    x: np.ndarray, y: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the Spearman correlation over (x, y) pairs."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_boot):
        index = rng.integers(0, len(x), len(x))
        value = spearman(x[index], y[index])
        if not np.isnan(value):
            samples.append(value)
    if not samples:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
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
