"""The gate in CI: results JSON (valid against its shipped schema, exit code = the process's), the markdown
summary and GitHub annotations, `drift-suite compare`, the history dir and its page, provenance."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

import test_plugin
from conftest import REPO
from drift_suite.outputs.ci_summary import MARKER, MAX_ANNOTATIONS, MAX_BYTES, MAX_ROWS, annotations, append_step_summary, render_markdown
from drift_suite.cli import main as cli_main
from drift_suite.common.errors import EXIT_DRIFT, EXIT_MEASUREMENT_FAILED, EXIT_PASS, EXIT_USAGE
from drift_suite.outputs.history import render_history
from drift_suite.common.provenance import git_provenance
from drift_suite.outputs.results import SCHEMA_VERSION, load_schema, read_results, schema_errors

CASES = ("pass", "drift", "load-error", "bad-input")
EXPECTED = {"pass": (EXIT_PASS, "pass"), "drift": (EXIT_DRIFT, "fail"), "load-error": (EXIT_MEASUREMENT_FAILED, "error"),
            "bad-input": (EXIT_USAGE, "error")}


def assert_valid(results: dict) -> None:
    """Valid against the shipped schema by jsonschema itself, and by the library's own reader."""
    jsonschema.Draft202012Validator(load_schema()).validate(results)
    assert schema_errors(results, load_schema()) == []


@contextlib.contextmanager
def chdir(path: Path):
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@pytest.fixture(scope="module")
def project(tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """A project dir with the fast design, the shipped suites, a baseline of the tiny model, and checkpoints
    for each case: the model itself, a damaged copy (drift), one with truncated weights (load error)."""
    from drift_suite.gate.config import config_from_options
    from drift_suite.gate.runner import DriftCheck

    root = tmp_path_factory.mktemp("ci-project")
    (root / "pyproject.toml").write_text(test_plugin.FAST_CONFIG)
    shutil.copytree(REPO / "suites", root / "suites")
    if shutil.which("git"):  # a project under git, so baselines and results record its commit
        git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
        subprocess.run([*git, "init", "-q"], check=True)
        subprocess.run([*git, "add", "pyproject.toml", "suites"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "project"], check=True)
    with chdir(root):
        DriftCheck(tiny_checkpoint, root / "baselines", config=config_from_options(root), cache_dir=None, update_baseline=True,
                   progress=False).run()
    damaged = test_plugin.damaged_copy(tiny_checkpoint, root / "damaged", range(1, 4), scale=1.0)
    truncated = shutil.copytree(tiny_checkpoint, root / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    return {"root": root, "pass": tiny_checkpoint, "drift": damaged, "load-error": truncated,
            "bad-input": root / "missing"}


def run_pytest(project: dict[str, Path], checkpoint: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pytest", "suites", "-q", "-p", "no:cacheprovider", "--checkpoint", str(checkpoint),
               "--baseline-dir", "baselines", "--drift-report", "out/report.html", *args]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(command, cwd=project["root"], capture_output=True, text=True, timeout=600, env=full_env)


@pytest.mark.parametrize("case", CASES)
def test_pytest_results_json_and_summary_carry_the_real_exit_code(project, case, tmp_path):
    out = tmp_path / "out"
    step_summary = tmp_path / "step-summary.md"
    step_summary.write_text("earlier step\n")
    result = run_pytest(project, project[case], "--drift-json", str(out / "results.json"), "--drift-markdown", str(out / "summary.md"),
                        env={"GITHUB_STEP_SUMMARY": str(step_summary), "GITHUB_ACTIONS": "true"})
    output = result.stdout + result.stderr
    code, verdict = EXPECTED[case]
    assert result.returncode == code, output[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert_valid(results)
    assert results["exit_code"] == result.returncode and results["verdict"] == verdict and results["runner"] == "pytest"
    markdown = (out / "summary.md").read_text()
    assert markdown.startswith(MARKER) and f"(exit code {code})" in markdown
    assert step_summary.read_text() == "earlier step\n" + markdown + "\n"  # appended, not overwritten
    errors = [line for line in output.splitlines() if line.startswith("::error ")]
    if verdict == "error":
        assert results["error"]["kind"] == ("measurement" if code == EXIT_MEASUREMENT_FAILED else "usage")
        assert results["checks"] == [] and "|" not in markdown, "an error gets one line, never a drift table"
        assert len(markdown.strip().splitlines()) == 2
        assert len(errors) == 1 and results["error"]["message"].split(": ", 1)[-1] in errors[0]
    else:
        failed = [c for c in results["checks"] if c["status"] == "fail"]
        assert results["summary"]["failed"] == len(failed) and results["summary"]["checks"] == 29
        assert (len(failed) > 0) == (case == "drift")
        assert [c["status"] for c in results["checks"]] == sorted((c["status"] for c in results["checks"]), key=lambda status: "fwp".index(status[0]))
        assert len(errors) == min(len(failed), MAX_ANNOTATIONS)
        assert "report: `report.html`" in markdown
        if failed:  # failing checks first, as a table
            assert markdown.index(f"{failed[0]['family']} {failed[0]['subject']}") < markdown.index("within tolerance")
        assert results["baseline"]["id"] and results["checkpoint"]["targets"][0]["weights_sha256"]
        assert results["placement"]["dtype"] == "float32" and results["thresholds"]["k_sigma"] == 3.0


@pytest.fixture(scope="module")
def cli_results(project, tmp_path_factory) -> dict[str, tuple[int, Path]]:
    """``drift-suite check`` for each case, in process: ``{case: (returned exit code, results JSON)}``."""
    out = tmp_path_factory.mktemp("cli-out")
    found = {}
    with chdir(project["root"]):
        for case in CASES:
            code = cli_main(["check", str(project[case]), "--baseline-dir", "baselines", "--report", "none", "--json",
                             str(out / f"{case}.json"), "--markdown", str(out / f"{case}.md"), "--history", str(out / "history")])
            found[case] = (code, out / f"{case}.json")
    return found


@pytest.mark.parametrize("case", CASES)
def test_cli_results_json_and_summary_carry_the_exit_code(cli_results, case):
    code, path = cli_results[case]
    assert code == EXPECTED[case][0]
    results = json.loads(path.read_text())
    assert_valid(results)
    assert (results["exit_code"], results["verdict"], results["runner"]) == (code, EXPECTED[case][1], "drift-suite check")
    assert f"(exit code {code})" in path.with_suffix(".md").read_text()


def test_cli_exit_code_is_the_process_exit_code(project, tmp_path):
    result = subprocess.run([sys.executable, "-m", "drift_suite.cli", "check", str(project["drift"]), "--baseline-dir", "baselines",
                             "--report", "none", "--json", str(tmp_path / "r.json")], cwd=project["root"], capture_output=True,
                            text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == EXIT_DRIFT == json.loads((tmp_path / "r.json").read_text())["exit_code"], result.stderr[-2000:]


@pytest.mark.parametrize("option", ["--drift-json", "--drift-markdown", "--drift-history"])
def test_unwritable_output_is_one_line_exit_4_before_measuring(project, option, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a dir")
    result = run_pytest(project, project["pass"], option, str(blocker / "sub" / "out.json"))
    output = (result.stdout + result.stderr).splitlines()
    assert result.returncode == EXIT_USAGE, "\n".join(output)
    lines = [line for line in output if "cannot write" in line]
    assert len(lines) == 1 and str(blocker) in lines[0], "\n".join(output)
    assert not any("drift_suite: measure" in line for line in output), "measured before refusing the output path"
    assert "Traceback" not in "\n".join(output)


def test_cli_unwritable_output_is_exit_4(project, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with chdir(project["root"]):
        assert cli_main(["check", str(project["pass"]), "--baseline-dir", "baselines", "--json", str(blocker / "r.json")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("drift-suite: error: cannot write results JSON") == 1 and "measure" not in err


def test_unwritable_step_summary_is_a_warning_not_a_verdict(project, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path))  # a dir: cannot be appended to
    with chdir(project["root"]):
        code = cli_main(["check", str(project["pass"]), "--baseline-dir", "baselines", "--report", "none", "--json", str(tmp_path / "r.json")])
    assert code == EXIT_PASS and json.loads((tmp_path / "r.json").read_text())["verdict"] == "pass"
    assert "drift-suite: warning: cannot append the summary to $GITHUB_STEP_SUMMARY" in capsys.readouterr().err


def _fake_results(n_failed: int, subject: str = "layer 3") -> dict:
    check = {"family": "projection", "subject": subject, "layer": 3, "role": None, "step": None, "checkpoint": "ck",
             "value": 1.0, "baseline": 0.0, "threshold": 0.5, "noise": 0.1, "delta": 1.0, "deviation": 1.0, "sigmas": 10.0,
             "signed_sigmas": 10.0, "severity": 2.0, "unit": "", "direction": "toward the assistant", "side": "toward_assistant",
             "failing_side": "both", "status": "fail", "passed": False, "warning": False, "message": "projection drifted"}
    checks = [dict(check, subject=f"{subject} #{i}", severity=2.0 + i) for i in range(n_failed)]
    return {"schema_version": 1, "verdict": "fail", "exit_code": 1, "error": None, "checkpoint": {"spec": "ck", "targets": []},
            "summary": {"checks": n_failed, "passed": 0, "warnings": 0, "failed": n_failed}, "checks": checks}


def test_summary_is_capped_and_annotations_are_at_most_ten():
    results = _fake_results(5000)
    markdown = render_markdown(results, "report.html")
    assert len(markdown.encode()) <= MAX_BYTES
    assert markdown.count("| ❌ fail |") == MAX_ROWS and "… and 4940 more failing" in markdown
    lines = annotations(results)
    assert len(lines) == MAX_ANNOTATIONS and "#4999" in lines[0], "the worst (highest severity) first"


def test_summary_escapes_names_and_annotations_escape_newlines():
    results = _fake_results(1, subject="ev|il <b>x</b>")
    results["checks"][0]["message"] = "line one\nline two, 100%"
    results["checkpoint"]["spec"] = "runs/grpo_1/final"
    markdown = render_markdown(results)
    row = next(line for line in markdown.splitlines() if "fail |" in line)
    assert row.count("|") - row.count("\\|") == 9 and "<b>" not in row
    assert "`runs/grpo_1/final`" in markdown, "no backslash escapes inside a code span: they would show"
    assert annotations(results)[0].endswith("::line one%0Aline two, 100%25")


def test_append_step_summary(tmp_path, monkeypatch):
    warnings: list[str] = []
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    assert append_step_summary("x", warnings.append) is None
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "s.md"))
    append_step_summary("one", warnings.append)
    append_step_summary("two", warnings.append)
    assert (tmp_path / "s.md").read_text() == "one\ntwo\n" and not warnings
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "no" / "such" / "dir" / "s.md"))
    append_step_summary("three", warnings.append)
    assert len(warnings) == 1 and "verdict is unchanged" in warnings[0]


@pytest.mark.parametrize("breakage", ["drop-verdict", "bad-verdict", "string-exit-code", "extra-key", "bad-status", "check-missing-step",
                                      "baseline-not-object"])
def test_schema_rejects_broken_results_with_both_validators(cli_results, breakage):
    results = json.loads(cli_results["drift"][1].read_text())
    broken = copy.deepcopy(results)
    if breakage == "drop-verdict":
        del broken["verdict"]
    elif breakage == "bad-verdict":
        broken["verdict"] = "maybe"
    elif breakage == "string-exit-code":
        broken["exit_code"] = "1"
    elif breakage == "extra-key":
        broken["surprise"] = 1
    elif breakage == "bad-status":
        broken["checks"][0]["status"] = "failed"
    elif breakage == "check-missing-step":
        del broken["checks"][0]["step"]
    elif breakage == "baseline-not-object":
        broken["baseline"] = "baselines"
    assert schema_errors(broken, load_schema()), breakage
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(load_schema()).validate(broken)


def test_compare_pass_then_drift_exits_1_and_names_new_failures(cli_results, capsys):
    passing, failing = str(cli_results["pass"][1]), str(cli_results["drift"][1])
    failed = [f"{c['family']} {c['subject']}" for c in json.loads(Path(failing).read_text())["checks"] if c["status"] == "fail"]
    assert cli_main(["compare", passing, failing]) == EXIT_DRIFT
    out = capsys.readouterr().out
    assert f"newly failing ({len(failed)})" in out and all(name in out for name in failed)
    assert cli_main(["compare", failing, passing]) == EXIT_PASS
    assert f"recovered ({len(failed)})" in capsys.readouterr().out
    assert cli_main(["compare", failing, failing]) == EXIT_PASS
    assert "no new failures" in capsys.readouterr().out
    assert cli_main(["compare", passing, failing, "--format", "json"]) == EXIT_DRIFT
    payload = json.loads(capsys.readouterr().out)
    assert payload["regressed"] and {f"{c['family']} {c['subject']}" for c in payload["newly_failing"]} == set(failed)
    assert cli_main(["compare", passing, failing, "--format", "md"]) == EXIT_DRIFT
    assert "**newly failing" in capsys.readouterr().out


@pytest.mark.parametrize("content,message", [
    ("not json", "not a drift_suite results JSON"),
    ('{"a": 1}', "no schema_version and verdict"),
    ("version2", "schema_version 2; this drift_suite"),
    ("invalid", "not a valid drift_suite results JSON"),
    ("error", "has no verdict"),
])
def test_compare_refuses_what_it_cannot_read_in_one_line(cli_results, tmp_path, capsys, content, message):
    path = tmp_path / "other.json"
    results = json.loads(cli_results["pass"][1].read_text())
    if content == "version2":
        content = json.dumps(results | {"schema_version": 2})
    elif content == "invalid":
        content = json.dumps(results | {"verdict": "unsure"})
    elif content == "error":
        content = cli_results["load-error"][1].read_text()
    path.write_text(content)
    assert cli_main(["compare", str(cli_results["pass"][1]), str(path)]) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("drift-suite: error:") and message in err[0], err


def test_history_dir_holds_one_file_per_run_and_renders(project, cli_results, tmp_path):
    folder = cli_results["pass"][1].parent / "history"
    files = sorted(folder.glob("*.json"))
    assert len(files) == len(CASES)
    for path in files:
        read_results(path)
    git = git_provenance(project["root"])
    if git:  # named by time and the commit of the working tree the run was in
        assert all(path.name.endswith(f"-{git['commit'][:12]}.json") or f"-{git['commit'][:12]}-" in path.name for path in files)
    (folder / "notes.json").write_text('{"not": "results"}')
    page, history = render_history(folder, tmp_path / "history.html")
    assert len(history.runs) == len(CASES) and len(history.skipped) == 1
    html = page.read_text()
    assert html.count('<span class="pill pass">pass</span>') >= 2 and '<span class="pill fail">fail</span>' in html
    assert html.count('<span class="pill error">error</span>') == 2 and "notes.json" in html
    assert html.count("<svg") == 4 and "<script" not in html
    assert "Projection shift at layer 2" in html


def test_history_command(cli_results, tmp_path, capsys):
    folder = cli_results["pass"][1].parent / "history"
    assert cli_main(["history", str(folder), "--report", str(tmp_path / "h.html")]) == EXIT_PASS
    assert "history: " in capsys.readouterr().out and (tmp_path / "h.html").is_file()
    (tmp_path / "empty").mkdir()
    assert cli_main(["history", str(tmp_path / "empty"), "--report", str(tmp_path / "e.html")]) == EXIT_USAGE
    assert "no drift_suite results in it" in capsys.readouterr().err


def test_history_page_escapes_model_text(cli_results, tmp_path):
    results = json.loads(cli_results["pass"][1].read_text())
    results["checkpoint"]["spec"] = "<script>alert(1)</script>"
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "a.json").write_text(json.dumps(results))
    html = render_history(tmp_path / "h", tmp_path / "h.html")[0].read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)" in html


def test_provenance_records_commit_and_dirty_flag(tmp_path, monkeypatch):
    if shutil.which("git") is None:
        pytest.skip("no git here")
    assert git_provenance(tmp_path) is None  # not a work tree: no provenance, no error
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "f.txt").write_text("a")
    subprocess.run([*git, "add", "f.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    (repo / "untracked-report.html").write_text("")
    assert git_provenance(repo) == {"commit": commit, "dirty": False}
    (repo / "f.txt").write_text("b")
    assert git_provenance(repo) == {"commit": commit, "dirty": True}
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    assert git_provenance(repo) is None


def test_baselines_and_results_record_provenance(project, cli_results):
    from drift_suite.gate.baseline import load_baseline

    manifest = load_baseline(project["root"] / "baselines").manifest
    git = git_provenance(project["root"])
    assert manifest["provenance"] == {"git": git}
    if shutil.which("git"):
        assert git["dirty"] is False, "what a run writes (baselines, reports) is untracked: not dirty"
    results = json.loads(cli_results["pass"][1].read_text())
    assert results["provenance"]["git"] == git
    assert results["baseline"]["provenance"] == manifest["provenance"]
    assert results["versions"]["drift_suite"] and results["versions"]["torch"]


def test_schema_version_and_file_ship_with_the_package():
    schema = load_schema()
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    assert "schemas/*.json" in (REPO / "pyproject.toml").read_text()
    ci_doc = (REPO / "docs" / "ci.md").read_text()
    assert "--drift-json" in ci_doc and "results-v1.schema.json" in ci_doc


@pytest.mark.slow
def test_history_page_reads_in_chromium(project, cli_results, tmp_path):
    from test_report import _png_stats, _screenshot_module

    module = _screenshot_module()
    if module.find_chromium() is None:
        pytest.skip("needs chromium (apt-get install -y chromium)")
    folder = shutil.copytree(cli_results["pass"][1].parent / "history", tmp_path / "history")
    with chdir(project["root"]):  # a fine-tune drifting further with every version
        for scale in (0.02, 0.1, 0.3, 0.6):
            checkpoint = test_plugin.damaged_copy(project["pass"], tmp_path / f"version-{scale}", range(1, 4), scale=scale)
            cli_main(["check", str(checkpoint), "--baseline-dir", "baselines", "--report", "none", "--history", str(folder)])
    page, history = render_history(folder, tmp_path / "history.html")
    assert len(history.runs) == len(CASES) + 4
    png = module.screenshot(page, tmp_path / "history.png", height=1800)
    width, height, colours = _png_stats(png)
    assert (width, height) == (1280, 1800) and colours > 20
    dom = module.dump_dom(page) or ""
    assert "Failing checks per run" in dom and "Model versions" in dom and dom.count("<svg") == 4
    if os.environ.get("DRIFT_SCREENSHOT_DIR"):
        shutil.copy(png, Path(os.environ["DRIFT_SCREENSHOT_DIR"]) / "history.png")


def test_a_warning_is_listed_never_failed_and_counted():
    """A change beyond the threshold on a side that does not fail (one-sided checks): status warn, in the table."""
    from drift_suite.gate.compare import Check
    from drift_suite.outputs.results import check_record, sides_record

    warned = Check("projection", "layer 3", value=1.0, expected=0.0, threshold=0.5, noise=0.1, failing_side="toward_roles")
    record = check_record(warned)
    assert (record["status"], record["passed"], record["warning"], record["side"]) == ("warn", True, True, "toward_assistant")
    assert record["signed_sigmas"] == pytest.approx(10.0) and record["layer"] == 3 and record["role"] is None
    results = _fake_results(0) | {"verdict": "pass", "exit_code": 0, "checks": [record],
                                   "summary": {"checks": 1, "passed": 1, "warnings": 1, "failed": 0}}
    markdown = render_markdown(results)
    assert "0 of 1 checks failed, 1 warning" in markdown and "| ⚠️ warn | projection layer 3 |" in markdown
    assert annotations(results) == []

    class Sides:
        projection, accessibility = "toward_roles", "both"

    class Config:
        sides = Sides()

    assert sides_record(Config()) == {"projection": "toward_roles", "accessibility": "both"}
    assert sides_record(object()) is None


@pytest.mark.slow
def test_compare_on_the_demo_model_names_the_new_failures(demo_model_dir, tmp_path, capsys):
    """Acceptance: a passing and a failing result of the demo model; compare exits 1 naming the new failures."""
    from test_real_model import SHIPPED, perturbed_copy

    damaged = perturbed_copy(demo_model_dir, tmp_path / "damaged", range(20, 30), scale=0.3)
    for name, checkpoint, code in (("main", demo_model_dir, EXIT_PASS), ("pr", damaged, EXIT_DRIFT)):
        result = subprocess.run([sys.executable, "-m", "pytest", str(REPO / "suites"), "-q", "-p", "no:cacheprovider",
                                 "--checkpoint", str(checkpoint), "--baseline-dir", str(SHIPPED), "--drift-report", "none",
                                 "--drift-json", str(tmp_path / f"{name}.json")], cwd=REPO, capture_output=True, text=True,
                                timeout=1800, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert result.returncode == code == json.loads((tmp_path / f"{name}.json").read_text())["exit_code"], result.stdout[-2000:]
    failed = [f"{c['family']} {c['subject']}" for c in read_results(tmp_path / "pr.json")["checks"] if c["status"] == "fail"]
    assert failed
    assert cli_main(["compare", str(tmp_path / "main.json"), str(tmp_path / "pr.json")]) == EXIT_DRIFT
    out = capsys.readouterr().out
    assert f"newly failing ({len(failed)})" in out and all(name in out for name in failed)


def test_a_broken_output_step_never_changes_the_verdict(project, tmp_path, capsys, monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("bug while building the results")

    monkeypatch.setattr("drift_suite.outputs.results.build_results", broken)
    with chdir(project["root"]):
        code = cli_main(["check", str(project["drift"]), "--baseline-dir", "baselines", "--report", "none", "--json", str(tmp_path / "r.json")])
    assert code == EXIT_DRIFT and not (tmp_path / "r.json").exists()
    assert "drift-suite: warning: cannot write the CI outputs (RuntimeError: bug while building the results)" in capsys.readouterr().err
