#!/usr/bin/env python
"""How often the percentile-bootstrap CI of Spearman's ρ covers the true ρ, per number of pairs n.

The report shows reward ↔ drift as ρ with a 95 % interval over a run's saved checkpoints, often only a
handful. This measures from which n that interval means what it says, which sets
``drift_suite.common.metrics.MIN_PAIRS_FOR_CI``. Pairs are drawn from a bivariate normal with Pearson r, whose
Spearman ρ is (6/π)·asin(r/2) (Pearson 1907).

    python scripts/spearman_ci_coverage.py                  # the table in docs/validation.md
    python scripts/spearman_ci_coverage.py --datasets 200   # quicker, noisier
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drift_suite.common.metrics import spearman, spearman_bootstrap  # noqa: E402


def coverage(n: int, r: float, datasets: int, n_boot: int, level: float, seed: int) -> tuple[float, float]:
    """(share of intervals holding the true ρ, share whose interval has ρ̂ on or outside a bound)."""
    rng = np.random.default_rng(seed)
    true_rho = 6 / math.pi * math.asin(r / 2)
    tail = (1 - level) / 2 * 100
    covered = degenerate = 0
    for k in range(datasets):
        xy = rng.multivariate_normal([0, 0], [[1, r], [r, 1]], size=n)
        samples = spearman_bootstrap(xy[:, 0], xy[:, 1], n_boot, seed=k)
        samples = samples[~np.isnan(samples)]
        low, high = np.percentile(samples, [tail, 100 - tail])
        covered += low <= true_rho <= high
        degenerate += not low < spearman(xy[:, 0], xy[:, 1]) < high
    return covered / datasets, degenerate / datasets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=list(range(4, 15)), help="numbers of pairs")
    parser.add_argument("--r", type=float, nargs="+", default=[0.0, 0.5, 0.8], help="Pearson r of the draws")
    parser.add_argument("--datasets", type=int, default=400, help="datasets per (n, r)")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--level", type=float, default=0.95)
    args = parser.parse_args(argv)
    print(f"coverage of the {args.level:.0%} percentile-bootstrap CI of Spearman ρ "
          f"({args.datasets} datasets per cell, {args.n_boot} resamples); in brackets: share with ρ̂ on a bound")
    print("| n | " + " | ".join(f"r = {r} (ρ = {6 / math.pi * math.asin(r / 2):.2f})" for r in args.r) + " |")
    print("|---|" + "---|" * len(args.r))
    for n in args.n:
        cells = [coverage(n, r, args.datasets, args.n_boot, args.level, seed=1000 * n) for r in args.r]
        print(f"| {n} | " + " | ".join(f"{c:.1%} ({d:.0%})" for c, d in cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
