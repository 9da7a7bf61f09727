"""pytest plugin: options, session fixtures and the terminal summary, as thin glue over :mod:`drift_suite.gate.runner`.

Registered through the ``pytest11`` entry point. Nothing heavy is imported until a drift fixture is used,
so the plugin costs nothing in test runs that do not use it.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pytest

from .common.quiet import quiet_dependencies

if TYPE_CHECKING:
    from .outputs.publish import CIOutputs
    from .gate.runner import DriftCheck, DriftOutcome

_SESSION_KEY = pytest.StashKey["DriftSession"]()
DEFAULT_REPORT = "reports/drift-report.html"
JUNIT_WARNING_PROPERTY = "drift_warning"
"""The JUnit XML ``<property>`` name a warned check writes into its ``<testcase>`` (JUnit XML has no warnings)."""
_running_item: contextvars.ContextVar[pytest.Item | None] = contextvars.ContextVar("drift_suite_running_item", default=None)


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError(f"expected a positive number, got {text}")
    return value


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("drift_suite", "drift_suite: Assistant-Axis persona drift gate")
    group.addoption("--checkpoint", metavar="PATH_OR_ID",
                    help="model to check: a checkpoint dir (full or LoRA adapter), a training run dir holding "
                         "checkpoint-N/ dirs, or a hub id")
    group.addoption("--base-model", metavar="PATH_OR_ID",
                    help="base model for an adapter checkpoint (default: the adapter's base_model_name_or_path); "
                         "for a fine-tuned checkpoint or a run dir, the model --update-baselines measures "
                         "(default: the adapter's base, or the run's run_manifest.json)")
    group.addoption("--baseline-dir", metavar="DIR", default="baselines",
                    help="directory of the baseline to compare with or write (default: baselines)")
    group.addoption("--update-baselines", action="store_true",
                    help="measure the reference model and (re)write the baseline, then check against it; "
                         "the run passes unless the checkpoint drifted from the new baseline. The reference of a "
                         "fine-tuned checkpoint (adapter, checkpoint-N or final of a run, run dir) is its base model")
    group.addoption("--baseline-from-checkpoint", action="store_true",
                    help="with --update-baselines: measure a fine-tuned checkpoint itself, not its base model "
                         "(it becomes its own reference)")
    group.addoption("--persona-set", metavar="builtin|DIR",
                    help="persona set: 'builtin' (default) or a dir in the upstream assistant-axis format")
    group.addoption("--drift-report", metavar="PATH", default=DEFAULT_REPORT,
                    help=f"where to write the HTML report (default: {DEFAULT_REPORT}); 'none' to skip it")
    group.addoption("--drift-json", metavar="PATH",
                    help="write the results JSON (verdict, exit code, every check; schema: drift_suite/outputs/schemas/results-v1.schema.json)")
    group.addoption("--drift-markdown", metavar="PATH",
                    help="write a markdown summary for a CI page (also appended to $GITHUB_STEP_SUMMARY when that is set)")
    group.addoption("--drift-history", metavar="DIR",
                    help="add this run's results JSON to DIR, one file per run (render it with: drift-suite history DIR)")
    group.addoption("--drift-layers", metavar="auto|L1,L2,...",
                    help="asserted layers when writing a baseline (default: [tool.drift_suite] layers or auto)")
    group.addoption("--drift-k-sigma", type=_positive_float, metavar="K",
                    help="noise-floor units a metric may move before it fails (default 3)")
    group.addoption("--drift-sides", metavar="projection=SIDE,accessibility=SIDE",
                    help="which direction of a change fails, the other only warns: projection both|toward_roles|"
                         "toward_assistant, accessibility both|more|less (default: [tool.drift_suite] sides, else both; "
                         "rotation always fails)")
    group.addoption("--max-batch-tokens", type=int, metavar="N",
                    help="memory budget per generation batch in tokens (batch × (prompt + answer); default 32768)")
    group.addoption("--thorough", action="store_true", help="measure with the larger design (more conversations)")
    group.addoption("--drift-cache-dir", metavar="DIR", default=".drift_cache",
                    help="cache of measurements keyed by weights + settings (default: .drift_cache)")
    group.addoption("--no-drift-cache", action="store_true", help="measure again even when cached")
    from .measure.placement import OPTION_HELP

    group.addoption("--device", metavar="auto|cpu|cuda|cuda:N", help=OPTION_HELP["device"])
    group.addoption("--dtype", metavar="auto|float32|bfloat16|float16", help=OPTION_HELP["dtype"])
    group.addoption("--device-map", metavar="auto", help=OPTION_HELP["device_map"])
    group.addoption("--use-4bit", action="store_true", help="load in 4-bit with bitsandbytes (needs CUDA)")
    group.addoption("--trust-remote-code", action="store_true", help="allow the model repo's own Python code (off by default)")


class TerminalProgress:
    """Progress through pytest's terminal reporter, with capture suspended so that it shows while a test runs.

    On a terminal one line per measurement is rewritten in place; in a log (CI) a line comes every 10 s.
    Stage lines (load, compare) show with ``-v`` only: the summary lists every stage's time anyway.
    """

    def __init__(self, config: pytest.Config):
        self.config = config
        self._prefix: Any = None

    def _terminal(self) -> Any:
        return self.config.pluginmanager.get_plugin("terminalreporter")

    def _write(self, text: str, *, rewrite: bool = False, finished: bool = True) -> None:
        terminal = self._terminal()
        if terminal is None:
            return
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            if terminal.currentfspath:  # the test line pytest started: its result goes after it, restored below
                self._prefix = terminal.currentfspath
            terminal.ensure_newline()
            if rewrite:
                terminal.rewrite(text, erase=True)
                if not finished:
                    terminal.flush()
                    return
                terminal.write("\n")
            else:
                terminal.write_line(text)
                terminal.flush()  # a CI log is a file: without it the line waits in a buffer
            if finished:
                _restore_prefix(terminal, self._prefix)
                self._prefix = None

    def task(self, label: str) -> Callable[[float, int], None]:
        from .common.progress import LIVE_INTERVAL_S, LOG_INTERVAL_S, LineProgress

        terminal = self._terminal()
        live = terminal is not None and terminal.isatty()
        return LineProgress(
            f"drift_suite: {label}",
            lambda text, finished: self._write(text, rewrite=live, finished=finished),
            LIVE_INTERVAL_S if live else LOG_INTERVAL_S,
        )

    def stage(self, text: str) -> None:
        if self.config.getoption("verbose") > 0:
            self._write(f"drift_suite: {text}")


def _restore_prefix(terminal: Any, prefix: Any) -> None:
    """Write again the start of the line pytest had begun (a file path, or a test id with -v) before our lines."""
    if isinstance(prefix, Path):
        terminal.write(f"{os.path.relpath(prefix, terminal.startpath)} ", flush=True)
    elif isinstance(prefix, str) and prefix:
        terminal.write(prefix, flush=True)
    else:
        return
    terminal.currentfspath = prefix


class DriftSession:
    """State for one pytest run: the check (planned at collection) and its outcome (measured once)."""

    def __init__(self, config: pytest.Config):
        self.pytest_config = config
        self._check: "DriftCheck | None" = None
        self._outcome: "DriftOutcome | None" = None
        self._plan: tuple[list[int], list[str]] | None = None
        self.plan_error: str | None = None
        self.report_path: Path | None = None
        self.error: tuple[str, int] | None = None
        """The one line and exit code the run stopped with, for the results JSON."""
        self.ci_lines: list[str] = []
        """Annotations, output paths and warnings to print after the summary."""

    def plan(self) -> tuple[list[int], list[str]]:
        """Asserted layers and roles, from configs only; an error is kept for the collection hook to raise."""
        from .common.errors import DriftSuiteError

        if self._plan is None:
            try:
                with quiet_dependencies():
                    self.ci_outputs().check()
                    check = self.check()
                    check.validate()
                    self._plan = (check.planned_layers(), check.planned_roles())
            except (DriftSuiteError, pytest.UsageError) as exc:
                self.plan_error = str(exc) if str(exc).startswith("drift_suite") else f"drift_suite: {exc}"
                self._plan = ([], [])
        return self._plan

    @property
    def requested(self) -> bool:
        return self.pytest_config.getoption("checkpoint") is not None

    def check(self) -> "DriftCheck":
        if self._check is None:
            from .gate.config import config_from_options
            from .gate.runner import DriftCheck

            option = self.pytest_config.getoption
            checkpoint = option("checkpoint")
            if checkpoint is None:
                raise _usage("no model to check: pass --checkpoint PATH (e.g. pytest suites/ --checkpoint checkpoints/final)")
            config = config_from_options(
                _settings_dir(self.pytest_config),
                layers=option("drift_layers"),
                k_sigma=option("drift_k_sigma"),
                max_batch_tokens=option("max_batch_tokens"),
                thorough=option("thorough"),
                device=option("device"),
                dtype=option("dtype"),
                device_map=option("device_map"),
                sides=option("drift_sides"),
            )
            self._check = DriftCheck(
                checkpoint=checkpoint,
                baseline_dir=option("baseline_dir"),
                base_model=option("base_model"),
                persona_set=option("persona_set") or config.persona_set,
                config=config,
                cache_dir=None if option("no_drift_cache") else option("drift_cache_dir"),
                update_baseline=option("update_baselines"),
                use_4bit=option("use_4bit"),
                trust_remote_code=option("trust_remote_code"),
                progress=TerminalProgress(self.pytest_config),
                baseline_from_checkpoint=option("baseline_from_checkpoint"),
            )
        return self._check

    def outcome(self) -> "DriftOutcome":
        """Measure once per session. Any error ends the whole run with one line and an exit code above 1.

        Bad input found before measuring exits with pytest's usage error (4); a model that cannot be loaded
        or measured with its internal error (3): never 1, which means drift (docs/options.md, "Exit codes").
        """
        from .common.errors import EXIT_USAGE, DriftSuiteError, failure_exit_code, one_line

        if self._outcome is None:
            try:
                self.ci_outputs().check()
                check = self.check()
                check.validate()
            except (DriftSuiteError, pytest.UsageError) as exc:
                self._stop(one_line(exc), EXIT_USAGE)
            try:
                with quiet_dependencies():
                    self._outcome = check.run()
            except Exception as exc:
                if self.pytest_config.getoption("fulltrace"):
                    raise
                hint = "" if isinstance(exc, DriftSuiteError) else f" (while loading or measuring {check.checkpoint}; --full-trace shows where)"
                self._stop(one_line(exc) + hint, failure_exit_code(exc))
        return self._outcome

    def write_report(self) -> Path | None:
        target = self.pytest_config.getoption("drift_report")
        from .common.process import is_main_process

        if self._outcome is None or not target or target == "none" or not is_main_process():
            return None
        from .outputs.report import render_report
        from .outputs.report_data import build_report_data

        self.report_path = render_report(build_report_data(self._outcome), Path(target))
        return self.report_path

    def _stop(self, message: str, exit_code: int) -> None:
        __tracebackhide__ = True
        self.error = (message if message.startswith("drift_suite") else f"drift_suite: {message}", exit_code)
        _stop(message, exit_code)

    def ci_outputs(self) -> "CIOutputs":
        from .outputs.publish import CIOutputs

        option = self.pytest_config.getoption
        return CIOutputs(json=option("drift_json"), markdown=option("drift_markdown"), history=option("drift_history"))

    def publish(self, exit_code: int) -> None:
        """Results JSON, markdown summary (and $GITHUB_STEP_SUMMARY), history: once pytest's exit code is known."""
        from .common.process import is_main_process

        outputs = self.ci_outputs()
        if not (self.requested or outputs.wanted) or not is_main_process():
            return
        from .outputs.results import build_results, error_results

        def results() -> dict[str, Any]:
            if self._outcome is not None and exit_code in (0, 1):
                return build_results(self._outcome, exit_code, "pytest", self.report_path)
            message = self.error[0] if self.error else self.plan_error if exit_code == 4 and self.plan_error else None
            if message is None:
                ran = "the run ended" if self._outcome is not None else "no drift measurement ran"
                message = f"drift_suite: {ran} without a verdict (pytest exit code {exit_code})"
            return error_results(message, exit_code, "pytest", self.pytest_config.getoption("checkpoint"))

        def warn(text: str) -> None:
            self.ci_lines.append(f"drift_suite: warning: {text}")

        self.ci_lines += outputs.publish_safely(results, warn, self.report_path)


def _settings_dir(config: pytest.Config) -> Path:
    """Where ``[tool.drift_suite]`` is looked up: beside pytest's own config file, else from the invocation dir.

    Not ``rootpath``: pytest derives it from the command line's paths, which can put it outside the project.
    """
    return Path(config.inipath).parent if config.inipath else Path(config.invocation_params.dir)


def _usage(message: str) -> Exception:
    return pytest.UsageError(f"drift_suite: {message}")


def _stop(message: str, exit_code: int) -> None:
    """End the whole session with one line: every drift test needs the measurement, so none runs without it."""
    __tracebackhide__ = True
    pytest.exit(message if message.startswith("drift_suite") else f"drift_suite: {message}", returncode=exit_code)


@pytest.hookimpl(trylast=True)  # after the terminal reporter exists, so a non-main rank can drop it
def pytest_configure(config: pytest.Config) -> None:
    config.stash[_SESSION_KEY] = DriftSession(config)
    config.pluginmanager.register(_CILinesAfterSummary(), "drift_suite_ci_lines")
    from .common.process import is_main_process

    if config.getoption("checkpoint") is not None and not is_main_process():
        # torchrun / accelerate launch: every rank runs the same tests to the same verdict; one prints.
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            config.pluginmanager.unregister(reporter)
    config.addinivalue_line("markers", "drift: a test that reads the drift_suite measurement")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``drift_layer`` by the asserted layers and ``drift_persona`` by the persona set's roles."""
    wanted = {"drift_layer", "drift_persona"} & set(metafunc.fixturenames)
    if not wanted:
        return
    session: DriftSession = metafunc.config.stash[_SESSION_KEY]
    layers, roles = session.plan()
    if "drift_layer" in wanted:
        metafunc.parametrize("drift_layer", layers, ids=[f"layer{layer}" for layer in layers], scope="session")
    if "drift_persona" in wanted:
        metafunc.parametrize("drift_persona", roles, ids=roles, scope="session")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """A bad --checkpoint, baseline or persona set stops the run here: one line, before any model loads."""
    drift_session: DriftSession = config.stash[_SESSION_KEY]
    if drift_session.plan_error and any("drift" in getattr(item, "fixturenames", ()) for item in items):
        raise pytest.UsageError(drift_session.plan_error)


@pytest.fixture(scope="session")
def drift_session(request: pytest.FixtureRequest) -> DriftSession:
    """The run's :class:`DriftSession`."""
    return request.config.stash[_SESSION_KEY]


@pytest.fixture(scope="session")
def drift(drift_session: DriftSession, request: pytest.FixtureRequest) -> "DriftOutcome":
    """The measured outcome: ``drift.baseline``, ``drift.final.comparison``, ``drift.steps`` (runs), ``drift.gate_checks()``."""
    outcome = drift_session.outcome()
    _record_in_junit(request, outcome)
    return outcome


def _record_in_junit(request: pytest.FixtureRequest, outcome: "DriftOutcome") -> None:
    """The verdict (with its warnings) and the sides in force as ``<testsuite>`` properties of ``--junitxml``."""
    if not request.config.pluginmanager.has_plugin("junitxml"):
        return
    from .gate.compare import verdict_line

    record = request.getfixturevalue("record_testsuite_property")  # a no-op without --junitxml
    record("drift_suite_verdict", verdict_line(outcome.gate_checks()))
    record("drift_suite_sides", outcome.config.sides.to_option())


@pytest.fixture(scope="session")
def drift_checks(drift: "DriftOutcome") -> dict[tuple[str, str], Any]:
    """Gate checks keyed by ``(family, subject)``: e.g. ``drift_checks["projection", "layer 12"]``."""
    return {(check.family, check.subject): check for check in drift.gate_checks()}


def assert_check(check: Any) -> None:
    """Fail with the check's message (metric, layer/persona, value, baseline, threshold) and how to accept it.

    A check beyond its threshold on a side that only warns passes with a :class:`~drift_suite.gate.compare.DriftWarning`
    (pytest's warnings summary) and a ``drift_warning`` property on its JUnit XML ``<testcase>``.
    """
    __tracebackhide__ = True
    if not check.passed:
        pytest.fail(f"{check.message()}\n  to accept this as the new reference: rerun with --update-baselines", pytrace=False)
    if check.warning:
        from .gate.compare import DriftWarning

        item = _running_item.get()
        if item is not None:
            item.user_properties.append((JUNIT_WARNING_PROPERTY, check.message()))
        warnings.warn(DriftWarning(check.message()), stacklevel=2)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Remember the running test, so :func:`assert_check` can put a warning into its JUnit XML properties."""
    token = _running_item.set(item)
    try:
        return (yield)
    finally:
        _running_item.reset(token)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    drift_session: DriftSession = session.config.stash[_SESSION_KEY]
    drift_session.write_report()
    drift_session.publish(int(exitstatus))
    _print_ci_lines(session.config, drift_session, deferred=int(exitstatus) in _SUMMARY_EXIT_CODES)
    from .common.process import is_main_process

    if drift_session.requested and not is_main_process():
        # A launcher stops every rank once one exits non-zero; the main process's exit code is the verdict.
        session.exitstatus = 0


_SUMMARY_EXIT_CODES = (0, 1, 2, 4, 5)
"""pytest prints its terminal summary for these exit codes only (not for 3, an internal error)."""


def _print_ci_lines(config: pytest.Config, drift_session: DriftSession, deferred: bool = False) -> None:
    """Print the CI lines (annotations, output paths, warnings) now, or leave them to the terminal summary."""
    if deferred or not drift_session.ci_lines:
        return
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    for line in drift_session.ci_lines:
        if terminal is not None:
            terminal.write_line(line, yellow=line.startswith("drift_suite: warning"))
        else:
            print(line, file=sys.stderr)
    drift_session.ci_lines = []


class _CILinesAfterSummary:
    """A second terminal-summary hook, run after the drift_suite section: the CI lines go last."""

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        _print_ci_lines(config, config.stash[_SESSION_KEY])


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    drift_session: DriftSession = config.stash[_SESSION_KEY]
    outcome = drift_session._outcome
    if outcome is None:
        return
    write = terminalreporter.write_line
    terminalreporter.section("drift_suite")
    if outcome.baseline_update:
        for line in outcome.baseline_update:
            write(f"baseline: {line}")
    from .gate.compare import verdict_line

    gate = outcome.gate_checks()
    failed = [c for c in gate if not c.passed]
    write(f"verdict: {verdict_line(gate)} for {outcome.checkpoint}")
    write(f"sides: {outcome.config.sides.describe()}")
    if outcome.placement is not None:
        from .gate.baseline import describe_placement

        write(f"measured on: {outcome.placement.describe()}; baseline: {describe_placement(outcome.baseline.manifest['model'])}")
    for check in failed[:5]:
        write(f"  {check.message()}", red=True)
    if len(failed) > 5:
        write(f"  ... and {len(failed) - 5} more (see the report)")
    warned = outcome.gate_warnings()
    for check in warned[:5]:
        write(f"  WARN {check.message()}", yellow=True)
    if len(warned) > 5:
        write(f"  ... and {len(warned) - 5} more warnings (see the report)")
    timing = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in outcome.timings.items())
    write(f"timings: {timing}")
    for note in outcome.decoder_notes():
        write(f"decoder: {note}")
    if drift_session.report_path is not None:
        write(f"report: {drift_session.report_path.resolve().as_uri()}")
