"""Progress of long work, for whoever shows it: a callback per measurement, a line per finished stage.

The library never writes to the terminal itself. :func:`drift_suite.measure.extract.generate_and_capture` calls a
:data:`ProgressCallback` after every decoding step; a :class:`Reporter` turns those calls into text (the
CLI's :class:`ConsoleReporter` on stderr; the pytest plugin's through pytest's terminal reporter, so
output capture does not hide it).
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Protocol, TextIO

ProgressCallback = Callable[[float, int], None]
"""``callback(done, total)``: conversations done (a batch in flight counts by its share of decoding steps)."""

LIVE_INTERVAL_S = 0.5
"""How often a line rewritten in place on a terminal changes."""
LOG_INTERVAL_S = 10.0
"""How often a new line is written where the output is a log (CI), not a terminal."""


def progress_text(label: str, done: float, total: int, elapsed_s: float) -> str:
    """``label: 98/196 conversations, 5.1/s, ETA 19 s`` (or the first line, or the finished one with the total time)."""
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    if done <= 0:
        return f"{label}: 0/{total} conversations, reading the prompts"
    if done >= total:
        return f"{label}: {total}/{total} conversations in {elapsed_s:.1f} s ({rate:.1f}/s)"
    eta = f"ETA {(total - done) / rate:.0f} s" if rate > 0 else "ETA unknown"
    return f"{label}: {int(done)}/{total} conversations, {rate:.1f}/s, {eta}"


class LineProgress:
    """One measurement's progress as text: ``show(text, finished)`` at the first call, then at most every
    ``interval_s``, and once at the end."""

    def __init__(self, label: str, show: Callable[[str, bool], None], interval_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.label = label
        self.show = show
        self.interval_s = interval_s
        self.clock = clock
        self.started = clock()
        self.last_shown: float | None = None
        self.finished = False

    def __call__(self, done: float, total: int) -> None:
        now = self.clock()
        finished = done >= total
        if self.finished:
            return
        if not finished and self.last_shown is not None and now - self.last_shown < self.interval_s:
            return
        self.last_shown = now
        self.finished = finished
        self.show(progress_text(self.label, done, total, now - self.started), finished)


class Reporter(Protocol):
    """Where the runner sends progress: a callback per measurement and a line per finished stage."""

    def task(self, label: str) -> ProgressCallback:
        """A progress callback for one measurement named ``label``."""
        ...

    def stage(self, text: str) -> None:
        """One line saying a stage finished and how long it took."""
        ...


class ConsoleReporter:
    """Progress on a stream (stderr by default): one line rewritten in place on a terminal, else a line every 10 s."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.live = bool(isatty and isatty())

    def task(self, label: str) -> ProgressCallback:
        return LineProgress(label, self._show, LIVE_INTERVAL_S if self.live else LOG_INTERVAL_S)

    def _show(self, text: str, finished: bool) -> None:
        if self.live:
            # \x1b[K clears what a longer previous line left on the right.
            self.stream.write("\r" + text + "\x1b[K" + ("\n" if finished else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def stage(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


class SilentReporter:
    """Shows nothing (``progress=False``)."""

    def task(self, label: str) -> ProgressCallback:
        return lambda _done, _total: None

    def stage(self, text: str) -> None:
        pass
