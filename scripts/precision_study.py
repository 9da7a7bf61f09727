"""How far reduced precision moves every check: the demo model in float32, bfloat16 and float16 against the
shipped float32 baseline (baselines/), on the CPU.

Each dtype is measured once with the default design (196 conversations, 48-token greedy answers) and compared
with the baseline like a checkpoint would be. For every check it records the severity (|Δ|/threshold, > 1
fails) and |Δ|/σ (σ = the baseline's bootstrap noise floor), plus how many greedy answers differ from the
float32 ones. The JSON is rewritten after each dtype, so a partial run keeps what it measured.

Usage (from the repo root, ~15+ minutes on 2 CPU cores; bf16/fp16 GEMMs are 3.5x/7.7x slower than fp32)::

    PYTHONPATH=. DRIFT_DEMO_MODEL=/work/demo-model python scripts/precision_study.py --out docs/precision-study.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import transformers

from drift_suite.gate.config import load_config
from drift_suite.gate.runner import DriftCheck


def summarize(checks: list, family: str) -> dict:
    chosen = [c for c in checks if c.family == family]
    severity = np.array([c.severity for c in chosen])
    sigmas = np.array([c.sigmas for c in chosen])
    worst = chosen[int(severity.argmax())]
    return {
        "n": len(chosen),
        "max_severity": float(severity.max()),
        "median_severity": float(np.median(severity)),
        "max_sigmas": float(sigmas.max()),
        "median_sigmas": float(np.median(sigmas)),
        "worst_subject": worst.subject,
        "failed": int(sum(not c.passed for c in chosen)),
    }


def markdown_table(result: dict) -> str:
    """The docs/precision.md table: per dtype and check family, max and median severity and |Δ|/σ."""
    lines = [
        "| dtype | answers ≠ float32 | check family (n) | max severity | median severity | max \\|Δ\\|/σ | median \\|Δ\\|/σ | worst | failed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dtype, entry in result["dtypes"].items():
        differing = entry["answers_differing_from_float32"]
        for family, row in entry["families"].items():
            lines.append(
                f"| {dtype} | {differing}/{entry['n_answers']} | {family} ({row['n']}) | {row['max_severity']:.3g} | "
                f"{row['median_severity']:.3g} | {row['max_sigmas']:.3g} | {row['median_sigmas']:.3g} | {row['worst_subject']} | {row['failed']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("DRIFT_DEMO_MODEL", "demo/smollm2-135m-instruct"))
    parser.add_argument("--baseline-dir", default="baselines")
    parser.add_argument("--dtypes", default="float32,bfloat16,float16")
    parser.add_argument("--out", default="docs/precision-study.json")
    parser.add_argument("--table", action="store_true", help="only print the markdown table of an existing --out JSON")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(Path(args.out).read_text())))
        return
    config = load_config(Path.cwd())
    result: dict = {
        "what": "demo model measured in each dtype on the CPU against the shipped float32 baseline",
        "model": args.model,
        "baseline_dir": args.baseline_dir,
        "machine": {"platform": platform.platform(), "cpu_threads": torch.get_num_threads()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "dtypes": {},
    }
    reference_answers: list[str] | None = None
    for dtype in args.dtypes.split(","):
        start = time.perf_counter()
        outcome = DriftCheck(args.model, args.baseline_dir, config=replace(config, dtype=dtype), cache_dir=None, progress=False).run()
        seconds = time.perf_counter() - start
        checks = outcome.final.comparison.checks
        answers = outcome.final.measurement.responses
        if reference_answers is None and dtype == "float32":
            reference_answers = answers
        entry = {
            "wall_s_contended": round(seconds, 1),
            "passed": outcome.passed,
            "families": {family: summarize(checks, family) for family in ("projection", "rotation", "accessibility")},
            "answers_differing_from_float32": None if reference_answers is None else int(sum(a != b for a, b in zip(answers, reference_answers))),
            "n_answers": len(answers),
            "checks": [{"family": c.family, "subject": c.subject, "severity": c.severity, "sigmas": c.sigmas, "passed": c.passed} for c in checks],
        }
        result["dtypes"][dtype] = entry
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(dtype, json.dumps(entry["families"]), "answers differing:", entry["answers_differing_from_float32"], f"{seconds:.0f}s", flush=True)


if __name__ == "__main__":
    main()
