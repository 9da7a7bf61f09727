"""The example CI workflows stay true: their gate commands run on a tiny model (with a fake
$GITHUB_STEP_SUMMARY) and leave the summary, results JSON, report and JUnit XML where the workflow uploads them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import test_plugin
from conftest import REPO
from drift_suite.outputs.ci_summary import MARKER
from test_ci import assert_valid

EXAMPLES = REPO / "examples" / "ci"


def _load(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())


@pytest.fixture(scope="module")
def ci_project(tiny_checkpoint, tmp_path_factory) -> Path:
    """A checkout as a workflow sees it: the drift config, the suites, a baseline in baselines/, a checkpoint."""
    from drift_suite.gate.config import config_from_options
    from drift_suite.gate.runner import DriftCheck

    root = tmp_path_factory.mktemp("checkout")
    (root / "pyproject.toml").write_text(test_plugin.FAST_CONFIG)
    shutil.copytree(REPO / "suites", root / "suites")
    shutil.copytree(tiny_checkpoint, root / "checkpoints" / "final")
    DriftCheck(root / "checkpoints" / "final", root / "baselines", config=config_from_options(root), cache_dir=None,
               update_baseline=True, progress=False).run()
    return root


def _run(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The command as the CI shell runs it, with this interpreter as `python` and this checkout's drift_suite."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    full_env = {**os.environ, **env, "PATH": path, "PYTHONPATH": str(REPO)}
    return subprocess.run(["bash", "-e", "-c", command], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600)


def _step(job: dict, key: str, value: str) -> dict:
    return next(step for step in job["steps"] if step.get(key) == value)


def test_github_actions_example_gate_leaves_what_it_uploads(ci_project, tmp_path):
    workflow = _load("github-actions.yml")
    assert {"push", "pull_request"} <= set(workflow.get("on") or workflow.get(True))
    job = workflow["jobs"]["drift-gate"]
    install = _step(job, "name", "Install")["run"]
    assert re.search(r'"torch==[\d.]+" --index-url "\$TORCH_INDEX"', install)
    cache = _step(job, "uses", "actions/cache@v4")["with"]
    assert ".drift_cache" in cache["path"] and ".hf-cache" in cache["path"] and workflow["env"]["HF_HOME"].endswith("/.hf-cache")
    assert "env.CHECKPOINT" in cache["key"] and "pyproject.toml" in cache["key"]
    upload = _step(job, "uses", "actions/upload-artifact@v4")
    assert upload["if"] == "always()", "artifacts must upload when the gate fails"
    uploaded = upload["with"]["path"].split()

    step_summary = tmp_path / "step_summary.md"
    env = {k: str(v).replace("${{ github.workspace }}", str(ci_project)) for k, v in workflow["env"].items()}
    env |= {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(step_summary)}
    result = _run(_step(job, "id", "gate")["run"], ci_project, env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    for name in uploaded:
        assert (ci_project / name).is_file(), f"{name}: uploaded by the workflow, not written by the gate"
    results = json.loads((ci_project / "reports" / "drift-results.json").read_text())
    assert_valid(results)
    assert results["exit_code"] == 0 and results["checkpoint"]["spec"] == "checkpoints/final"
    assert step_summary.read_text().startswith(MARKER) and "drift_suite: PASS" in step_summary.read_text()
    assert (ci_project / "reports" / "drift-summary.md").read_text() in step_summary.read_text()
    comment = _step(job, "name", "Comment on the PR")["with"]["path"]
    assert comment in uploaded


def test_gitlab_example_gate_leaves_what_it_keeps(ci_project):
    config = _load("gitlab-ci.yml")
    job = config["drift-gate"]
    assert any(re.search(r'"torch==[\d.]+" --index-url "\$TORCH_INDEX"', line) for line in job["before_script"])
    assert {".drift_cache/", ".hf-cache/"} <= set(job["cache"]["paths"])
    assert "pyproject.toml" in job["cache"]["key"]["files"] and "CHECKPOINT" in job["cache"]["key"]["prefix"]
    artifacts = job["artifacts"]
    assert artifacts["when"] == "always" and artifacts["reports"]["junit"] in artifacts["paths"]
    for name in artifacts["paths"]:
        (ci_project / name).unlink(missing_ok=True)
    env = {k: str(v).replace("$CI_PROJECT_DIR", str(ci_project)) for k, v in job["variables"].items()}
    for command in job["script"]:
        result = _run(command, ci_project, env)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    for name in artifacts["paths"]:
        assert (ci_project / name).is_file(), f"{name}: kept by the job, not written by the gate"
    junit = (ci_project / artifacts["reports"]["junit"]).read_text()
    assert "<testsuite" in junit and 'failures="0"' in junit
