"""The CI outputs of one gate run, shared by the pytest plugin and ``drift-suite check``.

:class:`CIOutputs` holds where the results JSON, the markdown summary and the history go; ``check()``
refuses unwritable places before anything is measured (exit 4), ``publish()`` writes them once the exit code
is known, appends the summary to ``$GITHUB_STEP_SUMMARY`` and returns the annotation and path lines to print.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from .ci_summary import annotations, append_step_summary, render_markdown, under_github_actions, write_markdown
from .history import add_to_history
from .results import ResultsError, check_output_dir, check_output_file, write_results


@dataclass(frozen=True)
class CIOutputs:
    json: str | None = None
    markdown: str | None = None
    history: str | None = None

    @property
    def wanted(self) -> bool:
        return bool(self.json or self.markdown or self.history)

    def _places(self) -> list[tuple[str, str, Callable[[str, str], Any], str]]:
        """``(field, path, checker, what)`` of each output asked for."""
        places = (("json", check_output_file, "results JSON"), ("markdown", check_output_file, "markdown summary"),
                  ("history", check_output_dir, "drift history"))
        return [(name, getattr(self, name), checker, what) for name, checker, what in places if getattr(self, name)]

    def check(self) -> None:
        """One-line :class:`~drift_suite.outputs.results.ResultsError` (exit 4) for a place that cannot be written."""
        for _name, path, checker, what in self._places():
            checker(path, what)

    def writable(self) -> "CIOutputs":
        """These outputs less the ones :meth:`check` refuses (a run stopped by one says so in its own line)."""
        refused = {}
        for name, path, checker, what in self._places():
            try:
                checker(path, what)
            except ResultsError:
                refused[name] = None
        return replace(self, **refused)

    def publish_safely(self, build: Callable[[], dict[str, Any]], warn: Callable[[str], None],
                       report: str | Path | None = None) -> list[str]:
        """:meth:`publish` of the results ``build()`` returns; a failure anywhere is a warning, never a changed verdict."""
        try:
            return self.publish(build(), warn, report)
        except Exception as exc:  # noqa: BLE001
            warn(f"cannot write the CI outputs ({type(exc).__name__}: {exc})".splitlines()[0])
            return []

    def publish(self, results: dict[str, Any], warn: Callable[[str], None], report: str | Path | None = None) -> list[str]:
        """Write every output of ``results``; returns the lines to print (GitHub annotations, then paths).

        Runs after the verdict is decided, so nothing here may change it: a write that fails is a warning.
        A run that stopped without a verdict skips the places it could not write (its error named them).
        """
        outputs = self.writable() if results.get("error") else self
        lines: list[str] = []
        report_name = Path(report).name if report else None
        results_name = Path(outputs.json).name if outputs.json else None
        markdown = render_markdown(results, report_name, results_name)
        for what, write in (
            ("results", lambda: write_results(results, outputs.json) if outputs.json else None),
            ("summary", lambda: write_markdown(markdown, outputs.markdown) if outputs.markdown else None),
            ("history", lambda: add_to_history(results, outputs.history) if outputs.history else None),
        ):
            try:
                path = write()
            except Exception as exc:  # noqa: BLE001  (a full disk after measuring must not turn a verdict into an error)
                warn(f"cannot write the {what} ({type(exc).__name__}: {exc})".splitlines()[0])
                continue
            if path is not None:
                lines.append(f"{what}: {path}")
        append_step_summary(markdown, warn)
        if under_github_actions():
            lines = annotations(results) + lines
        return lines
