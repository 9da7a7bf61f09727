"""Fixtures of the benchmarks: the demo model (loaded once), the prompts, thread setting and the results file.

Every test adds its numbers to one results dict; at the end of the session it is written to
``benchmarks/results.json`` (``DRIFT_BENCH_RESULTS`` elsewhere) and summarized in the terminal.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.workloads import (
    REPO,
    SETTINGS,
    bench_threads,
    benchmark_prompts,
    encode,
    other_processes_cpu,
)

RESULTS: dict[str, Any] = {}
RESULTS_PATH = Path(os.environ.get("DRIFT_BENCH_RESULTS", REPO / "benchmarks" / "results.json"))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@pytest.fixture(scope="session", autouse=True)
def bench_environment() -> dict[str, Any]:
    """Set torch's thread count for the whole session and record the machine state around it."""
    threads = bench_threads()
    torch.set_num_threads(threads)
    import transformers

    env: dict[str, Any] = {
        "torch_threads": threads,
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "other_busy_processes_start_cores": other_processes_cpu(),
    }
    RESULTS["environment"] = env
    yield env
    env["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    env["other_busy_processes_end_cores"] = other_processes_cpu()


@pytest.fixture(scope="session")
def loaded(demo_model_dir: Path, bench_environment: dict[str, Any]):
    """The demo model in fp32, loaded once and warmed up (first-call costs are not benchmarked)."""
    from drift_suite.measure.extract import GenerationSettings, generate_and_capture
    from drift_suite.measure.models import load_model
    from drift_suite.measure.placement import resolve_placement

    start = time.perf_counter()
    lm = load_model(demo_model_dir, placement=resolve_placement("cpu", "float32"))
    RESULTS.setdefault("workload", {})["model_load_s"] = round(time.perf_counter() - start, 2)
    generate_and_capture(lm.model, lm.tokenizer, benchmark_prompts(lm.tokenizer, 2), GenerationSettings(max_new_tokens=4), progress=False)
    return lm


@pytest.fixture(scope="session")
def prompts(loaded) -> list[str]:
    """The benchmark prompts (the default design's 196, or ``DRIFT_BENCH_CONVERSATIONS``); records the workload's shape."""
    out = benchmark_prompts(loaded.tokenizer)
    lengths = [len(e) for e in encode(loaded.tokenizer, out)]
    RESULTS.setdefault("workload", {}).update(
        {
            "model": str(loaded.info.model_id),
            "dtype": "float32",
            "conversations": len(out),
            "max_new_tokens": SETTINGS.max_new_tokens,
            "batch_size": SETTINGS.batch_size,
            "prompt_tokens_min_max_mean": [min(lengths), max(lengths), round(sum(lengths) / len(lengths), 1)],
        }
    )
    return out


@pytest.fixture(scope="session")
def results() -> dict[str, Any]:
    """The shared results dict (written to results.json at the end)."""
    return RESULTS


def summarize(results: dict[str, Any]) -> dict[str, str]:
    """One line per headline number, from whatever parts of the benchmark ran."""
    out: dict[str, str] = {}
    env = results.get("environment", {})
    if env:
        out["torch threads / load average start..end"] = (
            f"{env['torch_threads']} / {env.get('loadavg_start')} .. {env.get('loadavg_end')}"
        )
        others = {**env.get("other_busy_processes_start_cores", {}), **env.get("other_busy_processes_end_cores", {})}
        out["other busy processes (cores, start or end)"] = ", ".join(f"{k}: {v}" for k, v in others.items()) or "none"
    for key, label in (("capture_one_pass", "(a) one-pass capture"), ("two_pass_reference", "(b) two-pass reference")):
        entry = results.get(key)
        if entry:
            out[label] = f"{entry['conversations_per_s']} conv/s, {entry['new_tokens_per_s']} new tok/s ({entry['best_s']} s)"
    if "speedup_capture_over_two_pass" in results:
        out["speedup (a) over (b)"] = f"{results['speedup_capture_over_two_pass']}x"
    roofline = results.get("matmul_roofline")
    capture = results.get("capture_one_pass", {})
    if roofline:
        out["(c) 2048^2 fp32 matmul"] = f"{roofline['gflops']} GFLOP/s"
    if "fraction_of_matmul_roofline_decode" in capture:
        out["(c) (a) achieved, decode FLOPs / incl. prefill"] = (
            f"{capture['achieved_gflops_decode']} / {capture['achieved_gflops_incl_prefill']} GFLOP/s = "
            f"{capture['fraction_of_matmul_roofline_decode']:.1%} / {capture['fraction_of_matmul_roofline_incl_prefill']:.1%} of roofline"
        )
    hooks = results.get("hook_overhead", {})
    if "end_to_end_difference_share" in hooks:
        out["capture hooks' share of (a): end-to-end / isolated"] = (
            f"{hooks['end_to_end_difference_share']:.1%} (decoding alone {hooks['decode_without_hooks_best_s']} s) / "
            f"{hooks['hook_work_share_of_capture']:.2%} ({hooks['hook_work_in_isolation_s']} s)"
        )
    for path, entry in results.get("peak_rss", {}).items():
        out[f"(d) peak RSS {path}"] = (
            f"{entry.get('peak_rss_during_run_mb')} MiB ({entry.get('growth_over_loaded_mb')} MiB over the loaded model)"
        )
    cached = results.get("cached_measure")
    if cached:
        out["(e) cached measure() second call"] = (
            f"{cached['second_call_best_s']} s (hash weights {cached['second_call_hash_weights_s']} s, generation 0)"
        )
    suite = results.get("cached_suite_rerun")
    if suite:
        out["(e) cached pytest suites/ rerun"] = suite.get("skipped") or f"{suite['cached_rerun_wall_s']} s wall"
    for name, line in results.get("experiments_summary", {}).items():
        out[name] = line
    return out


def _written_path() -> Path:
    """A run without the core comparison (e.g. ``-k`` on one experiment) must not replace the full results."""
    complete = "capture_one_pass" in RESULTS and "two_pass_reference" in RESULTS
    return RESULTS_PATH if complete else RESULTS_PATH.with_name(RESULTS_PATH.stem + "-partial.json")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not RESULTS:
        return
    RESULTS["summary"] = summarize(RESULTS)
    path = _written_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(RESULTS, indent=2, default=float) + "\n")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    summary = RESULTS.get("summary")
    if not summary:
        return
    terminalreporter.section("drift_suite benchmarks")
    for key, value in summary.items():
        terminalreporter.write_line(f"{key:<44} {value}")
    terminalreporter.write_line(f"(all numbers: {_written_path()})")
