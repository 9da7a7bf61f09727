"""Threshold calibration: how far perturbed copies of the demo model move each metric, in noise-floor units.

    python scripts/calibrate_thresholds.py [--model demo/smollm2-135m-instruct] [--baseline-dir baselines]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from drift_suite.gate.baseline import load_baseline
from drift_suite.gate.compare import compare
from drift_suite.gate.config import DriftConfig
from drift_suite.measure.measurement import measure
from drift_suite.measure.models import decoder_layers, load_model
from drift_suite.measure.personas import builtin_persona_set

PERTURBATIONS = [("all layers", range(0, 30), 1e-3), ("all layers", range(0, 30), 1e-2), ("all layers", range(0, 30), 3e-2),
                 ("layers 20-29", range(20, 30), 0.1), ("layers 20-29", range(20, 30), 0.3)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo/smollm2-135m-instruct")
    parser.add_argument("--baseline-dir", default="baselines")
    args = parser.parse_args()
    config = DriftConfig()
    loaded = load_model(args.model)
    baseline = load_baseline(args.baseline_dir)
    layers = baseline.asserted_layers
    axis_norm = np.linalg.norm(baseline.axis, axis=-1)
    original = {name: tensor.clone() for name, tensor in loaded.model.state_dict().items()}
    print("| perturbation | projection max (σ) | shift max (% axis) | rotation max (× RMS) | rotation max (°) "
          "| accessibility max (σ) | failing checks (proj / rot / access) |")
    print("|---|---|---|---|---|---|---|")
    for where, perturbed_layers, scale in PERTURBATIONS:
        loaded.model.load_state_dict(original)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for index, layer in enumerate(decoder_layers(loaded.model)):
                if index in perturbed_layers:
                    for weight in layer.parameters():
                        if weight.ndim == 2:
                            weight.add_(torch.randn(weight.shape, generator=generator) * weight.std() * scale)
        measurement = measure(loaded, builtin_persona_set(), config.design, config.generation, progress=False)
        result = compare(baseline, measurement, config.thresholds)
        shift = np.abs(result.projection_shift)
        failed = [sum(not c.passed for c in result.checks_for(f)) for f in ("projection", "rotation", "accessibility")]
        print(f"| noise {scale:g} × std, {where} | {(shift / baseline.noise.projection)[layers].max():.1f} "
              f"| {100 * (shift / axis_norm)[layers].max():.1f} | {(result.rotation_deg / baseline.noise.angle_deg)[layers].max():.2f} "
              f"| {result.rotation_deg[layers].max():.1f} | {(np.abs(result.accessibility - 1) / baseline.noise.accessibility).max():.1f} "
              f"| {failed[0]}/{len(layers)} · {failed[1]}/{len(layers)} · {failed[2]}/{len(baseline.roles)} |")


if __name__ == "__main__":
    main()
