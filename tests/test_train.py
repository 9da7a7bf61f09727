"""``drift-suite train``: every flag reaches the trainer (fast, no training), clear errors, the drift probe
on a tiny model with planted drift, and one real end-to-end GRPO run on a tiny model (slow)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from drift_suite.train import trainer as train
from drift_suite.train.trainer import (
    TrainArgs,
    build_grpo_config,
    build_peft_config,
    main,
    parse_args,
)

# ------------------------------------------------------------------------------------------ flags → config

# (flags, GRPOConfig attribute, expected value); each value differs from the default, so the flag must act.
GRPO_FLAGS = [
    (["--output_dir", "elsewhere"], "output_dir", "elsewhere"),
    (["--save_steps", "7"], "save_steps", 7),
    (["--save_total_limit", "3"], "save_total_limit", 3),
    (["--num_train_epochs", "2.5"], "num_train_epochs", 2.5),
    (["--max_steps", "5"], "max_steps", 5),
    (["--num_generations", "2"], "num_generations", 2),
    (["--max_completion_length", "32"], "max_completion_length", 32),
    (["--learning_rate", "1e-4"], "learning_rate", 1e-4),
    (["--per_device_train_batch_size", "8"], "per_device_train_batch_size", 8),
    (["--gradient_accumulation_steps", "2"], "gradient_accumulation_steps", 2),
    (["--seed", "7"], "seed", 7),
    (["--temperature", "0.7"], "temperature", 0.7),
    (["--logging_steps", "5"], "logging_steps", 5),
    (["--resume_from_checkpoint", "latest"], "resume_from_checkpoint", "latest"),
]
LORA_FLAGS = [
    (["--lora_r", "8"], "r", 8),
    (["--lora_alpha", "16"], "lora_alpha", 16),
    (["--lora_dropout", "0.1"], "lora_dropout", 0.1),
    (["--lora_target_modules", "q_proj, v_proj"], "target_modules", {"q_proj", "v_proj"}),
]
# Flags that act outside the two configs, each with its own test below.
OTHER_FLAGS = {
    "model": "test_model_flag_picks_the_weights_trained",
    "dataset": "test_dataset_flags_pick_the_problems",
    "max_samples": "test_dataset_flags_pick_the_problems",
    "use_lora": "test_use_lora_switches_between_adapter_and_full_fine_tuning",
    "use_4bit": "test_use_4bit_without_cuda_is_a_one_line_error",
    "format_reward": "test_format_reward_adds_the_format_bonus",
    "drift_every": "test_drift_flags_add_the_probe_callback",
    "drift_baseline_dir": "test_drift_flags_add_the_probe_callback",
    "reward": "test_train_loop.py::test_reward_specs_resolve_to_trl_reward_functions",
    "reward_weights": "test_train_loop.py::test_reward_weights_reach_grpo_config",
    "report_to": "test_train_loop.py::test_report_to_reaches_grpo_config",
    "drift_stop": "test_train_loop.py::test_drift_stop_flags_reach_the_probe",
    "drift_patience": "test_train_loop.py::test_drift_stop_flags_reach_the_probe",
    "use_vllm": "test_launch_configs.py::test_vllm_flags_reach_grpo_config",
    "vllm_mode": "test_launch_configs.py::test_vllm_flags_reach_grpo_config",
    "vllm_server_host": "test_launch_configs.py::test_vllm_flags_reach_grpo_config",
    "vllm_server_port": "test_launch_configs.py::test_vllm_flags_reach_grpo_config",
    "device": "test_device_and_dtype_flags_pick_the_precision",
    "dtype": "test_device_and_dtype_flags_pick_the_precision",
}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    # Relative output dirs and the default dataset paths resolve inside the test's own dir.
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def default_grpo():
    return build_grpo_config(TrainArgs())


def _flag_name(flags: list[str]) -> str:
    return flags[0].removeprefix("--")


def test_every_flag_is_covered_by_a_test():
    covered = {_flag_name(f) for f, _, _ in GRPO_FLAGS + LORA_FLAGS} | set(OTHER_FLAGS)
    assert covered == {f.name for f in dataclasses.fields(TrainArgs)}


@pytest.mark.parametrize("flags,attribute,expected", GRPO_FLAGS, ids=[_flag_name(f) for f, _, _ in GRPO_FLAGS])
def test_flag_reaches_grpo_config(flags, attribute, expected, default_grpo):
    config = build_grpo_config(parse_args(flags))
    assert getattr(config, attribute) == (pytest.approx(expected) if isinstance(expected, float) else expected)
    assert getattr(default_grpo, attribute) != expected


@pytest.mark.parametrize("flags,attribute,expected", LORA_FLAGS, ids=[_flag_name(f) for f, _, _ in LORA_FLAGS])
def test_flag_reaches_lora_config(flags, attribute, expected):
    config = build_peft_config(parse_args(["--use_lora", *flags]))
    default = build_peft_config(parse_args(["--use_lora"]))
    assert getattr(config, attribute) == expected
    assert getattr(default, attribute) != expected


def test_defaults_match_the_seed_script(default_grpo):
    args = parse_args([])
    assert (args.model, args.output_dir, args.save_steps, args.save_total_limit) == ("google/gemma-2-2b-it", "checkpoints", 100, 10)
    assert (default_grpo.output_dir, default_grpo.save_steps, default_grpo.save_total_limit) == ("checkpoints", 100, 10)
    assert (args.num_generations, args.max_completion_length, args.learning_rate) == (4, 256, 1e-5)
    assert default_grpo.logging_steps == 1 and default_grpo.report_to in ("none", [], ["none"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU settings")
def test_cpu_training_is_fp32_without_checkpointing(default_grpo):
    assert default_grpo.bf16 is False and default_grpo.fp16 is False and default_grpo.use_cpu is True
    assert default_grpo.gradient_checkpointing is False


def test_resume_from_a_checkpoint_path(tmp_path):
    (tmp_path / "run" / "checkpoint-3").mkdir(parents=True)
    config = build_grpo_config(parse_args(["--resume_from_checkpoint", "run/checkpoint-3"]))
    assert config.resume_from_checkpoint == "run/checkpoint-3"


def test_use_lora_switches_between_adapter_and_full_fine_tuning():
    assert build_peft_config(parse_args([])) is None
    lora = build_peft_config(parse_args(["--use_lora"]))
    assert lora.r == 16 and lora.lora_alpha == 32 and lora.target_modules == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert str(lora.task_type.value if hasattr(lora.task_type, "value") else lora.task_type) == "CAUSAL_LM"


def test_format_reward_adds_the_format_bonus():
    from drift_suite.train.gsm8k import correctness_reward, format_reward

    assert train.reward_functions(parse_args([])) == [correctness_reward]
    assert train.reward_functions(parse_args(["--format_reward"])) == [correctness_reward, format_reward]


def test_drift_flags_add_the_probe_callback():
    from drift_suite.train.callbacks import DriftProbeCallback, TrainingLogCallback

    (log_only,) = train.build_callbacks(parse_args([]))
    assert isinstance(log_only, TrainingLogCallback) and log_only.path == Path("checkpoints") / train.TRAIN_LOG
    callback, log = train.build_callbacks(parse_args(["--drift_every", "3", "--drift_baseline_dir", "my/baseline"]))
    assert isinstance(callback, DriftProbeCallback) and isinstance(log, TrainingLogCallback)  # the log line sees the drift
    assert callback.every == 3 and callback.baseline_dir == Path("my/baseline")


def test_training_log_is_one_line_per_log_and_full_in_jsonl(tmp_path):
    from transformers import TrainerControl, TrainerState

    from drift_suite.train.callbacks import TrainingLogCallback

    lines: list[str] = []
    callback, state = TrainingLogCallback(tmp_path / "train_log.jsonl", print_line=lines.append), TrainerState(max_steps=4)
    callback.on_train_begin(None, state, TrainerControl())
    logged = [
        {"loss": 0.0123, "reward": 0.25, "reward_std": 0.1, "completions/mean_length": 31.5, "learning_rate": 1e-5},
        {"loss": -0.5, "reward": 0.5, "reward_std": 0.0, "drift/projection": -0.0421, "drift/rotation_deg": 2.25},
        {"train_runtime": 12.4, "train_loss": 0.01},
    ]
    for step, logs in zip((2, 4, 4), logged):
        state.global_step = step
        callback.on_log(None, state, TrainerControl(), logs=dict(logs))
    assert lines[0].startswith("step 2/4  reward 0.250  ± 0.100  loss 0.0123  ") and lines[0].endswith(" s/step")
    assert "completions" not in lines[0] and "learning_rate" not in lines[0]  # in the file, not on the terminal
    assert lines[1].startswith("step 4/4  reward 0.500  ± 0.000  loss -0.5  drift -0.0421  2.2°")
    assert lines[2] == "done: 4 steps in 12 s"
    saved = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert saved == [{"step": s, **logs} for s, logs in zip((2, 4, 4), logged)]
    # a non-main process neither prints nor writes
    state.is_world_process_zero = False
    callback.on_log(None, state, TrainerControl(), logs={"reward": 1.0})
    assert len(lines) == 3 and len((tmp_path / "train_log.jsonl").read_text().splitlines()) == 3


def test_train_entry_point_silences_known_dependency_noise_only():
    import logging
    import warnings

    from drift_suite.common.quiet import quiet_dependencies

    assert train.quiet_dependencies is quiet_dependencies  # the one filter set of the CLI and the plugin
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    probe = logging.LogRecord(bnb.name, logging.WARNING, "ops.py", 1, "Failed to load CPU gemm_4bit_forward from kernels-community: %s", ("x",), None)
    other = logging.LogRecord(bnb.name, logging.WARNING, "ops.py", 1, "a real bitsandbytes problem", (), None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        with quiet_dependencies():
            warnings.warn("`torch.jit.script_method` is deprecated. Please switch to `torch.compile`", DeprecationWarning)
            warnings.warn("something else is deprecated", DeprecationWarning)
            assert not bnb.filter(probe) and bnb.filter(other)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]
    assert bnb.filter(probe)  # restored on exit


def test_dataset_flags_pick_the_problems(tmp_path):
    synthetic = train.build_train_dataset(parse_args(["--dataset", "synthetic", "--max_samples", "3"]))
    assert len(synthetic) == 3 and {"prompt", "answer"} <= set(synthetic.column_names)
    assert synthetic[0]["prompt"][-1]["role"] == "user"
    other_seed = train.build_train_dataset(parse_args(["--dataset", "synthetic", "--max_samples", "3", "--seed", "1"]))
    assert other_seed["answer"] != synthetic["answer"]
    rows = [{"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(5)]
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    local = train.build_train_dataset(parse_args(["--dataset", "mine.jsonl"]))
    assert sorted(local["answer"]) == sorted(r["answer"] for r in rows)
    assert len(train.build_train_dataset(parse_args(["--dataset", "mine.jsonl", "--max_samples", "2"]))) == 2


def test_missing_dataset_file_is_a_one_line_error(tiny_checkpoint, capsys):
    assert main(["--dataset", "nowhere.jsonl", "--model", str(tiny_checkpoint)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nowhere.jsonl" in err


def test_device_and_dtype_flags_pick_the_precision(tiny_checkpoint):
    from drift_suite.common.errors import DriftSuiteError

    model, _ = train.load_training_model(parse_args(["--model", str(tiny_checkpoint), "--dtype", "bfloat16"]))
    assert next(model.parameters()).dtype == torch.bfloat16
    config = build_grpo_config(TrainArgs(device="cpu", dtype="float32"))
    assert config.use_cpu and not config.bf16 and not config.fp16
    if not torch.cuda.is_available():
        with pytest.raises(DriftSuiteError, match="^--device cuda"):
            build_grpo_config(TrainArgs(device="cuda"))


def test_model_flag_picks_the_weights_trained(tiny_checkpoint, tmp_path):
    model, tokenizer = train.load_training_model(parse_args(["--model", str(tiny_checkpoint)]))
    assert model.name_or_path == str(tiny_checkpoint.resolve())
    assert next(model.parameters()).dtype == torch.float32 and tokenizer.padding_side == "left"
    assert train.resolve_model_spec(str(tiny_checkpoint)) == str(tiny_checkpoint.resolve())
    assert train.resolve_model_spec("google/gemma-2-2b-it") == "google/gemma-2-2b-it"


def test_missing_model_dir_is_a_one_line_error(capsys):
    assert main(["--model", "./no/such/model", "--dataset", "synthetic", "--max_samples", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no/such/model" in err


def test_make_trainer_hands_every_piece_to_grpo_trainer(monkeypatch):
    import trl

    from transformers.trainer_callback import PrinterCallback

    received = {}

    class FakeTrainer:
        def __init__(self, **kwargs):
            received.update(kwargs)
            self.removed = []

        def remove_callback(self, callback):
            self.removed.append(callback)

    monkeypatch.setattr(trl, "GRPOTrainer", FakeTrainer)
    args = parse_args(["--use_lora", "--format_reward", "--drift_every", "2", "--num_generations", "2"])
    config, peft_config = build_grpo_config(args), build_peft_config(args)
    trainer = train.make_trainer(args, "model", "tokenizer", "dataset", config, peft_config)
    assert trainer.removed == [PrinterCallback] and config.disable_tqdm  # raw log dicts and bars off
    assert received["model"] == "model" and received["processing_class"] == "tokenizer"
    assert received["train_dataset"] == "dataset" and received["args"] is config and received["peft_config"] is peft_config
    assert [f.__name__ for f in received["reward_funcs"]] == ["correctness_reward", "format_reward"]
    assert [type(c).__name__ for c in received["callbacks"]] == ["DriftProbeCallback", "TrainingLogCallback"]


# ------------------------------------------------------------------------------------------ errors


def _no_heavy_work(monkeypatch):
    def forbidden(*_args, **_kwargs):
        raise AssertionError("loaded something before checking the arguments")

    monkeypatch.setattr(train, "load_training_model", forbidden)
    monkeypatch.setattr(train, "build_train_dataset", forbidden)


def test_use_4bit_without_cuda_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setattr(train, "_cuda", lambda: False)
    _no_heavy_work(monkeypatch)
    assert main(["--use_4bit", "--use_lora"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--use_4bit" in err and "CUDA" in err


def test_use_4bit_needs_lora(monkeypatch, capsys):
    monkeypatch.setattr(train, "_cuda", lambda: True)
    _no_heavy_work(monkeypatch)
    assert main(["--use_4bit"]) == 2
    assert "--use_lora" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags,suggestion",
    [
        (["--per_device_train_batch_size", "3", "--num_generations", "2"], "--per_device_train_batch_size 2 or 4"),
        (["--per_device_train_batch_size", "4", "--num_generations", "3"], "--per_device_train_batch_size 3 or 6"),
        (["--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "3", "--num_generations", "4"], "--num_generations 2, 3, 6"),
        (["--num_generations", "1", "--per_device_train_batch_size", "2"], "2 or more"),
    ],
)
def test_batch_not_made_of_whole_groups_is_a_one_line_error(flags, suggestion, monkeypatch, capsys):
    _no_heavy_work(monkeypatch)
    assert main(flags) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and suggestion in err


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for field in dataclasses.fields(TrainArgs):
        assert f"--{field.name}" in out
    assert "1e-4" in out  # the LoRA learning-rate advice


def test_cli_train_subcommand_reaches_train_main(capsys):
    from drift_suite.cli import main as cli_main

    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    assert "--drift_every" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ drift probe

PROBE_SETTINGS = {"max_new_tokens": 6}


def _probe(tiny_personas, baseline_dir=None, every=2):
    from drift_suite.train.callbacks import DriftProbeCallback
    from drift_suite.measure.conversations import Design
    from drift_suite.measure.extract import GenerationSettings

    return DriftProbeCallback(
        every=every,
        baseline_dir=baseline_dir,
        persona_set=tiny_personas,
        design=Design(default_questions=3, role_prompts=1, role_questions=2),
        settings=GenerationSettings(**PROBE_SETTINGS),
    )


def _log_step(callback, state, model, tokenizer, step, reward=0.5):
    """What the Trainer does at a step: on_step_end, then log() (history entry first, then on_log)."""
    from transformers import TrainerControl

    state.global_step = step
    control = callback.on_step_end(None, state, TrainerControl(), model=model, processing_class=tokenizer)
    logs = {"reward": reward}
    state.log_history.append({**logs, "step": step})
    callback.on_log(None, state, control, logs=logs, model=model, processing_class=tokenizer)
    return control, logs


def test_probe_logs_zero_drift_for_an_unchanged_model_next_to_the_reward(tiny, tiny_personas):
    from transformers import TrainerControl, TrainerState

    callback, state = _probe(tiny_personas), TrainerState()
    tiny.model.train()
    callback.on_train_begin(None, state, TrainerControl(), model=tiny.model, processing_class=tiny.tokenizer)
    assert tiny.model.training, "the probe must give the model back in train mode"
    control, logs = _log_step(callback, state, tiny.model, tiny.tokenizer, step=2)
    assert control.should_log
    entry = state.log_history[-1]
    assert entry["reward"] == 0.5 and entry["step"] == 2 and logs["drift/projection"] == entry["drift/projection"]
    assert entry["drift/projection"] == pytest.approx(0.0, abs=1e-5)
    assert entry["drift/rotation_deg"] == pytest.approx(0.0, abs=0.05)
    assert state.log_history[0]["step"] == 0 and state.log_history[0]["drift/projection"] == 0.0
    # off the --drift_every grid nothing is measured
    control, logs = _log_step(callback, state, tiny.model, tiny.tokenizer, step=3)
    assert not control.should_log and "drift/projection" not in state.log_history[-1]


@pytest.mark.parametrize("amount", [0.5, -1.0])
def test_probe_measures_a_planted_shift_along_the_baseline_axis(tiny, tiny_personas, tmp_path, amount):
    from planting import add_vector, planted
    from transformers import TrainerControl, TrainerState

    from drift_suite.gate.baseline import create_baseline, save_baseline
    from drift_suite.measure.conversations import Design
    from drift_suite.measure.extract import GenerationSettings
    from drift_suite.measure.measurement import measure
    from drift_suite.measure.models import embedding_fingerprint

    design, settings = Design(default_questions=4, role_prompts=2, role_questions=3), GenerationSettings(max_new_tokens=12)
    full = measure(tiny, tiny_personas, design, settings, cache_dir=None, progress=False)
    baseline = create_baseline(full, tiny_personas, design, settings, [1, 2, 3], embedding_fingerprint(tiny.model), n_boot=10)
    save_baseline(baseline, tmp_path / "baseline")

    callback, state = _probe(tiny_personas, baseline_dir=tmp_path / "baseline"), TrainerState()
    callback.on_train_begin(None, state, TrainerControl(), model=tiny.model, processing_class=tiny.tokenizer)
    assert callback.axis_source.startswith("baseline") and callback.layer == 2  # the middle asserted layer
    direction = baseline.axis[2] / np.linalg.norm(baseline.axis[2])
    shift = amount * np.linalg.norm(baseline.axis[2])
    with planted(tiny.model, 2, *add_vector(torch.tensor(shift * direction))):
        _log_step(callback, state, tiny.model, tiny.tokenizer, step=2)
    entry = state.log_history[-1]
    assert entry["drift/projection"] == pytest.approx(amount, rel=0.02)
    assert entry["drift/rotation_deg"] < 0.1  # the same vector moved every persona: the axis did not turn


def test_probe_sees_through_a_peft_model(tiny_checkpoint, tiny_personas):
    from peft import LoraConfig, get_peft_model
    from transformers import TrainerControl, TrainerState

    from drift_suite.measure.models import load_model

    peft_model = get_peft_model(load_model(tiny_checkpoint).model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    tokenizer = load_model(tiny_checkpoint).tokenizer
    callback, state = _probe(tiny_personas, baseline_dir="no-baseline-here"), TrainerState()
    callback.on_train_begin(None, state, TrainerControl(), model=peft_model, processing_class=tokenizer)
    assert callback.axis_source == "step-0 probe subset"
    assert np.abs(callback.reference.default_mean).sum() > 0, "capture hooks must fire under PEFT's generate()"
    with torch.no_grad():  # a trained adapter: LoRA B away from zero
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.add_(torch.randn_like(param) * 0.5)
    _log_step(callback, state, peft_model, tokenizer, step=2)
    assert abs(state.log_history[-1]["drift/projection"]) > 1e-4


# ------------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_grpo_run_on_a_tiny_model_writes_loadable_checkpoints(tmp_path, capsys):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny import save_tiny_checkpoint

    from drift_suite.measure.models import find_run_checkpoints, load_model
    from drift_suite.gate.runner import read_reward_log

    base = save_tiny_checkpoint(tmp_path / "tiny-base")
    out = tmp_path / "run"
    code = main([
        "--model", str(base), "--output_dir", str(out), "--use_lora", "--max_samples", "4", "--max_steps", "2",
        "--save_steps", "1", "--dataset", "synthetic", "--num_generations", "2", "--per_device_train_batch_size", "2",
        "--max_completion_length", "8", "--drift_every", "1", "--drift_baseline_dir", str(tmp_path / "no-baseline"),
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "reward: first logged" in printed and str(out / "final") in printed

    assert sorted(find_run_checkpoints(out)) == [1, 2]
    assert (out / "final" / "adapter_config.json").is_file() and (out / "final" / "tokenizer_config.json").is_file()
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest["model"] == str(base.resolve()) and manifest["use_lora"] is True and manifest["finished"]
    assert manifest["dataset"] == "synthetic" and manifest["arguments"]["max_steps"] == 2
    assert set(manifest["versions"]) == {"torch", "transformers", "trl", "peft", "drift_suite"}

    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in history if "reward" in e] == [1, 2]
    assert [e["step"] for e in history if "drift/projection" in e] == [0, 1, 2]
    assert sorted(read_reward_log(out)) == [1, 2]  # what the drift report reads

    for folder in [*find_run_checkpoints(out).values(), out / "final"]:
        adapter = json.loads((folder / "adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == str(base.resolve())
        loaded = load_model(folder)
        assert loaded.info.adapter == str(folder) and loaded.info.num_layers == 4
