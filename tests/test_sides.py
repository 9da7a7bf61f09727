"""One-sided checks, known answer: plant a shift in each direction of each family into a tiny model, then
check that every sides setting fails exactly the directions it names and warns on the others, that the
default (``both``) gives the verdicts of a two-sided check, and that the gate never hides a failing step
behind a bigger warning."""

from __future__ import annotations

import itertools
from contextlib import ExitStack

import numpy as np
import pytest
import torch

from drift_suite.gate.baseline import create_baseline
from drift_suite.gate.compare import BOTH, SIDES, Check, Comparison, compare, verdict_line
from drift_suite.gate.config import DriftConfig, Sides
from drift_suite.measure.measurement import measure
from drift_suite.measure.models import embedding_fingerprint
from drift_suite.gate.runner import DriftOutcome, StepResult
from planting import add_vector, contains_tokens, planted
from test_planted_drift import DESIGN, SETTINGS, STRICT

UP_LAYER, DOWN_LAYER = 1, 3
"""The default moves toward the assistant at UP_LAYER and toward the roles at DOWN_LAYER (both by 1.5 axis lengths)."""
MORE_ROLE, LESS_ROLE = "pirate", "tutor"
"""MORE_ROLE's prompts move the model twice as far as at baseline, LESS_ROLE's not at all."""


@pytest.fixture(scope="module")
def planted_both_ways(tiny_checkpoint, tiny_personas):
    """The tiny model's baseline (all layers asserted) and one measurement carrying all four planted shifts."""
    from drift_suite.measure.models import load_model

    tiny = load_model(tiny_checkpoint)
    reference = measure(tiny, tiny_personas, DESIGN, SETTINGS, cache_dir=None, progress=False)
    layers = list(range(tiny.info.num_layers))
    baseline = create_baseline(reference, tiny_personas, DESIGN, SETTINGS, layers, embedding_fingerprint(tiny.model), n_boot=50)
    assert MORE_ROLE in baseline.roles and LESS_ROLE in baseline.roles

    def role_rows(role):
        filters = [contains_tokens(tiny.tokenizer(p, add_special_tokens=False)["input_ids"])
                   for p in tiny_personas.roles[role][: DESIGN.role_prompts]]
        return lambda ids: torch.stack([f(ids) for f in filters]).any(0)

    with ExitStack() as stack:
        for layer, amount in ((UP_LAYER, 1.5), (DOWN_LAYER, -1.5)):
            # every conversation moves alike: the projection shifts, the axis and the roles' reach do not
            stack.enter_context(planted(tiny.model, layer, *add_vector(torch.tensor(amount * baseline.axis[layer]))))
        for role, factor in ((MORE_ROLE, 1.0), (LESS_ROLE, -1.0)):
            offset = baseline.role_means[baseline.roles.index(role)] - baseline.default_mean  # what role-play adds
            for layer in layers:
                stack.enter_context(planted(tiny.model, layer, *add_vector(factor * torch.tensor(offset[layer])),
                                            row_filter=role_rows(role)))
        measurement = measure(tiny, tiny_personas, DESIGN, SETTINGS, cache_dir=None, progress=False)
    return baseline, measurement


def _planted_checks(comparison: Comparison) -> dict[str, Check]:
    """The four planted checks, keyed by the side their value moved to."""
    by_key = {(c.family, c.subject): c for c in comparison.checks}
    return {
        "toward_assistant": by_key["projection", f"layer {UP_LAYER}"],
        "toward_roles": by_key["projection", f"layer {DOWN_LAYER}"],
        "more": by_key["accessibility", MORE_ROLE],
        "less": by_key["accessibility", LESS_ROLE],
    }


def test_the_planted_shifts_are_measured_on_their_sides(planted_both_ways):
    baseline, measurement = planted_both_ways
    comparison = compare(baseline, measurement, STRICT)
    axis_norm = np.linalg.norm(baseline.axis, axis=-1)
    assert comparison.projection_shift[UP_LAYER] == pytest.approx(1.5 * axis_norm[UP_LAYER], rel=0.05)
    assert comparison.projection_shift[DOWN_LAYER] == pytest.approx(-1.5 * axis_norm[DOWN_LAYER], rel=0.05)
    assert comparison.accessibility[baseline.roles.index(MORE_ROLE)] == pytest.approx(2.0, abs=0.02)
    assert comparison.accessibility[baseline.roles.index(LESS_ROLE)] == pytest.approx(0.0, abs=0.02)
    for side, check in _planted_checks(comparison).items():
        assert check.side == side and check.exceeded
    others = [c for c in comparison.checks if c not in _planted_checks(comparison).values() and c.family in SIDES]
    assert others and not any(c.exceeded for c in others), [c.message() for c in others if c.exceeded]


@pytest.mark.parametrize(
    "projection,accessibility",
    list(itertools.product((BOTH, *SIDES["projection"]), (BOTH, *SIDES["accessibility"]))),
)
def test_each_setting_fails_its_sides_and_warns_on_the_others(planted_both_ways, projection, accessibility):
    baseline, measurement = planted_both_ways
    sides = Sides(projection=projection, accessibility=accessibility)
    comparison = compare(baseline, measurement, STRICT, sides=sides)
    two_sided = compare(baseline, measurement, STRICT)
    for side, check in _planted_checks(comparison).items():
        setting = projection if side in SIDES["projection"] else accessibility
        expected = "fail" if setting in (BOTH, side) else "warn"
        assert check.status == expected, check.message()
        assert check.passed == (expected == "warn")
        assert ("(warning: only " in check.message()) == (expected == "warn")
        if expected == "warn":
            assert f"beyond tolerance, {check.direction} (warning: only {setting} fails)" in check.message()
    # nothing else changes with the sides: rotation has none, the checks within tolerance stay passes
    planted_ids = {id(c) for c in _planted_checks(comparison).values()}
    for check, reference in zip(comparison.checks, two_sided.checks):
        if id(check) not in planted_ids:
            assert check.status == reference.status and check.message() == reference.message()
    n_warned = sum(c.status == "warn" for c in comparison.checks)
    assert n_warned == (projection != BOTH) + (accessibility != BOTH)
    assert ("warning" in verdict_line(comparison.checks)) == bool(n_warned)


def test_both_is_the_two_sided_check(planted_both_ways):
    """The default sides: every check beyond its threshold fails, no warnings, the message and verdict as before sides."""
    baseline, measurement = planted_both_ways
    default, explicit = compare(baseline, measurement, STRICT), compare(baseline, measurement, STRICT, sides=Sides())
    assert [c.to_dict() for c in default.checks] == [c.to_dict() for c in explicit.checks]
    assert [c.message() for c in default.checks] == [c.message() for c in explicit.checks]
    for check in default.checks:
        assert check.failing_side == BOTH
        assert check.passed == bool(check.deviation <= check.threshold)
        assert check.status == ("pass" if check.passed else "fail")
        assert "warning" not in check.message()
    failed = sum(not c.passed for c in default.checks)
    assert failed >= 4
    assert verdict_line(default.checks) == f"FAIL ({len(default.checks) - failed}/{len(default.checks)} checks within tolerance)"


def _outcome(steps: list[list[Check]], sides: Sides = Sides()) -> DriftOutcome:
    """A run's outcome holding only checks (the gate reads nothing else)."""
    empty = np.zeros(0)
    results = [StepResult(step, f"checkpoint-{step}", Comparison(empty, empty, empty, empty, empty, empty, empty, empty, checks),
                          None) for step, checks in zip((10, 20, 30), steps)]
    return DriftOutcome("run", "baselines", None, results, DriftConfig(sides=sides))


def _projection(step: int, value: float, side: str = "toward_roles") -> Check:
    return Check("projection", "layer 12", value, 0.0, 1.0, 0.25, step=step, failing_side=side)


def test_gate_never_hides_a_failing_step_behind_a_bigger_warning():
    # step 10: 3 thresholds toward the assistant (a warning); step 20: 1.5 toward the roles (a failure)
    outcome = _outcome([[_projection(10, 3.0)], [_projection(20, -1.5)], [_projection(30, 0.2)]])
    (gate,) = outcome.gate_checks()
    assert gate.step == 20 and gate.status == "fail" and not outcome.passed
    assert outcome.gate_warnings() == []
    # without a failure the biggest warning is named, and the run passes with it
    outcome = _outcome([[_projection(10, 3.0)], [_projection(20, 2.0)], [_projection(30, 0.2)]])
    (gate,) = outcome.gate_checks()
    assert gate.step == 10 and gate.status == "warn" and outcome.passed
    assert outcome.gate_warnings() == [gate]
    # two-sided (the default): the largest change, as before sides existed
    outcome = _outcome([[_projection(10, 3.0, BOTH)], [_projection(20, -1.5, BOTH)], [_projection(30, 0.2, BOTH)]])
    assert outcome.gate_checks()[0].step == 10


def test_a_broken_value_is_never_hidden_behind_a_pass():
    outcome = _outcome([[_projection(10, 0.5, BOTH)], [_projection(20, float("nan"), BOTH)]])
    assert outcome.gate_checks()[0].step == 20 and not outcome.passed


def test_verdict_line_counts_warnings_apart():
    checks = [_projection(None, 0.1), _projection(None, 3.0), _projection(None, 2.0), _projection(None, -2.0)]
    assert verdict_line(checks[:3]) == "PASS with 2 warnings (1/3 checks within tolerance, 2 beyond it on a side that only warns)"
    assert verdict_line(checks) == ("FAIL with 2 warnings (1/4 checks within tolerance, 1 failed, "
                                    "2 beyond it on a side that only warns)")
    assert verdict_line(checks[:1]) == "PASS (1/1 checks within tolerance)"
    assert verdict_line([checks[0], checks[3]]) == "FAIL (1/2 checks within tolerance)"


def _warn_instead(check: dict) -> dict:
    """A failing projection or accessibility check of the report data, made to fail only on its other side."""
    from dataclasses import fields

    made = Check(**{f.name: check[f.name] for f in fields(Check)})
    if made.family in SIDES and made.exceeded:
        made.failing_side = next(side for side in SIDES[made.family] if side != made.side)
    return made.to_dict() | {"message": made.message()}


def test_report_shows_warnings_with_their_own_colour_count_and_table(tmp_path):
    from drift_suite.outputs.report import render_report
    from report_example import example_report_data

    data = example_report_data(with_trajectory=False, failing=True)
    data["checks"] = [_warn_instead(c) for c in data["checks"] if c["family"] != "rotation"]
    data["sides"] = {"projection": "toward_assistant", "accessibility": "less", "text": "SIDES-IN-FORCE"}
    warned = [c for c in data["checks"] if c["status"] == "warn"]
    assert warned and all(c["passed"] for c in data["checks"])
    data["verdict"] = "PASS"
    html = render_report(data, tmp_path / "r.html").read_text()
    n = len(warned)
    assert f"<title>PASS with {n} warnings" in html and 'class="banner PASS warned"' in html
    assert f'<div class="sub">with {n} warnings</div>' in html and f"<b>{n}</b> warned" in html
    assert html.count('<span class="pill warn">WARN</span>') == n and html.count('class="warnrow"') == n
    assert f"{n} warnings: beyond tolerance on a side that only warns" in html
    assert html.count("SIDES-IN-FORCE") == 2  # the banner and the warnings table
    assert "No check fails. Warning:" in html and "Yes, on a side that only warns" in html
    assert 'class="failrow"' not in html and "0 / " in html
    # plot (1) rings failures only: every projection change here is toward the roles, which only warns
    def rings(page: str) -> int:
        figure = page[page.index('<figure id="projection"'):]
        return figure[:figure.index("</figure>")].count('r="7"')

    assert rings(html) == 0
    data["sides"] = {}
    assert rings(render_report(data, tmp_path / "two-sided.html").read_text()) == n_projection_warned(data) > 0


def n_projection_warned(data: dict) -> int:
    return sum(c["status"] == "warn" and c["family"] == "projection" for c in data["checks"])


def test_report_of_old_data_without_status_has_no_warnings(tmp_path):
    from drift_suite.outputs.report import render_report
    from report_example import example_report_data

    data = example_report_data(with_trajectory=False, failing=True)
    for check in data["checks"]:
        check.pop("status"), check.pop("failing_side")
    html = render_report(data, tmp_path / "r.html").read_text()
    assert "warned</" not in html and "pill warn" not in html and "warnrow\"" not in html and "<title>FAIL ·" in html


def test_the_baseline_records_nothing_about_sides(tiny_checkpoint, tmp_path):
    """Sides are a gate setting: a baseline written under any of them is the same file as one written under none."""
    import json

    from drift_suite.gate.config import config_from_options
    from drift_suite.gate.runner import DriftCheck
    from test_plugin import FAST_CONFIG

    (tmp_path / "pyproject.toml").write_text(FAST_CONFIG)
    written = {}
    for name, sides in (("default", None), ("one-sided", "projection=toward_roles,accessibility=more")):
        config = config_from_options(tmp_path, sides=sides)
        DriftCheck(tiny_checkpoint, tmp_path / name, config=config, cache_dir=tmp_path / "cache", update_baseline=True,
                   progress=False).write_baseline()
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        files = {key: (tmp_path / name / path).read_bytes() for key, path in manifest["files"].items()}
        manifest.pop("created")
        written[name] = (manifest, files)
    assert written["default"] == written["one-sided"]
    assert "toward_roles" not in json.dumps(written["one-sided"][0])
