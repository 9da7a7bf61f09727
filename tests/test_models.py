"""Loading checkpoints: full dirs, LoRA adapters on their base, and a one-line error for every bad dir."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from drift_suite.measure.conversations import Design
from drift_suite.common.errors import CheckpointError
from drift_suite.measure.extract import GenerationSettings
from drift_suite.measure.measurement import measure
from drift_suite.measure.models import load_model, weights_digest

DESIGN = Design(default_questions=3, role_prompts=1, role_questions=2)
SETTINGS = GenerationSettings(max_new_tokens=8)


def _error(path, **kwargs) -> str:
    with pytest.raises(CheckpointError) as exc:
        load_model(path, **kwargs)
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_missing_dir(tmp_path):
    assert "no such checkpoint directory" in _error(tmp_path / "nope")


def test_missing_relative_dir_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "no such checkpoint directory" in _error("./checkpoints/final")


def test_empty_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "is empty" in _error(tmp_path / "empty")


def test_dir_without_model(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("hi")
    assert "no config.json or adapter_config.json" in _error(tmp_path / "x")


def test_corrupt_weights(tiny_checkpoint, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert str(broken) in _error(broken)


def test_pickle_weights_are_not_read(tiny_checkpoint, tmp_path):
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_checkpoint, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save({}, pickled / "pytorch_model.bin")
    assert str(pickled) in _error(pickled)


def test_run_dir_is_explained(tmp_path, tiny_checkpoint):
    shutil.copytree(tiny_checkpoint, tmp_path / "run" / "checkpoint-5")
    assert "a training run (checkpoint-5)" in _error(tmp_path / "run")


def test_4bit_without_cuda_is_a_clear_error(tiny_checkpoint):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    assert "needs a CUDA GPU" in _error(tiny_checkpoint, use_4bit=True)


def test_adapter_without_base(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    assert "pass --base-model" in _error(tmp_path / "a")


@pytest.fixture(scope="module")
def adapter_and_merged(tiny_checkpoint, tmp_path_factory):
    """A LoRA adapter with non-zero weights on the tiny base, and the same model merged and saved in full."""
    from peft import PeftModel
    from tiny import save_tiny_adapter

    folder = tmp_path_factory.mktemp("lora")
    base = load_model(tiny_checkpoint)
    save_tiny_adapter(tiny_checkpoint, folder / "adapter")
    merged = PeftModel.from_pretrained(base.model, str(folder / "adapter")).merge_and_unload()
    merged.save_pretrained(folder / "merged", safe_serialization=True)
    base.tokenizer.save_pretrained(folder / "merged")
    config = json.loads((folder / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_checkpoint)
    return folder / "adapter", folder / "merged"


def test_adapter_on_base_equals_merged_checkpoint(adapter_and_merged, tiny_checkpoint, tiny_personas):
    adapter_dir, merged_dir = adapter_and_merged
    via_adapter = load_model(adapter_dir)
    via_merged = load_model(merged_dir)
    assert via_adapter.info.adapter == str(adapter_dir)
    assert via_adapter.info.model_id == str(tiny_checkpoint)
    a = measure(via_adapter, tiny_personas, DESIGN, SETTINGS, cache_dir=None, progress=False)
    b = measure(via_merged, tiny_personas, DESIGN, SETTINGS, cache_dir=None, progress=False)
    assert a.responses == b.responses
    np.testing.assert_allclose(a.means, b.means, atol=1e-4)
    base = measure(load_model(tiny_checkpoint), tiny_personas, DESIGN, SETTINGS, cache_dir=None, progress=False)
    assert np.abs(base.means - a.means).max() > 1e-3, "the adapter changed nothing: the test would prove nothing"


def test_base_model_option_overrides_adapter_config(adapter_and_merged, tiny_checkpoint, tmp_path):
    adapter_dir, _ = adapter_and_merged
    moved = tmp_path / "adapter"
    shutil.copytree(adapter_dir, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    assert "no such checkpoint directory" in _error(moved)
    assert load_model(moved, base_model=str(tiny_checkpoint)).info.model_id == str(tiny_checkpoint)


def test_weights_digest_sees_any_change(tiny):
    before = weights_digest(tiny.model)
    with torch.no_grad():
        tiny.model.model.layers[3].mlp.down_proj.weight[0, 0] += 1e-6
    assert weights_digest(tiny.model) != before
