"""The pytest plugin end to end on tiny checkpoints: write a baseline, pass against it, fail on planted
damage with a message naming metric and layer, and explain bad input in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import REPO

pytest_plugins = ["pytester"]

FAST_CONFIG = """
[tool.drift_suite]
layers = "1,2"
[tool.drift_suite.design]
default_questions = 4
role_prompts = 1
role_questions = 2
[tool.drift_suite.generation]
max_new_tokens = 8
"""


@pytest.fixture()
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makefile(".toml", pyproject=FAST_CONFIG)
    shutil.copytree(REPO / "suites", pytester.path / "suites")
    return pytester


def run(suite: pytest.Pytester, *args: str) -> pytest.RunResult:
    return suite.runpytest_subprocess("suites", "-p", "no:cacheprovider", "--drift-report", "report.html", *args)


def damaged_copy(source: Path, target: Path, layers: range, scale: float) -> Path:
    shutil.copytree(source, target)
    weights = load_file(target / "model.safetensors")
    generator = torch.Generator().manual_seed(0)
    for name, tensor in weights.items():
        if any(f"layers.{i}." in name for i in layers) and tensor.ndim == 2:
            weights[name] = tensor + scale * tensor.std() * torch.randn(tensor.shape, generator=generator)
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return target


def test_update_then_pass_then_fail_on_damage(suite, tiny_checkpoint, tmp_path):
    baseline_dir = tmp_path / "baseline"
    first = run(suite, "--checkpoint", str(tiny_checkpoint), "--update-baselines", "--baseline-dir", str(baseline_dir))
    first.assert_outcomes(passed=2 * 2 + 25)
    first.stdout.fnmatch_lines(["*baseline: new baseline*", "*verdict: PASS*", "*measured on: *; baseline: *", "*report: file://*report.html"])
    # Progress shows through the terminal reporter although pytest captures the test's output.
    first.stdout.fnmatch_lines(["drift_suite: measure model: 74/74 conversations in * s (*/s)"])
    manifest = json.loads((baseline_dir / "manifest.json").read_text())
    assert manifest["layers"]["asserted"] == [1, 2]
    tensors_before = (baseline_dir / manifest["files"]["tensors"]).read_bytes()

    again = run(suite, "--checkpoint", str(tiny_checkpoint), "--baseline-dir", str(baseline_dir))
    assert again.ret == 0
    html = (suite.path / "report.html").read_text()
    assert "PASS" in html

    regenerated = run(suite, "--checkpoint", str(tiny_checkpoint), "--update-baselines", "--baseline-dir", str(baseline_dir), "--no-drift-cache")
    assert regenerated.ret == 0
    manifest = json.loads((baseline_dir / "manifest.json").read_text())
    assert (baseline_dir / manifest["files"]["tensors"]).read_bytes() == tensors_before, "regenerated baseline differs"

    broken = damaged_copy(tiny_checkpoint, tmp_path / "damaged", range(1, 4), scale=1.0)
    failed = run(suite, "--checkpoint", str(broken), "--baseline-dir", str(baseline_dir))
    assert failed.ret == 1
    failed.stdout.fnmatch_lines(["*verdict: FAIL*", "*FAILED suites/test_*layer*"])
    failed.stdout.fnmatch_lines(["*drifted:*vs baseline*threshold*", "*rerun with --update-baselines*"])


def test_negligible_noise_passes(suite, tiny_checkpoint, tmp_path):
    baseline_dir = tmp_path / "baseline"
    assert run(suite, "--checkpoint", str(tiny_checkpoint), "--update-baselines", "--baseline-dir", str(baseline_dir)).ret == 0
    nudged = damaged_copy(tiny_checkpoint, tmp_path / "nudged", range(0, 4), scale=1e-5)
    assert run(suite, "--checkpoint", str(nudged), "--baseline-dir", str(baseline_dir)).ret == 0


@pytest.mark.parametrize(
    "args,message",
    [
        ([], "no model to check: pass --checkpoint"),
        (["--checkpoint", "{tmp}/missing"], "no such checkpoint directory"),
        (["--checkpoint", "{tmp}/empty"], "checkpoint directory is empty"),
        (["--checkpoint", "{ckpt}", "--baseline-dir", "{tmp}/nobaseline"], "create it with: pytest suites/ --checkpoint"),
        (["--checkpoint", "{ckpt}", "--persona-set", "{tmp}"], "not a persona set"),
    ],
    ids=["no-checkpoint", "missing-dir", "empty-dir", "missing-baseline", "bad-persona-set"],
)
def test_bad_input_is_one_line_usage_error(suite, tiny_checkpoint, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    formatted = [a.format(tmp=tmp_path, ckpt=tiny_checkpoint) for a in args]
    result = run(suite, *formatted)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.startswith("ERROR: drift_suite:")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_other_model_baseline_fails_clearly(suite, tiny_checkpoint, tmp_path):
    from tiny import save_tiny_checkpoint

    baseline_dir = tmp_path / "baseline"
    assert run(suite, "--checkpoint", str(tiny_checkpoint), "--update-baselines", "--baseline-dir", str(baseline_dir)).ret == 0
    wider = save_tiny_checkpoint(tmp_path / "wider", hidden=48)
    result = run(suite, "--checkpoint", str(wider), "--baseline-dir", str(baseline_dir))
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # an error, never 1 (drift)
    result.stdout.fnmatch_lines(["*drift_suite: baseline was made for*32 hidden*48 hidden*"])
    assert result.stdout.str().count("baseline was made for") == 1
    assert "Traceback" not in result.stdout.str()


def test_help_lists_the_option_group(suite):
    result = suite.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*drift_suite: Assistant-Axis persona drift gate*", "*--checkpoint*", "*--base-model*",
                                 "*--baseline-dir*", "*--update-baselines*", "*--persona-set*", "*--drift-report*"])
