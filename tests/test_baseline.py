"""Baselines on disk: round trip, atomic writes, and a one-line error for every bad input."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from drift_suite.gate.baseline import (
    MANIFEST,
    check_compatible,
    create_baseline,
    describe_changes,
    load_baseline,
    save_baseline,
)
from drift_suite.measure.conversations import Design
from drift_suite.common.errors import BaselineError
from drift_suite.measure.extract import GenerationSettings
from drift_suite.measure.measurement import measure
from drift_suite.measure.models import embedding_fingerprint
from drift_suite.measure.personas import PersonaSet

DESIGN = Design(default_questions=3, role_prompts=1, role_questions=2)
SETTINGS = GenerationSettings(max_new_tokens=6)


@pytest.fixture()
def made(tiny, tiny_personas, tmp_path):
    measurement = measure(tiny, tiny_personas, DESIGN, SETTINGS, cache_dir=tmp_path / "cache", progress=False)
    fingerprint = embedding_fingerprint(tiny.model)
    baseline = create_baseline(measurement, tiny_personas, DESIGN, SETTINGS, [1, 2], fingerprint, n_boot=20)
    return baseline, measurement, fingerprint


def test_round_trip_keeps_every_number(made, tmp_path):
    baseline, measurement, _ = made
    save_baseline(baseline, tmp_path / "b")
    loaded = load_baseline(tmp_path / "b")
    np.testing.assert_array_equal(loaded.default_mean, measurement.default_mean.astype(np.float32))
    np.testing.assert_array_equal(loaded.role_means, measurement.role_means.astype(np.float32))
    np.testing.assert_array_equal(loaded.noise.projection, baseline.noise.projection.astype(np.float32))
    assert loaded.roles == measurement.roles
    assert loaded.asserted_layers == [1, 2]
    assert loaded.samples == json.loads(json.dumps(baseline.samples))
    manifest = json.loads((tmp_path / "b" / MANIFEST).read_text())
    for key in ("model", "persona_set", "design", "generation", "noise_floor", "versions", "created", "layers"):
        assert key in manifest
    assert manifest["model"]["num_layers"] == 4 and manifest["model"]["hidden_size"] == 32
    assert not list((tmp_path / "b").glob("*.tmp")), "temporary files left behind"


def test_rewrite_replaces_files_and_reports_changes(made, tmp_path):
    baseline, _, _ = made
    save_baseline(baseline, tmp_path / "b")
    changed = replace(baseline, default_mean=baseline.default_mean + 0.5 * baseline.axis / np.linalg.norm(baseline.axis, axis=-1, keepdims=True))
    save_baseline(changed, tmp_path / "b")
    assert len(list((tmp_path / "b").glob("baseline-*.safetensors"))) == 1
    lines = describe_changes(baseline, load_baseline(tmp_path / "b"))
    assert "+0.5" in lines[0]


def test_crash_before_manifest_leaves_old_baseline_whole(made, tmp_path, monkeypatch):
    baseline, _, _ = made
    save_baseline(baseline, tmp_path / "b")
    import drift_suite.gate.baseline as module

    real = module.atomic_write_bytes

    def crash_on_manifest(path: Path, data: bytes) -> None:
        if path.name == MANIFEST:
            raise KeyboardInterrupt("power cut")
        real(path, data)

    monkeypatch.setattr(module, "atomic_write_bytes", crash_on_manifest)
    with pytest.raises(KeyboardInterrupt):
        save_baseline(replace(baseline, default_mean=baseline.default_mean + 1.0), tmp_path / "b")
    monkeypatch.undo()
    np.testing.assert_array_equal(load_baseline(tmp_path / "b").default_mean, baseline.default_mean.astype(np.float32))


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_missing_baseline_names_the_command(tmp_path):
    with pytest.raises(BaselineError) as exc:
        load_baseline(tmp_path / "nope", checkpoint_hint="ckpt/final")
    assert "pytest suites/ --checkpoint ckpt/final --update-baselines --baseline-dir" in _one_line(exc)


@pytest.mark.parametrize(
    "damage",
    ["manifest_not_json", "manifest_missing_files", "tensors_truncated", "tensors_missing", "format_from_future"],
)
def test_corrupt_baseline_is_a_clear_error(made, tmp_path, damage):
    baseline, _, _ = made
    folder = tmp_path / "b"
    save_baseline(baseline, folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    tensors = folder / manifest["files"]["tensors"]
    if damage == "manifest_not_json":
        (folder / MANIFEST).write_text("{not json")
    elif damage == "manifest_missing_files":
        del manifest["files"]
        (folder / MANIFEST).write_text(json.dumps(manifest))
    elif damage == "tensors_truncated":
        tensors.write_bytes(tensors.read_bytes()[:100])
    elif damage == "tensors_missing":
        tensors.unlink()
    elif damage == "format_from_future":
        manifest["format"] = 99
        (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BaselineError) as exc:
        load_baseline(folder)
    assert str(folder) in _one_line(exc)


def test_compatible_checkpoint_passes(made, tiny, tiny_personas):
    baseline, _, fingerprint = made
    check_compatible(baseline, tiny.info.to_dict(), tiny_personas, DESIGN, SETTINGS, fingerprint)


def test_other_hidden_size_is_refused(made, tiny, tiny_personas):
    baseline, _, fingerprint = made
    info = tiny.info.to_dict() | {"hidden_size": 64}
    with pytest.raises(BaselineError, match="4 layers × 32 hidden.*64 hidden") as exc:
        check_compatible(baseline, info, tiny_personas, DESIGN, SETTINGS, fingerprint)
    _one_line(exc)


def test_unrelated_model_with_same_shape_is_refused(made, tiny, tiny_personas):
    baseline, _, fingerprint = made
    other = np.random.default_rng(5).normal(size=fingerprint.shape).astype(np.float32)
    with pytest.raises(BaselineError, match="not a fine-tune") as exc:
        check_compatible(baseline, tiny.info.to_dict(), tiny_personas, DESIGN, SETTINGS, other)
    _one_line(exc)


def test_fine_tune_sized_change_is_accepted(made, tiny, tiny_personas):
    baseline, _, fingerprint = made
    nudged = fingerprint + 0.05 * np.random.default_rng(5).normal(size=fingerprint.shape).astype(np.float32) * fingerprint.std()
    check_compatible(baseline, tiny.info.to_dict(), tiny_personas, DESIGN, SETTINGS, nudged)


def test_other_persona_set_is_refused(made, tiny, tiny_personas):
    baseline, _, fingerprint = made
    other = PersonaSet("other", tiny_personas.default_prompts, {**tiny_personas.roles, "ninja": ("You are a ninja.",)}, tiny_personas.questions)
    with pytest.raises(BaselineError, match="persona set 'tiny'.*'other'") as exc:
        check_compatible(baseline, tiny.info.to_dict(), other, DESIGN, SETTINGS, fingerprint)
    _one_line(exc)


def test_other_generation_settings_are_refused(made, tiny, tiny_personas):
    baseline, _, fingerprint = made
    with pytest.raises(BaselineError, match="generation settings"):
        check_compatible(baseline, tiny.info.to_dict(), tiny_personas, DESIGN, GenerationSettings(max_new_tokens=7), fingerprint)
    # batching only reorders work: it is not part of the comparison
    check_compatible(baseline, tiny.info.to_dict(), tiny_personas, DESIGN, replace(SETTINGS, batch_size=3), fingerprint)
