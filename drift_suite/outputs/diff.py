"""Two results JSON files side by side (``drift-suite compare OLD NEW``): what newly fails, what recovered,
and the largest moves in σ. A PR against main, a run against the last release: NEW fails the comparison
(exit 1) when it has failing checks OLD had not.

Not :mod:`drift_suite.gate.compare`, which compares a measurement with a baseline.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .results import ResultsError

TOP_MOVES = 10


@dataclass
class CheckChange:
    family: str
    subject: str
    old_status: str | None
    """``pass``/``warn``/``fail``, or None when OLD had no such check."""
    new_status: str | None
    old_sigmas: float | None
    """Signed Δ/σ from the baseline; None where not finite or absent."""
    new_sigmas: float | None
    new_message: str = ""

    @property
    def name(self) -> str:
        return f"{self.family} {self.subject}"

    @property
    def move(self) -> float | None:
        """How far the check moved between the runs, in σ (signed)."""
        if self.old_sigmas is None or self.new_sigmas is None:
            return None
        return self.new_sigmas - self.old_sigmas


@dataclass
class ResultsDiff:
    old_verdict: str
    new_verdict: str
    newly_failing: list[CheckChange] = field(default_factory=list)
    recovered: list[CheckChange] = field(default_factory=list)
    still_failing: list[CheckChange] = field(default_factory=list)
    largest_moves: list[CheckChange] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def regressed(self) -> bool:
        """NEW has failing checks OLD had not: the comparison's exit 1."""
        return bool(self.newly_failing)


def _signed(check: dict[str, Any]) -> float | None:
    value = check.get("signed_sigmas")
    return float(value) if value is not None else None


def diff_results(old: dict[str, Any], new: dict[str, Any], old_name: str = "OLD", new_name: str = "NEW") -> ResultsDiff:
    """Match checks by (family, subject) and sort them into newly failing, recovered, still failing, largest moves.

    A result without a verdict (an error run) has nothing to compare: a one-line :class:`ResultsError` (exit 4).
    """
    for name, results in ((old_name, old), (new_name, new)):
        if results.get("error"):
            raise ResultsError(f"{name} has no verdict (exit code {results['exit_code']}: {results['error']['message']}); nothing to compare")
    old_checks = {(c["family"], c["subject"]): c for c in old["checks"]}
    new_checks = {(c["family"], c["subject"]): c for c in new["checks"]}
    diff = ResultsDiff(old["verdict"], new["verdict"])
    changes = []
    for key in list(old_checks) + [k for k in new_checks if k not in old_checks]:
        before, after = old_checks.get(key), new_checks.get(key)
        changes.append(CheckChange(
            key[0], key[1],
            before["status"] if before else None, after["status"] if after else None,
            _signed(before) if before else None, _signed(after) if after else None,
            after["message"] if after else "",
        ))
    for change in changes:
        if change.new_status == "fail" and change.old_status != "fail":
            diff.newly_failing.append(change)
        elif change.old_status == "fail" and change.new_status != "fail":
            diff.recovered.append(change)
        elif change.old_status == change.new_status == "fail":
            diff.still_failing.append(change)
    for group in (diff.newly_failing, diff.still_failing):  # the furthest from the baseline first
        group.sort(key=lambda c: -abs(c.new_sigmas) if c.new_sigmas is not None else -float("inf"))
    moved = [c for c in changes if c.move is not None and c.move != 0]
    diff.largest_moves = sorted(moved, key=lambda c: -abs(c.move or 0.0))[:TOP_MOVES]
    old_baseline, new_baseline = old.get("baseline") or {}, new.get("baseline") or {}
    if old_baseline.get("id") != new_baseline.get("id"):
        diff.notes.append(f"the two runs used different baselines ({old_baseline.get('id')} vs {new_baseline.get('id')}): "
                          "their σ are against different references")
    only_old = [k for k in old_checks if k not in new_checks]
    if only_old:
        diff.notes.append(f"{len(only_old)} checks of {old_name} are not in {new_name} (other layers or persona set)")
    return diff


def _sigma(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}σ"


def _line(change: CheckChange) -> str:
    return f"{change.name}: {change.old_status or 'absent'} → {change.new_status or 'absent'} ({_sigma(change.old_sigmas)} → {_sigma(change.new_sigmas)})"


def render_diff(diff: ResultsDiff, fmt: str = "text", old_name: str = "OLD", new_name: str = "NEW") -> str:
    """The comparison as ``text`` (terminal), ``md`` (a PR comment or step summary) or ``json``."""
    if fmt == "json":
        payload = asdict(diff) | {"regressed": diff.regressed}
        for group in ("newly_failing", "recovered", "still_failing", "largest_moves"):
            for item, change in zip(payload[group], getattr(diff, group)):
                item["move"] = change.move
        return json.dumps(payload, indent=2)
    verdict = "REGRESSED" if diff.regressed else "no new failures"
    head = f"compare {old_name} ({diff.old_verdict}) → {new_name} ({diff.new_verdict}): {verdict}"
    sections = [
        (f"newly failing ({len(diff.newly_failing)})", diff.newly_failing),
        (f"recovered ({len(diff.recovered)})", diff.recovered),
        (f"still failing ({len(diff.still_failing)})", diff.still_failing),
        (f"largest moves in σ (top {TOP_MOVES})", diff.largest_moves),
    ]
    if fmt == "md":
        from .ci_summary import md_code, md_escape

        lines = ["<!-- drift-suite-compare -->", f"**drift_suite compare**: {md_code(old_name)} ({diff.old_verdict}) → "
                 f"{md_code(new_name)} ({diff.new_verdict}): **{verdict}**"]
        for title, changes in sections:
            if not changes:
                continue
            lines += ["", f"**{title}**", "", "| check | OLD | NEW | σ OLD → NEW | move |", "|---|---|---|---:|---:|"]
            lines += [f"| {md_escape(c.name)} | {c.old_status or 'absent'} | {c.new_status or 'absent'} | "
                      f"{_sigma(c.old_sigmas)} → {_sigma(c.new_sigmas)} | {_sigma(c.move)} |" for c in changes]
        if diff.notes:
            lines += ["", *(f"_note: {md_escape(n)}_" for n in diff.notes)]
        return "\n".join(lines) + "\n"
    lines = [head]
    for title, changes in sections:
        if changes:
            lines.append(f"{title}:")
            lines += [f"  {_line(c)}" + (f"  [move {_sigma(c.move)}]" if title.startswith("largest") else "") for c in changes]
    lines += [f"note: {n}" for n in diff.notes]
    return "\n".join(lines) + "\n"
