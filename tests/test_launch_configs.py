"""The accelerate configs in configs/ as a user launches them: each builds our GRPOTrainer (train.py's own
build path) on a tiny model in one CPU process, as far as that goes without a GPU; the vLLM flags reach
GRPOConfig, and without vLLM they are a one-line error."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from drift_suite.train import trainer as train
from drift_suite.train.trainer import TrainArgs, build_grpo_config, main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NEEDS_CUDA = {"deepspeed-zero2.yaml", "deepspeed-zero3.yaml"}


def launch_env(config_file: Path) -> dict[str, str]:
    """The environment ``accelerate launch --config_file CONFIG`` gives each process (one process here)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config_file), "--num_processes", "1", "train.py"])
    args, _defaults, _mixed_precision = _validate_launch_command(args)
    return prepare_multi_gpu_env(args)


def test_every_config_is_listed_and_documented():
    assert {p.name for p in CONFIGS.glob("*.yaml")} == {"ddp.yaml", "fsdp.yaml", *NEEDS_CUDA}
    scaling_doc = (CONFIGS.parent / "docs" / "scale.md").read_text()
    for path in CONFIGS.glob("*.yaml"):
        assert f"accelerate launch --config_file configs/{path.name}" in scaling_doc


@pytest.fixture()
def fresh_accelerate_state():
    """accelerate keeps its state (and the process group it made) per process; later tests must not see ours."""
    yield
    import torch.distributed as dist
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_config_builds_the_trainer(name, tiny_checkpoint, tmp_path, monkeypatch, fresh_accelerate_state):
    import torch

    if name in NEEDS_CUDA and not torch.cuda.is_available():
        pytest.skip(f"{name}: DeepSpeed needs CUDA (and the deepspeed package); this machine has no GPU")
    env = launch_env(CONFIGS / name)
    for key, value in env.items():
        if key.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.setenv(key, value)
    if not torch.cuda.is_available():
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # the configs say bf16; a CPU trains in fp32
    # A one-process "launch": what torchrun would set for rank 0 of 1.
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533"}.items():
        monkeypatch.setenv(key, value)
    args = TrainArgs(model=str(tiny_checkpoint), output_dir=str(tmp_path / "run"), dataset="synthetic", max_samples=4,
                     max_steps=1, num_generations=2, per_device_train_batch_size=2, max_completion_length=4, use_lora=True)
    config = build_grpo_config(args)
    model, tokenizer = train.load_training_model(args)
    trainer = train.make_trainer(args, model, tokenizer, train.build_train_dataset(args), config, train.build_peft_config(args))
    cuda = torch.cuda.is_available()
    if name == "ddp.yaml":
        assert trainer.accelerator.distributed_type.name == ("MULTI_GPU" if cuda else "MULTI_CPU")
        return
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # what accelerate reads from the launch env
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.state_dict_type.name == "SHARDED_STATE_DICT" and plugin.cpu_ram_efficient_loading
    if cuda:
        assert trainer.is_fsdp_enabled and trainer.accelerator.distributed_type.name == "FSDP"
    else:
        # accelerate applies FSDP on GPU-type devices only: on a CPU the same launch builds a DDP (gloo)
        # trainer. That is as far as a CPU goes; FSDP sharding itself is untested without a GPU.
        assert trainer.accelerator.distributed_type.name == "MULTI_CPU"


def test_vllm_flags_reach_grpo_config(monkeypatch):
    monkeypatch.setattr(train, "_vllm_installed", lambda: True)
    config = build_grpo_config(train.parse_args(
        ["--use_vllm", "--vllm_mode", "server", "--vllm_server_host", "10.0.0.7", "--vllm_server_port", "8123"]))
    assert (config.use_vllm, config.vllm_mode, config.vllm_server_host, config.vllm_server_port) == (True, "server", "10.0.0.7", 8123)
    default = build_grpo_config(TrainArgs())
    assert default.use_vllm is False and default.vllm_mode == "colocate"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_use_vllm_without_vllm_is_a_one_line_error(capsys):
    assert main(["--use_vllm", "--dataset", "synthetic"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--use_vllm needs the vllm package" in err


def test_vllm_mode_is_checked(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--vllm_mode", "remote"])
    assert exc.value.code == 2 and "invalid choice: 'remote'" in capsys.readouterr().err
