"""Several processes (torchrun, gloo on the CPU): a run dir's checkpoints shared across ranks give the
verdict and the numbers of one process, printed and written once; the payload format and the sharding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from drift_suite.measure.distributed import ProcessContext, my_share, pack, share_work, unpack
from test_plugin import FAST_CONFIG  # a design small enough for a tiny model: well under a second per checkpoint

TESTS = Path(__file__).parent
REPO = TESTS.parent


def run_launcher(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """Run a launcher in its own process group, so a timeout kills its workers too (they would outlive it)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def outcome_numbers(outcome) -> dict:
    """What a verdict rests on, per step, as JSON: the compared metrics and each check's result."""
    return {
        "passed": outcome.passed,
        "steps": [
            {
                "step": result.step,
                "checkpoint": Path(result.checkpoint).name,
                "projection_shift": result.comparison.projection_shift.tolist(),
                "rotation_deg": result.comparison.rotation_deg.tolist(),
                "accessibility": result.comparison.accessibility.tolist(),
                "default_mean": result.measurement.default_mean.tolist(),
                "responses": result.measurement.responses,
                "checks": [[c.family, c.subject, c.passed] for c in result.comparison.checks],
            }
            for result in outcome.steps
        ],
    }


def test_ranks_share_items_round_robin_and_cover_each_once():
    items = list("abcde")
    shares = [my_share(items, ProcessContext(rank=r, world_size=2)) for r in range(2)]
    assert shares == [[(0, "a"), (2, "c"), (4, "e")], [(1, "b"), (3, "d")]]
    assert my_share(items, ProcessContext()) == list(enumerate(items))


def test_payload_round_trips_arrays_and_fields_exactly():
    means = np.random.default_rng(0).standard_normal((5, 3, 4)).astype(np.float32)
    arrays, fields = unpack(pack({"means": means}, {"responses": ["a", "é"], "n": 3}))
    assert np.array_equal(arrays["means"], means) and arrays["means"].dtype == np.float32
    assert fields == {"responses": ["a", "é"], "n": 3}


def test_single_process_share_work_runs_everything_in_order():
    assert share_work([1, 2, 3], lambda i: pack({}, {"i": i})) == [pack({}, {"i": i}) for i in (1, 2, 3)]


def _run_dir(root: Path) -> tuple[Path, Path]:
    """A base model and a run of 3 checkpoints, each with more weight noise on layer 2."""
    from tiny import save_tiny_checkpoint
    from transformers import AutoModelForCausalLM

    base = save_tiny_checkpoint(root / "base")
    run = root / "run"
    for step, scale in ((1, 0.0), (2, 0.05), (3, 0.5)):
        model = AutoModelForCausalLM.from_pretrained(base)
        torch.manual_seed(step)
        with torch.no_grad():
            for param in model.model.layers[2].parameters():
                param.add_(torch.randn_like(param) * scale * param.std())
        model.save_pretrained(run / f"checkpoint-{step}", safe_serialization=True)
        from tiny import tiny_tokenizer

        tiny_tokenizer().save_pretrained(run / f"checkpoint-{step}")
    (run / "run_manifest.json").write_text(json.dumps({"model": str(base)}))
    return base, run


@pytest.mark.slow  # two launches of two fresh Python + torch processes: ~2 min on 2 busy cores
def test_check_on_two_processes_equals_one_process(tmp_path):
    from drift_suite.gate.config import load_config
    from drift_suite.gate.runner import DriftCheck

    _base, run = _run_dir(tmp_path)
    (tmp_path / "pyproject.toml").write_text(FAST_CONFIG)
    config = load_config(tmp_path)
    # One process: writes the baseline (of the run's base model) and gives the reference numbers.
    one = DriftCheck(run, tmp_path / "baseline", config=config, cache_dir=None, update_baseline=True, progress=False).run()

    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{TESTS}", "DRIFT_TEST_NUMBERS": str(tmp_path / "numbers.json"),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(TESTS / "distributed_cli.py"), "check", str(run), "--baseline-dir", str(tmp_path / "baseline"),
               "--no-cache", "--report", str(tmp_path / "report.html")]  # fmt: skip
    done = run_launcher(command, cwd=tmp_path, env=env, timeout=240)
    expected_code = 0 if one.passed else 1
    assert done.returncode == expected_code, done.stderr[-3000:]
    assert done.stdout.count("verdict:") == 1, done.stdout  # the other rank printed nothing
    assert "(rank 0)" in done.stdout and "(rank 1)" in done.stdout  # both ranks measured
    assert (tmp_path / "report.html").is_file()

    two = json.loads((tmp_path / "numbers.json").read_text())
    reference = outcome_numbers(one)
    assert two["passed"] == reference["passed"]
    assert [s["step"] for s in two["steps"]] == [1, 2, 3]
    for mine, theirs in zip(two["steps"], reference["steps"]):
        assert mine["checks"] == theirs["checks"] and mine["responses"] == theirs["responses"]
        for name in ("projection_shift", "rotation_deg", "accessibility", "default_mean"):
            np.testing.assert_allclose(mine[name], theirs[name], rtol=1e-6, atol=1e-7, err_msg=f"step {mine['step']} {name}")
    # The planted noise must show, or this test could not tell a wrong gather from a right one.
    assert not np.allclose(reference["steps"][0]["default_mean"], reference["steps"][2]["default_mean"])

    # The pytest suite under the same launch: the verdict of one process, printed once.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "pytest",
               str(REPO / "suites"), "-c", str(tmp_path / "pyproject.toml"), "--rootdir", str(tmp_path), "-p", "no:cacheprovider",
               "--checkpoint", str(run), "--baseline-dir", str(tmp_path / "baseline"), "--no-drift-cache",
               "--drift-report", str(tmp_path / "suite.html")]  # fmt: skip
    suite = run_launcher(command, cwd=tmp_path, env=env, timeout=240)
    assert suite.returncode == expected_code, suite.stdout[-3000:]
    checks = one.gate_checks()
    failed = len([c for c in checks if not c.passed])
    assert suite.stdout.count("verdict:") == 1
    assert f"verdict: {'PASS' if one.passed else 'FAIL'} ({len(checks) - failed}/{len(checks)} checks" in suite.stdout
    assert suite.stdout.count(" passed") + suite.stdout.count(" failed") <= 2  # one session summary line


@pytest.mark.slow  # two processes train the real demo model for 2 steps: minutes on 2 CPU cores
def test_training_on_two_processes_writes_once_and_probes_once(tmp_path):
    from drift_suite.train.callbacks import PROBE_DESIGN, PROBE_SETTINGS, DriftProbeCallback
    from drift_suite.measure.models import find_run_checkpoints, load_model

    model_dir = os.environ.get("DRIFT_DEMO_MODEL")
    if not model_dir or not Path(model_dir).is_dir():
        pytest.skip("needs the demo model: export DRIFT_DEMO_MODEL=DIR (drift-suite demo-model --out DIR)")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{TESTS}", "DRIFT_TEST_WRITES": str(tmp_path / "writes"),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(TESTS / "distributed_train.py"), "--model", model_dir, "--output_dir", str(out), "--use_lora",
               "--dataset", "synthetic", "--max_steps", "2", "--save_steps", "1", "--drift_every", "1",
               "--num_generations", "2", "--per_device_train_batch_size", "2", "--max_completion_length", "16",
               "--drift_baseline_dir", str(tmp_path / "no-baseline")]  # fmt: skip
    done = run_launcher(command, cwd=tmp_path, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout + done.stderr

    # One writer per file: rank 1 wrote nothing in the run dir, rank 0 wrote the run's own files.
    writes = {rank: json.loads((tmp_path / f"writes-{rank}.json").read_text()) for rank in (0, 1)}
    assert writes[1] == [], writes[1]
    assert {"run_manifest.json", "trainer_state.json", "train_log.jsonl", "final/tokenizer_config.json"} <= set(writes[0])
    # Printed once: the summary, the probe's announcement, each log line.
    assert printed.count("check it: drift-suite check") == 1 and printed.count("drift probe: 20 conversations") == 1
    assert printed.count("step 2/2") == 1
    assert "torch.jit.script_method" not in printed and "gemm_4bit_forward" not in printed

    # One probe result per step, equal to probing the saved checkpoints in this (one) process.
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    logged = {e["step"]: e["drift/projection"] for e in history if "drift/projection" in e}
    assert sorted(logged) == [0, 1, 2]
    probe = DriftProbeCallback(every=1, baseline_dir=None, design=PROBE_DESIGN, settings=PROBE_SETTINGS)
    base = load_model(model_dir)
    probe.reference = probe.probe(base.model, base.tokenizer)
    probe._choose_axis(base.model, probe.reference)
    from peft import PeftModel

    for step, folder in find_run_checkpoints(out).items():
        trained = PeftModel.from_pretrained(load_model(model_dir).model, str(folder))  # unmerged, as in training
        measured = probe.drift_metrics(probe.probe(trained, base.tokenizer))["drift/projection"]
        assert measured == pytest.approx(logged[step], abs=1e-5), f"step {step}"


RANK_SCRIPT = """
import sys
from drift_suite.measure.distributed import pack, share_work, unpack
from drift_suite.common.errors import CheckpointError, DriftSuiteError

def work(item):
    if item == int(sys.argv[1]):
        raise CheckpointError(f"checkpoint-{item}: truncated")
    return pack({}, {"item": item})

try:
    print([unpack(p)[1]["item"] for p in share_work([0, 1, 2], work)])
except DriftSuiteError as exc:
    print(f"{type(exc).__name__}: {exc}")
"""


def _two_ranks(failing_item: int) -> list[str]:
    """``RANK_SCRIPT`` on two gloo processes (no launcher: the environment torchrun would set)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    processes = [
        subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(failing_item)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO), "RANK": str(rank), "LOCAL_RANK": str(rank),
                              "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
        for rank in range(2)
    ]  # fmt: skip
    try:
        return [p.communicate(timeout=120)[0].strip() for p in processes]
    finally:
        for p in processes:
            p.kill()


@pytest.mark.slow  # four Python processes importing torch: ~10 s quiet, 35 s on 2 busy cores
def test_two_ranks_get_every_result_in_order_and_share_one_ranks_error():
    assert _two_ranks(failing_item=-1) == ["[0, 1, 2]", "[0, 1, 2]"]  # rank 0 did 0 and 2, rank 1 did 1
    # checkpoint 1 is rank 1's: it raises its own error, rank 0 the same message naming rank 1; nobody hangs
    assert _two_ranks(failing_item=1) == ["DistributedError: rank 1: checkpoint-1: truncated", "CheckpointError: checkpoint-1: truncated"]
