"""GRPO fine-tuning on GSM8K with TRL: the training run whose checkpoints the drift suite checks.

    python -m drift_suite.train --model google/gemma-2-2b-it --use_lora --learning_rate 1e-4
    drift-suite train --model demo/smollm2-135m-instruct --dataset synthetic --use_lora --max_steps 12

Layout of ``--output_dir`` after a run::

    checkpoint-N/          TRL's checkpoints (an adapter dir with --use_lora), each with trainer_state.json
    final/                 the trained adapter (or full model) with its tokenizer
    trainer_state.json     the final trainer state; ``log_history`` holds the reward curve
    run_manifest.json      base model, dataset, arguments, library versions, start and end time

The steps are separate functions (``build_grpo_config``, ``build_peft_config``, ...) so tests can check
that every flag reaches the trainer without loading a model.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..common.version import __version__
from ..common.files import atomic_write_bytes
from ..common.errors import CheckpointError, DriftSuiteError
from ..common.quiet import quiet_dependencies
from .rewards import Reward, RewardFunctionError, parse_reward_weights, reward_items

if TYPE_CHECKING:  # heavy imports stay out of `--help` and of config errors
    import datasets
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

PROG = "drift-suite train"
MANIFEST = "run_manifest.json"
FINAL_DIR = "final"
TRAIN_LOG = "train_log.jsonl"


class TrainSetupError(DriftSuiteError):
    """Training arguments that cannot work together (caught before anything heavy is loaded)."""


@dataclass
class TrainArgs:
    """Every option of a training run; field names are the CLI flags."""

    model: str = "google/gemma-2-2b-it"
    output_dir: str = "checkpoints"
    save_steps: int = 100
    save_total_limit: int = 10
    max_samples: int | None = None
    num_train_epochs: float = 1
    use_lora: bool = False
    use_4bit: bool = False
    dataset: str = "openai/gsm8k"
    max_steps: int = -1
    num_generations: int = 4
    max_completion_length: int = 256
    learning_rate: float = 1e-5
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    seed: int = 0
    resume_from_checkpoint: str | None = None
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: str = "q_proj,k_proj,v_proj,o_proj"
    format_reward: bool = False
    reward: str = "gsm8k"
    reward_weights: str | None = None
    report_to: str = "none"
    temperature: float | None = None
    logging_steps: int = 1
    drift_every: int = 0
    drift_baseline_dir: str = "baselines"
    drift_stop: float | None = None
    drift_patience: int = 1
    use_vllm: bool = False
    vllm_mode: str = "colocate"
    vllm_server_host: str = "0.0.0.0"
    vllm_server_port: int = 8000
    device: str = "auto"
    dtype: str = "auto"


_HELP: dict[str, str] = {
    "model": "base model: a local checkpoint dir (safetensors) or a hub id",
    "output_dir": "where checkpoint-N/, final/, trainer_state.json and run_manifest.json go",
    "save_steps": "save a checkpoint every N optimizer steps",
    "save_total_limit": "keep at most N checkpoints (oldest deleted first)",
    "max_samples": "train on a seed-shuffled subset of N problems (default: all; 1000 for 'synthetic')",
    "num_train_epochs": "passes over the dataset (ignored when --max_steps > 0)",
    "use_lora": "train a LoRA adapter instead of all weights (checkpoints are adapter dirs)",
    "use_4bit": "load the base model in 4-bit (QLoRA; needs CUDA and --use_lora)",
    "dataset": "'openai/gsm8k' (hub), a local GSM8K .jsonl/.parquet file, or 'synthetic' (generated, offline)",
    "max_steps": "stop after N optimizer steps (-1: run --num_train_epochs)",
    "num_generations": "completions sampled per prompt (GRPO's group size, >= 2)",
    "max_completion_length": "maximum tokens per completion",
    "learning_rate": "peak learning rate; 1e-5 suits full fine-tuning, LoRA typically needs ~1e-4",
    "per_device_train_batch_size": "completions per device per step; times --gradient_accumulation_steps it must "
    "be a multiple of --num_generations",
    "gradient_accumulation_steps": "micro-batches per optimizer step",
    "seed": "seed of training, sampling and the dataset subset",
    "resume_from_checkpoint": "a checkpoint-N dir to resume from, or 'latest' for the newest in --output_dir",
    "lora_r": "LoRA rank",
    "lora_alpha": "LoRA scaling alpha",
    "lora_dropout": "LoRA dropout",
    "lora_target_modules": "comma-separated module names LoRA adapts",
    "format_reward": "add a 0.1 bonus for stating the answer explicitly ('#### N') to the correctness reward "
    "(the same as adding 'format' to --reward)",
    "reward": "comma list of rewards, summed: gsm8k (answer correctness), format (the '#### N' bonus), "
    "FILE.py:FUNC, package.module:FUNC (TRL reward-function signature), or a reward model dir / hub id "
    "(sequence-classification head); each is logged as rewards/NAME/mean",
    "reward_weights": "comma list of weights, one per --reward item (default: all 1)",
    "report_to": "where the trainer logs go besides train_log.jsonl: none, tensorboard, wandb, mlflow, trackio, "
    "all (every installed one), or a comma list; the drift/* numbers go there too",
    "temperature": "sampling temperature of the rollouts (default: TRL's, 1.0)",
    "logging_steps": "log reward and loss every N steps (the reward curve's resolution)",
    "drift_every": "every N steps measure a small persona subset and log drift/projection and "
    "drift/rotation_deg next to the reward (0: off)",
    "drift_stop": "with --drift_every: save a checkpoint and stop when the probe's projection or rotation passes "
    "K noise-floor units (sigma; rotation: K x its bootstrap RMS)",
    "drift_patience": "with --drift_stop: stop only after N probes in a row past the threshold",
    "drift_baseline_dir": "baseline whose Assistant Axis --drift_every projects on (without one, the axis "
    "of the untrained model's subset measurement is used)",
    "use_vllm": "generate the rollouts with vLLM (needs the vllm package and CUDA)",
    "vllm_mode": "with --use_vllm: 'colocate' (vLLM inside each training process) or 'server' (a separate "
    "`trl vllm-serve` process)",
    "vllm_server_host": "with --vllm_mode server: host of the `trl vllm-serve` server",
    "vllm_server_port": "with --vllm_mode server: port of the `trl vllm-serve` server",
    "device": "auto (the GPU where there is one), cpu or cuda; the drift probe measures where the model trains",
    "dtype": "auto (bfloat16 on a GPU that supports it, else float32), float32, bfloat16 or float16",
}
VLLM_MODES = ("colocate", "server")


def build_parser() -> argparse.ArgumentParser:
    """The CLI; defaults come from :class:`TrainArgs` so there is one source of truth."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="GRPO fine-tuning on GSM8K (TRL). Writes checkpoint-N/ dirs the drift suite can check: "
        "drift-suite check OUTPUT_DIR.",
    )
    for f in fields(TrainArgs):
        flag = f"--{f.name}"
        if f.type == "bool":
            parser.add_argument(flag, action="store_true", help=_HELP[f.name])
            continue
        if f.name == "vllm_mode":
            parser.add_argument(flag, choices=VLLM_MODES, default=f.default, help=_HELP[f.name])
            continue
        kind = {"int": int, "int | None": int, "float": float, "float | None": float}.get(f.type, str)
        metavar = {int: "N", float: "X"}.get(kind, f.name.upper().split("_")[-1])
        metavar = {"reward": "SPEC", "reward_weights": "W", "report_to": "TRACKER", "drift_stop": "K"}.get(f.name, metavar)
        shown = "" if f.default is None else f" (default: {f.default})"
        parser.add_argument(flag, type=kind, default=f.default, metavar=metavar, help=_HELP[f.name] + shown)
    return parser


def parse_args(argv: list[str]) -> TrainArgs:
    """Parse the command line into :class:`TrainArgs`."""
    return TrainArgs(**vars(build_parser().parse_args(argv)))


# ------------------------------------------------------------------------------------------ checks


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _placement(args: TrainArgs):
    from ..measure.placement import resolve_placement

    return resolve_placement(args.device, args.dtype)


def check_args(args: TrainArgs) -> None:
    """Reject combinations that would fail later, with a one-line :class:`DriftSuiteError`."""
    if args.use_4bit and not _cuda():
        raise CheckpointError("--use_4bit needs a CUDA GPU (bitsandbytes 4-bit kernels); none is available here")
    if args.use_4bit and not args.use_lora:
        raise TrainSetupError("--use_4bit trains through LoRA only (4-bit weights cannot be updated); add --use_lora")
    n = args.num_generations
    if n < 2:
        raise TrainSetupError(f"--num_generations {n}: GRPO compares completions within a group, use 2 or more")
    batch, accum = args.per_device_train_batch_size, args.gradient_accumulation_steps
    if batch < 1 or accum < 1:
        raise TrainSetupError("--per_device_train_batch_size and --gradient_accumulation_steps must be >= 1")
    generation_batch = batch * accum
    if generation_batch % n:
        # The generation batch holds whole groups of num_generations completions of one prompt, so the
        # batch size must be a multiple of this unit.
        unit = n // math.gcd(n, accum)
        lower = (batch // unit) * unit
        hint = " or ".join(str(s) for s in (lower, lower + unit) if s > 0)
        group_sizes = [d for d in range(2, generation_batch + 1) if generation_batch % d == 0]
        alt = f" (or --num_generations {', '.join(map(str, group_sizes))})" if group_sizes else ""
        raise TrainSetupError(
            f"--per_device_train_batch_size {batch} × --gradient_accumulation_steps {accum} = {generation_batch} "
            f"completions per step is not a multiple of --num_generations {n}; use --per_device_train_batch_size "
            f"{hint}{alt}"
        )
    for name in ("save_steps", "logging_steps", "save_total_limit"):
        if getattr(args, name) < 1:
            raise TrainSetupError(f"--{name} must be >= 1")
    if args.drift_every < 0:
        raise TrainSetupError("--drift_every must be >= 0 (0 turns the drift probe off)")
    if args.drift_stop is not None:
        if not args.drift_every:
            raise TrainSetupError("--drift_stop needs the drift probe: add --drift_every N (the stop is judged at probe steps)")
        if not math.isfinite(args.drift_stop) or args.drift_stop <= 0:
            raise TrainSetupError(f"--drift_stop {args.drift_stop}: the threshold is a number of noise-floor units (sigma) > 0, e.g. 3")
    if args.drift_patience < 1:
        raise TrainSetupError(f"--drift_patience {args.drift_patience}: must be >= 1 (probes in a row past --drift_stop)")
    report_to_list(args.report_to)  # an unknown or uninstalled tracker fails here, before any weights
    if args.max_steps <= 0 and args.num_train_epochs <= 0:
        raise TrainSetupError("nothing to train: set --max_steps > 0 or --num_train_epochs > 0")
    if args.vllm_mode not in VLLM_MODES:
        raise TrainSetupError(f"--vllm_mode {args.vllm_mode}: use one of {', '.join(VLLM_MODES)}")
    if args.use_vllm and not _vllm_installed():
        raise TrainSetupError("--use_vllm needs the vllm package (pip install vllm, on a CUDA machine); it is not installed here")


TRACKERS = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",), "trackio": ("trackio",)}
"""``--report_to`` names and the packages of which one must be importable."""


def report_to_list(text: str) -> list[str]:
    """``--report_to`` as GRPOConfig's list (``[]`` for none; ``["all"]`` for every installed integration)."""
    import importlib.util

    names = [item.strip().lower() for item in text.split(",") if item.strip()]
    if not names or names == ["none"]:
        return []
    if "all" in names:
        return ["all"]
    for name in names:
        if name not in TRACKERS:
            raise TrainSetupError(f"--report_to {name}: use none, {', '.join(TRACKERS)}, all, or a comma list of them")
        packages = TRACKERS[name]
        if not any(importlib.util.find_spec(p) is not None for p in packages):
            raise TrainSetupError(f"--report_to {name} needs the {packages[0]} package (pip install {packages[0]}); it is not installed here")
    return list(dict.fromkeys(names))


def _vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


# ------------------------------------------------------------------------------------------ configs


def _resume_value(args: TrainArgs) -> str | None:
    if args.resume_from_checkpoint in (None, "latest"):
        return args.resume_from_checkpoint
    path = Path(args.resume_from_checkpoint).expanduser()
    if not path.is_dir():
        raise TrainSetupError(f"--resume_from_checkpoint {path}: no such checkpoint dir (or pass 'latest')")
    return str(path)


def build_grpo_config(args: TrainArgs) -> GRPOConfig:
    """The TRL trainer config of ``args``: precision and device from ``--device``/``--dtype`` (auto: the hardware)."""
    from trl import GRPOConfig

    check_args(args)
    placement = _placement(args)
    cuda = placement.device_type == "cuda"
    # TRL's bf16 default breaks training on CPUs; the placement says float32 there.
    bf16 = placement.dtype == "bfloat16"
    overrides: dict[str, Any] = {} if args.temperature is None else {"temperature": args.temperature}
    # Recomputing activations trades compute for memory, the wrong trade on a CPU with plenty of RAM.
    # transformers 5 renamed the option (the old name still works, with a FutureWarning).
    names = {f.name for f in fields(GRPOConfig)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    overrides[checkpointing] = cuda
    return GRPOConfig(
        output_dir=args.output_dir,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        learning_rate=args.learning_rate,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        seed=args.seed,
        data_seed=args.seed,
        resume_from_checkpoint=_resume_value(args),
        logging_steps=args.logging_steps,
        bf16=bf16,
        fp16=placement.dtype == "float16",
        use_cpu=not cuda,
        report_to=report_to_list(args.report_to) or "none",
        reward_weights=parse_reward_weights(args.reward_weights, len(reward_items(args.reward, args.format_reward))),
        use_vllm=args.use_vllm,
        vllm_mode=args.vllm_mode,
        vllm_server_host=args.vllm_server_host,
        vllm_server_port=args.vllm_server_port,
        # One summary line per log (TrainingLogCallback) instead of tqdm bars and raw log dicts.
        disable_tqdm=True,
        **overrides,
    )


def build_peft_config(args: TrainArgs) -> LoraConfig | None:
    """The LoRA config of ``args``, or None for full fine-tuning."""
    if not args.use_lora:
        return None
    from peft import LoraConfig

    targets = [name.strip() for name in args.lora_target_modules.split(",") if name.strip()]
    if not targets:
        raise TrainSetupError("--lora_target_modules is empty; name the modules to adapt, e.g. q_proj,v_proj")
    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )


def resolve_rewards(args: TrainArgs) -> list[Reward]:
    """``--reward`` (plus ``format`` with ``--format_reward``) resolved; user code is imported, no model loads."""
    from .rewards import resolve_rewards as resolve

    return resolve(args.reward, format_alias=args.format_reward)


def reward_functions(args: TrainArgs) -> list[Callable[..., list[float]] | str]:
    """What GRPOTrainer's ``reward_funcs`` gets: built-ins as they are, user functions inside a checking
    wrapper, reward models as their dir or hub id (TRL loads them)."""
    return [reward.func for reward in resolve_rewards(args)]


def build_callbacks(args: TrainArgs) -> list[TrainerCallback]:
    """The drift probe with ``--drift_every N``, then the log summary (it prints what the probe added)."""
    from .callbacks import DriftProbeCallback, TrainingLogCallback

    probe = [
        DriftProbeCallback(every=args.drift_every, baseline_dir=args.drift_baseline_dir, stop_sigma=args.drift_stop, patience=args.drift_patience)
    ] if args.drift_every > 0 else []
    return [*probe, TrainingLogCallback(Path(args.output_dir) / TRAIN_LOG)]


# ------------------------------------------------------------------------------------------ loading


def _is_local(spec: str) -> bool:
    from ..measure.models import looks_like_path

    return looks_like_path(spec)


def resolve_model_spec(spec: str) -> str:
    """A local model dir as an absolute path (so adapters find their base from anywhere), else the hub id."""
    return str(Path(spec).expanduser().resolve()) if _is_local(spec) else spec


def resolve_dataset_spec(spec: str) -> str:
    """A local dataset file as an absolute path, else as given (``synthetic`` or a hub id)."""
    if spec == "synthetic":
        return spec
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() or spec.endswith((".jsonl", ".json", ".parquet")) else spec


def check_model_spec(args: TrainArgs) -> str:
    """The model to load (see :func:`resolve_model_spec`); a local one must be a full checkpoint dir."""
    from ..measure.models import check_model_dir

    source = resolve_model_spec(args.model)
    if _is_local(args.model):
        check_model_dir(Path(source))
        if (Path(source) / "adapter_config.json").is_file():
            raise CheckpointError(f"{source}: an adapter dir; train from its base model (its adapter_config.json names it)")
    return source


def load_training_model(args: TrainArgs) -> tuple[Any, Any]:
    """``(model, tokenizer)`` to train, with the loading safety of :func:`drift_suite.measure.models.load_model`.

    Safetensors weights only and no remote code; the dtype of ``--dtype`` (auto: float32 on CPU, bf16 where
    CUDA supports it).
    """
    from ..measure.models import quantization_kwargs, from_pretrained_checked, load_tokenizer

    source = check_model_spec(args)
    dtype = _placement(args).torch_dtype
    model = from_pretrained_checked(source, dtype, trust_remote_code=False, revision=None, **quantization_kwargs(args.use_4bit))
    tokenizer = load_tokenizer(source, trust_remote_code=False, revision=None)
    # Rollouts are generated as a left-padded batch; the prompt must end where the completion starts.
    tokenizer.padding_side = "left"
    model.config.use_cache = True
    return model, tokenizer


def build_train_dataset(args: TrainArgs) -> datasets.Dataset:
    """GSM8K (or synthetic) problems as TRL conversational prompts with an ``answer`` column."""
    from .gsm8k import DatasetSourceError, load_gsm8k, to_prompt_dataset

    try:
        problems = load_gsm8k(resolve_dataset_spec(args.dataset), split="train", max_samples=args.max_samples, seed=args.seed)
    except DatasetSourceError as exc:
        raise TrainSetupError(str(exc).splitlines()[0]) from None
    if len(problems) == 0:
        raise TrainSetupError(f"--dataset {args.dataset}: no problems to train on")
    return to_prompt_dataset(problems)


def make_trainer(
    args: TrainArgs,
    model: Any,
    tokenizer: Any,
    dataset: datasets.Dataset,
    config: GRPOConfig,
    peft_config: LoraConfig | None,
    rewards: list[Reward] | None = None,
) -> GRPOTrainer:
    """Assemble TRL's GRPOTrainer from the pieces built above (``rewards``: resolved already, else now)."""
    import trl
    from transformers.trainer_callback import PrinterCallback

    reward_funcs = [r.func for r in rewards] if rewards is not None else reward_functions(args)
    reward_models = [f for f in reward_funcs if isinstance(f, str)]
    try:
        trainer = trl.GRPOTrainer(
            model=model,
            reward_funcs=reward_funcs,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=build_callbacks(args),
        )
    except (OSError, ValueError) as exc:
        if not reward_models:
            raise
        # TRL loads a reward model given by dir or id here; an unreachable hub id or a broken dir ends as one line.
        from ..common.errors import one_line

        raise CheckpointError(f"--reward {', '.join(reward_models)}: the reward model could not be loaded ({one_line(exc)})") from None
    trainer.remove_callback(PrinterCallback)  # raw log dicts; TrainingLogCallback prints a summary line instead
    return trainer


# ------------------------------------------------------------------------------------------ outputs


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a run's result."""
    import peft
    import torch
    import transformers
    import trl

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "peft": peft.__version__,
        "drift_suite": __version__,
    }


def write_manifest(
    args: TrainArgs,
    started: str,
    finished: str | None,
    rewards: list[Reward] | None = None,
    drift_stop: dict[str, Any] | None = None,
    error: str | None = None,
) -> Path:
    """``run_manifest.json``; written at the start too, so an interrupted run still names its base model.

    ``rewards``: each ``--reward`` item and the name it is logged under (``rewards/<name>/mean``);
    ``drift_stop``: why the drift probe stopped the run (see :func:`_drift_stop_record`), None if it did not;
    ``error``: the one line a run that failed mid-way ended on (a failing reward function).
    """
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "model": resolve_model_spec(args.model),
        "dataset": resolve_dataset_spec(args.dataset),
        "arguments": asdict(args),
        "versions": library_versions(),
        "started": started,
        "finished": finished,
        "use_lora": args.use_lora,
        "rewards": [{"spec": r.spec, "name": r.name} for r in rewards or []],
        "drift_stop": drift_stop,
        "error": error,
    }
    path = out / MANIFEST
    atomic_write_bytes(path, (json.dumps(manifest, indent=2) + "\n").encode())
    return path


def reward_curve(log_history: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """``[(step, mean reward)]`` from a trainer's log history."""
    return [(int(e["step"]), float(e["reward"])) for e in log_history if "reward" in e and "step" in e]


def _fix_adapter_base(folder: Path, base: str) -> None:
    # PEFT records the base as the model's name_or_path; pin it to what the manifest says (absolute for dirs).
    config_path = folder / "adapter_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        if config.get("base_model_name_or_path") != base:
            config["base_model_name_or_path"] = base
            atomic_write_bytes(config_path, (json.dumps(config, indent=2) + "\n").encode())


def finish_outputs(args: TrainArgs, trainer: Any, tokenizer: Any) -> Path:
    """Save ``final/`` (adapter or full model, with tokenizer) and the trainer state; returns ``final/``.

    Called on every process: ``save_model`` gathers sharded weights (FSDP, ZeRO-3) and writes on the main
    process only; the rest is written by the main process alone.
    """
    import dataclasses

    from ..measure.models import find_run_checkpoints

    out = Path(args.output_dir)
    final = out / FINAL_DIR
    trainer.save_model(str(final))
    if not trainer.is_world_process_zero():
        return final
    tokenizer.save_pretrained(str(final))
    base = resolve_model_spec(args.model)
    for folder in [final, *find_run_checkpoints(out).values()]:
        _fix_adapter_base(folder, base)
    state = json.dumps(dataclasses.asdict(trainer.state), indent=2, sort_keys=True) + "\n"  # as TrainerState writes it
    atomic_write_bytes(out / "trainer_state.json", state.encode())
    return final


def summary_lines(
    args: TrainArgs, log_history: list[dict[str, Any]], seconds: float, steps: int, drift_stop: dict[str, Any] | None = None
) -> list[str]:
    """What the run wrote and how the reward went, for the terminal."""
    from ..measure.models import find_run_checkpoints

    out = Path(args.output_dir)
    checkpoints = find_run_checkpoints(out)
    lines = [
        f"checkpoints: {', '.join(str(p) for p in checkpoints.values()) or 'none (--save_steps > steps run)'}",
        f"final {'adapter' if args.use_lora else 'model'}: {out / FINAL_DIR}",
        f"reward log: {out / 'trainer_state.json'} (log_history); every log entry: {out / TRAIN_LOG}",
    ]
    curve = reward_curve(log_history)
    if curve:
        lines.append(
            f"reward: first logged {curve[0][1]:.3f} (step {curve[0][0]}), last {curve[-1][1]:.3f} (step {curve[-1][0]}), "
            f"mean {sum(r for _, r in curve) / len(curve):.3f} over {len(curve)} logs"
        )
    drift = [e for e in log_history if "drift/projection" in e]
    if drift:
        def reading(e: dict[str, Any]) -> str:
            sigma = e.get("drift/projection_sigma")
            return f"step {e['step']}: {e['drift/projection']:+.4f}" + ("" if sigma is None else f" ({sigma:+.1f}σ)")

        lines.append(f"drift/projection: {', '.join(reading(e) for e in drift)}")
    if drift_stop:
        from .callbacks import stop_reading

        lines.append(
            f"drift stop: step {drift_stop['step']}, {stop_reading(drift_stop['metric'], drift_stop['value_sigma'])} past "
            f"--drift_stop {drift_stop['threshold_sigma']:g} ({drift_stop['patience']} probe(s) in a row); last checkpoint "
            f"within budget: {drift_stop['last_checkpoint_within_budget'] or 'none'}"
        )
    if steps:
        lines.append(f"time: {seconds:.0f} s for {steps} steps ({seconds / steps:.1f} s/step)")
    lines.append(f"check it: drift-suite check {out}")
    return lines


# ------------------------------------------------------------------------------------------ main


def run(args: TrainArgs) -> int:
    """Train as ``args`` say and write the outputs; raises :class:`DriftSuiteError` on user errors."""
    import time

    config = build_grpo_config(args)  # checks the arguments first: fails fast, before any weights
    peft_config = build_peft_config(args)
    rewards = resolve_rewards(args)  # imports the user's reward code: a bad --reward fails before any weights
    check_model_spec(args)  # a mistyped model path fails before the dataset is read
    dataset = build_train_dataset(args)
    model, tokenizer = load_training_model(args)
    trainer = make_trainer(args, model, tokenizer, dataset, config, peft_config, rewards)
    main_process = trainer.is_world_process_zero()  # under torchrun / accelerate launch only it writes and prints
    started = _now()
    resume = True if config.resume_from_checkpoint == "latest" else config.resume_from_checkpoint
    if resume is True:
        from ..measure.models import find_run_checkpoints

        if not find_run_checkpoints(args.output_dir):
            raise TrainSetupError(f"--resume_from_checkpoint latest: no checkpoint-N dir in {args.output_dir} to resume from")
    if main_process:
        write_manifest(args, started, None, rewards=rewards)
    start = time.perf_counter()
    start_step = trainer.state.global_step
    try:
        trainer.train(resume_from_checkpoint=resume)
    except RewardFunctionError as exc:
        # The checkpoints saved so far stay as they are (resumable); the manifest says why the run ended.
        if main_process:
            write_manifest(args, started, None, rewards=rewards, error=str(exc), drift_stop=_drift_stop_record(args, trainer))
        raise
    seconds = time.perf_counter() - start
    finish_outputs(args, trainer, tokenizer)
    if main_process:
        stop = _drift_stop_record(args, trainer)
        write_manifest(args, started, _now(), rewards=rewards, drift_stop=stop)
        for line in summary_lines(args, trainer.state.log_history, seconds, trainer.state.global_step - start_step, stop):
            print(line)
    return 0


def _probe_callback(trainer: Any) -> Any:
    from .callbacks import DriftProbeCallback

    return next((c for c in trainer.callback_handler.callbacks if isinstance(c, DriftProbeCallback)), None)


def _drift_stop_record(args: TrainArgs, trainer: Any) -> dict[str, Any] | None:
    """``run_manifest.json``'s ``drift_stop``: why and where the probe stopped the run (None: it did not)."""
    from ..measure.models import find_run_checkpoints

    probe = _probe_callback(trainer)
    if probe is None or probe.stop is None:
        return None
    checkpoints = find_run_checkpoints(args.output_dir)
    within = probe.last_step_within_budget(trainer.state.log_history, sorted(checkpoints))
    return {**probe.stop, "last_checkpoint_within_budget": None if within is None else str(checkpoints[within])}


def main(argv: list[str] | None = None) -> int:
    """``drift-suite train`` / ``python -m drift_suite.train.trainer``: returns the exit code (2 on user errors)."""
    with quiet_dependencies():
        args = parse_args(list(sys.argv[1:] if argv is None else argv))
        try:
            return run(args)
        except DriftSuiteError as exc:
            from ..common.process import is_main_process

            if is_main_process():  # every rank hits the same argument error; one line is enough
                print(f"{PROG}: error: {exc}", file=sys.stderr)
            # Bad options are refused before anything loads (2); a reward that fails mid-run is a failure (3).
            return exc.exit_code if isinstance(exc, RewardFunctionError) else 2


if __name__ == "__main__":
    sys.exit(main())
