"""Progress: a callback per decoding step from the library, turned into rate/ETA lines by a reporter."""

from __future__ import annotations

import io

import numpy as np

from drift_suite.measure.conversations import Design, build_conversations, render_prompts
from drift_suite.measure.extract import GenerationSettings, generate_and_capture
from drift_suite.common.progress import ConsoleReporter, LineProgress, progress_text


def test_progress_text_rate_and_eta():
    assert progress_text("measure m", 50, 200, 10.0) == "measure m: 50/200 conversations, 5.0/s, ETA 30 s"
    assert progress_text("measure m", 0, 200, 10.0) == "measure m: 0/200 conversations, reading the prompts"
    assert progress_text("measure m", 0.5, 200, 0.0) == "measure m: 0/200 conversations, 0.0/s, ETA unknown"
    assert progress_text("measure m", 200, 200, 40.0) == "measure m: 200/200 conversations in 40.0 s (5.0/s)"


def test_line_progress_throttles_and_shows_the_end_once():
    now = [0.0]
    shown: list[tuple[str, bool]] = []
    line = LineProgress("m", lambda text, finished: shown.append((text, finished)), interval_s=10.0, clock=lambda: now[0])
    for t, done in [(0.1, 0), (1.0, 10), (5.0, 50), (11.5, 100), (12.0, 110), (20.0, 200), (20.5, 200)]:
        now[0] = t
        line(done, 200)
    assert shown == [
        ("m: 0/200 conversations, reading the prompts", False),  # at once: the work has begun
        ("m: 100/200 conversations, 8.7/s, ETA 12 s", False),  # then at most one line per interval
        ("m: 200/200 conversations in 20.0 s (10.0/s)", True),  # the end always, and once
    ]


def test_console_reporter_writes_lines_to_a_log():
    stream = io.StringIO()
    reporter = ConsoleReporter(stream)
    assert not reporter.live
    reporter.stage("load m: 0.5 s")
    reporter.task("measure m")(3, 3)
    assert stream.getvalue() == "load m: 0.5 s\nmeasure m: 3/3 conversations in " + stream.getvalue().split(" in ")[1]
    assert stream.getvalue().count("\n") == 2 and "\r" not in stream.getvalue()


def test_generation_reports_every_decoding_step(tiny, tiny_personas):
    prompts = render_prompts(tiny.tokenizer, build_conversations(tiny_personas, Design(3, 1, 2)))
    settings = GenerationSettings(max_new_tokens=6, batch_size=8)
    calls: list[tuple[float, int]] = []
    quiet = generate_and_capture(tiny.model, tiny.tokenizer, prompts, settings, progress=False)
    reported = generate_and_capture(tiny.model, tiny.tokenizer, prompts, settings, progress=lambda d, t: calls.append((d, t)))
    np.testing.assert_array_equal(quiet.means, reported.means)  # reporting changes nothing measured
    done = [d for d, _ in calls]
    batches = -(-len(prompts) // 8)
    assert {t for _, t in calls} == {len(prompts)}
    assert done == sorted(done) and done[-1] == len(prompts)
    assert len(calls) > 2 * batches, "progress only per batch: too coarse for an ETA inside one big batch"
    assert any(d != int(d) for d in done), "a batch in flight counts by its share of decoding steps"
