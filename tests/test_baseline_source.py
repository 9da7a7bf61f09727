"""A baseline comes from the right model: the base of a fine-tuned checkpoint, never the fine-tune itself
unless asked (--baseline-from-checkpoint), and the missing-baseline message names that base."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from drift_suite.gate.baseline import load_baseline
from drift_suite.gate.config import config_from_options
from drift_suite.common.errors import BaselineError, CheckpointError
from drift_suite.gate.runner import DriftCheck
from test_plugin import FAST_CONFIG
from tiny import save_tiny_adapter


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("project")
    (folder / "pyproject.toml").write_text(FAST_CONFIG)
    return folder


@pytest.fixture(scope="module")
def fine_tunes(tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """An adapter on the tiny base, and a full fine-tune run dir: run_manifest.json + checkpoint-2/ + final/."""
    folder = tmp_path_factory.mktemp("finetunes")
    adapter = save_tiny_adapter(tiny_checkpoint, folder / "adapter")
    other_base = shutil.copytree(tiny_checkpoint, folder / "moved-base")
    run = folder / "run"
    run.mkdir()
    (run / "run_manifest.json").write_text(json.dumps({"model": str(other_base)}))
    shutil.copytree(tiny_checkpoint, run / "checkpoint-2")
    shutil.copytree(tiny_checkpoint, run / "final")
    return {"adapter": adapter, "run": run, "base": other_base}


def _check(project: Path, checkpoint: Path, baseline_dir: Path, **kwargs) -> DriftCheck:
    return DriftCheck(checkpoint, baseline_dir, config=config_from_options(project), cache_dir=None, progress=False, **kwargs)


@pytest.mark.parametrize("which", ["adapter", "checkpoint-2", "final", "run", "base-model-option"])
def test_missing_baseline_message_names_the_base_model(project, fine_tunes, tiny_checkpoint, tmp_path, which):
    checkpoint = {"adapter": fine_tunes["adapter"], "checkpoint-2": fine_tunes["run"] / "checkpoint-2",
                  "final": fine_tunes["run"] / "final", "run": fine_tunes["run"],
                  "base-model-option": fine_tunes["adapter"]}[which]
    base_model = str(tmp_path / "given-base") if which == "base-model-option" else None
    expected = {"adapter": tiny_checkpoint}.get(which, fine_tunes["base"])
    expected = base_model or expected
    with pytest.raises(BaselineError) as error:
        _check(project, checkpoint, tmp_path / "none", base_model=base_model).stored_baseline()
    message = str(error.value)
    assert f"pytest suites/ --checkpoint {expected} --update-baselines --baseline-dir {tmp_path / 'none'}" in message
    assert f"--checkpoint {checkpoint} " not in message


def test_missing_baseline_of_a_model_of_its_own_names_itself(project, tiny_checkpoint, tmp_path):
    with pytest.raises(BaselineError, match=f"--checkpoint {tiny_checkpoint} --update-baselines"):
        _check(project, tiny_checkpoint, tmp_path / "none").stored_baseline()


def test_update_on_an_adapter_measures_its_base(project, fine_tunes, tiny_checkpoint, tmp_path):
    adapter = fine_tunes["adapter"]
    from_adapter = _check(project, adapter, tmp_path / "via-adapter", update_baseline=True).run()
    assert f"written from {tiny_checkpoint} (base model of {adapter}, from its adapter_config.json)" in from_adapter.baseline_update
    _check(project, tiny_checkpoint, tmp_path / "of-base", update_baseline=True).run()
    via_adapter, of_base = load_baseline(tmp_path / "via-adapter"), load_baseline(tmp_path / "of-base")
    assert via_adapter.manifest["model"]["adapter"] is None
    assert via_adapter.manifest["model"]["weights_sha256"] == of_base.manifest["model"]["weights_sha256"]
    assert (via_adapter.default_mean == of_base.default_mean).all()
    # The gate then compares the adapter with its base's baseline: the adapter's own weights were measured.
    assert from_adapter.final.measurement.weights_digest != of_base.manifest["model"]["weights_sha256"]


def test_baseline_from_checkpoint_opts_out(project, fine_tunes, tmp_path):
    adapter = fine_tunes["adapter"]
    outcome = _check(project, adapter, tmp_path / "own", update_baseline=True, baseline_from_checkpoint=True).run()
    assert f"written from {adapter} itself (--baseline-from-checkpoint)" in outcome.baseline_update
    own = load_baseline(tmp_path / "own")
    assert own.manifest["model"]["adapter"] == str(adapter)
    assert own.manifest["model"]["weights_sha256"] == outcome.final.measurement.weights_digest


def test_update_on_a_full_fine_tune_in_a_run_measures_the_run_base(project, fine_tunes):
    check = _check(project, fine_tunes["run"] / "checkpoint-2", Path("unused"), update_baseline=True)
    assert check.reference_model() == str(fine_tunes["base"])
    assert check.reference_description() == (
        f"{fine_tunes['base']} (base model of {fine_tunes['run'] / 'checkpoint-2'}, from {fine_tunes['run'] / 'run_manifest.json'})"
    )


def test_baseline_from_checkpoint_refuses_a_run_dir(project, fine_tunes):
    with pytest.raises(CheckpointError, match="takes one checkpoint, not a run dir"):
        _check(project, fine_tunes["run"], Path("unused"), update_baseline=True, baseline_from_checkpoint=True).validate()
