"""Experiments that explain the capture path's speed: batch size, threads, each decoder speed-up, profile, GEMMs.

None of them changes ``drift_suite``: variants are applied from outside (generation settings, the decoder's
switches, the torch thread count) so each gain is measured, not assumed.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from typing import Any

import numpy as np
import pytest
import torch

from benchmarks.workloads import (
    ARTIFACTS,
    SETTINGS,
    Timed,
    bench_rounds,
    decode_gemm_shapes,
    decoder_variant,
    encode,
    gemm_gflops,
    matmul_gflops,
    other_processes_cpu,
    read_bandwidth_gbs,
)
from drift_suite.measure.extract import GenerationSettings, plan_batches, generate_and_capture

BATCH_SIZES = (32, 64, 98, SETTINGS.batch_size)


def _experiments(results: dict[str, Any]) -> dict[str, Any]:
    return results.setdefault("experiments", {})


def _line(results: dict[str, Any], name: str, text: str) -> None:
    results.setdefault("experiments_summary", {})[name] = text


def _decode_steps(loaded: Any, prompts: list[str], settings: GenerationSettings) -> int:
    """Forward steps per run: per batch, the prefill (counted once) + ``max_new_tokens`` decode steps."""
    return len(plan_batches(encode(loaded.tokenizer, prompts), settings)) * (settings.max_new_tokens + 1)


def _capture_seconds(benchmark: Any, loaded: Any, prompts: list[str], settings: GenerationSettings,
                     already_timed: dict[str, Any] | None) -> float:
    """Seconds of one capture run; reuses (a)'s timing when it measured exactly this (no benchmark row then)."""
    if already_timed:
        return already_timed["best_s"]
    timed = Timed()
    benchmark.pedantic(
        timed.run, args=(generate_and_capture, loaded.model, loaded.tokenizer, prompts, settings),
        kwargs={"progress": False}, rounds=1, iterations=1,
    )
    return timed.best


def _compare_means(reference: Any, other: Any) -> float | None:
    """Largest per-(conversation, layer) relative difference of the means, over identical answers."""
    if reference is None:
        return None
    same = np.array([a == b for a, b in zip(reference.answer_ids, other.answer_ids)])
    if not same.any():
        return None
    rel = np.linalg.norm(reference.means - other.means, axis=-1) / np.maximum(np.linalg.norm(reference.means, axis=-1), 1e-12)
    return float(rel[same].max())


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_batch_size_sweep(benchmark: Any, batch_size: int, loaded: Any, prompts: list[str], results: dict[str, Any]) -> None:
    """Conversations/s of the capture path by batch size; the per-step time separates fixed from per-row cost."""
    settings = GenerationSettings(max_new_tokens=SETTINGS.max_new_tokens, batch_size=batch_size)
    same = results.get("capture_one_pass") if settings == SETTINGS else None
    seconds = _capture_seconds(benchmark, loaded, prompts, settings, same)
    steps = _decode_steps(loaded, prompts, settings)
    entry = {
        "seconds": round(seconds, 3),
        "conversations_per_s": round(len(prompts) / seconds, 3),
        "forward_steps": steps,
        "ms_per_step": round(1000 * seconds / steps, 2),
        "ms_per_step_per_row": round(1000 * seconds / steps / min(batch_size, len(prompts)), 3),
    }
    if same:
        entry["source"] = "test_capture_one_pass (same settings)"
    sweep = _experiments(results).setdefault("batch_size_sweep", {})
    sweep[str(batch_size)] = entry
    benchmark.extra_info.update(entry)
    if len(sweep) >= 2:
        # ms/step = fixed + per_row × batch: the intercept is what a step costs whatever the batch size.
        x = np.array([min(int(b), len(prompts)) for b in sweep])
        y = np.array([v["ms_per_step"] for v in sweep.values()])
        per_row, fixed = np.polyfit(x, y, 1)
        _experiments(results)["step_time_fit"] = {"fixed_ms_per_step": round(float(fixed), 2), "ms_per_row": round(float(per_row), 3)}
    _line(results, "batch sweep conv/s (bs: conv/s)", ", ".join(f"{b}: {v['conversations_per_s']}" for b, v in sweep.items()))
    if "step_time_fit" in _experiments(results):
        fit = _experiments(results)["step_time_fit"]
        _line(results, "step time fit", f"{fit['fixed_ms_per_step']} ms fixed + {fit['ms_per_row']} ms per row")


@pytest.mark.parametrize("threads", [1, 2])
def test_threads(benchmark: Any, threads: int, loaded: Any, prompts: list[str], results: dict[str, Any]) -> None:
    """The capture path and the 2048² matmul at 1 and 2 torch threads (the rest of the session uses its own setting).

    Skipped when other processes already occupy the cores that many threads would need: oversubscribed
    torch threads spin-wait on each other and one run then takes many minutes (measured: ~15× slower).
    """
    busy = other_processes_cpu()
    if threads > 1 and sum(busy.values()) + threads > (os.cpu_count() or 1) + 0.25:
        _experiments(results).setdefault("threads", {})[str(threads)] = {"skipped": f"cores busy: {busy}"}
        pytest.skip(f"{threads} threads would oversubscribe the CPUs (other processes use {busy})")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        matmul = matmul_gflops()
        same = results.get("capture_one_pass") if threads == previous else None
        seconds = _capture_seconds(benchmark, loaded, prompts, SETTINGS, same)
    finally:
        torch.set_num_threads(previous)
    entry = {"capture_s": round(seconds, 3), "conversations_per_s": round(len(prompts) / seconds, 3), "matmul_gflops": round(matmul, 1)}
    if same:
        entry["source"] = "test_capture_one_pass (same thread count)"
    by_threads = _experiments(results).setdefault("threads", {})
    by_threads[str(threads)] = entry
    benchmark.extra_info.update(entry)
    _line(results, "threads (n: conv/s, matmul GFLOP/s)", ", ".join(
        f"{n}: {v['conversations_per_s']}, {v['matmul_gflops']}" for n, v in by_threads.items() if "skipped" not in v
    ))


VARIANTS = {
    "project": {},
    "no_shared_prefix": {"share_prefixes": False},
    "no_packed_weights": {"pack_weights": False},
    "no_growing_cache": {"growing_cache": False},
    "none_of_the_three": {"share_prefixes": False, "pack_weights": False, "growing_cache": False},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_decoder_speedups(benchmark: Any, variant: str, loaded: Any, prompts: list[str], results: dict[str, Any]) -> None:
    """Each of the decoder's speed-ups turned off in turn (and all three), back to back: what each one is worth.

    "project" is re-timed here rather than reused from (a), so the whole set runs under the same load; best
    of ``DRIFT_BENCH_ROUNDS`` rounds (2), as single runs vary by up to ±10 % on this machine.
    """
    timed = Timed()
    with decoder_variant(**VARIANTS[variant]):
        extraction = benchmark.pedantic(
            timed.run, args=(generate_and_capture, loaded.model, loaded.tokenizer, prompts, SETTINGS),
            kwargs={"progress": False}, rounds=bench_rounds(2), iterations=1,
        )
    entry: dict[str, Any] = {"seconds": round(timed.best, 3), "conversations_per_s": round(len(prompts) / timed.best, 3)}
    entry["max_relative_difference_vs_capture"] = _compare_means(ARTIFACTS.get("capture"), extraction)
    variants = _experiments(results).setdefault("decoder_speedups", {})
    variants[variant] = entry
    if variant != "project" and "project" in variants:
        entry["project_speedup_over_this"] = round(timed.best / variants["project"]["seconds"], 3)
    benchmark.extra_info.update(entry)
    _line(results, "decoder speed-ups off in turn (conv/s)", ", ".join(f"{k}: {v['conversations_per_s']}" for k, v in variants.items()))


_CATEGORIES = {
    "GEMM (linear layers, lm_head)": ("aten::mm", "aten::addmm", "aten::bmm", "mkl::_mkl_linear"),
    "concatenation (masks, prefill cache)": ("aten::cat", "aten::index_copy_"),
    "attention (SDPA over the KV cache)": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::scaled_dot_product_attention", "aten::_scaled_dot_product_attention_math"),
    "copies / dtype casts": ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous"),
}


def _gemm_flops_of_batch(loaded: Any, prompts: list[str], settings: GenerationSettings) -> float:
    """FLOPs the linear layers execute for one batch as the decoder runs it: padding included, one prefill stage
    per shared-prefix plan stage, lm_head on the last position of each forward only."""
    from benchmarks.workloads import linear_weights, lm_head_weights
    from drift_suite.measure.decode import plan_prefill

    rows = encode(loaded.tokenizer, prompts)
    body, head = 2 * (linear_weights(loaded.model) - lm_head_weights(loaded.model)), 2 * lm_head_weights(loaded.model)
    plan = plan_prefill(rows)
    if plan is None:
        prefill = body * len(rows) * max(len(r) for r in rows) + head * len(rows)
    else:
        prefill = body * (len(plan.prefixes) * plan.prefix_columns + len(rows) * plan.suffix_columns)
        prefill += head * (len(plan.prefixes) + len(rows))
    return prefill + settings.max_new_tokens * len(rows) * (body + head)


def test_profile_breakdown(benchmark: Any, loaded: Any, prompts: list[str], results: dict[str, Any]) -> None:
    """Where one capture batch (the project's batch size) spends its time, by operator class (torch.profiler self time).

    "outside aten ops" is wall time in no operator: Python in the decode loop, the modules and the hooks.
    """
    batch_prompts = prompts[: SETTINGS.batch_size]

    def run() -> dict[str, Any]:
        timed = Timed()
        timed.run(generate_and_capture, loaded.model, loaded.tokenizer, batch_prompts, SETTINGS, progress=False)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            generate_and_capture(loaded.model, loaded.tokenizer, batch_prompts, SETTINGS, progress=False)
            wall = time.perf_counter() - start
        by_category: dict[str, float] = defaultdict(float)
        total_self = 0.0
        for event in prof.key_averages():
            seconds = event.self_cpu_time_total / 1e6
            total_self += seconds
            category = next((c for c, names in _CATEGORIES.items() if event.key in names), "other operators (norms, rope, silu, adds, sampling)")
            by_category[category] += seconds
        by_category["outside aten ops (Python: decode loop, modules, hooks)"] = max(wall - total_self, 0.0)
        ordered = sorted(by_category.items(), key=lambda kv: -kv[1])
        gemm_s = by_category["GEMM (linear layers, lm_head)"]
        return {
            "unprofiled_wall_s": round(timed.best, 3),
            "profiled_wall_s": round(wall, 3),
            "share": {k: round(v / wall, 3) for k, v in ordered},
            "seconds": {k: round(v, 3) for k, v in ordered},
            "gemm_gflops_inside_mm": round(_gemm_flops_of_batch(loaded, batch_prompts, SETTINGS) / gemm_s / 1e9, 1) if gemm_s else None,
        }

    entry = benchmark.pedantic(run, rounds=1, iterations=1)
    entry["batch_size"] = len(batch_prompts)
    _experiments(results)["profile"] = entry
    benchmark.extra_info.update({"unprofiled_wall_s": entry["unprofiled_wall_s"], "profiled_wall_s": entry["profiled_wall_s"], **entry["share"]})
    _line(results, f"profile (batch {len(batch_prompts)}) unprofiled/profiled", f"{entry['unprofiled_wall_s']} / {entry['profiled_wall_s']} s")
    _line(results, "profile shares", ", ".join(f"{k.split(' (')[0]} {v:.0%}" for k, v in entry["share"].items()))
    if entry["gemm_gflops_inside_mm"]:
        _line(results, "GFLOP/s inside the model's GEMMs", str(entry["gemm_gflops_inside_mm"]))


def test_decode_gemm_shapes(benchmark: Any, loaded: Any, results: dict[str, Any]) -> None:
    """GFLOP/s of each GEMM shape one decode step runs, plain and MKL-packed, at batch 8/64/196, against the 2048² matmul.

    Also the memory read bandwidth, and how long one pass over the fp32 weights takes at that rate: the
    floor of a decode step's time at any batch size, since every step reads every weight once.
    """
    shapes = decode_gemm_shapes(loaded.model)
    weight_bytes = sum(4 * k * n * count for k, n, count in shapes.values())

    def run() -> dict[str, Any]:
        bandwidth = read_bandwidth_gbs()
        table: dict[str, Any] = {
            "read_bandwidth_gbs": round(bandwidth, 1),
            "linear_weights_mb": round(weight_bytes / 2**20, 1),
            "weights_read_ms_per_step": round(weight_bytes / bandwidth / 1e6, 1),
        }
        for batch in (8, 64, 196):
            for packed in (False, True):
                row: dict[str, float] = {}
                flops = seconds = 0.0
                for name, (k, n, count) in shapes.items():
                    rate = gemm_gflops(batch, k, n, min_seconds=0.15, packed=packed)
                    row[name] = round(rate, 1)
                    flops += 2 * batch * k * n * count
                    seconds += 2 * batch * k * n * count / (rate * 1e9)
                row["one decode step, all GEMMs"] = round(flops / seconds / 1e9, 1)
                row["one decode step, GEMM ms"] = round(seconds * 1000, 2)
                table[f"batch {batch}{' packed' if packed else ''}"] = row
        return table

    table = benchmark.pedantic(run, rounds=1, iterations=1)
    _experiments(results)["decode_gemm_gflops"] = table
    batches = {k: v for k, v in table.items() if k.startswith("batch")}
    benchmark.extra_info.update({k: v["one decode step, all GEMMs"] for k, v in batches.items()})
    _line(results, f"decode-step GEMM GFLOP/s ({', '.join(batches)})", " / ".join(str(v["one decode step, all GEMMs"]) for v in batches.values()))
    _line(results, f"decode-step GEMM ms ({', '.join(batches)})", " / ".join(str(v["one decode step, GEMM ms"]) for v in batches.values()))
    _line(results, "read bandwidth; one pass over the weights", f"{table['read_bandwidth_gbs']} GB/s; {table['weights_read_ms_per_step']} ms")
