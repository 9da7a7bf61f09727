"""What a CI page shows of a results dict: a markdown summary and GitHub Actions ``::error`` annotations.

The markdown starts with a hidden marker (:data:`MARKER`) so a workflow can update one PR comment in place,
then a verdict line; a run with a verdict adds its failing checks first as a table (then warnings, then the
rest), capped at :data:`MAX_ROWS` rows and :data:`MAX_BYTES` bytes (GitHub caps a step summary at 1 MiB).
A run without a verdict (exit 3 or 4) gets one line and one annotation, never a drift table.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from ..common.files import write_failure

MARKER = "<!-- drift-suite-summary -->"
MAX_ROWS = 60
MAX_BYTES = 64 * 1024
"""Well under GitHub's 1 MiB per step summary, so other steps' summaries still fit."""
MAX_ANNOTATIONS = 10
"""GitHub shows 10 error annotations per step; more are dropped."""
STEP_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"

_ICON = {"pass": "✅", "fail": "❌", "error": "⚠️"}
_STATUS = {"fail": "❌ fail", "warn": "⚠️ warn", "pass": "✅ pass"}


def md_escape(text: Any) -> str:
    """Text safe inside a markdown table cell: no pipes, tags, emphasis or links from persona or path names."""
    out = str(text).replace("\\", "\\\\").replace("\n", " ")
    for char in "|*_`[]<>#~":
        out = out.replace(char, "\\" + char)
    return out


def md_code(text: Any) -> str:
    """Text as an inline code span: backslash escapes do not work inside one, so only backticks are replaced."""
    return "`" + str(text).replace("`", "'").replace("\n", " ") + "`"


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"  # not finite (a zero noise floor): the JSON holds null
    return f"{value:.{digits}g}"


def verdict_line(results: dict[str, Any]) -> str:
    """``❌ **drift_suite: FAIL** (exit code 1): 3 of 29 checks failed, 1 warning · checkpoint `x```."""
    verdict, code = results["verdict"], results["exit_code"]
    head = f"{_ICON.get(verdict, '')} **drift_suite: {verdict.upper()}** (exit code {code})"
    if results.get("error"):
        return f"{head}: {md_escape(results['error']['message'])}"
    summary = results["summary"]
    counts = f"{summary['failed']} of {summary['checks']} checks failed"
    if summary["warnings"]:
        counts += f", {summary['warnings']} warning{'s' if summary['warnings'] != 1 else ''}"
    if verdict == "fail" and not summary["failed"]:
        counts += " (another test of the suite failed: see the JUnit report)"
    spec = results["checkpoint"]["spec"]
    return f"{head}: {counts} · checkpoint {md_code(spec)}" if spec else f"{head}: {counts}"


def _row(check: dict[str, Any]) -> str:
    step = "–" if check["step"] is None else str(check["step"])
    unit = md_escape(check["unit"])
    cells = [_STATUS.get(check["status"], check["status"]), f"{check['family']} {md_escape(check['subject'])}", step,
             _num(check["value"]) + unit, _num(check["baseline"]) + unit, _num(check["threshold"]) + unit,
             _num(check["sigmas"], 3), md_escape(check["direction"] or "–")]
    return "| " + " | ".join(cells) + " |"


TABLE_HEAD = ["| status | check | step | value | baseline | threshold | \\|Δ\\|/σ | direction |",
              "|---|---|---|---:|---:|---:|---:|---|"]


def render_markdown(results: dict[str, Any], report_name: str | None = None, results_name: str | None = None) -> str:
    """The summary of one run for a CI page (see the module docstring); ends with a newline."""
    lines = [MARKER, verdict_line(results)]
    if results.get("error"):
        return "\n".join(lines) + "\n"
    facts = []
    baseline = results.get("baseline") or {}
    if baseline:
        facts.append(f"baseline {md_code(baseline['dir'])}" + (f" ({md_escape(baseline['id'])})" if baseline.get("id") else ""))
    if results.get("placement"):
        facts.append(f"measured on {md_escape(results['placement']['description'])}, baseline on {md_escape(baseline.get('placement', '–'))}")
    sides = results.get("sides")
    if sides:
        facts.append("failing sides: " + ", ".join(f"{md_escape(k)} {md_escape(v)}" for k, v in sides.items()))
    if facts:
        lines += ["", " · ".join(facts)]
    checks = results["checks"]
    shown = [c for c in checks if c["status"] != "pass"]
    if shown:
        lines += ["", *TABLE_HEAD, *(_row(c) for c in shown[:MAX_ROWS])]
        if len(shown) > MAX_ROWS:
            lines.append(f"\n… and {len(shown) - MAX_ROWS} more failing or warning checks (all in the JSON results and the report)")
    passing = [c for c in checks if c["status"] == "pass"]
    room = max(MAX_ROWS - len(shown), 0)
    if passing and room:
        lines += ["", f"<details><summary>{len(passing)} checks within tolerance</summary>", "", *TABLE_HEAD,
                  *(_row(c) for c in passing[:room])]
        if len(passing) > room:
            lines.append(f"\n… and {len(passing) - room} more")
        lines += ["", "</details>"]
    files = []
    if report_name:
        files.append(f"report: {md_code(report_name)}")
    if results_name:
        files.append(f"results: {md_code(results_name)}")
    if files:
        lines += ["", " · ".join(files)]
    return _cap("\n".join(lines) + "\n")


def _cap(text: str, limit: int = MAX_BYTES) -> str:
    """``text`` cut at a line boundary to stay under ``limit`` bytes, saying so."""
    if len(text.encode()) <= limit:
        return text
    note = "\n… summary cut to stay under the CI page's limit; the JSON results hold every check\n"
    budget = limit - len(note.encode())
    kept, size = [], 0
    for line in text.splitlines(keepends=True):
        size += len(line.encode())
        if size > budget:
            break
        kept.append(line)
    return "".join(kept) + note


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotations(results: dict[str, Any]) -> list[str]:
    """GitHub Actions ``::error`` lines: one for a run without a verdict, else the worst failing checks (≤ 10)."""
    if results.get("error"):
        title = f"drift_suite: error (exit code {results['exit_code']})"
        return [f"::error title={_escape_property(title)}::{_escape_data(results['error']['message'])}"]
    failed = [c for c in results["checks"] if c["status"] == "fail"]
    failed.sort(key=lambda c: -(c["severity"] if c["severity"] is not None else float("inf")))
    out = []
    for check in failed[:MAX_ANNOTATIONS]:
        title = f"drift_suite: {check['family']} {check['subject']} drifted"
        out.append(f"::error title={_escape_property(title)}::{_escape_data(check['message'])}")
    return out


def under_github_actions() -> bool:
    return os.environ.get("GITHUB_ACTIONS") == "true"


def append_step_summary(markdown: str, warn: Callable[[str], None]) -> Path | None:
    """Append ``markdown`` to ``$GITHUB_STEP_SUMMARY`` when set; a failure is a warning, never an error."""
    target = os.environ.get(STEP_SUMMARY_ENV)
    if not target:
        return None
    try:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(markdown + "\n")
    except OSError as exc:
        warn(f"cannot append the summary to ${STEP_SUMMARY_ENV} ({target}: {write_failure(exc)}); the verdict is unchanged")
        return None
    return Path(target)


def write_markdown(markdown: str, path: str | Path) -> Path:
    """Write the summary to ``path`` (its dir was checked before measuring)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(markdown, encoding="utf-8")
    return target
