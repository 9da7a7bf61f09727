"""Errors are not verdicts: a checkpoint that cannot be loaded or measured ends the run with one line and an
exit code that is neither 0 (pass) nor 1 (drift), under pytest and the CLI alike (docs/options.md, "Exit codes")."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from drift_suite.cli import main as cli_main
from drift_suite.common.errors import EXIT_MEASUREMENT_FAILED, EXIT_USAGE
from test_plugin import run, suite  # noqa: F401  (the suite fixture: the shipped suites with a fast design)
from tiny import save_tiny_adapter

pytest_plugins = ["pytester"]

CUDA_MISSING = "needs a CUDA GPU"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def broken(tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """A full checkpoint with its model.safetensors cut in half, and an adapter with its weights cut in half."""
    folder = tmp_path_factory.mktemp("broken")
    weights = shutil.copytree(tiny_checkpoint, folder / "truncated-weights")
    _truncate(weights / "model.safetensors")
    adapter = save_tiny_adapter(tiny_checkpoint, folder / "truncated-adapter")
    _truncate(adapter / "adapter_model.safetensors")
    return {"weights": weights, "adapter": adapter}


@pytest.fixture(scope="module")
def baseline_dir(tiny_checkpoint, tmp_path_factory) -> Path:
    """A baseline of the tiny checkpoint in the fast design, written through the library (no subprocess)."""
    import test_plugin
    from drift_suite.gate.config import config_from_options
    from drift_suite.gate.runner import DriftCheck

    project = tmp_path_factory.mktemp("project")
    (project / "pyproject.toml").write_text(test_plugin.FAST_CONFIG)
    folder = project / "baseline"
    DriftCheck(tiny_checkpoint, folder, config=config_from_options(project), cache_dir=None, update_baseline=True,
               progress=False).run()
    return folder


@pytest.mark.parametrize(
    "case,extra,code,message",
    [
        ("weights", [], EXIT_MEASUREMENT_FAILED, "corrupt or unreadable checkpoint"),
        ("adapter", [], EXIT_MEASUREMENT_FAILED, "cannot apply adapter"),
        ("4bit", ["--use-4bit"], EXIT_USAGE, CUDA_MISSING),
    ],
)
def test_pytest_stops_with_one_line_and_a_non_verdict_exit_code(suite, broken, tiny_checkpoint, baseline_dir, case, extra, code, message):  # noqa: F811
    if case == "4bit":
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available: --use-4bit is no error here")
    checkpoint = tiny_checkpoint if case == "4bit" else broken[case]
    result = run(suite, "--checkpoint", str(checkpoint), "--baseline-dir", str(baseline_dir), *extra)
    output = result.stdout.lines + result.stderr.lines
    assert result.ret == code, "\n".join(output)
    assert sum(message in line for line in output) == 1, "\n".join(output)
    assert not any("Traceback" in line or "During handling" in line for line in output)
    assert len(output) < 15, "\n".join(output)


def test_unexpected_error_while_measuring_is_one_line_exit_3(suite, tiny_checkpoint, baseline_dir):  # noqa: F811
    """Out of memory (or any exception the library does not know) while measuring is an error, not drift."""
    suite.makeconftest(
        """
import drift_suite.gate.runner

def _out_of_memory(*args, **kwargs):
    raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\\nsecond line of the message")

def pytest_configure(config):
    drift_suite.gate.runner.measure = _out_of_memory
"""
    )
    result = run(suite, "--checkpoint", str(tiny_checkpoint), "--baseline-dir", str(baseline_dir))
    output = result.stdout.lines + result.stderr.lines
    assert result.ret == EXIT_MEASUREMENT_FAILED, "\n".join(output)
    errors = [line for line in output if "out of memory" in line]
    assert len(errors) == 1 and "RuntimeError: CUDA out of memory" in errors[0] and "--full-trace" in errors[0]
    assert not any("second line" in line or "Traceback" in line for line in output)


def test_cli_exit_codes_match_pytest(broken, tiny_checkpoint, baseline_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(baseline_dir.parent)  # its pyproject.toml: the fast design the baseline was made with
    common = ["--baseline-dir", str(baseline_dir), "--report", "none", "--no-cache"]
    cases = [
        ([str(broken["weights"])], EXIT_MEASUREMENT_FAILED, "corrupt or unreadable checkpoint"),
        ([str(broken["adapter"])], EXIT_MEASUREMENT_FAILED, "cannot apply adapter"),
        ([str(tmp_path / "missing")], EXIT_USAGE, "no such checkpoint directory"),
        ([str(tiny_checkpoint), "--baseline-dir", str(tmp_path / "none")], EXIT_USAGE, "no baseline in"),
    ]
    import torch

    if not torch.cuda.is_available():
        cases.append(([str(tiny_checkpoint), "--use-4bit"], EXIT_USAGE, CUDA_MISSING))
    for args, code, message in cases:
        assert cli_main(["check", args[0], *common, *args[1:]]) == code, args
        err = capsys.readouterr().err.strip().splitlines()
        errors = [line for line in err if line.startswith("drift-suite: error:")]
        assert len(errors) == 1 and message in errors[0], err

    def out_of_memory(*_args, **_kwargs):
        raise MemoryError("cannot allocate")

    monkeypatch.setattr("drift_suite.gate.runner.measure", out_of_memory)
    assert cli_main(["check", str(tiny_checkpoint), *common]) == EXIT_MEASUREMENT_FAILED
    err = capsys.readouterr().err
    assert "drift-suite: error: MemoryError: cannot allocate" in err and "Traceback" not in err


def test_cli_pass_prints_progress_and_stage_timings(tiny_checkpoint, baseline_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(baseline_dir.parent)
    report = tmp_path / "r.html"
    assert cli_main(["check", str(tiny_checkpoint), "--baseline-dir", str(baseline_dir), "--report", str(report), "--no-cache"]) == 0
    captured = capsys.readouterr()
    assert "load model: " in captured.err and "compare model: " in captured.err
    assert "measure model: 74/74 conversations in " in captured.err  # the fast design's 74 conversations
    timings = [line for line in captured.out.splitlines() if line.startswith("timings: ")]
    assert len(timings) == 1 and all(name in timings[0] for name in ("load model", "measure model", "metrics model", "report"))
