"""Which way should the training drift probe run under N processes? Launch with
``torchrun --standalone --nproc_per_node 2 scripts/probe_sharding.py MODEL_DIR`` and compare:

* main: the main process measures all probe conversations while the others wait at a barrier;
* shard: each rank measures every N-th conversation, and the per-conversation means are all-gathered.

Prints, on the main process, the wall time of each (median of 3, after one warm-up) and the largest
difference between the two ways' means.
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch

from drift_suite.train.callbacks import PROBE_DESIGN, PROBE_SETTINGS, probe_persona_set
from drift_suite.measure.conversations import build_conversations, render_prompts
from drift_suite.measure.distributed import all_gather_bytes, barrier, pack, process_context, unpack
from drift_suite.measure.extract import generate_and_capture
from drift_suite.measure.models import load_model


def main(model_dir: str) -> None:
    context = process_context()
    loaded = load_model(model_dir)
    prompts = render_prompts(loaded.tokenizer, build_conversations(probe_persona_set(), PROBE_DESIGN))

    def main_only() -> np.ndarray | None:
        means = None
        if context.is_main:
            means = generate_and_capture(loaded.model, loaded.tokenizer, prompts, PROBE_SETTINGS, progress=False).means
        barrier()
        return means

    def sharded() -> np.ndarray:
        mine = prompts[context.rank :: context.world_size]
        means = generate_and_capture(loaded.model, loaded.tokenizer, mine, PROBE_SETTINGS, progress=False).means
        parts = [unpack(p)[0]["means"] for p in all_gather_bytes(pack({"means": means}, {}))]
        out = np.empty((len(prompts), *means.shape[1:]), dtype=means.dtype)
        for rank, part in enumerate(parts):
            out[rank :: context.world_size] = part
        return out

    results = {}
    for name, way in (("main", main_only), ("shard", sharded)):
        with torch.inference_mode():
            way()
            times = []
            for _ in range(3):
                barrier()
                start = time.perf_counter()
                means = way()
                times.append(time.perf_counter() - start)
        results[name] = (statistics.median(times), means)
    if context.is_main:
        diff = float(np.abs(results["main"][1] - results["shard"][1]).max() / np.abs(results["main"][1]).max())
        print(f"{len(prompts)} probe conversations, {context.world_size} processes, torch threads {torch.get_num_threads()}:")
        for name, (seconds, _) in results.items():
            print(f"  {name}: {seconds:.2f} s (median of 3)")
        print(f"  largest relative difference of the means, shard vs main: {diff:.2e}")


if __name__ == "__main__":
    main(sys.argv[1])
