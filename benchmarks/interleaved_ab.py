"""Old code against new on the same host, interleaved: is a change a regression, or the host's noise?

    python -m benchmarks.interleaved_ab OLD_COMMIT [--rounds 2] [--threads 1] [--conversations N]

Each run is a fresh process with ``drift_suite`` imported from OLD_COMMIT's tree (``git archive``) or from this
checkout: the demo model loaded and warmed up, then one timed ``generate_and_capture`` of the benchmark's
prompts (the default design's 196, 48-token greedy answers, fp32). Rounds alternate old, new, new, old, ... so a
load that drifts over the minutes falls on both alike. Wall time and the process's own CPU time are printed per
run (CPU time moves less when other processes share the cores), with the sum of all means as a same-numbers check.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

ONE_RUN = r"""
import json, os, sys, time
import torch
torch.set_num_threads(int(os.environ["AB_THREADS"]))
import drift_suite
from drift_suite.measure.conversations import Design, build_conversations, render_prompts
from drift_suite.measure.extract import GenerationSettings, generate_and_capture
from drift_suite.measure.models import load_model
from drift_suite.measure.personas import builtin_persona_set
loaded = load_model(os.environ["AB_MODEL"])
prompts = render_prompts(loaded.tokenizer, build_conversations(builtin_persona_set(), Design(16, 1, 4)))
prompts = prompts[: int(os.environ["AB_CONVERSATIONS"])]
generate_and_capture(loaded.model, loaded.tokenizer, prompts[:8], GenerationSettings(max_new_tokens=4), progress=False)
wall, cpu = time.perf_counter(), time.process_time()
out = generate_and_capture(loaded.model, loaded.tokenizer, prompts, GenerationSettings(max_new_tokens=48), progress=False)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({"code": drift_suite.__file__, "wall_s": wall, "cpu_s": cpu, "conversations": len(prompts),
                  "means_sum": float(out.means.astype("float64").sum())}))
"""


def one_run(source: Path, model: str, threads: int, conversations: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(source), "AB_THREADS": str(threads), "AB_MODEL": model,
           "AB_CONVERSATIONS": str(conversations)}
    done = subprocess.run([sys.executable, "-c", ONE_RUN], env=env, capture_output=True, text=True, check=True, cwd=source)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="commit of the old code")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--conversations", type=int, default=196)
    parser.add_argument("--model", default=os.environ.get("DRIFT_DEMO_MODEL", str(REPO / "demo" / "smollm2-135m-instruct")))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.old, "drift_suite"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        order = [("old", old), ("new", REPO)]
        for round_index in range(args.rounds):
            for label, source in order if round_index % 2 == 0 else order[::-1]:
                result = one_run(source, args.model, args.threads, args.conversations)
                load = os.getloadavg()[0]
                print(f"round {round_index + 1} {label} ({result['code']}): {result['wall_s']:.1f} s wall, {result['cpu_s']:.1f} s CPU, "
                      f"{result['conversations'] / result['wall_s']:.2f} conv/s, means sum {result['means_sum']:.4f}, "
                      f"load average {load:.1f}", flush=True)


if __name__ == "__main__":
    main()
