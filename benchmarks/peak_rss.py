"""Peak resident memory of one measurement path, in a fresh process (torch allocations are invisible to tracemalloc).

    python -m benchmarks.peak_rss capture|two_pass MODEL_DIR [THREADS [BATCH_SIZE]]

Prints one JSON line: RSS after loading the model, the peak RSS while the path ran (``VmHWM``) and
``getrusage``'s ``ru_maxrss``. Two corrections make "growth over the loaded model" the path's own memory:

* safetensors weights are memory-mapped and paged in lazily (right after ``load_model`` only ~120 of the
  ~540 MB of fp32 weights are resident), so every weight page is read once before the baseline is taken;
* the kernel's high-water mark is reset after loading, through ``/proc/self/clear_refs``, so loading
  is not counted.

``ru_maxrss`` is reported but not used: Linux carries the pre-``exec`` memory's high-water mark into it,
so a process started from a big parent (the pytest session, ~2.3 GB) reports the parent's peak.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import torch


def _status_mb(field: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process in MiB, from ``/proc/self/status`` (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (Linux ≥ 4.0); False when not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def main(argv: list[str]) -> dict[str, float | str | bool | None]:
    path, model_dir = argv[0], argv[1]
    torch.set_num_threads(int(argv[2]) if len(argv) > 2 else torch.get_num_threads())
    from dataclasses import replace

    from benchmarks.workloads import SETTINGS, benchmark_prompts, two_pass_reference
    from drift_suite.measure.extract import generate_and_capture

    settings = replace(SETTINGS, batch_size=int(argv[3])) if len(argv) > 3 else SETTINGS
    from drift_suite.measure.models import load_model
    from drift_suite.measure.placement import resolve_placement

    loaded = load_model(model_dir, placement=resolve_placement("cpu", "float32"))
    prompts = benchmark_prompts(loaded.tokenizer)
    with torch.no_grad():
        for parameter in loaded.model.parameters():  # page the memory-mapped weights in
            parameter.sum()
    rss_loaded = _status_mb("VmRSS")
    reset = _reset_peak()
    start = time.perf_counter()
    if path == "capture":
        generate_and_capture(loaded.model, loaded.tokenizer, prompts, settings, progress=False)
    elif path == "two_pass":
        two_pass_reference(loaded.model, loaded.tokenizer, prompts, settings)
    else:
        raise SystemExit(f"unknown path {path!r}: capture or two_pass")
    seconds = time.perf_counter() - start
    peak_run = _status_mb("VmHWM") if reset else None
    return {
        "path": path,
        "batch_size": settings.batch_size,
        "rss_after_load_mb": rss_loaded,
        "peak_rss_during_run_mb": peak_run,
        "growth_over_loaded_mb": None if peak_run is None or rss_loaded is None else peak_run - rss_loaded,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_reset_supported": reset,
        "run_s": seconds,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
