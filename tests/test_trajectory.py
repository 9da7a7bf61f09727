"""Drift over a training run: a planted trajectory whose drift grows by a known amount per step is recovered
(monotone projection, the right worst step, the exact Spearman with a planted reward series)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import drift_suite.gate.runner as runner
from drift_suite.gate.config import DriftConfig, Thresholds
from drift_suite.measure.conversations import Design
from drift_suite.measure.extract import GenerationSettings
from drift_suite.common.metrics import spearman
from drift_suite.measure.models import load_model
from drift_suite.outputs.report_data import build_report_data
from planting import add_vector, planted

LAYER = 2
STEPS = [2, 4, 6, 8]
SHIFT_PER_STEP = 0.25  # in axis lengths at LAYER
REWARDS = {1: 0.0, 2: 0.2, 3: 0.3, 4: 0.5, 5: 0.2, 6: 0.2, 7: 0.6, 8: 0.4}  # per save: 0.1, 0.4, 0.2, 0.5
CONFIG = DriftConfig(
    thresholds=Thresholds(k_sigma=3.0, min_projection_frac=0.3),
    layers=(1, 2),
    design=Design(default_questions=3, role_prompts=1, role_questions=2),
    generation=GenerationSettings(max_new_tokens=6),
    n_boot=30,
)


@pytest.fixture()
def run_dir(tiny_checkpoint, tmp_path):
    root = tmp_path / "run"
    for step in STEPS:
        shutil.copytree(tiny_checkpoint, root / f"checkpoint-{step}")
    history = [{"step": s, "reward": r} for s, r in REWARDS.items()] + [{"step": 8, "train_runtime": 1.0}]
    (root / "checkpoint-8" / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    (root / "run_manifest.json").write_text(json.dumps({"model": str(tiny_checkpoint)}))
    return root


def test_planted_trajectory_is_recovered(run_dir, tiny_checkpoint, tiny_personas, tmp_path, monkeypatch):
    baseline_dir = tmp_path / "baseline"
    check = runner.DriftCheck(run_dir, baseline_dir, persona_set=tiny_personas, config=CONFIG, cache_dir=None,
                              update_baseline=True, progress=False)
    baseline, _ = check.write_baseline()
    axis_norm = float(np.linalg.norm(baseline.axis[LAYER]))
    direction = torch.tensor(baseline.axis[LAYER] / axis_norm)

    def load_with_planted_drift(spec, **kwargs):
        loaded = load_model(spec, **kwargs)
        step = int(str(spec).rsplit("-", 1)[1])
        amount = -SHIFT_PER_STEP * axis_norm * step / STEPS[0]  # away from the assistant, growing per save
        # stays planted for as long as the model lives (closing the context would remove the hooks)
        loaded.planted = planted(loaded.model, LAYER, *add_vector(amount * direction))
        loaded.planted.__enter__()
        return loaded

    monkeypatch.setattr(runner, "load_model", load_with_planted_drift)
    check.update_baseline = False
    outcome = check.run()

    assert [r.step for r in outcome.steps] == STEPS
    shifts = np.array([r.comparison.projection_shift[LAYER] for r in outcome.steps])
    expected = -SHIFT_PER_STEP * axis_norm * np.arange(1, len(STEPS) + 1)
    np.testing.assert_allclose(shifts, expected, rtol=0.05)
    assert np.all(np.diff(shifts) < 0), "projection must fall monotonically"

    gate = {(c.family, c.subject): c for c in outcome.gate_checks()}
    worst = gate["projection", f"layer {LAYER}"]
    assert worst.step == STEPS[-1] and not worst.passed
    assert f"at step {STEPS[-1]}" in worst.message()
    assert gate["projection", "layer 1"].passed

    data = build_report_data(outcome)
    trajectory = data["trajectory"]
    assert trajectory["steps"] == [0, *STEPS]
    assert trajectory["worst_step"]["projection"] == STEPS[-1]
    # reward at a saved step = mean reward logged since the previous save
    reward_at_saves = [np.mean([REWARDS[s] for s in REWARDS if prev < s <= step]) for prev, step in zip([0, *STEPS], STEPS)]
    assert trajectory["reward"][1:] == pytest.approx(reward_at_saves)
    drift = [0.0, *(-shifts)]
    exact = spearman(np.array([None, *reward_at_saves])[1:].astype(float), np.array(drift[1:]))
    assert trajectory["spearman"]["rho"] == pytest.approx(exact)
    assert trajectory["spearman"]["rho"] == pytest.approx(0.8)  # ranks (1,3,2,4) vs (1,2,3,4): 1 - 6·2/60
    path = np.array(trajectory["pca"]["steps_xy"])
    assert path.shape == (len(STEPS) + 1, 2)
    distances = np.linalg.norm(path - path[0], axis=1)
    assert np.all(np.diff(distances) > 0), "the default persona moves steadily away in PCA space"
