"""Run by torchrun in tests/test_distributed.py: ``drift-suite check`` as a user launches it on N processes,
plus, on the main process, the measured numbers as JSON (``DRIFT_TEST_NUMBERS``) for comparison."""

from __future__ import annotations

import json
import os
import sys

from drift_suite import cli
from drift_suite.gate import runner


def main() -> int:
    outcomes = []
    real_run = runner.DriftCheck.run

    def run_and_keep(self):
        outcome = real_run(self)
        outcomes.append(outcome)
        return outcome

    runner.DriftCheck.run = run_and_keep
    code = cli.main(sys.argv[1:])
    if outcomes and os.environ.get("RANK", "0") == "0":
        from test_distributed import outcome_numbers

        with open(os.environ["DRIFT_TEST_NUMBERS"], "w") as handle:
            json.dump(outcome_numbers(outcomes[0]), handle)
    return code


if __name__ == "__main__":
    sys.exit(main())
