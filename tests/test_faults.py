"""Faults lose nothing: a killed baseline write, two writers at once, a full disk, an interrupted measurement."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

import drift_suite.gate.baseline as baseline_module
import drift_suite.measure.measurement as measure_module
from drift_suite.gate.baseline import LOCK_FILE, MANIFEST, Baseline, baseline_write_lock, load_baseline, save_baseline
from drift_suite.measure.conversations import Design, build_conversations, render_prompts
from drift_suite.common.errors import BaselineError
from drift_suite.measure.extract import GenerationSettings, generate_and_capture
from drift_suite.measure.measurement import measure
from drift_suite.common.metrics import NoiseFloor

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")


def synthetic_baseline(seed: int, layers: int = 3, hidden: int = 8, roles: tuple[str, ...] = ("pirate", "tutor")) -> Baseline:
    """A small, complete baseline without a model: every number derived from ``seed``."""
    rng = np.random.default_rng(seed)
    manifest = {
        "format": baseline_module.FORMAT_VERSION,
        "created": f"synthetic-{seed}",
        "model": {"model_id": "synthetic", "num_layers": layers, "hidden_size": hidden},
        "persona_set": {"name": "synthetic", "roles": list(roles)},
        "layers": {"asserted": [1]},
        "noise_floor": {"n_boot": 10, "seed": seed},
    }
    noise = NoiseFloor(
        projection=rng.random(layers, dtype=np.float32),
        angle_deg=rng.random(layers, dtype=np.float32),
        accessibility=rng.random((len(roles), layers), dtype=np.float32),
        n_boot=10,
        seed=seed,
    )
    samples = {"default": [{"system": "", "question": f"q{seed}", "answer": f"a{seed}"}]}
    return Baseline(
        manifest,
        rng.standard_normal((layers, hidden), dtype=np.float32),
        rng.standard_normal((len(roles), layers, hidden), dtype=np.float32),
        noise,
        rng.standard_normal((4, hidden), dtype=np.float32),
        samples,
    )


def which_baseline(folder: Path, old: Baseline, new: Baseline) -> str:
    """``"old"`` or ``"new"`` when ``folder`` holds exactly one of them, every part; fails on a mix."""
    loaded = load_baseline(folder)
    for name, candidate in (("old", old), ("new", new)):
        if loaded.manifest["created"] == candidate.manifest["created"]:
            np.testing.assert_array_equal(loaded.default_mean, candidate.default_mean)
            np.testing.assert_array_equal(loaded.role_means, candidate.role_means)
            np.testing.assert_array_equal(loaded.noise.projection, candidate.noise.projection)
            np.testing.assert_array_equal(loaded.noise.accessibility, candidate.noise.accessibility)
            np.testing.assert_array_equal(loaded.embed_fingerprint, candidate.embed_fingerprint)
            assert loaded.samples == candidate.samples
            return name
    raise AssertionError(f"{folder} holds neither baseline: {loaded.manifest['created']}")


WRITE_PATH_FILES = {baseline_module.__file__, sys.modules["drift_suite.measure.cache"].__file__}


def write_killed_at_line(folder: Path, baseline: Baseline, kill_at: int) -> int:
    """Fork a child that writes ``baseline`` and SIGKILLs itself at the ``kill_at``-th line it executes in
    the write path (baseline.py, cache.py); returns the child's wait status."""
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            executed = 0

            def local(frame, event, _arg):
                nonlocal executed
                if event == "line":
                    executed += 1
                    if executed == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                return local

            def tracer(frame, _event, _arg):
                return local if frame.f_code.co_filename in WRITE_PATH_FILES else None

            sys.settrace(tracer)
            save_baseline(baseline, folder)
            sys.settrace(None)
            os._exit(0)
        except BaseException:  # noqa: BLE001 - any error must reach the parent as a status, not a pytest run
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    return status


def test_sigkill_at_every_line_of_a_baseline_write_leaves_old_or_new_whole(tmp_path):
    folder = tmp_path / "baseline"
    old, new = synthetic_baseline(1), synthetic_baseline(2)
    outcomes = []
    for kill_at in range(1, 1000):
        save_baseline(old, folder)  # also sweeps the temporary files a killed writer left
        assert which_baseline(folder, old, new) == "old"
        status = write_killed_at_line(folder, new, kill_at)
        if os.WIFEXITED(status):
            assert os.WEXITSTATUS(status) == 0, f"writer failed (not killed) at line {kill_at}"
            assert which_baseline(folder, old, new) == "new"
            break
        assert os.WTERMSIG(status) == signal.SIGKILL
        outcomes.append(which_baseline(folder, old, new))
    else:
        pytest.fail("the write never finished")
    # Killed early it is the old baseline, killed after the manifest's rename the new one: both happened.
    assert outcomes[0] == "old" and outcomes[-1] == "new", outcomes
    assert len(outcomes) > 20, "too few kill points: the tracer did not see the write path"
    leftovers = {p.name for p in folder.iterdir()} - {MANIFEST}
    assert all(name.startswith(("baseline-", "samples-")) for name in leftovers), leftovers


@contextlib.contextmanager
def lock_held_by_another_process(folder: Path) -> Iterator[int]:
    """A forked child holds ``folder``'s write lock for the ``with`` block; yields its pid."""
    ready_r, ready_w = os.pipe()
    release_r, release_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            with baseline_write_lock(folder):
                os.write(ready_w, b"x")
                os.read(release_r, 1)  # hold the lock until the parent is done
            os._exit(0)
        except BaseException:  # noqa: BLE001 - any error must reach the parent as a status
            os._exit(3)
    try:
        assert os.read(ready_r, 1) == b"x"
        yield pid
    finally:
        os.write(release_w, b"x")
        _, status = os.waitpid(pid, 0)
        for fd in (ready_r, ready_w, release_r, release_w):
            os.close(fd)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_second_writer_is_refused_with_the_holders_pid(tmp_path):
    folder = tmp_path / "baseline"
    save_baseline(synthetic_baseline(1), folder)
    with lock_held_by_another_process(folder) as pid:
        with pytest.raises(BaselineError) as refused:
            save_baseline(synthetic_baseline(2), folder)
    assert str(refused.value) == (
        f"baseline dir {folder.absolute()} is being written by another run (pid {pid}); wait or use another --baseline-dir"
    )
    assert which_baseline(folder, synthetic_baseline(1), synthetic_baseline(2)) == "old"
    save_baseline(synthetic_baseline(2), folder)  # the holder is gone: the lock is free again
    assert which_baseline(folder, synthetic_baseline(1), synthetic_baseline(2)) == "new"
    assert not (folder / LOCK_FILE).exists(), "the lock file stays behind after a clean release"


def test_lock_is_reentrant_and_freed_when_its_holder_is_killed(tmp_path):
    folder = tmp_path / "baseline"
    with baseline_write_lock(folder):
        save_baseline(synthetic_baseline(1), folder)  # the same process may write under its own lock
    pid = os.fork()
    if pid == 0:
        with baseline_write_lock(folder):
            os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    assert (folder / LOCK_FILE).exists()  # left by the killed holder, but no longer locked
    save_baseline(synthetic_baseline(2), folder)
    assert which_baseline(folder, synthetic_baseline(1), synthetic_baseline(2)) == "new"


def test_update_run_takes_the_lock_before_loading_anything(tmp_path):
    from drift_suite.gate.runner import DriftCheck

    folder = tmp_path / "baseline"
    check = DriftCheck(tmp_path / "no-such-model", folder, update_baseline=True, cache_dir=None, progress=False)
    with lock_held_by_another_process(folder):
        with pytest.raises(BaselineError, match="is being written by another run"):
            check.write_baseline()  # a CheckpointError here would mean it loaded (or tried) before locking


def fsync_fails_at(call: int):
    """An ``os.fsync`` whose ``call``-th call (from 1) raises ENOSPC, as a full disk does at flush time."""
    real = os.fsync
    calls = 0

    def fsync(fd: int) -> None:
        nonlocal calls
        calls += 1
        if calls >= call:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    return fsync


@pytest.mark.parametrize("failing_write", [1, 2, 3], ids=["tensors", "samples", "manifest"])
def test_disk_full_is_one_line_and_leaves_the_old_baseline_and_no_new_file(tmp_path, monkeypatch, failing_write):
    folder = tmp_path / "baseline"
    old, new = synthetic_baseline(1), synthetic_baseline(2)
    save_baseline(old, folder)
    before = sorted(p.name for p in folder.iterdir())
    monkeypatch.setattr(os, "fsync", fsync_fails_at(failing_write))
    with pytest.raises(BaselineError) as error:
        save_baseline(new, folder)
    monkeypatch.undo()
    message = str(error.value)
    assert "\n" not in message and str(folder) in message and "disk full" in message
    assert sorted(p.name for p in folder.iterdir()) == before, "partial or orphan files left behind"
    assert which_baseline(folder, old, new) == "old"


def test_baseline_into_a_read_only_dir_is_one_line(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only dirs")
    folder = tmp_path / "baseline"
    save_baseline(synthetic_baseline(1), folder)
    folder.chmod(0o555)
    try:
        with pytest.raises(BaselineError, match="cannot write baseline to"):
            save_baseline(synthetic_baseline(2), folder)
    finally:
        folder.chmod(0o755)


def test_baseline_dir_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(BaselineError, match=r"cannot write baseline to .*a-file/baseline/ \(\w+Error"):
        save_baseline(synthetic_baseline(1), tmp_path / "a-file" / "baseline")


DESIGN = Design(default_questions=3, role_prompts=1, role_questions=2)
SETTINGS = GenerationSettings(max_new_tokens=6, batch_size=5)  # 17 conversations → 4 batches


def test_full_disk_under_the_cache_warns_and_the_measurement_goes_on(tiny, tiny_personas, tmp_path, monkeypatch, caplog):
    reference = measure(tiny, tiny_personas, DESIGN, SETTINGS, cache_dir=None, progress=False)
    monkeypatch.setattr(os, "fsync", fsync_fails_at(1))
    with caplog.at_level(logging.WARNING, logger="drift_suite.measure.cache"):
        measured = measure(tiny, tiny_personas, DESIGN, SETTINGS, cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(measured.means, reference.means)
    assert any("disk full" in record.getMessage() for record in caplog.records)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()], "partial cache files left behind"


def test_interrupted_measurement_resumes_from_the_cached_batches(tiny, tiny_personas, tmp_path, monkeypatch):
    prompts = render_prompts(tiny.tokenizer, build_conversations(tiny_personas, DESIGN))
    uninterrupted = generate_and_capture(tiny.model, tiny.tokenizer, prompts, SETTINGS, progress=False)

    real = measure_module.generate_and_capture
    calls: list[int] = []

    def counted(*args, **kwargs):
        calls.append(len(args[2]))
        return real(*args, **kwargs)

    def interrupted_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        return counted(*args, **kwargs)

    cache_dir = tmp_path / "cache"
    monkeypatch.setattr(measure_module, "generate_and_capture", interrupted_after_two)
    with pytest.raises(KeyboardInterrupt):
        measure(tiny, tiny_personas, DESIGN, SETTINGS, cache_dir=cache_dir, progress=False)
    assert len(calls) == 2
    assert len(list(cache_dir.glob("*.safetensors"))) == 2, "each finished batch is cached"

    calls.clear()
    monkeypatch.setattr(measure_module, "generate_and_capture", counted)
    resumed = measure(tiny, tiny_personas, DESIGN, SETTINGS, cache_dir=cache_dir, progress=False)
    assert calls == [5, 2], "only the batches not cached are generated"  # 17 = 5 + 5 | 5 + 2
    np.testing.assert_allclose(resumed.means, uninterrupted.means, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(resumed.token_counts, uninterrupted.token_counts)
    assert resumed.responses == uninterrupted.responses
    # Finished: one whole entry, the parts gone, and the next run generates nothing.
    assert len(list(cache_dir.glob("*.safetensors"))) == 1
    calls.clear()
    again = measure(tiny, tiny_personas, DESIGN, SETTINGS, cache_dir=cache_dir, progress=False)
    assert calls == [] and again.from_cache
    np.testing.assert_array_equal(again.means, resumed.means)


def interrupt_after(batches: int, tiny, tiny_personas, cache_dir: Path, monkeypatch) -> None:
    """A measurement with SETTINGS that stops (Ctrl-C) after ``batches`` generation batches."""
    real = measure_module.generate_and_capture
    done: list[int] = []

    def interrupted(*args, **kwargs):
        if len(done) == batches:
            raise KeyboardInterrupt
        done.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(measure_module, "generate_and_capture", interrupted)
    with pytest.raises(KeyboardInterrupt):
        measure(tiny, tiny_personas, DESIGN, SETTINGS, cache_dir=cache_dir, progress=False)
    monkeypatch.setattr(measure_module, "generate_and_capture", real)


def count_batches(monkeypatch) -> list[int]:
    """Sizes of the batches generated from now on."""
    real = measure_module.generate_and_capture
    calls: list[int] = []

    def counted(*args, **kwargs):
        calls.append(len(args[2]))
        return real(*args, **kwargs)

    monkeypatch.setattr(measure_module, "generate_and_capture", counted)
    return calls


def test_a_torn_batch_entry_is_generated_again(tiny, tiny_personas, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    interrupt_after(3, tiny, tiny_personas, cache_dir, monkeypatch)
    victim = sorted(cache_dir.glob("*.safetensors"))[0]
    victim.write_bytes(victim.read_bytes()[:50])  # torn by another tool or a full disk: a miss
    calls = count_batches(monkeypatch)
    measured = measure(tiny, tiny_personas, DESIGN, SETTINGS, cache_dir=cache_dir, progress=False)
    assert sorted(calls) == [2, 5], "the torn batch and the one never run"
    reference = measure(tiny, tiny_personas, DESIGN, SETTINGS, cache_dir=None, progress=False)
    np.testing.assert_allclose(measured.means, reference.means, rtol=0, atol=1e-6)
    assert measured.responses == reference.responses


def test_parts_from_another_batch_plan_are_never_used(tiny, tiny_personas, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    interrupt_after(3, tiny, tiny_personas, cache_dir, monkeypatch)
    other = replace(SETTINGS, batch_size=4)  # same measurement key, other batches
    calls = count_batches(monkeypatch)
    measured = measure(tiny, tiny_personas, DESIGN, other, cache_dir=cache_dir, progress=False)
    assert calls == [4, 4, 4, 4, 1]
    reference = measure(tiny, tiny_personas, DESIGN, other, cache_dir=None, progress=False)
    np.testing.assert_allclose(measured.means, reference.means, rtol=0, atol=1e-6)
