"""Render ``benchmarks/results.json`` as the Markdown results table of docs/benchmarks.md.

    python -m benchmarks.table [RESULTS_JSON]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

DEFAULT = Path(__file__).resolve().parent / "results.json"


def _get(data: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    """``(quantity, value)`` rows for whatever parts of the benchmark ran."""
    env, a, b = r.get("environment", {}), r.get("capture_one_pass", {}), r.get("two_pass_reference", {})
    out: list[tuple[str, str]] = []
    if env:
        others = {**env.get("other_busy_processes_start_cores", {}), **env.get("other_busy_processes_end_cores", {})}
        out.append(("machine", f"{env['cpu_count']} × {env['cpu_model']}, torch {env['torch']}, transformers {env['transformers']}"))
        out.append(("torch threads; load average at start → end", f"{env['torch_threads']}; {env['loadavg_start'][0]} → {env.get('loadavg_end', ['?'])[0]}; other busy processes: {others or 'none'}"))
    workload = r.get("workload", {})
    if workload:
        out.append(("workload", f"{workload.get('conversations')} conversations, {workload.get('max_new_tokens')}-token greedy answers, fp32, batch size {workload.get('batch_size')}, prompt tokens min/max/mean {workload.get('prompt_tokens_min_max_mean')}"))
    if a:
        out.append(("(a) one-pass capture", f"**{a['conversations_per_s']} conv/s**, {a['new_tokens_per_s']} new tokens/s ({a['best_s']} s, rounds {a['rounds_s']})"))
    if b:
        out.append(("(b) two-pass reference", f"**{b['conversations_per_s']} conv/s**, {b['new_tokens_per_s']} new tokens/s ({b['best_s']} s; last round: generate {b['last_round_generate_s']} s + re-forward {b['last_round_reforward_s']} s)"))
    if "speedup_capture_over_two_pass" in r:
        out.append(("speedup (a) over (b)", f"**{r['speedup_capture_over_two_pass']}×** (same answers {b.get('same_answers')}, means agree to {b.get('max_relative_difference_vs_capture', 0):.1e} relative)"))
    if "matmul_roofline" in r:
        out.append(("(c) 2048² fp32 matmul", f"{r['matmul_roofline']['gflops']} GFLOP/s"))
    if "fraction_of_matmul_roofline_decode" in a:
        out.append(("(c) (a) achieved, generated-token FLOPs", f"{a['achieved_gflops_decode']} GFLOP/s = **{a['fraction_of_matmul_roofline_decode']:.1%} of the matmul**"))
        out.append(("(c) (a) achieved, computed prompt + generated FLOPs", f"{a['achieved_gflops_incl_prefill']} GFLOP/s = {a['fraction_of_matmul_roofline_incl_prefill']:.1%} (prefill computed {a.get('prefill_gflop_computed')} of {a.get('prefill_gflop_all_prompt_tokens')} GFLOP: shared prefixes run once)"))
    hooks = r.get("hook_overhead", {})
    if hooks:
        out.append(("capture hooks' share of (a)", f"{hooks.get('hook_work_share_of_capture', 0):.2%} measured in isolation ({hooks['hook_work_in_isolation_s']} s); end to end {hooks.get('end_to_end_difference_share', 0):.1%} (decoding without hooks {hooks['decode_without_hooks_best_s']} s; run-to-run noise is ±5 %)"))
    for path, label in (("capture", "(a)"), ("two_pass", "(b)")):
        entry = _get(r, "peak_rss", path)
        if entry:
            out.append((f"(d) peak RSS {label}", f"{entry['peak_rss_during_run_mb']} MiB, **+{entry['growth_over_loaded_mb']} MiB** over the loaded model ({entry['rss_after_load_mb']} MiB)"))
    cached = r.get("cached_measure")
    if cached:
        out.append(("(e) `measure()` second call, cached", f"{cached['second_call_best_s']} s (hashing the weights: {cached['second_call_hash_weights_s']} s in the last call; generation {cached['second_call_generate_and_capture_s']} s)"))
    suite = r.get("cached_suite_rerun")
    if suite:
        value = suite.get("skipped") or f"{suite['cached_rerun_wall_s']} s wall ({suite['suite_timings_line'].removeprefix('timings: ')})"
        out.append(("(e) `pytest suites/ --checkpoint` cached rerun", value))
    return out


def experiment_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    e = r.get("experiments", {})
    out: list[tuple[str, str]] = []
    sweep = e.get("batch_size_sweep")
    if sweep:
        out.append(("batch size → conv/s (ms per step)", ", ".join(f"{b}: {v['conversations_per_s']} ({v['ms_per_step']})" for b, v in sweep.items())))
    fit = e.get("step_time_fit")
    if fit:
        out.append(("step time = fixed + per row", f"{fit['fixed_ms_per_step']} ms + {fit['ms_per_row']} ms × batch"))
    threads = e.get("threads")
    if threads:
        out.append(("threads → conv/s, matmul GFLOP/s", ", ".join(f"{n}: {v['conversations_per_s']}, {v['matmul_gflops']}" if "skipped" not in v else f"{n}: skipped" for n, v in threads.items())))
    variants = e.get("decoder_speedups")
    if variants:
        out.append(("decoder speed-ups turned off in turn → conv/s (project's speed-up over it)", ", ".join(
            f"{k.replace('_', ' ')}: {v['conversations_per_s']}" + (f" ({v['project_speedup_over_this']}×)" if "project_speedup_over_this" in v else "")
            for k, v in variants.items()
        )))
    prof = e.get("profile")
    if prof:
        shares = ", ".join(f"{k} {v:.0%}" for k, v in prof["share"].items())
        out.append((f"profile, batch {prof.get('batch_size')} (unprofiled {prof['unprofiled_wall_s']} s, profiled {prof['profiled_wall_s']} s)", shares))
        out.append(("GFLOP/s inside the model's GEMMs", str(prof["gemm_gflops_inside_mm"])))
    gemm = e.get("decode_gemm_gflops")
    if gemm:
        for key, value in gemm.items():
            if key.startswith("batch"):
                out.append((f"decode-step GEMMs at {key}", f"{value['one decode step, all GEMMs']} GFLOP/s, {value['one decode step, GEMM ms']} ms per step (lm_head {value.get('lm_head 576x49152')} GFLOP/s)"))
        out.append(("memory read bandwidth; one pass over the weights", f"{gemm['read_bandwidth_gbs']} GB/s; {gemm['weights_read_ms_per_step']} ms ({gemm['linear_weights_mb']} MiB)"))
    return out


def markdown(r: dict[str, Any]) -> str:
    lines = ["| quantity | measured |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows(r)]
    lines += ["", "| experiment | measured |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in experiment_rows(r)]
    return "\n".join(lines)


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    print(markdown(json.loads(path.read_text())))
