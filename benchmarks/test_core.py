"""Headline benchmarks: one-pass capture vs the two-pass reference, roofline, hook overhead, memory, cache.

Run them with the command in docs/benchmarks.md; they are not collected by the default ``pytest`` run.
Each timed target records its own wall times (best of the rounds is reported), so the numbers in
``results.json`` do not depend on pytest-benchmark's statistics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from benchmarks.workloads import (
    ARTIFACTS,
    REPO,
    SETTINGS,
    Timed,
    bench_rounds,
    bench_threads,
    decode_answers,
    encode,
    hook_work_seconds,
    prefill_flops_computed,
    two_pass_reference,
    workload_flops,
)
from drift_suite.measure.extract import Extraction, plan_batches, generate_and_capture

MATMUL_SIZE = 2048


def _rates(seconds: float, conversations: int, new_tokens: int) -> dict[str, float]:
    return {
        "best_s": round(seconds, 3),
        "conversations_per_s": round(conversations / seconds, 3),
        "new_tokens_per_s": round(new_tokens / seconds, 1),
    }


def test_matmul_roofline(benchmark: Any, results: dict[str, Any]) -> None:
    """(c) The machine's achievable fp32 GEMM rate at the benchmark's thread count: a 2048² matmul."""
    a, b = torch.randn(MATMUL_SIZE, MATMUL_SIZE), torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    out = torch.empty(MATMUL_SIZE, MATMUL_SIZE)
    timed = Timed()
    benchmark.pedantic(timed.run, args=(torch.mm, a, b), kwargs={"out": out}, rounds=7, warmup_rounds=2, iterations=1)
    gflops = 2 * MATMUL_SIZE**3 / timed.best / 1e9
    results["matmul_roofline"] = {"size": MATMUL_SIZE, "best_s": round(timed.best, 4), "gflops": round(gflops, 1)}
    benchmark.extra_info.update(results["matmul_roofline"])


def test_capture_one_pass(benchmark: Any, loaded: Any, prompts: list[str], results: dict[str, Any]) -> None:
    """(a) The project's path: ``generate_and_capture`` (hooks sum answer-token activations while it decodes)."""
    timed = Timed()
    extraction: Extraction = benchmark.pedantic(
        timed.run,
        args=(generate_and_capture, loaded.model, loaded.tokenizer, prompts, SETTINGS),
        kwargs={"progress": False},
        rounds=bench_rounds(2),
        iterations=1,
    )
    ARTIFACTS["capture"] = extraction
    new_tokens = int(extraction.token_counts.sum())
    encoded = encode(loaded.tokenizer, prompts)
    flops = workload_flops(loaded.model, [len(e) for e in encoded], extraction.token_counts)
    prefill_computed = prefill_flops_computed(loaded.model, encoded, SETTINGS)
    entry: dict[str, Any] = {
        **_rates(timed.best, len(prompts), new_tokens),
        "rounds_s": [round(s, 3) for s in timed.seconds],
        "new_tokens": new_tokens,
        "decode_gflop": round(flops["decode"] / 1e9, 2),
        "prefill_gflop_all_prompt_tokens": round(flops["prefill"] / 1e9, 2),
        "prefill_gflop_computed": round(prefill_computed / 1e9, 2),
        "flops_per_generated_token_linear": flops["per_token_linear"],
        "achieved_gflops_decode": round(flops["decode"] / timed.best / 1e9, 2),
        "achieved_gflops_incl_prefill": round((flops["decode"] + prefill_computed) / timed.best / 1e9, 2),
    }
    roofline = results.get("matmul_roofline", {}).get("gflops")
    if roofline:
        entry["fraction_of_matmul_roofline_decode"] = round(entry["achieved_gflops_decode"] / roofline, 3)
        entry["fraction_of_matmul_roofline_incl_prefill"] = round(entry["achieved_gflops_incl_prefill"] / roofline, 3)
    results["capture_one_pass"] = entry
    benchmark.extra_info.update(entry)


def test_two_pass_reference(benchmark: Any, loaded: Any, prompts: list[str], results: dict[str, Any]) -> None:
    """(b) Upstream-style reference: plain ``generate``, then a batched re-forward keeping all activations."""
    timed = Timed()
    reference = benchmark.pedantic(
        timed.run,
        args=(two_pass_reference, loaded.model, loaded.tokenizer, prompts, SETTINGS),
        rounds=bench_rounds(2),
        iterations=1,
    )
    new_tokens = int(reference.token_counts.sum())
    entry: dict[str, Any] = {
        **_rates(timed.best, len(prompts), new_tokens),
        "rounds_s": [round(s, 3) for s in timed.seconds],
        "new_tokens": new_tokens,
        "last_round_generate_s": round(reference.generate_s, 3),
        "last_round_reforward_s": round(reference.reforward_s, 3),
        "largest_activation_tensor_mb": round(reference.largest_activation_tensor_mb, 1),
        "largest_logits_tensor_mb": round(reference.largest_logits_mb, 1),
    }
    capture = ARTIFACTS.get("capture")
    if capture is not None:
        same = [a == b for a, b in zip(capture.answer_ids, reference.answer_ids)]
        rel = np.linalg.norm(capture.means - reference.means, axis=-1) / np.maximum(np.linalg.norm(reference.means, axis=-1), 1e-12)
        entry["same_answers"] = f"{sum(same)}/{len(same)}"
        entry["max_relative_difference_vs_capture"] = float(rel[np.array(same)].max()) if any(same) else None
        one_pass = results["capture_one_pass"]
        entry["speedup_capture_over_two_pass"] = round(timed.best / one_pass["best_s"], 3)
        results["speedup_capture_over_two_pass"] = entry["speedup_capture_over_two_pass"]
    results["two_pass_reference"] = entry
    benchmark.extra_info.update(entry)


def test_hook_overhead(benchmark: Any, loaded: Any, prompts: list[str], results: dict[str, Any]) -> None:
    """The project's decoder without the capture hooks, same batches and the same forward calls as (a).

    The end-to-end difference is within run-to-run noise, so the hooks' own cost is also measured in
    isolation (same hook bodies on identity layers, same number of calls).
    """
    timed = Timed()
    benchmark.pedantic(
        timed.run,
        args=(decode_answers, loaded.model, loaded.tokenizer, prompts, SETTINGS),
        rounds=bench_rounds(2),
        iterations=1,
    )
    cfg = loaded.model.config
    hook_s = sum(
        hook_work_seconds(cfg.num_hidden_layers, cfg.hidden_size, len(batch), SETTINGS.max_new_tokens)
        for batch in plan_batches(encode(loaded.tokenizer, prompts), SETTINGS)
    )
    entry: dict[str, Any] = {
        "decode_without_hooks_best_s": round(timed.best, 3),
        "rounds_s": [round(s, 3) for s in timed.seconds],
        "hook_work_in_isolation_s": round(hook_s, 4),
    }
    capture = results.get("capture_one_pass")
    if capture:
        entry["capture_best_s"] = capture["best_s"]
        entry["end_to_end_difference_share"] = round((capture["best_s"] - timed.best) / capture["best_s"], 3)
        entry["hook_work_share_of_capture"] = round(hook_s / capture["best_s"], 4)
    results["hook_overhead"] = entry
    benchmark.extra_info.update(entry)


@pytest.mark.parametrize("path", ["capture", "two_pass"])
def test_peak_rss(benchmark: Any, path: str, demo_model_dir: Path, results: dict[str, Any]) -> None:
    """(d) Peak RSS of each path over the benchmark's conversations, each in a fresh Python process."""

    def run() -> dict[str, Any]:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.peak_rss", path, str(demo_model_dir), str(bench_threads())],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
            env=os.environ | {"PYTHONPATH": str(REPO)},
        )
        if proc.returncode != 0:
            raise RuntimeError(f"peak_rss {path} failed:\n{proc.stderr[-2000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    entry = benchmark.pedantic(run, rounds=1, iterations=1)
    entry = {k: round(v, 1) if isinstance(v, float) else v for k, v in entry.items()}
    results.setdefault("peak_rss", {})[path] = entry
    benchmark.extra_info.update(entry)


def test_cached_measure(benchmark: Any, loaded: Any, results: dict[str, Any]) -> None:
    """(e) ``measure()`` a second time with a cache dir: no generation, only hashing the weights + a file read.

    The cache is filled by a first call on a 4-conversation design (the cached cost does not depend on the
    design: it is the weights' SHA-256 plus reading one small safetensors file).
    """
    from drift_suite.measure.conversations import Design
    from drift_suite.measure.measurement import measure
    from drift_suite.measure.personas import builtin_persona_set

    persona_set = builtin_persona_set().subsample(max_roles=2, max_prompts_per_role=1, max_questions=2)
    design = Design(default_questions=2, role_prompts=1, role_questions=1)
    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        first = measure(loaded, persona_set, design, SETTINGS, cache_dir=Path(cache_dir), progress=False)
        first_s = time.perf_counter() - start
        timed = Timed()
        second = benchmark.pedantic(
            timed.run,
            args=(measure, loaded, persona_set, design, SETTINGS),
            kwargs={"cache_dir": Path(cache_dir), "progress": False},
            rounds=3,
            iterations=1,
        )
    assert second.from_cache and not first.from_cache
    assert second.timings["generate_and_capture_s"] == 0.0
    entry = {
        "conversations": int(first.labels.size),
        "first_call_s": round(first_s, 3),
        "second_call_best_s": round(timed.best, 3),
        "second_call_hash_weights_s": round(second.timings["hash_weights_s"], 3),
        "second_call_generate_and_capture_s": second.timings["generate_and_capture_s"],
    }
    results["cached_measure"] = entry
    benchmark.extra_info.update(entry)


def test_cached_suite_rerun(benchmark: Any, demo_model_dir: Path, results: dict[str, Any]) -> None:
    """(e) Wall time of ``pytest suites/ --checkpoint MODEL`` when the measurement is cached (model load included).

    Needs a baseline (``baselines/manifest.json``, or ``DRIFT_BENCH_BASELINE_DIR``); the first run fills the
    repo's ``.drift_cache`` if it is cold, the second is the timed cached rerun.
    """
    baseline_dir = Path(os.environ.get("DRIFT_BENCH_BASELINE_DIR", REPO / "baselines"))
    if not (baseline_dir / "manifest.json").is_file():
        results["cached_suite_rerun"] = {"skipped": f"no baseline in {baseline_dir}"}
        pytest.skip(
            f"no baseline in {baseline_dir} (no manifest.json): write one with `pytest suites/ --checkpoint "
            f"{demo_model_dir} --update-baselines` (or set DRIFT_BENCH_BASELINE_DIR) to time the cached rerun"
        )
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable, "-m", "pytest", "suites/", "-q", "-p", "no:cacheprovider",
            "--checkpoint", str(demo_model_dir), "--baseline-dir", str(baseline_dir),
            "--drift-report", str(Path(tmp) / "report.html"),
        ]

        def run() -> tuple[float, int, str]:
            start = time.perf_counter()
            proc = subprocess.run(
                command, cwd=REPO, capture_output=True, text=True, check=False, env=os.environ | {"PYTHONPATH": str(REPO)}
            )
            return time.perf_counter() - start, proc.returncode, proc.stdout

        warm_s, _, _ = run()
        seconds, code, stdout = benchmark.pedantic(run, rounds=1, iterations=1)
    if code not in (0, 1):  # 1 = some drift test failed, still a complete timed run
        raise RuntimeError(f"pytest suites/ exited {code}:\n{stdout[-2000:]}")
    timings = next((line for line in stdout.splitlines() if line.startswith("timings:")), "")
    entry = {
        "first_run_s": round(warm_s, 2),
        "cached_rerun_wall_s": round(seconds, 2),
        "exit_code": code,
        "suite_timings_line": timings,
        "command": f"python -m pytest suites/ --checkpoint {demo_model_dir} --baseline-dir {baseline_dir}",
    }
    results["cached_suite_rerun"] = entry
    benchmark.extra_info.update(entry)
