"""Results across runs: a history dir of results JSON files, and an HTML page of the trend (in the report's style).

``--drift-history DIR`` adds each run's result as ``DIR/<UTC time>[-<git commit>[-dirty]].json``;
``drift-suite history DIR --report PATH`` reads them back (files that are not results are listed and left
out) and renders, per run and per model version (the checkpoint's weights digest): failing checks, the
projection shift at the target layer in σ, the worst rotation and the worst accessibility.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markupsafe import Markup

from . import plots as sp
from ..common.errors import EXIT_USAGE
from .results import ResultsError, read_results, write_results
from .report import template_env
from .plots import Series


class HistoryError(ResultsError):
    """A history dir that holds no results to show (exit 4)."""

    exit_code = EXIT_USAGE


def history_file_name(results: dict[str, Any]) -> str:
    """``20261201T193000.123Z-<commit 12>[-dirty].json``: sorts by time; names the code it ran in when known."""
    digits = re.sub(r"[^0-9]", "", str(results.get("created", "")).split("+")[0])
    stamp = f"{digits[:8]}T{digits[8:14]}" + (f".{digits[14:17]}" if len(digits) >= 17 else "") + "Z" if len(digits) >= 14 else "run"
    git = (results.get("provenance") or {}).get("git")
    if git and git.get("commit"):
        stamp += f"-{git['commit'][:12]}" + ("-dirty" if git.get("dirty") else "")
    return f"{stamp}.json"


def add_to_history(results: dict[str, Any], directory: str | Path) -> Path:
    """Write ``results`` into the history dir as a new file (never over another run's)."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    name = history_file_name(results)
    target, n = folder / name, 1
    while target.exists():
        n += 1
        target = folder / f"{name[:-5]}-{n}.json"
    return write_results(results, target)


@dataclass
class History:
    runs: list[dict[str, Any]]
    """Readable results, oldest first, each with its ``"_file"`` name."""
    skipped: list[str] = field(default_factory=list)
    """One line per file of the dir that is not a results JSON this library reads."""


def read_history(directory: str | Path) -> History:
    """Every results file of ``directory``; a missing dir or one without any results is a :class:`HistoryError`."""
    folder = Path(directory)
    if not folder.is_dir():
        raise HistoryError(f"{folder}: no such history dir (write one with --drift-history {folder})")
    runs, skipped = [], []
    for path in sorted(folder.glob("*.json")):
        try:
            runs.append(read_results(path) | {"_file": path.name})
        except ResultsError as exc:
            skipped.append(str(exc))
    if not runs:
        raise HistoryError(f"{folder}: no drift_suite results in it" + (f" ({len(skipped)} unreadable files)" if skipped else ""))
    runs.sort(key=lambda r: (str(r.get("created", "")), r["_file"]))
    return History(runs, skipped)


def _worst(checks: list[dict[str, Any]], family: str) -> dict[str, Any] | None:
    chosen = [c for c in checks if c["family"] == family]
    return max(chosen, key=lambda c: c["severity"] if c["severity"] is not None else float("inf")) if chosen else None


def model_version(results: dict[str, Any]) -> str:
    """The weights digest (12 hex) of the last checkpoint measured, or the checkpoint as given."""
    targets = results["checkpoint"]["targets"]
    if targets and targets[-1].get("weights_sha256"):
        return str(targets[-1]["weights_sha256"])[:12]
    return str(results["checkpoint"]["spec"] or "–")


def run_row(index: int, results: dict[str, Any]) -> dict[str, Any]:
    """One run's line of the trend: what the page's table and plots show."""
    checks = results["checks"]
    target = results.get("target_layer")
    projection = next((c for c in checks if c["family"] == "projection" and c["layer"] == target), None)
    rotation, access = _worst(checks, "rotation"), _worst(checks, "accessibility")
    git = (results.get("provenance") or {}).get("git") or {}
    k = None
    if projection and projection["threshold"] is not None and projection["noise"]:
        k = projection["threshold"] / projection["noise"]
    return {
        "n": index,
        "file": results["_file"],
        "created": str(results.get("created", "")).replace("T", " ").split(".")[0].split("+")[0],
        "commit": (git.get("commit") or "")[:10] + ("+dirty" if git.get("dirty") else ""),
        "checkpoint": results["checkpoint"]["spec"] or "–",
        "checkpoint_short": _short(results["checkpoint"]["spec"]),
        "version": model_version(results) if results["checkpoint"]["targets"] else "–",
        "verdict": results["verdict"],
        "exit_code": results["exit_code"],
        "error": (results.get("error") or {}).get("message"),
        "failed": None if results.get("error") else results["summary"]["failed"],
        "warnings": None if results.get("error") else results["summary"]["warnings"],
        "total": results["summary"]["checks"],
        "target_layer": target,
        "projection_sigmas": projection["signed_sigmas"] if projection else None,
        "projection_k": k,
        "projection_failed": bool(projection and projection["status"] == "fail"),
        "rotation_deg": rotation["value"] if rotation else None,
        "rotation_threshold": rotation["threshold"] if rotation else None,
        "rotation_subject": rotation["subject"] if rotation else "",
        "rotation_failed": bool(rotation and rotation["status"] == "fail"),
        "access_value": access["value"] if access else None,
        "access_threshold": access["threshold"] if access else None,
        "access_role": access["subject"] if access else "",
        "access_failed": bool(access and access["status"] == "fail"),
        "failing": [f"{c['family']} {c['subject']}" for c in checks if c["status"] == "fail"],
    }


def _short(spec: str | None) -> str:
    """The last two parts of a checkpoint path (``run/checkpoint-40``), or the hub id as given."""
    if not spec:
        return "–"
    parts = spec.rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) > 2 else spec


def _versions(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model version: its checkpoint, how many runs measured it, and its latest verdict."""
    by_version: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["version"] == "–":
            continue
        entry = by_version.setdefault(row["version"], {"version": row["version"], "checkpoint": row["checkpoint"], "runs": []})
        entry["runs"].append(row["n"])
        entry["latest"] = row
    return list(by_version.values())


def _svg(build: Any) -> Markup | None:
    svg = build()
    return Markup(svg) if svg else None  # svgplot escapes every text it emits


def _plots(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    x = [row["n"] for row in rows]
    ticks = x if len(x) <= 20 else None
    tips = [f"run {r['n']}: {r['checkpoint']} ({r['version']}), {r['verdict']}" for r in rows]
    bad = [r["verdict"] != "pass" for r in rows]
    plots = []
    plots.append({"id": "h-failing", "title": "Failing checks per run", "svg": _svg(lambda: sp.line_chart(
        x, [Series("failing checks", [r["failed"] for r in rows], color=sp.PALETTE[1], flags=bad, tips=tips)],
        xlabel="run", ylabel="failing checks", xticks=ticks, width=560, height=300)),
        "caption": "Checks beyond their threshold on a failing side; a ring marks a run that did not pass. Runs that "
                   "stopped with an error have no point."})
    target = next((r["target_layer"] for r in reversed(rows) if r["target_layer"] is not None), None)
    k = next((r["projection_k"] for r in reversed(rows) if r["projection_k"]), None)
    band = ([-k] * len(x), [k] * len(x)) if k else None
    plots.append({"id": "h-projection", "title": f"Projection shift at layer {target} (σ)", "svg": _svg(lambda: sp.line_chart(
        x, [Series("shift in σ", [r["projection_sigmas"] for r in rows], color=sp.PALETTE[0],
                   flags=[r["projection_failed"] for r in rows], tips=tips)],
        band=band, band_label="± threshold", hlines=[(0.0, "")], xlabel="run", ylabel="σ (negative: toward the roles)",
        xticks=ticks, width=560, height=300)),
        "caption": "The default persona's move along the Assistant Axis at the target layer, in noise-floor units: "
                   "below zero toward the role-play personas."})
    plots.append({"id": "h-rotation", "title": "Worst axis rotation (°)", "svg": _svg(lambda: sp.line_chart(
        x, [Series("worst rotation", [r["rotation_deg"] for r in rows], color=sp.PALETTE[2],
                   flags=[r["rotation_failed"] for r in rows], tips=[f"{t}; {r['rotation_subject']}" for t, r in zip(tips, rows)]),
            Series("its threshold", [r["rotation_threshold"] for r in rows], color=sp.MUTED, dash=True, markers=False)],
        xlabel="run", ylabel="degrees", xticks=ticks, width=560, height=300)),
        "caption": "The asserted layer whose Assistant Axis turned furthest relative to its threshold."})
    plots.append({"id": "h-access", "title": "Worst persona accessibility (ratio)", "svg": _svg(lambda: sp.line_chart(
        x, [Series("worst accessibility", [r["access_value"] for r in rows], color=sp.PALETTE[3],
                   flags=[r["access_failed"] for r in rows], tips=[f"{t}; {r['access_role']}" for t, r in zip(tips, rows)])],
        band=([1 - t if t is not None else None for t in (r["access_threshold"] for r in rows)],
              [1 + t if t is not None else None for t in (r["access_threshold"] for r in rows)]),
        band_label="1 ± threshold", hlines=[(1.0, "baseline")], xlabel="run", ylabel="ratio to baseline",
        xticks=ticks, width=560, height=300)),
        "caption": "The persona whose reachability changed most relative to its threshold; above 1 easier to reach."})
    return plots


def history_context(history: History, title: str | None = None) -> dict[str, Any]:
    """Everything the history template needs."""
    rows = [run_row(i + 1, results) for i, results in enumerate(history.runs)]
    latest = rows[-1]
    return {
        "title": title or "drift_suite history",
        "rows": rows,
        "latest": latest,
        "verdict": latest["verdict"].upper(),
        "n_runs": len(rows),
        "n_pass": sum(r["verdict"] == "pass" for r in rows),
        "versions": _versions(rows),
        "plots": _plots(rows),
        "skipped": history.skipped,
        "report_style": Markup(report_style()),
    }


def report_style() -> str:
    """The report's own stylesheet, read from its template, so the two pages never diverge in look."""
    env = template_env()
    source, _, _ = env.loader.get_source(env, "report.html.j2")  # type: ignore[union-attr]
    match = re.search(r"<style>(.*?)</style>", source, re.S)
    return match.group(1) if match else ""


def render_history(directory: str | Path, path: str | Path, title: str | None = None) -> tuple[Path, History]:
    """Read the history dir and write its page to ``path``; returns the path and what was read."""
    history = read_history(directory)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    html = template_env().get_template("history.html.j2").render(**history_context(history, title))
    target.write_text(html, encoding="utf-8")
    return target, history

