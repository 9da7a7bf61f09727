"""One-sided checks where a person or CI looks: the exit code, the terminal summary of pytest and of
``drift-suite check``, pytest's warnings summary, the JUnit XML and the HTML report; and bad side names
refused in one line, exit 4, before any model loads."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import REPO
from test_exit_codes import baseline_dir  # noqa: F401  (the tiny checkpoint's baseline, fast design)
from test_plugin import run, suite  # noqa: F401  (the shipped suites with a fast design)

pytest_plugins = ["pytester"]

SHIFT_TOWARD_ASSISTANT = """
import drift_suite.gate.runner

_measure = drift_suite.gate.runner.measure


def _shifted(*args, **kwargs):
    # every conversation moves 1.5 axis lengths toward the assistant at layer 1: only its projection changes
    measurement = _measure(*args, **kwargs)
    axis = measurement.axis[1]
    measurement.means = measurement.means.copy()
    measurement.means[:, 1] += (1.5 * axis).astype(measurement.means.dtype)
    return measurement
"""
PYTEST_SHIFT = SHIFT_TOWARD_ASSISTANT + """

def pytest_configure(config):
    drift_suite.gate.runner.measure = _shifted
"""
NO_MODEL_LOADS = """
import drift_suite.gate.runner


def _no_load(*args, **kwargs):
    raise RuntimeError("A MODEL WAS LOADED")
"""
WARNED = "projection layer 1 beyond tolerance, toward the assistant (warning: only toward_roles fails)"


def test_a_shift_on_a_side_that_only_warns_passes_with_its_warning_everywhere(suite, tiny_checkpoint, baseline_dir):  # noqa: F811
    suite.makeconftest(PYTEST_SHIFT)
    common = ["--checkpoint", str(tiny_checkpoint), "--baseline-dir", str(baseline_dir)]

    two_sided = run(suite, *common)
    assert two_sided.ret == 1
    two_sided.stdout.fnmatch_lines(["*verdict: FAIL (28/29 checks within tolerance)*", "*sides: projection fails both ways*",
                                    "*projection layer 1 drifted toward the assistant:*"])
    assert "DriftWarning" not in two_sided.stdout.str()

    one_sided = run(suite, *common, "--drift-sides", "projection=toward_roles", "--junitxml", "junit.xml")
    output = one_sided.stdout.str()
    assert one_sided.ret == 0, output
    one_sided.assert_outcomes(passed=29, warnings=1)
    one_sided.stdout.fnmatch_lines([
        "*DriftWarning: " + WARNED + "*",  # pytest's warnings summary
        "*verdict: PASS with 1 warning (28/29 checks within tolerance, 1 beyond it on a side that only warns)*",
        "*sides: projection fails toward_roles (toward_assistant only warns), accessibility fails both ways; rotation always fails*",
        "*WARN " + WARNED + "*",
    ])
    assert output.index("verdict: PASS with 1 warning") < output.index("WARN " + WARNED)
    root = ET.parse(suite.path / "junit.xml").getroot()
    suite_properties = {p.get("name"): p.get("value") for p in root.find("testsuite").find("properties")}
    assert suite_properties == {"drift_suite_verdict": "PASS with 1 warning (28/29 checks within tolerance, 1 beyond it on a "
                                                       "side that only warns)",
                                "drift_suite_sides": "projection=toward_roles,accessibility=both"}
    cases = root.iter("testcase")
    properties = {case.get("name"): [(p.get("name"), p.get("value")) for p in case.iter("property")] for case in cases}
    warned = {name: props for name, props in properties.items() if props}
    assert list(warned) == ["test_default_persona_projection[layer1]"], properties
    ((name, value),) = warned["test_default_persona_projection[layer1]"]
    assert name == "drift_warning" and value.startswith(WARNED)

    html = (suite.path / "report.html").read_text()
    assert "<title>PASS with 1 warning" in html and 'class="banner PASS warned"' in html
    assert 'id="warnings"' in html and "toward_assistant only warns" in html
    assert html.count('<span class="pill warn">WARN</span>') == 1


def test_cli_lists_warnings_and_passes(tiny_checkpoint, baseline_dir, tmp_path):  # noqa: F811
    script = SHIFT_TOWARD_ASSISTANT + "\ndrift_suite.gate.runner.measure = _shifted\nimport sys\nfrom drift_suite.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    args = ["check", str(tiny_checkpoint), "--baseline-dir", str(baseline_dir), "--report", str(tmp_path / "r.html"), "--no-cache"]
    result = _cli(script, [*args, "--sides", "projection=toward_roles"], cwd=baseline_dir.parent)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"WARN {WARNED}" in "\n".join(lines)
    assert "verdict: PASS with 1 warning (28/29 checks within tolerance, 1 beyond it on a side that only warns)" in lines
    assert any(line.startswith("sides: projection fails toward_roles") for line in lines)
    assert "PASS with 1 warning" in (tmp_path / "r.html").read_text()


def _cli(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


BAD_SIDES = [
    (["--drift-sides", "rotation=more"], "", "rotation has no side"),
    ([], '[tool.drift_suite]\nsides = { accessibility = "fewer" }\n', "accessibility = 'fewer' is not a side"),
]
"""A bad option and a bad pyproject table (the names themselves are tested in-process, tests/test_config.py)."""


@pytest.mark.parametrize("args,pyproject,message", BAD_SIDES, ids=["option", "pyproject"])
def test_bad_sides_stop_pytest_before_any_model_loads(suite, tiny_checkpoint, baseline_dir, args, pyproject, message):  # noqa: F811
    suite.makeconftest(NO_MODEL_LOADS + "\n\ndef pytest_configure(config):\n    drift_suite.gate.runner.load_model = _no_load\n")
    if pyproject:
        (suite.path / "pyproject.toml").write_text(pyproject)
    result = run(suite, "--checkpoint", str(tiny_checkpoint), "--baseline-dir", str(baseline_dir), *args)
    output = result.stdout.lines + result.stderr.lines
    assert result.ret == pytest.ExitCode.USAGE_ERROR, "\n".join(output)
    errors = [line for line in output if message in line]
    assert len(errors) == 1 and errors[0].startswith("ERROR: drift_suite:"), "\n".join(output)
    assert not any("A MODEL WAS LOADED" in line or "Traceback" in line for line in output)


@pytest.mark.parametrize("args,pyproject,message", BAD_SIDES, ids=["option", "pyproject"])
def test_bad_sides_stop_the_cli_before_any_model_loads(tiny_checkpoint, baseline_dir, tmp_path, args, pyproject, message):  # noqa: F811
    script = NO_MODEL_LOADS + "\ndrift_suite.gate.runner.load_model = _no_load\nimport sys\nfrom drift_suite.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    (tmp_path / "pyproject.toml").write_text(pyproject or (baseline_dir.parent / "pyproject.toml").read_text())
    cli_args = [a.replace("--drift-sides", "--sides") for a in args]
    result = _cli(script, ["check", str(tiny_checkpoint), "--baseline-dir", str(baseline_dir), "--report", "none", *cli_args],
                  cwd=tmp_path)
    assert result.returncode == 4, result.stderr
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("drift-suite: error: ") and message in err[0], err
    assert "A MODEL WAS LOADED" not in result.stdout + result.stderr
