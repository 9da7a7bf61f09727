"""Fixtures of the GPU benchmark: the device, the tokenizer source, and ``results-gpu.json``.

Overrides the CPU benchmark's ``bench_environment`` (it would pin CPU threads and write ``results.json``).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.gpu.bench import acceptance, gpu_info
from benchmarks.gpu.shapes import bench_device, results_path, tokenizer_dir

RESULTS: dict[str, Any] = {}


@pytest.fixture(scope="session", autouse=True)
def bench_environment() -> dict[str, Any]:
    import transformers

    device = bench_device()
    env = {
        **(gpu_info(device) if device != "cuda" or torch.cuda.is_available() else {"device": device}),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    RESULTS["environment"] = env
    return env


@pytest.fixture(scope="session")
def device() -> str:
    return bench_device()


@pytest.fixture(scope="session")
def tokenizer_source() -> Path:
    source = tokenizer_dir()
    if source is None:
        pytest.skip("no tokenizer: set DRIFT_GPU_BENCH_TOKENIZER or DRIFT_DEMO_MODEL (or carry .gpu/tok)")
    return source


@pytest.fixture(scope="session")
def gpu_results() -> dict[str, Any]:
    return RESULTS


def _path() -> Path:
    path = results_path()
    # A CPU smoke run must not replace the GPU's numbers.
    if bench_device() == "cpu" and path.name == "results-gpu.json":
        path = path.with_name("results-gpu-cpu-smoke.json")
    return path


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if set(RESULTS) <= {"environment"}:
        return
    RESULTS["acceptance"] = acceptance(RESULTS)
    path = _path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(RESULTS, indent=2, default=float) + "\n")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if set(RESULTS) <= {"environment"}:
        return
    terminalreporter.section("drift_suite GPU benchmark")
    env = RESULTS["environment"]
    terminalreporter.write_line(f"device {env.get('device')} {env.get('gpu_name') or ''} (card spec: {env.get('card')})")
    for key, entry in RESULTS.get("speed", {}).items():
        limit = entry["physical_limit"].get("limit_s")
        terminalreporter.write_line(
            f"{key:<16} project {entry['project_s']} s ({entry['project_conversations_per_s']} conv/s), two-pass "
            f"{entry['two_pass_s']} s, {entry['speedup_over_two_pass']}x; limit {limit} s; peak {entry['peak_gib']} GiB"
        )
        terminalreporter.write_line(f"{'':<16} decoder: {entry['decoder']}; switched off: " + ", ".join(
            f"{name} {variant['seconds']} s" for name, variant in entry.get("switched_off", {}).items()))
    for key, entry in RESULTS.get("design_cost", {}).items():
        terminalreporter.write_line(f"{key:<16} {entry['conversations']} conversations in {entry['seconds']} s")
    for check in RESULTS.get("acceptance") or acceptance(RESULTS):
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[check["met"]]
        terminalreporter.write_line(f"acceptance: {check['what']}: {verdict} ({check['measured']})")
    terminalreporter.write_line(f"(all numbers: {_path()})")
