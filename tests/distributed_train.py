"""Run by torchrun in tests/test_distributed.py: ``python -m drift_suite.train.trainer`` with every file write
under the output dir recorded (open / Path.open for writing, os.replace), per rank, to ``DRIFT_TEST_WRITES``-RANK.json."""

from __future__ import annotations

import atexit
import builtins
import io
import json
import os
import sys
from pathlib import Path

from drift_suite.train.trainer import main

written: list[str] = []
out = Path(sys.argv[sys.argv.index("--output_dir") + 1]).resolve()


def _record(path) -> None:
    try:
        resolved = Path(os.fsdecode(path)).resolve()
    except (TypeError, ValueError):
        return
    if resolved.is_relative_to(out):
        written.append(str(resolved.relative_to(out)))


real_open, real_replace = builtins.open, os.replace


def recording_open(file, mode="r", *args, **kwargs):
    if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
        _record(file)
    return real_open(file, mode, *args, **kwargs)


def recording_replace(src, dst, *args, **kwargs):
    _record(dst)
    return real_replace(src, dst, *args, **kwargs)


builtins.open = io.open = recording_open  # pathlib opens through io.open
os.replace = recording_replace


@atexit.register
def _save() -> None:
    with real_open(f"{os.environ['DRIFT_TEST_WRITES']}-{os.environ.get('RANK', '0')}.json", "w") as handle:
        json.dump(written, handle)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
