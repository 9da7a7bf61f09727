"""Drift inside the RL loop (issue G): your own reward (``--reward``), the probe's numbers in your tracker
(``--report_to``, TensorBoard event files read back), in noise units, and the stop (``--drift_stop``).

Fast: flags → configs, every bad input (exit 2, nothing loaded or written), the checking reward wrapper, the
stop rule on planted drift, and short tiny-model GRPO runs (seconds each) through the CLI and a user's own
GRPOTrainer."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from drift_suite.train import trainer as train
from drift_suite.train.rewards import CheckedReward, RewardFunctionError, checked, resolve_rewards
from drift_suite.train.trainer import build_grpo_config, main, parse_args


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _no_heavy_work(monkeypatch):
    def forbidden(*_args, **_kwargs):
        raise AssertionError("loaded something before checking the arguments")

    monkeypatch.setattr(train, "load_training_model", forbidden)
    monkeypatch.setattr(train, "build_train_dataset", forbidden)
    monkeypatch.setattr(train, "check_model_spec", forbidden)


def _refused(argv: list[str], capsys, monkeypatch, tmp_path) -> str:
    """``main(argv)`` exits 2 with one line, before loading anything, and writes nothing."""
    _no_heavy_work(monkeypatch)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main([*argv, "--output_dir", "out"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("drift-suite train: error: "), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not (tmp_path / "out").exists()
    return err


# ------------------------------------------------------------------------------------------ rewards

USER_REWARDS = '''
import math

def length_reward(completions, **kwargs):
    return [float(len(str(c))) for c in completions]

def fails_at_step_2(completions, trainer_state=None, **kwargs):
    if trainer_state is not None and trainer_state.global_step >= 1:
        raise KeyError("answer")
    return [0.5 for _ in completions]

def nan_reward(completions, **kwargs):
    return [math.nan for _ in completions]

def short_reward(completions, **kwargs):
    return [1.0]

async def async_reward(completions, **kwargs):
    return [2.0 for _ in completions]

NOT_A_FUNCTION = 3

class Scorer:
    pass
'''


@pytest.fixture()
def reward_file(tmp_path) -> Path:
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_REWARDS)
    return path


def test_reward_specs_resolve_to_trl_reward_functions(reward_file, tmp_path, monkeypatch):
    from drift_suite.train.gsm8k import correctness_reward, format_reward

    (default,) = resolve_rewards(None)
    assert default.func is correctness_reward and default.name == "correctness_reward" and default.spec == "gsm8k"
    assert [r.func for r in resolve_rewards("gsm8k,format")] == [correctness_reward, format_reward]
    assert [r.func for r in resolve_rewards("gsm8k", format_alias=True)] == [correctness_reward, format_reward]
    assert train.reward_functions(parse_args(["--reward", "format"])) == [format_reward]

    (from_file,) = resolve_rewards(f"{reward_file}:length_reward")
    assert isinstance(from_file.func, CheckedReward) and from_file.name == "length_reward"
    assert from_file.func(completions=["ab", "abcd"]) == [2.0, 4.0]
    from trl.trainer.utils import get_callable_name, is_async_callable

    assert get_callable_name(from_file.func) == "length_reward"  # what TRL logs: rewards/length_reward/mean
    (async_one,) = resolve_rewards("my_rewards.py:async_reward")  # relative to the working dir
    assert is_async_callable(async_one.func) and asyncio.run(async_one.func(completions=["x"])) == [2.0]

    monkeypatch.syspath_prepend(str(tmp_path))
    (from_module,) = resolve_rewards("my_rewards:length_reward")
    assert from_module.name == "length_reward" and from_module.func(completions=["abc"]) == [3.0]

    model_dir = tmp_path / "my-reward-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (reward_model,) = resolve_rewards(str(model_dir))
    assert reward_model.func == str(model_dir.resolve()) and reward_model.name == "my-reward-model"  # TRL loads it
    (hub_model,) = resolve_rewards("org/some-reward-model")
    assert hub_model.func == "org/some-reward-model" and hub_model.name == "some-reward-model"


def test_reward_weights_reach_grpo_config(reward_file, capsys, monkeypatch, tmp_path):
    config = build_grpo_config(parse_args(["--reward", "gsm8k,format", "--reward_weights", "1,0.5"]))
    assert config.reward_weights == [1.0, 0.5]
    assert build_grpo_config(parse_args([])).reward_weights is None
    assert build_grpo_config(parse_args(["--format_reward", "--reward_weights", "2,1"])).reward_weights == [2.0, 1.0]
    err = _refused(["--reward", "gsm8k,format", "--reward_weights", "1"], capsys, monkeypatch, tmp_path)
    assert "1 weights for 2 rewards" in err
    assert "comma list of numbers" in _refused(["--reward_weights", "one"], capsys, monkeypatch, tmp_path)


@pytest.mark.parametrize(
    "spec,message",
    [
        ("nosuch.py:f", "no such file"),
        ("my_rewards.py:missing", "has no attribute 'missing'"),
        ("json:missing", "json has no attribute 'missing'"),
        ("no_such_module_here:f", "no module named 'no_such_module_here'"),
        ("my_rewards.py:NOT_A_FUNCTION", "is a int, not a function"),
        ("my_rewards.py:Scorer", "is a type, not a function"),
        ("nosuch", "unknown reward"),
        ("./no/such/model", "no such file or model dir"),
        ("gsm8k,my_rewards.py:length_reward,my_rewards:length_reward", "both be logged as rewards/length_reward"),
    ],
)
def test_a_bad_reward_is_refused_before_anything_loads(spec, message, reward_file, capsys, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(tmp_path))
    err = _refused(["--reward", spec], capsys, monkeypatch, tmp_path)
    assert err.startswith("drift-suite train: error: --reward") and message in err


class _State:
    global_step = 6


@pytest.mark.parametrize(
    "func,message",
    [
        (lambda completions, **kw: 1 / 0, "reward mine raised ZeroDivisionError: division by zero at step 7"),
        (lambda completions, **kw: [math.nan] * len(completions), "reward mine returned nan for completion 0 at step 7"),
        (lambda completions, **kw: [1.0, math.inf], "reward mine returned inf for completion 1 at step 7"),
        (lambda completions, **kw: [1.0], "reward mine returned 1 rewards for 2 completions at step 7"),
        (lambda completions, **kw: ["high", "low"], "reward mine returned str for completion 0, not a number at step 7"),
        (lambda completions, **kw: None, "reward mine returned NoneType, not a list of floats at step 7"),
    ],
)
def test_checked_reward_fails_in_one_line_naming_the_reward_and_step(func, message):
    with pytest.raises(RewardFunctionError) as caught:
        checked(func, "mine")(prompts=["p", "q"], completions=["a", "b"], trainer_state=_State())
    assert str(caught.value) == message and caught.value.exit_code == 3


def test_checked_reward_passes_good_values_and_none_through():
    # None is TRL's "this reward does not apply to this sample"; it stays allowed.
    wrapper = checked(lambda completions, **kw: [1, None], "mine")
    assert wrapper(prompts=["p", "q"], completions=["a", "b"], trainer_state=_State()) == [1, None]
    with pytest.raises(RewardFunctionError, match="at step \\?$"):
        checked(lambda completions, **kw: [], "mine")(completions=["a"])


# ------------------------------------------------------------------------------------------ trackers


def test_report_to_reaches_grpo_config(capsys, monkeypatch, tmp_path):
    import importlib.util

    assert build_grpo_config(parse_args([])).report_to in ([], "none", ["none"])
    from transformers.integrations import get_available_reporting_integrations

    assert train.report_to_list("all") == ["all"]  # transformers resolves it to what is installed
    assert build_grpo_config(parse_args(["--report_to", "all"])).report_to == get_available_reporting_integrations()
    assert build_grpo_config(parse_args(["--report_to", "tensorboard"])).report_to == ["tensorboard"]
    real_find_spec = importlib.util.find_spec
    installed = {"tensorboard", "mlflow"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name in installed else (
        None if name in {"wandb", "trackio", "tensorboardX"} else real_find_spec(name, *a)))
    assert train.report_to_list("tensorboard") == ["tensorboard"]
    assert train.report_to_list("tensorboard, mlflow,tensorboard") == ["tensorboard", "mlflow"]
    assert train.report_to_list("none") == []
    for missing in ("wandb", "trackio", "tensorboard,wandb"):
        err = _refused(["--report_to", missing], capsys, monkeypatch, tmp_path)
        assert "needs the" in err and "pip install" in err
    assert "use none, tensorboard, wandb, mlflow, trackio, all" in _refused(["--report_to", "neptune"], capsys, monkeypatch, tmp_path)


# ------------------------------------------------------------------------------------------ stop flags


def test_drift_stop_flags_reach_the_probe(capsys, monkeypatch, tmp_path):
    from drift_suite.train.callbacks import DriftProbeCallback

    probe, _log = train.build_callbacks(parse_args(["--drift_every", "2", "--drift_stop", "3", "--drift_patience", "2"]))
    assert isinstance(probe, DriftProbeCallback) and probe.stop_sigma == 3.0 and probe.patience == 2
    default, _log = train.build_callbacks(parse_args(["--drift_every", "2"]))
    assert default.stop_sigma is None and default.patience == 1
    assert "--drift_every" in _refused(["--drift_stop", "3"], capsys, monkeypatch, tmp_path)
    for bad in ("0", "-1", "nan"):
        assert "> 0" in _refused(["--drift_every", "2", "--drift_stop", bad], capsys, monkeypatch, tmp_path)
    assert "--drift_patience 0" in _refused(["--drift_every", "2", "--drift_stop", "3", "--drift_patience", "0"], capsys, monkeypatch, tmp_path)


# ------------------------------------------------------------------------------------------ noise units, stop rule


def _probe(tiny_personas, **kwargs):
    from drift_suite.train.callbacks import DriftProbeCallback
    from drift_suite.measure.conversations import Design
    from drift_suite.measure.extract import GenerationSettings

    return DriftProbeCallback(
        every=2, baseline_dir=None, persona_set=tiny_personas, design=Design(default_questions=3, role_prompts=1, role_questions=2),
        settings=GenerationSettings(max_new_tokens=6), n_boot=50, **kwargs,
    )  # fmt: skip


def _step(callback, state, model, tokenizer, step):
    from transformers import TrainerControl

    state.global_step = step
    control = callback.on_step_end(None, state, TrainerControl(), model=model, processing_class=tokenizer)
    logs = {"reward": 0.5}
    state.log_history.append({**logs, "step": step})
    callback.on_log(None, state, control, logs=logs, model=model, processing_class=tokenizer)
    return control, logs


def test_probe_measures_its_noise_floor_and_reads_planted_drift_in_sigma(tiny, tiny_personas):
    from planting import add_vector, planted
    from transformers import TrainerControl, TrainerState

    from drift_suite.common.metrics import bootstrap_noise_floor

    callback, state = _probe(tiny_personas), TrainerState()
    callback.on_train_begin(None, state, TrainerControl(), model=tiny.model, processing_class=tiny.tokenizer)
    noise, layer = callback.noise, callback.layer
    # The same numbers as the gate's bootstrap on the reference's conversations, in the probe's units.
    floor = bootstrap_noise_floor(callback.reference.means, callback.reference.labels, tiny_personas.role_names, "default",
                                  [layer], n_boot=50, seed=0)
    norm = np.linalg.norm(callback.axis[layer])
    assert noise.projection == pytest.approx(floor.projection[layer] / norm) and noise.rotation_deg == pytest.approx(floor.angle_deg[layer])
    assert noise.projection > 0 and noise.rotation_deg > 0
    first = state.log_history[0]
    assert first["step"] == 0 and first["drift/sigma"] == 0.0 and first["drift/noise_projection"] == noise.projection

    direction = callback.axis[layer] / norm
    with planted(tiny.model, layer, *add_vector(torch.tensor(-2.5 * noise.projection * norm * direction))):
        _control, logs = _step(callback, state, tiny.model, tiny.tokenizer, 2)
    assert logs["drift/projection_sigma"] == pytest.approx(-2.5, rel=0.02)
    assert logs["drift/projection"] == pytest.approx(-2.5 * noise.projection, rel=0.02)
    assert logs["drift/rotation_rms"] == pytest.approx(logs["drift/rotation_deg"] / noise.rotation_deg)
    assert logs["drift/sigma"] == pytest.approx(max(2.5, logs["drift/rotation_rms"]), rel=0.02)
    assert logs["drift/noise_rotation_deg"] == noise.rotation_deg  # the constants, once, where trackers see them
    _control, logs = _step(callback, state, tiny.model, tiny.tokenizer, 4)
    assert "drift/noise_projection" not in logs and logs["drift/projection_sigma"] == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("patience,readings,stop_step", [
    (1, [1.0, 5.0, 1.0], 4),        # the first probe past K stops
    (2, [5.0, 1.0, 5.0, 5.0], 8),   # two in a row: the lone 5σ at step 2 does not
    (2, [5.0, 1.0, 5.0, 1.0], None),
])  # fmt: skip
def test_drift_stop_saves_and_stops_after_patience_probes_past_k(tiny, tiny_personas, patience, readings, stop_step):
    from planting import add_vector, planted
    from transformers import TrainerControl, TrainerState

    callback, state = _probe(tiny_personas, stop_sigma=3.0, patience=patience), TrainerState()
    callback.on_train_begin(None, state, TrainerControl(), model=tiny.model, processing_class=tiny.tokenizer)
    layer, norm = callback.layer, np.linalg.norm(callback.axis[callback.layer])
    direction = callback.axis[layer] / norm
    stopped_at = None
    for index, sigmas in enumerate(readings):
        step = 2 * (index + 1)
        with planted(tiny.model, layer, *add_vector(torch.tensor(-sigmas * callback.noise.projection * norm * direction))):
            control, logs = _step(callback, state, tiny.model, tiny.tokenizer, step)
        if control.should_training_stop:
            assert control.should_save, "the stop saves a checkpoint at its step"
            stopped_at = step
            break
    assert stopped_at == stop_step
    if stop_step is None:
        assert callback.stop is None
        return
    assert callback.stop["step"] == stop_step and callback.stop["metric"] == "projection"
    assert callback.stop["value_sigma"] == pytest.approx(-5.0, rel=0.02) and callback.stop["threshold_sigma"] == 3.0
    assert callback.stop["patience"] == patience
    # Checkpoints at every probe step: the last one whose probe read within 3σ.
    steps = [2 * (i + 1) for i in range(len(readings))]
    within = [s for s, r in zip(steps, readings) if s <= stop_step and r <= 3.0]
    assert callback.last_step_within_budget(state.log_history, [s for s in steps if s <= stop_step]) == within[-1]
    assert callback.last_step_within_budget(state.log_history, [1]) == 1  # before any probe: the step-0 model's reading


def test_a_non_finite_probe_logs_one_error_and_training_goes_on(tiny, tiny_personas, monkeypatch, caplog):
    from transformers import TrainerControl, TrainerState

    from drift_suite.common import errors

    kind = errors.NonFiniteError
    callback, state = _probe(tiny_personas, stop_sigma=3.0), TrainerState()
    callback.on_train_begin(None, state, TrainerControl(), model=tiny.model, processing_class=tiny.tokenizer)

    def non_finite(*_args, **_kwargs):
        raise kind("activations are NaN at layer 3")

    monkeypatch.setattr(callback, "probe", non_finite)
    with caplog.at_level("ERROR", logger="drift_suite.train.callbacks"):
        control, logs = _step(callback, state, tiny.model, tiny.tokenizer, 2)
    assert not control.should_training_stop and "drift/projection" not in logs
    (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "step 2" in record.getMessage() and "NaN" in record.getMessage() and "training goes on" in record.getMessage()
    monkeypatch.setattr(callback, "probe", lambda *a, **k: (_ for _ in ()).throw(errors.BaselineError("other")))
    with pytest.raises(errors.BaselineError):  # any other error is not swallowed
        _step(callback, state, tiny.model, tiny.tokenizer, 4)


def test_summary_line_shows_sigma():
    from drift_suite.train.callbacks import summary_line

    entry = {"step": 4, "reward": 0.5, "drift/projection": -0.0421, "drift/projection_sigma": -2.14, "drift/rotation_deg": 2.25,
             "drift/rotation_rms": 0.81}
    assert summary_line(entry, 8, None) == "step 4/8  reward 0.500  drift -0.0421 (-2.1σ)  2.2° (0.8× rms)"


# ------------------------------------------------------------------------------------------ real runs (tiny model)

def text_length_reward(completions, **kwargs):
    """A reward that varies between completions (a random tiny model never answers right): real updates."""
    return [len(str(c)) / 10 for c in completions]


RUN = ["--use_lora", "--max_samples", "4", "--dataset", "synthetic", "--num_generations", "2",
       "--per_device_train_batch_size", "2", "--max_completion_length", "6", "--learning_rate", "1e-3"]  # fmt: skip


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the TensorBoard event files under ``run_dir``, as TensorBoard itself reads them back."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    event_dirs = sorted({p.parent for p in run_dir.rglob("events.out.tfevents.*")})
    assert event_dirs, f"no TensorBoard event file under {run_dir}"
    for folder in event_dirs:
        accumulator = EventAccumulator(str(folder))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return scalars


def test_cli_run_puts_drift_and_each_reward_in_tensorboard_and_stops(tiny_checkpoint, reward_file, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    code = main([
        "--model", str(tiny_checkpoint), "--output_dir", str(out), *RUN, "--max_steps", "6", "--save_steps", "1",
        "--drift_every", "2", "--drift_baseline_dir", "none", "--reward", f"gsm8k,{reward_file}:length_reward",
        "--reward_weights", "1,0.01", "--report_to", "tensorboard", "--drift_stop", "1e-6",
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    probes = {e["step"]: e for e in history if "drift/sigma" in e}
    assert sorted(probes) == [0, 2], "a threshold of 1e-6 σ stops at the first probe"
    scalars = _scalars(out)
    for key in ("drift/projection", "drift/rotation_deg", "drift/projection_sigma", "drift/rotation_rms", "drift/sigma"):
        assert [(s, pytest.approx(v, rel=1e-5, abs=1e-6)) for s, v in scalars[f"train/{key}"]] == [(2, probes[2][key])]
    assert [s for s, _ in scalars["train/drift/noise_projection"]] == [2]
    assert [s for s, _ in scalars["train/rewards/length_reward/mean"]] == [1, 2]
    assert "train/rewards/correctness_reward/mean" in scalars
    rewards = {e["step"]: e for e in history if "reward" in e}
    assert rewards[1]["reward"] == pytest.approx(rewards[1]["rewards/correctness_reward/mean"] + 0.01 * rewards[1]["rewards/length_reward/mean"])

    manifest = json.loads((out / "run_manifest.json").read_text())
    stop = manifest["drift_stop"]
    assert set(stop) == {"step", "metric", "value_sigma", "threshold_sigma", "patience", "last_checkpoint_within_budget"}
    assert stop["step"] == 2 and stop["threshold_sigma"] == 1e-6 and stop["patience"] == 1
    assert abs(stop["value_sigma"]) == pytest.approx(probes[2]["drift/sigma"])
    assert stop["last_checkpoint_within_budget"] == str(out / "checkpoint-1")  # saved before the first probe
    assert (out / "checkpoint-2" / "adapter_config.json").is_file() and not (out / "checkpoint-3").exists()
    assert manifest["rewards"] == [{"spec": "gsm8k", "name": "correctness_reward"},
                                   {"spec": f"{reward_file}:length_reward", "name": "length_reward"}]
    assert "drift stop: step 2" in printed and "checkpoint-1" in printed and "σ" in printed


@pytest.mark.parametrize("how", ["callbacks", "add_callback"])
def test_probe_in_a_users_own_grpo_trainer_reaches_tensorboard(tiny_checkpoint, tiny_personas, tmp_path, how):
    pytest.importorskip("tensorboard")
    import trl
    from peft import LoraConfig
    from transformers.integrations import TensorBoardCallback

    from drift_suite.train.gsm8k import load_gsm8k, to_prompt_dataset
    from drift_suite.measure.models import load_model

    loaded = load_model(tiny_checkpoint)
    loaded.tokenizer.padding_side = "left"
    probe = _probe(tiny_personas)
    config = trl.GRPOConfig(
        output_dir=str(tmp_path / "own"), max_steps=4, per_device_train_batch_size=2, num_generations=2,
        max_completion_length=6, report_to="tensorboard", use_cpu=True, bf16=False, save_strategy="no", logging_steps=1,
        disable_tqdm=True, learning_rate=1e-3,
    )  # fmt: skip
    trainer = trl.GRPOTrainer(
        model=loaded.model, reward_funcs=[text_length_reward], args=config, processing_class=loaded.tokenizer,
        train_dataset=to_prompt_dataset(load_gsm8k("synthetic", max_samples=4)),
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), callbacks=[probe] if how == "callbacks" else None,
    )  # fmt: skip
    if how == "add_callback":
        trainer.add_callback(probe)
    names = [type(c).__name__ for c in trainer.callback_handler.callbacks]
    assert names.index("TensorBoardCallback") < names.index("DriftProbeCallback") or how == "callbacks"
    trainer.train()
    handler = trainer.callback_handler.callbacks
    assert handler[0] is probe and any(isinstance(c, TensorBoardCallback) for c in handler)
    history = {e["step"]: e for e in trainer.state.log_history if "drift/projection" in e}
    assert abs(history[4]["drift/projection"]) > 0, "the reward varies, the adapter trains, the probe moves"
    scalars = _scalars(tmp_path / "own")
    for key in ("drift/projection", "drift/projection_sigma", "drift/rotation_rms", "drift/sigma"):
        assert [(s, pytest.approx(v, rel=1e-5, abs=1e-6)) for s, v in scalars[f"train/{key}"]] == [
            (s, history[s][key]) for s in (2, 4)
        ]


@pytest.mark.parametrize("func,message", [
    ("fails_at_step_2", "reward fails_at_step_2 raised KeyError: 'answer' at step 2"),
    ("nan_reward", "reward nan_reward returned nan for completion 0 at step 1"),
    ("short_reward", "reward short_reward returned 1 rewards for 2 completions at step 1"),
])  # fmt: skip
def test_a_reward_failing_mid_run_is_one_line_exit_3_and_the_checkpoints_stay_resumable(
    func, message, tiny_checkpoint, reward_file, tmp_path, capsys
):
    out = tmp_path / "run"
    argv = ["--model", str(tiny_checkpoint), "--output_dir", str(out), *RUN, "--max_steps", "3", "--save_steps", "1"]
    assert main([*argv, "--reward", f"gsm8k,{reward_file}:{func}"]) == 3
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1] == f"drift-suite train: error: {message}"
    assert [line for line in err.splitlines() if "error" in line.lower()] == [err.splitlines()[-1]]
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest["error"] == message and manifest["finished"] is None
    from drift_suite.measure.models import find_run_checkpoints

    saved = sorted(find_run_checkpoints(out))
    assert saved == ([1] if func == "fails_at_step_2" else [])
    if saved:  # the checkpoint before the failure resumes with a healthy reward
        assert main([*argv, "--reward", f"gsm8k,{reward_file}:length_reward", "--resume_from_checkpoint", "latest"]) == 0
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        assert [e["step"] for e in history if "reward" in e] == [1, 2, 3]
        assert sorted(find_run_checkpoints(out)) == [1, 2, 3]


def test_a_reward_model_dir_is_loaded_by_trl_and_logged_under_its_name(tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    code = main(["--model", str(tiny_checkpoint), "--output_dir", str(out), *RUN, "--max_steps", "1", "--save_steps", "5",
                 "--reward", f"format,{tiny_checkpoint}"])  # a causal LM dir gets a fresh one-label head  # fmt: skip
    assert code == 0
    (entry,) = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "reward" in e]
    name = tiny_checkpoint.name
    assert math.isfinite(entry[f"rewards/{name}/mean"]) and "rewards/format_reward/mean" in entry
    assert json.loads((out / "run_manifest.json").read_text())["rewards"][1] == {"spec": str(tiny_checkpoint), "name": name}


def test_probe_metric_drives_transformers_early_stopping(tiny_checkpoint, tiny_personas, tmp_path, caplog):
    """The how-to in docs/training.md: metric_for_best_model="drift/sigma" with EarlyStoppingCallback (it reads eval_drift/sigma)."""
    import trl
    from peft import LoraConfig
    from transformers import EarlyStoppingCallback

    from drift_suite.train.gsm8k import load_gsm8k, to_prompt_dataset
    from drift_suite.measure.models import load_model

    loaded = load_model(tiny_checkpoint)
    loaded.tokenizer.padding_side = "left"
    probe = _probe(tiny_personas)
    config = trl.GRPOConfig(
        output_dir=str(tmp_path / "own"), max_steps=8, per_device_train_batch_size=2, per_device_eval_batch_size=2,
        num_generations=2, max_completion_length=6, report_to="none", use_cpu=True, bf16=False, logging_steps=1,
        disable_tqdm=True, learning_rate=3e-2, eval_strategy="steps", eval_steps=2, save_steps=2,
        metric_for_best_model="drift/sigma", greater_is_better=False, load_best_model_at_end=True,
    )  # fmt: skip
    trainer = trl.GRPOTrainer(
        model=loaded.model, reward_funcs=[text_length_reward], args=config, processing_class=loaded.tokenizer,
        train_dataset=to_prompt_dataset(load_gsm8k("synthetic", max_samples=8)),
        eval_dataset=to_prompt_dataset(load_gsm8k("synthetic", max_samples=1, seed=1)),
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
        callbacks=[EarlyStoppingCallback(early_stopping_patience=1), probe],
    )  # fmt: skip
    with caplog.at_level("WARNING"):
        trainer.train()
    assert "did not find eval_drift/sigma" not in caplog.text
    readings = {e["step"]: e["drift/sigma"] for e in trainer.state.log_history if "drift/sigma" in e and e["step"] > 0}
    # Early stopping with patience 1 ends the run at the first probe that does not improve on the best so far.
    best, expected_stop = math.inf, 8
    for step in sorted(readings):
        if readings[step] >= best:
            expected_stop = step
            break
        best = readings[step]
    assert trainer.state.global_step == expected_stop and trainer.state.best_metric == pytest.approx(best)
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{min(readings, key=readings.get)}")


def test_a_reward_model_that_cannot_load_is_one_line(tiny_checkpoint, tmp_path, capsys):
    broken = tmp_path / "broken-rm"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}')  # no weights
    assert main(["--model", str(tiny_checkpoint), "--output_dir", "out", *RUN, "--max_steps", "1", "--reward", str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith(f"drift-suite train: error: --reward {broken.resolve()}: the reward model could not be loaded")


def test_a_reward_failing_on_another_rank_fails_this_one_with_its_line(monkeypatch):
    """Under several processes every rank raises the lowest failing rank's RewardFunctionError (exit 3), so no
    rank is left waiting in TRL's gather; a rank whose own reward failed raises its own line."""
    from drift_suite.common import process
    from drift_suite.train import rewards
    from drift_suite.common.errors import EXIT_MEASUREMENT_FAILED

    monkeypatch.setattr(process, "process_context", lambda: process.ProcessContext(rank=0, world_size=2))
    monkeypatch.setattr(process, "all_gather_bytes", lambda payload: [payload, b"reward f returned nan for completion 1 at step 3"])
    ok = rewards.CheckedReward(lambda prompts, completions, **kw: [1.0] * len(completions), "f")
    with pytest.raises(rewards.RewardFunctionError, match=r"^rank 1: reward f returned nan for completion 1 at step 3$") as caught:
        ok(["p"], ["c"])
    assert caught.value.exit_code == EXIT_MEASUREMENT_FAILED
    broken = rewards.CheckedReward(lambda prompts, completions, **kw: [float("nan")], "g")
    monkeypatch.setattr(process, "all_gather_bytes", lambda payload: [payload, b""])
    with pytest.raises(rewards.RewardFunctionError, match=r"^reward g returned nan for completion 0 at step \?$"):
        broken(["p"], ["c"])
