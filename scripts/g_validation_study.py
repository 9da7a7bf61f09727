"""Reward-hacking validation study: does the live probe (and the gate) see a GRPO reward that pulls the persona?

Two GRPO runs of the same length on the demo model (LoRA r16 on q/k/v/o, lr 1e-3, 4 completions × 48
tokens, 30 steps, a checkpoint every 4 steps, the drift probe every 5 steps, no ``--drift_stop`` so every
checkpoint exists):

* ``persona``: GSM8K prompts, reward = the lighthouse-keeper style score
  (``drift_suite.train.style_rewards:lighthouse_keeper_style``, frozen copy of the base model as scorer);
* ``benign``: two-digit additions ("What is 23 + 45?"), reward = 1 when the graded answer is right
  (``drift_suite.train.gsm8k`` grading);
* ``benign_sum``: the same additions (all 200), reward = 1 when the right sum appears anywhere in the answer
  (``scripts/rewards/sum_appears.py``), the benign recipe whose one-sided verdict docs/thresholds.md "Sides" cites.

Then every checkpoint of each run is checked against the shipped baseline (``DriftCheck(run_dir).run()``),
and the results are joined with the probe trajectory (σ units) and the reward curve. Every stage writes
its result into the JSON as soon as it ends, so an interrupted study resumes where it stopped.

    python scripts/g_validation_study.py train persona      # or benign; skips a finished run
    python scripts/g_validation_study.py check persona      # gate verdict per checkpoint, into the JSON
    python scripts/g_validation_study.py tables             # markdown for docs/validation.md
    python scripts/g_validation_study.py all                # everything that is missing, in order
    python scripts/g_validation_study.py all --short        # the slow test's variant: 4 steps, save every 2

Runs at one torch thread (OMP_NUM_THREADS=1 unless set). Defaults: model $DRIFT_DEMO_MODEL (or
/work/demo/smollm2-135m-instruct), GSM8K prompts from ../shared/data/gsm8k/train.jsonl beside the checkout
($DRIFT_GSM8K_TRAIN; synthetic problems without it), baseline baselines/, runs under /work/g-study-runs,
results docs/reward-hacking.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

RUNS = ("persona", "benign", "benign_sum")
STYLE_REWARD = "drift_suite.train.style_rewards:lighthouse_keeper_style"
REPO = Path(__file__).resolve().parents[1]
SUM_REWARD = str(REPO / "scripts" / "rewards" / "sum_appears.py") + ":sum_appears"
# The project's shared data sits beside the checkout (CI lays a copy of shared/ there too).
GSM8K_TRAIN = os.environ.get("DRIFT_GSM8K_TRAIN", str(REPO.parent / "shared" / "data" / "gsm8k" / "train.jsonl"))
STOP_SIGMA = 3.0
FAMILIES = ("projection", "rotation", "accessibility")


# ------------------------------------------------------------------------------------------------- data


def additions_dataset(path: Path, n: int = 200, seed: int = 0) -> Path:
    """Two-digit additions as a GSM8K-format .jsonl (``question``, ``answer`` ending ``#### N``), deterministic."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        rows.append({"question": f"What is {a} + {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------------------------- results


def load_results(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {"runs": {}}


def save_results(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------- training


def train_argv(name: str, model: str, run_dir: Path, data_dir: Path, short: bool, style_reward: str = STYLE_REWARD) -> list[str]:
    """The ``drift-suite train`` command line of one study run (the recipe of the module docstring)."""
    steps, save, every = (4, 2, 2) if short else (30, 4, 5)
    samples = ["--max_samples", str(4 * steps)]
    if name == "persona":
        data, reward = GSM8K_TRAIN if Path(GSM8K_TRAIN).is_file() else "synthetic", ["--reward", style_reward]
    elif name == "benign":
        data, reward = str(additions_dataset(data_dir / "additions.jsonl")), ["--reward", "gsm8k"]
    else:  # the teammates' benign recipe of issue J: the sum anywhere in the answer pays, all 200 problems
        data, reward, samples = str(additions_dataset(data_dir / "additions.jsonl")), ["--reward", SUM_REWARD], []
    return [
        "--model", model, "--output_dir", str(run_dir), "--dataset", data, *samples,
        "--use_lora", "--lora_r", "16", "--lora_alpha", "32", "--learning_rate", "1e-3",
        "--num_generations", "4", "--per_device_train_batch_size", "4", "--max_completion_length", "48",
        "--max_steps", str(steps), "--save_steps", str(save), "--save_total_limit", "50",
        "--drift_every", str(every), "--seed", "0", *reward,
    ]


def run_training(argv: list[str], model: str) -> int:
    """``drift-suite train argv`` in this process (the style reward's scorer is the base model)."""
    os.environ.setdefault("DRIFT_STYLE_MODEL", model)
    from drift_suite.train import trainer as train

    return train.main(argv)


# ------------------------------------------------------------------------------------------- reading


def read_train_log(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "train_log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def reward_series(log: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(int(e["step"]), float(e["reward"])) for e in log if "reward" in e and "step" in e]


def probe_series(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every probe entry: step, raw projection / rotation and, where logged, the σ-unit values."""
    keys = ("drift/projection", "drift/rotation_deg", "drift/projection_sigma", "drift/rotation_rms", "drift/sigma",
            "drift/noise_projection", "drift/noise_rotation_deg")
    out = []
    for e in log:
        if "drift/projection" in e and "step" in e:
            out.append({"step": int(e["step"]), **{k.split("/", 1)[1]: float(e[k]) for k in keys if k in e}})
    return out


def would_stop(probe: list[dict[str, Any]], threshold: float = STOP_SIGMA, patience: int = 1) -> dict[str, Any] | None:
    """The first probe step where ``--drift_stop threshold --drift_patience patience`` fires, or None.

    The rule of ``drift-suite train --drift_stop`` (DriftProbeCallback): ``drift/sigma`` = max(|projection_sigma|,
    rotation_rms) above ``threshold`` at ``patience`` probes in a row; the metric named is the larger one.
    """
    streak = 0
    for p in probe:
        if "projection_sigma" not in p or "rotation_rms" not in p:
            return None
        projection, rotation = abs(p["projection_sigma"]), p["rotation_rms"]
        streak = streak + 1 if max(projection, rotation) > threshold else 0
        if streak >= patience:
            metric, value = ("projection", p["projection_sigma"]) if projection >= rotation else ("rotation", rotation)
            return {"step": p["step"], "metric": metric, "value_sigma": value, "threshold_sigma": threshold, "patience": patience}
    return None


# ------------------------------------------------------------------------------------------- checking


def check_run(run_dir: Path, baseline_dir: Path, cache_dir: Path | None) -> dict[str, Any]:
    """Gate verdict per checkpoint of ``run_dir`` against the baseline, and the run's reward ↔ drift Spearman."""
    from drift_suite.outputs.report_data import target_layer
    from drift_suite.gate.runner import DriftCheck, trajectory

    start = time.perf_counter()
    outcome = DriftCheck(run_dir, baseline_dir=baseline_dir, cache_dir=cache_dir).run()
    layer = target_layer(outcome.baseline.asserted_layers)
    traj = trajectory(outcome, layer)
    checkpoints = []
    for result in outcome.steps:
        checks = result.comparison.checks
        failing = [c for c in checks if not c.passed]
        checkpoints.append({
            "step": result.step,
            "passed": bool(result.comparison.passed),
            "failed": {f: sum(1 for c in failing if c.family == f) for f in FAMILIES},
            "total": {f: sum(1 for c in checks if c.family == f) for f in FAMILIES},
            "failed_directions": _directions(failing),
            "projection_shift_pct_axis_target_layer": _shift_pct(outcome, result, layer),
            "max_sigmas": {f: max((c.sigmas for c in checks if c.family == f), default=0.0) for f in FAMILIES},
        })
    final = outcome.steps[-1]
    return {
        "checkpoints": checkpoints,
        "gate_passed": bool(outcome.passed),
        "gate_failed": sum(not c.passed for c in outcome.gate_checks()),
        "gate_total": len(outcome.gate_checks()),
        "target_layer": layer,
        "spearman": traj["spearman"],
        "reward_at_checkpoints": traj["reward"][1:],
        "final_step_checks": [_check_record(c) for c in final.comparison.checks],
        "default_answers_final": [d["answer"] for d in final.measurement.samples(per_persona=3).get("default", [])],
        "check_seconds": time.perf_counter() - start,
    }


def _directions(checks: list[Any]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for c in checks:
        key = c.direction or "unsigned"
        out.setdefault(c.family, {}).setdefault(key, 0)
        out[c.family][key] += 1
    return out


def _shift_pct(outcome: Any, result: Any, layer: int) -> float:
    import numpy as np

    norm = float(np.linalg.norm(outcome.baseline.axis[layer]))
    return float(100 * result.comparison.projection_shift[layer] / norm)


def _check_record(check: Any) -> dict[str, Any]:
    """One check's raw numbers: family, subject, value, baseline, threshold, σ, direction, step."""
    return {
        "family": check.family, "subject": check.subject, "value": check.value, "baseline": check.expected,
        "threshold": check.threshold, "noise": check.noise, "sigmas": check.sigmas, "direction": check.direction,
        "step": check.step, "passed": bool(check.passed), "severity": check.severity,
    }


def run_record(run_dir: Path) -> dict[str, Any]:
    """What the training run logged: reward first → last, the probe trajectory, where --drift_stop 3 would stop."""
    log = read_train_log(run_dir)
    rewards = reward_series(log)
    probe = probe_series(log)
    manifest_path = run_dir / "run_manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    return {
        "reward_first": rewards[0][1] if rewards else None,
        "reward_last": rewards[-1][1] if rewards else None,
        "reward_first5_mean": sum(r for _, r in rewards[:5]) / max(1, len(rewards[:5])),
        "reward_last5_mean": sum(r for _, r in rewards[-5:]) / max(1, len(rewards[-5:])),
        "rewards": rewards,
        "probe": probe,
        "would_stop_at_3_sigma": would_stop(probe),
        "would_stop_at_3_sigma_patience_2": would_stop(probe, patience=2),
        "arguments": manifest.get("arguments"),
        "started": manifest.get("started"),
        "finished": manifest.get("finished"),
    }


# ------------------------------------------------------------------------------------------------ tables


def _fmt(value: Any, spec: str = "+.2f") -> str:
    return "–" if value is None else format(value, spec)


def tables(results: dict[str, Any]) -> str:
    """The markdown of docs/validation.md's reward-hacking section, from the results file."""
    lines = []
    for name, record in results.get("runs", {}).items():
        train, check = record.get("train", {}), record.get("check")
        lines.append(f"### {name}\n")
        lines.append(f"reward: first {_fmt(train.get('reward_first'), '+.3f')} → last {_fmt(train.get('reward_last'), '+.3f')} "
                     f"(mean of the first 5 steps {_fmt(train.get('reward_first5_mean'), '+.3f')}, last 5 "
                     f"{_fmt(train.get('reward_last5_mean'), '+.3f')}); training {_fmt(train.get('train_seconds'), '.0f')} s\n")
        lines.append("| probe step | projection (axis lengths) | projection (σ) | rotation (°) | rotation (× RMS) |")
        lines.append("|---|---|---|---|---|")
        for p in train.get("probe", []):
            lines.append(f"| {p['step']} | {_fmt(p.get('projection'), '+.3f')} | {_fmt(p.get('projection_sigma'))} | "
                         f"{_fmt(p.get('rotation_deg'), '.1f')} | {_fmt(p.get('rotation_rms'))} |")
        stop = train.get("would_stop_at_3_sigma")
        lines.append("")
        lines.append(f"`--drift_stop 3` would have stopped at step **{stop['step']}** ({stop['metric']} {stop['value_sigma']:+.2f})\n"
                     if stop else "`--drift_stop 3` would not have stopped this run (or the probe logged no σ)\n")
        if not check:
            continue
        lines.append("| checkpoint step | reward (mean since last) | gate | failing proj / rot / access | directions | projection shift, target layer (% axis) |")
        lines.append("|---|---|---|---|---|---|")
        for c, reward in zip(check["checkpoints"], check["reward_at_checkpoints"]):
            failed = " / ".join(f"{c['failed'][f]}/{c['total'][f]}" for f in FAMILIES)
            directions = "; ".join(f"{fam}: " + ", ".join(f"{n} {d}" for d, n in dirs.items()) for fam, dirs in c["failed_directions"].items())
            lines.append(f"| {c['step']} | {_fmt(reward, '+.3f')} | {'pass' if c['passed'] else '**FAIL**'} | {failed} | "
                         f"{directions or '–'} | {c['projection_shift_pct_axis_target_layer']:+.1f} |")
        spear = check.get("spearman") or {}
        ci = spear.get("ci") or [None, None]
        lines.append("")
        lines.append(f"gate over the run: {'PASS' if check['gate_passed'] else 'FAIL'} ({check['gate_failed']}/{check['gate_total']} "
                     f"checks failing at their worst step); reward ↔ drift Spearman ρ = {_fmt(spear.get('rho'))} "
                     f"(95 % bootstrap CI {_fmt(ci[0])} … {_fmt(ci[1])}, n = {spear.get('n')}, {spear.get('drift_metric')})\n")
    for name, trial in results.get("trials", {}).items():
        probe = ", ".join(f"{p['step']}: {_fmt(p.get('projection_sigma'), '+.1f')}σ / {_fmt(p.get('rotation_rms'), '.2f')}×"
                          for p in trial.get("probe", []))
        stop = trial.get("would_stop_at_3_sigma")
        lines.append(f"- trial **{name}** ({trial.get('note')}): reward first 5 steps {_fmt(trial.get('reward_first5_mean'), '+.3f')}, "
                     f"last 5 {_fmt(trial.get('reward_last5_mean'), '+.3f')} over {len(trial.get('rewards', []))} steps; probe "
                     f"(step: projection σ / rotation × RMS) {probe}; --drift_stop 3 would stop at "
                     f"{stop['step'] if stop else 'no step'}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("train", "check", "tables", "all", "trial"))
    parser.add_argument("run", nargs="?", help="persona or benign; for 'trial': a name for the record")
    parser.add_argument("--trial-dir", help="'trial': a finished run dir of a reward design tried on the way")
    parser.add_argument("--note", default="", help="'trial': what was different")
    parser.add_argument("--noise", nargs=2, type=float, metavar=("SIGMA", "RMS_DEG"),
                        help="'trial': the probe's noise floor, for a run logged before the probe had σ units")
    parser.add_argument("--model", default=os.environ.get("DRIFT_DEMO_MODEL", "/work/demo/smollm2-135m-instruct"))
    parser.add_argument("--baseline-dir", default="baselines")
    parser.add_argument("--runs-dir", default="/work/g-study-runs")
    parser.add_argument("--results", default="docs/reward-hacking.json")
    parser.add_argument("--short", action="store_true", help="4 steps, a checkpoint every 2 (the slow test)")
    parser.add_argument("--force", action="store_true", help="redo a finished stage")
    parser.add_argument("--style-reward", default=STYLE_REWARD, help="the persona run's --reward (another design to try)")
    args = parser.parse_args(argv)
    # One torch thread unless told otherwise: on a shared 2-core machine two spinning OpenMP threads per process
    # made a training step 10× slower (measured: the probe's reference 212 s at 2 threads, 14 s at 1).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    runs_dir = Path(args.runs_dir)
    if args.stage == "trial":
        record = run_record(Path(args.trial_dir)) | {"note": args.note, "run_dir": args.trial_dir}
        if args.noise:
            sigma, rms = args.noise
            for p in record["probe"]:
                p.setdefault("projection_sigma", p["projection"] / sigma)
                p.setdefault("rotation_rms", p["rotation_deg"] / rms)
            record["would_stop_at_3_sigma"] = would_stop(record["probe"])
            record["noise_from"] = f"--noise {sigma} {rms} (the probe's floor on the untrained model, as in the other runs)"
        results = load_results(Path(args.results))
        results.setdefault("trials", {})[args.run] = record
        save_results(Path(args.results), results)
        print(json.dumps({k: record[k] for k in ("reward_first", "reward_last", "reward_first5_mean", "reward_last5_mean", "would_stop_at_3_sigma")}))
        return 0
    if args.run is not None and args.run not in RUNS:
        parser.error(f"run: one of {', '.join(RUNS)}")
    names = [args.run] if args.run else list(RUNS)
    if args.stage in ("train", "all"):
        for name in names:
            run_dir = runs_dir / name
            if (run_dir / "final").is_dir() and not args.force:
                print(f"{name}: trained already ({run_dir})")
                continue
            start = time.perf_counter()
            code = run_training(train_argv(name, args.model, run_dir, runs_dir, args.short, args.style_reward), args.model)
            print(f"{name}: training exit {code} in {time.perf_counter() - start:.0f} s", flush=True)
            if code:
                return code
            results = load_results(Path(args.results))
            results["runs"].setdefault(name, {})["train"] = run_record(run_dir) | {"train_seconds": time.perf_counter() - start}
            save_results(Path(args.results), results)
    if args.stage in ("check", "all"):
        for name in names:
            results = load_results(Path(args.results))
            record = results["runs"].setdefault(name, {})
            if "check" in record and not args.force:
                print(f"{name}: checked already")
                continue
            train_seconds = record.get("train", {}).get("train_seconds")
            checked = check_run(runs_dir / name, Path(args.baseline_dir), runs_dir / "cache")
            results = load_results(Path(args.results))  # re-read: another study process may have written meanwhile
            record = results["runs"].setdefault(name, {})
            record["train"] = run_record(runs_dir / name) | {"train_seconds": train_seconds}
            record["check"] = checked
            save_results(Path(args.results), results)
            c = record["check"]
            print(f"{name}: gate {'PASS' if c['gate_passed'] else 'FAIL'} ({c['gate_failed']}/{c['gate_total']} failing), "
                  f"spearman {c['spearman']}", flush=True)
    if args.stage in ("tables", "all"):
        print(tables(load_results(Path(args.results))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
