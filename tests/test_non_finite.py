"""A broken model is an error, not drift: NaN or Inf in the activations or logits (or values too large to square
in float32) stop a measurement with one line naming the model, the first non-finite layer and the
conversation, exit 3; nothing is cached or written as a baseline from it. A baseline holding NaN is refused."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as load_numpy, save_file as save_numpy
from safetensors.torch import load_file, save_file

from drift_suite.measure import measurement as measure_module
from drift_suite.gate.baseline import load_baseline
from drift_suite.cli import main as cli_main
from drift_suite.measure.conversations import Design, build_conversations, render_prompts
from drift_suite.common.errors import EXIT_MEASUREMENT_FAILED, EXIT_USAGE, BaselineError, NonFiniteError
from drift_suite.measure.extract import GenerationSettings, check_finite
from drift_suite.measure.measurement import measure
from test_exit_codes import baseline_dir  # noqa: F401  (a baseline of the tiny checkpoint in the fast design)
from test_plugin import run, suite  # noqa: F401

pytest_plugins = ["pytester"]

LAYER = 1
MATRIX = f"model.layers.{LAYER}.mlp.down_proj.weight"
DESIGN = Design(4, 1, 2)
SETTINGS = GenerationSettings(max_new_tokens=6, batch_size=6)


def one_nan(weight: torch.Tensor) -> None:
    weight[0, 0] = float("nan")


def scaled_1e30(weight: torch.Tensor) -> None:
    weight.mul_(1e30)  # finite in float32, and its activations too: only their squares overflow


DAMAGE = {"nan": one_nan, "huge": scaled_1e30}


@pytest.fixture(scope="module")
def broken(tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """Copies of the tiny checkpoint with one NaN in one layer's down_proj, and with that matrix × 1e30."""
    folder = tmp_path_factory.mktemp("non-finite")
    out = {}
    for name, damage in DAMAGE.items():
        target = shutil.copytree(tiny_checkpoint, folder / name)
        weights = load_file(target / "model.safetensors")
        damage(weights[MATRIX])
        save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
        out[name] = target
    return out


@contextlib.contextmanager
def damaged(model: torch.nn.Module, damage: Callable[[torch.Tensor], None]) -> Iterator[None]:
    """``model`` with ``damage`` done to its layer-1 down_proj in place, undone after."""
    weight = model.get_parameter(MATRIX)
    kept = weight.detach().clone()
    with torch.no_grad():
        damage(weight)
    try:
        yield
    finally:
        with torch.no_grad():
            weight.copy_(kept)


def test_the_check_names_the_first_non_finite_layer_and_its_lowest_conversation():
    rows = [12, 10, 11]  # prompt indices, in batch order
    health = np.ones((3, 5), dtype=np.float32)  # 4 layers, then the logit sums
    check_finite(health, rows)
    health[0, 3] = np.inf  # a later layer
    health[0, 2] = health[2, 2] = np.nan  # layer 2 in prompts 12 and 11
    with pytest.raises(NonFiniteError, match="decoder layer 2 of 4") as error:
        check_finite(health, rows)
    assert (error.value.layer, error.value.row) == (2, 11)
    logits_only = np.ones((2, 5), dtype=np.float32)
    logits_only[1, 4] = np.nan
    with pytest.raises(NonFiniteError, match="non-finite logits") as error:
        check_finite(logits_only, [0, 1])
    assert (error.value.layer, error.value.row) == (None, 1)


@pytest.mark.parametrize("case", sorted(DAMAGE))
@pytest.mark.parametrize("path", ["fast", "generate+reforward", "sampling"])
def test_a_broken_layer_stops_the_measurement_and_names_it(tiny, tiny_personas, tmp_path, monkeypatch, case, path):
    settings = SETTINGS
    if path == "generate+reforward":
        monkeypatch.setattr("drift_suite.measure.extract.fast_decoder_blocker", lambda _model: "test")
    if path == "sampling":
        settings = GenerationSettings(max_new_tokens=6, batch_size=6, do_sample=True)
    with damaged(tiny.model, DAMAGE[case]), pytest.raises(NonFiniteError) as error:
        measure(tiny, tiny_personas, DESIGN, settings, cache_dir=tmp_path, progress=False)
    message = str(error.value)
    assert f"decoder layer {LAYER} of 4 (model.layers.{LAYER})" in message and str(tiny.info.model_id) in message
    assert "\n" not in message and "first in conversation" in message
    assert error.value.exit_code == EXIT_MEASUREMENT_FAILED
    assert list(tmp_path.iterdir()) == []
    # The same model undamaged measures, and is cached: the check sees the damage, not the settings.
    measure(tiny, tiny_personas, DESIGN, settings, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1


def test_non_finite_logits_after_finite_layers_blame_the_head(tiny, tiny_personas):
    head = tiny.model.lm_head.weight
    with torch.no_grad():
        head[:, 0] = float("nan")  # every logit NaN, the residual stream untouched
    with pytest.raises(NonFiniteError, match="non-finite logits .* final norm or the output head") as error:
        measure(tiny, tiny_personas, DESIGN, SETTINGS, cache_dir=None, progress=False)
    assert error.value.layer is None


def test_finite_batches_cached_before_the_broken_one_are_removed(tiny, tiny_personas, tmp_path, monkeypatch):
    """Batches 1 and 2 finish (and are cached), batch 3 turns non-finite: the error names a conversation of
    batch 3, and the measurement leaves no cache entry."""
    real = measure_module.generate_and_capture
    calls: list[list[str]] = []

    def third_batch_broken(model, tokenizer, prompts, *args, **kwargs):
        calls.append(list(prompts))
        if len(calls) < 3:
            return real(model, tokenizer, prompts, *args, **kwargs)
        with damaged(model, one_nan):
            return real(model, tokenizer, prompts, *args, **kwargs)

    monkeypatch.setattr(measure_module, "generate_and_capture", third_batch_broken)
    with pytest.raises(NonFiniteError) as error:
        measure(tiny, tiny_personas, DESIGN, SETTINGS, cache_dir=tmp_path, progress=False)
    assert len(calls) == 3
    conversations = build_conversations(tiny_personas, DESIGN)
    prompts = render_prompts(tiny.tokenizer, conversations)
    assert prompts[error.value.row] in calls[2]
    assert list(tmp_path.glob("*.safetensors")) == []


def test_a_cached_non_finite_entry_is_a_miss(tiny, tiny_personas, tmp_path):
    first = measure(tiny, tiny_personas, DESIGN, SETTINGS, cache_dir=tmp_path, progress=False)
    (entry,) = tmp_path.glob("*.safetensors")
    tensors = load_numpy(entry)
    tensors["means"][0, 0, 0] = np.nan
    save_numpy(tensors, entry, metadata=_metadata(entry))
    again = measure(tiny, tiny_personas, DESIGN, SETTINGS, cache_dir=tmp_path, progress=False)
    assert not again.from_cache and np.isfinite(again.means).all()
    np.testing.assert_allclose(again.means, first.means, atol=1e-6)


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        return dict(handle.metadata())


def test_the_decoders_logit_flag_changes_no_token_and_sees_one_nan_logit(tiny, tiny_personas):
    """The flag sums the picked logits on the device (no read: the host-read count in test_decode covers it);
    the tokens are those without it, and one NaN logit in a row makes the row's sum NaN."""
    from drift_suite.measure.decode import decode

    prompts = render_prompts(tiny.tokenizer, build_conversations(tiny_personas, Design(2, 1, 1)))
    rows = [tiny.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    pad = tiny.tokenizer.pad_token_id
    sums = torch.zeros(len(rows))
    tokens = decode(tiny.model, rows, 4, [], pad, picked_logits=sums, share_prefixes=False, pack_weights=False)
    assert tokens.shape == (len(rows), 4) and torch.isfinite(sums).all() and (sums != 0).all()
    assert torch.equal(tokens, decode(tiny.model, rows, 4, [], pad, share_prefixes=False, pack_weights=False))
    with torch.no_grad():
        tiny.model.lm_head.weight[7] = float("nan")  # one logit of every row NaN
    sums.zero_()
    decode(tiny.model, rows, 4, [], pad, picked_logits=sums, share_prefixes=False, pack_weights=False)
    assert torch.isnan(sums).all()


# -- under pytest and the CLI ---------------------------------------------------------------------------


def one_error_line(output: list[str]) -> str:
    errors = [line for line in output if f"model.layers.{LAYER}" in line]
    assert len(errors) == 1, "\n".join(output)
    assert not any("Traceback" in line for line in output) and len(output) < 20, "\n".join(output)
    return errors[0]


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_pytest_exits_3_with_one_line_and_caches_nothing(suite, broken, baseline_dir, case):  # noqa: F811
    result = run(suite, "--checkpoint", str(broken[case]), "--baseline-dir", str(baseline_dir))
    output = result.stdout.lines + result.stderr.lines
    assert result.ret == EXIT_MEASUREMENT_FAILED, "\n".join(output)
    assert "not drifted" in one_error_line(output)
    assert list((suite.path / ".drift_cache").glob("*.safetensors")) == []


def test_pytest_update_baselines_from_a_broken_model_writes_nothing(suite, broken):  # noqa: F811
    target = suite.path / "new-baseline"
    result = run(suite, "--checkpoint", str(broken["nan"]), "--baseline-dir", str(target), "--update-baselines")
    output = result.stdout.lines + result.stderr.lines
    assert result.ret == EXIT_MEASUREMENT_FAILED, "\n".join(output)
    one_error_line(output)
    assert not (target / "manifest.json").exists() and not list(target.glob("baseline-*"))


def test_cli_exits_3_and_writes_no_cache_and_no_baseline(broken, tiny_checkpoint, baseline_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.chdir(baseline_dir.parent)  # its pyproject.toml: the fast design the baseline was made with
    cache = tmp_path / "cache"
    common = ["--report", "none", "--cache-dir", str(cache)]
    for case in sorted(DAMAGE):
        assert cli_main(["check", str(broken[case]), "--baseline-dir", str(baseline_dir), *common]) == EXIT_MEASUREMENT_FAILED
        err = capsys.readouterr().err.splitlines()
        line = one_error_line(err)
        assert line.startswith("drift-suite: error:") and str(broken[case]) in line
        fresh = tmp_path / f"baseline-{case}"
        assert cli_main(["check", str(broken[case]), "--baseline-dir", str(fresh), "--update-baselines", *common]) == EXIT_MEASUREMENT_FAILED
        one_error_line(capsys.readouterr().err.splitlines())
        assert not (fresh / "manifest.json").exists()
    assert list(cache.glob("*.safetensors")) == []
    # The healthy checkpoint through the same command is cached there: the cache dir is the one in use.
    assert cli_main(["check", str(tiny_checkpoint), "--baseline-dir", str(baseline_dir), *common]) == 0
    assert len(list(cache.glob("*.safetensors"))) == 1


@pytest.fixture()
def nan_baseline(baseline_dir, tmp_path) -> Path:  # noqa: F811
    folder = shutil.copytree(baseline_dir, tmp_path / "nan-baseline")
    manifest = json.loads((folder / "manifest.json").read_text())
    path = folder / manifest["files"]["tensors"]
    tensors = load_numpy(path)
    tensors["role_means"][0, 1, 2] = np.nan
    save_numpy(tensors, path)
    return folder


def test_a_baseline_with_a_nan_tensor_is_refused(nan_baseline, baseline_dir, tiny_checkpoint, capsys, monkeypatch):  # noqa: F811
    load_baseline(baseline_dir)
    with pytest.raises(BaselineError, match="role_means holds NaN or Inf"):
        load_baseline(nan_baseline)
    monkeypatch.chdir(baseline_dir.parent)
    assert cli_main(["check", str(tiny_checkpoint), "--baseline-dir", str(nan_baseline), "--report", "none", "--no-cache"]) == EXIT_USAGE
    err = capsys.readouterr().err.splitlines()
    assert sum("role_means holds NaN or Inf" in line for line in err) == 1, err


def test_pytest_refuses_a_baseline_with_a_nan_tensor(suite, nan_baseline, tiny_checkpoint):  # noqa: F811
    result = run(suite, "--checkpoint", str(tiny_checkpoint), "--baseline-dir", str(nan_baseline))
    output = result.stdout.lines + result.stderr.lines
    assert result.ret == EXIT_USAGE, "\n".join(output)
    assert sum("role_means holds NaN or Inf" in line for line in output) == 1, "\n".join(output)
