"""Render the drift report: one self-contained HTML file (inline CSS and SVG, no scripts, no external assets).

The input is the JSON-able dict described in :func:`render_report`. Optional parts may be missing or hold
None/NaN: the matching plot or row then shows "–" or a short note instead of failing the whole report.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader
from markupsafe import Markup

from . import plots as sp
from ..gate.config import BOTH, fails_on_side
from ..common.metrics import MIN_PAIRS_FOR_CI
from .plots import Series, fmt_num, num

log = logging.getLogger(__name__)

FAMILIES = ("projection", "rotation", "accessibility")
FAMILY_TITLES = {"projection": "Projection on the Assistant Axis", "rotation": "Axis rotation",
                 "accessibility": "Persona accessibility"}


def template_env() -> Environment:
    """The jinja environment of the package's HTML pages (autoescaped; the ``num`` filter), report and history alike."""
    env = Environment(loader=PackageLoader("drift_suite.outputs", "templates"), autoescape=True,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = fmt_num
    return env


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else []


def _at(values: Any, i: int) -> Any:
    seq = _list(values)
    return seq[i] if 0 <= i < len(seq) else None


def _layer_of(subject: Any) -> int | None:
    m = re.search(r"-?\d+", str(subject))
    return int(m.group()) if m else None


def _sigmas_text(value: Any) -> str:
    try:
        if math.isinf(float(value)):
            return "∞"  # zero noise floor: any change is infinitely many σ
    except (TypeError, ValueError):
        pass
    return fmt_num(value, 2)


def _check_row(c: dict[str, Any]) -> dict[str, Any]:
    unit = str(c.get("unit") or "")

    def with_unit(v: Any) -> str:
        text = fmt_num(v, 4)
        return text + unit if text != "–" else text

    return {
        "family": c.get("family", "–"), "subject": c.get("subject", "–"),
        "step": "–" if c.get("step") is None else c.get("step"),
        "value": with_unit(c.get("value")), "expected": with_unit(c.get("expected")),
        "direction": c.get("direction") or "–",
        "sigmas": _sigmas_text(c.get("sigmas")), "threshold": with_unit(c.get("threshold")),
        "passed": bool(c.get("passed")), "message": c.get("message", ""),
        "status": _status(c),
    }


def _status(c: dict[str, Any]) -> str:
    """``pass``, ``warn`` (beyond tolerance on a side that only warns) or ``fail``; older data has no status."""
    status = c.get("status")
    return status if status in ("pass", "warn", "fail") else "pass" if c.get("passed") else "fail"


def _fails_on_side(family: str, delta: float, sides: dict[str, Any]) -> bool:
    """Whether a change ``delta`` beyond the threshold fails under ``sides`` (the report data's), or only warns."""
    return fails_on_side(family, delta, sides.get(family) or BOTH)


def _warning_sentence(checks: list[dict[str, Any]]) -> str:
    """What moved beyond tolerance on a side that only warns, by direction ("" when nothing did)."""
    warned = [c for c in checks if _status(c) == "warn"]
    if not warned:
        return ""
    by_direction: dict[str, list[str]] = {}
    for c in warned:
        by_direction.setdefault(str(c.get("direction") or "moved"), []).append(str(c.get("subject")))
    parts = [f"{direction} ({', '.join(subjects[:6])}{', …' if len(subjects) > 6 else ''})" for direction, subjects in by_direction.items()]
    return (f"Warning: {len(warned)} of {len(checks)} moved beyond tolerance on a side that only warns: "
            + "; ".join(parts) + ".")


def _family_meaning(family: str, checks: list[dict[str, Any]], data: dict[str, Any]) -> str:
    """One plain-language sentence per metric family for the summary, then its warnings if any."""
    warning = _warning_sentence(checks)
    if warning and all(c.get("passed") for c in checks):
        return "No check fails. " + warning
    meaning = _failures_meaning(family, checks, data)
    return f"{meaning} {warning}" if warning else meaning


def _failures_meaning(family: str, checks: list[dict[str, Any]], data: dict[str, Any]) -> str:
    failed = [c for c in checks if not c.get("passed")]
    worst = max(checks, key=lambda c: num(c.get("sigmas")) if num(c.get("sigmas")) is not None else math.inf, default=None)
    if not checks:
        return "Not checked in this run."
    if family == "projection":
        if not failed:
            return (f"The default assistant sits where it did on the Assistant Axis at all {len(checks)} asserted layers "
                    f"(largest change {_sigmas_text(worst.get('sigmas'))}σ).")
        parts = []
        for direction, gloss in (("toward the roles", "less assistant-like"), ("toward the assistant", "more assistant-like")):
            moved = [str(c.get("subject")) for c in failed if c.get("direction") == direction]
            if moved:
                parts.append(f"{direction} ({gloss}) at {len(moved)} of {len(checks)} asserted layers ({', '.join(moved)})")
        return "The default assistant moved along the Assistant Axis " + (" and ".join(parts) or "beyond threshold") + "."
    if family == "rotation":
        degs = [num(c.get("value")) for c in checks if num(c.get("value")) is not None]
        biggest = f"{fmt_num(max(degs), 2)}°" if degs else "–"
        if not failed:
            return f"The Assistant Axis kept its direction: at most {biggest} of rotation, within the noise threshold."
        return (f"The Assistant Axis itself turned at {len(failed)} of {len(checks)} asserted layers (up to {biggest}): "
                "the meaning of 'assistant-like' changed, not only the model's position.")
    up = [c for c in failed if (num(c.get("value")) or 1.0) > 1.0]
    down = [c for c in failed if c not in up]
    if not failed:
        return f"All {len(checks)} personas are as easy to role-play as at baseline (ratio ≈ 1 within tolerance)."
    parts = []
    if up:
        parts.append(f"{len(up)} became easier to slip into ({', '.join(str(c.get('subject')) for c in up[:6])})")
    if down:
        parts.append(f"{len(down)} became harder ({', '.join(str(c.get('subject')) for c in down[:6])})")
    return f"Of {len(checks)} personas, " + " and ".join(parts) + "."


def _safe(name: str, build: Callable[[], str | None]) -> Markup | None:
    """Run one plot builder; a broken optional section becomes a note instead of losing the whole report."""
    try:
        svg = build()
    except Exception as exc:  # noqa: BLE001 - any malformed input should degrade, not crash
        log.warning("report plot %s skipped: %s", name, exc)
        return Markup('<p class="note">Plot unavailable: {}</p>').format(f"{type(exc).__name__}: {exc}")
    # svgplot escapes every text it emits, so its output is trusted markup.
    return Markup(svg) if svg else None


def _band(center: Sequence[Any], half: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    lo, hi = [], []
    for c, h in zip(center, half):
        c, h = num(c), num(h)
        lo.append(None if c is None or h is None else c - h)
        hi.append(None if c is None or h is None else c + h)
    return lo, hi


def _plots(data: dict[str, Any]) -> list[dict[str, Any]]:
    """All plots in report order; each with an anchor id, title, caption and SVG (or None when absent)."""
    layers = data.get("layers") or {}
    proj, rot = data.get("projection") or {}, data.get("rotation") or {}
    acc, prof = data.get("accessibility") or {}, data.get("layer_profile") or {}
    n_layers = max(len(_list(proj.get("baseline"))), len(_list(rot.get("deg"))), len(_list(prof.get("shift_over_axis"))))
    all_layers = _list(layers.get("all")) or list(range(n_layers))
    asserted = [l for l in _list(layers.get("asserted")) if num(l) is not None]
    plots: list[dict[str, Any]] = []
    # Plots (1)-(5) show one checkpoint: for a run, its last step.
    at_step = f" at step {data['step']}" if data.get("step") is not None else ""
    sides = data.get("sides") or {}  # plots ring failures only: a change on a side that only warns is no failure

    def projection() -> str | None:
        base, ckpt, thr = _list(proj.get("baseline")), _list(proj.get("checkpoint")), _list(proj.get("threshold"))
        if not base:
            return None
        flags = [i in asserted and None not in (num(_at(ckpt, i)), num(_at(base, i)), num(_at(thr, i)))
                 and abs(num(ckpt[i]) - num(base[i])) > num(thr[i])
                 and _fails_on_side("projection", num(ckpt[i]) - num(base[i]), sides) for i in range(len(all_layers))]
        return sp.line_chart(all_layers, [Series("baseline", base, color=sp.MUTED, dash=True, markers=False),
                                          Series("checkpoint", ckpt, color=sp.PALETTE[1], flags=flags)],
                             band=_band(base, thr), band_label="baseline ± threshold", highlight_x=asserted,
                             title=f"Default persona's projection on the Assistant Axis{at_step}", xlabel="layer",
                             ylabel="projection", width=1100, height=340)

    def rotation() -> str | None:
        deg, thr = _list(rot.get("deg")), _list(rot.get("threshold"))
        if not deg:
            return None
        flags = [i in asserted and num(_at(deg, i)) is not None and num(_at(thr, i)) is not None
                 and num(deg[i]) > num(thr[i]) for i in range(len(deg))]
        return sp.line_chart(all_layers, [Series("rotation", deg, color=sp.PALETTE[0], flags=flags),
                                          Series("threshold", thr, color=sp.FAIL_COLOR, dash=True, markers=False)],
                             inner_band=([0.0] * len(all_layers), _list(rot.get("noise")) or [None] * len(all_layers)),
                             inner_label="noise floor (1σ)", highlight_x=asserted, title=f"Rotation of the Assistant Axis{at_step}",
                             xlabel="layer", ylabel="angle to baseline axis (°)")

    def accessibility() -> str | None:
        roles, ratio, thr = _list(acc.get("roles")), _list(acc.get("ratio")), _list(acc.get("threshold"))
        if not roles:
            return None
        flags = [num(_at(ratio, i)) is not None and num(_at(thr, i)) is not None
                 and abs(num(ratio[i]) - 1.0) > num(thr[i]) and _fails_on_side("accessibility", num(ratio[i]) - 1.0, sides)
                 for i in range(len(roles))]
        return sp.bar_chart(roles, [_at(ratio, i) for i in range(len(roles))], tolerance=[_at(thr, i) for i in range(len(roles))],
                            flags=flags, title=f"Persona accessibility{at_step} (checkpoint ÷ baseline), largest change first",
                            xlabel="accessibility ratio (1 = unchanged)", above_label="more accessible",
                            below_label="less accessible", width=1100)

    def layer_profile() -> str | None:
        shift, deg = _list(prof.get("shift_over_axis")), _list(prof.get("rotation_deg"))
        if not shift and not deg:
            return None
        return sp.dual_axis_chart([Series("|shift| / axis length", shift, x=all_layers[:len(shift)], color=sp.PALETTE[1])],
                                  [Series("rotation (°)", deg, x=all_layers[:len(deg)], color=sp.PALETTE[0], dash=True)],
                                  title=f"Which layers moved most{at_step}", xlabel="layer", left_label="|shift| / ‖axis‖",
                                  right_label="rotation (°)")

    def heat() -> str | None:
        by_layer, roles = _list(acc.get("by_layer")), _list(acc.get("roles"))
        if not by_layer:
            return None
        return sp.heatmap(by_layer, roles, all_layers, center=1.0, span=sp.round_span(max(0.3, _max_dev(by_layer, 1.0))),
                          title=f"Accessibility by role and layer{at_step} (checkpoint ÷ baseline)", xlabel="layer",
                          legend_label="ratio (1 = unchanged)", below_text="less accessible", above_text="more accessible")

    plots += [
        {"id": "projection", "title": "(1) Projection per layer", "svg": _safe("projection", projection), "wide": True,
         "caption": "Where the default assistant sits on the baseline Assistant Axis at each layer. The shaded band is the "
                    "baseline ± threshold; ▲ marks asserted layers, red rings are failing points. Lower = closer to the "
                    "role-playing personas."},
        {"id": "rotation", "title": "(2) Rotation per layer", "svg": _safe("rotation", rotation), "wide": False,
         "caption": "Angle between the baseline and checkpoint Assistant Axis. Above the dashed threshold the axis itself changed."},
        {"id": "layer-profile", "title": "(3) Layer profile", "svg": _safe("layer-profile", layer_profile), "wide": False,
         "caption": "Projection shift relative to the axis length, and rotation, per layer: where the change concentrates."},
        {"id": "accessibility", "title": "(4) Persona accessibility", "svg": _safe("accessibility", accessibility), "wide": True,
         "caption": "How far each persona prompt still moves the model, relative to baseline, on a scale symmetric "
                    "around 1. Red, > 1: easier to slip into the persona; blue, < 1: harder. Saturated, outlined bars "
                    "fail; grey shading = tolerance."},
        {"id": "accessibility-heatmap", "title": "(5) Accessibility by layer", "svg": _safe("accessibility-heatmap", heat),
         "wide": True, "caption": "The same ratio per role and layer, on a colour scale symmetric around 1: red = more "
                                  "accessible, blue = less, as in (4)."},
    ]
    traj = data.get("trajectory")
    if traj:
        plots += _trajectory_plots(traj, all_layers, sides)
    probe = data.get("live_probe")
    if probe:
        plots.append(_live_probe_plot(probe))
    return plots


# ------------------------------------------------------------------------------- live probe (train log)


def _probe_in_sigma(probe: dict[str, Any]) -> bool:
    """Whether the probe logged its values in noise units (``drift/projection_sigma``) at any step."""
    return any(num(v) is not None for v in _list(probe.get("projection_sigma")))


def _live_probe_plot(probe: dict[str, Any]) -> dict[str, Any]:
    """(10): the training-time probe per step beside the reward, the ``--drift_stop`` threshold and the stop."""
    steps = _list(probe.get("steps"))
    sigma = _probe_in_sigma(probe)
    stop = probe.get("stop") if isinstance(probe.get("stop"), dict) else None
    threshold = num(probe.get("threshold_sigma"))

    def chart() -> str | None:
        reward = probe.get("reward") or {}
        left = ([Series("reward (logged)", _list(reward.get("values")), x=_list(reward.get("steps")), color=sp.PALETTE[2],
                        markers=False, width=1.4)] if _list(reward.get("values")) else [])
        if sigma:
            proj = [None if num(v) is None else abs(num(v)) for v in _list(probe.get("projection_sigma"))]
            right = [Series("|projection| (σ)", proj, x=steps, color=sp.PALETTE[1]),
                     Series("rotation (× RMS)", _list(probe.get("rotation_rms")), x=steps, color=sp.PALETTE[0])]
            label, hlines = "probe, noise units", [(threshold, f"--drift_stop {fmt_num(threshold, 3)} σ")] if threshold else []
        else:
            toward_roles = [None if num(v) is None else -num(v) for v in _list(probe.get("projection"))]
            right = [Series("shift toward the roles (axis lengths)", toward_roles, x=steps, color=sp.PALETTE[1])]
            label, hlines = "probe projection shift", []
        if not steps:
            return None
        vlines = [(stop.get("step"), f"stopped at step {stop.get('step')}")] if stop and num(stop.get("step")) is not None else []
        gate = [g for g in _list(probe.get("gate")) if isinstance(g, dict)]
        note = (f"gate: {sum(not g.get('passed') for g in gate)} of {len(gate)} checkpoints fail" if gate else "")
        return sp.dual_axis_chart(left, right, title="Live probe during training (train_log.jsonl)", xlabel="training step",
                                  left_label="reward", right_label=label, note=note, width=1100, height=320,
                                  right_hlines=hlines, vlines=vlines, right_include=[0.0])

    unit = ("in noise units of the probe (its bootstrap σ at train start)" if sigma
            else "in axis lengths (this run logged no noise units)")
    return {"id": "live-probe", "title": "(10) Live probe during training", "svg": _safe("live-probe", chart), "wide": True,
            "caption": f"The probe the trainer ran every few steps ({unit}) beside the logged reward; the dashed line is "
                       "the --drift_stop threshold and the vertical line the step the run stopped at. The gate's result "
                       "at each checkpoint is in the table 'Live probe' above."}


def stop_text(stop: dict[str, Any] | None) -> str:
    """One sentence: why and where ``--drift_stop`` stopped the run (empty without a stop)."""
    if not isinstance(stop, dict) or stop.get("step") is None:
        return ""
    metric = str(stop.get("metric") or "drift")
    value, threshold = num(stop.get("value_sigma")), num(stop.get("threshold_sigma"))
    patience = stop.get("patience")
    unit = "× its RMS" if metric == "rotation" else "σ"
    text = (f"Training stopped at step {stop.get('step')} by --drift_stop: the probe's {metric} read "
            f"{fmt_num(value, 3)} {unit}, beyond {fmt_num(threshold, 3)} σ")
    if patience not in (None, 1):
        text += f" for {patience} probes in a row"
    last = stop.get("last_checkpoint_within_budget")
    text += f". Last checkpoint within budget: {last}." if last else ". No checkpoint was within budget."
    return text


def _gate_cell(gate: dict[str, Any]) -> str:
    """One checkpoint's gate result for the live-probe table: PASS (with its warnings, if any) or FAIL n/N."""
    if not gate.get("passed"):
        return f"FAIL {gate.get('failed')}/{gate.get('total')}"
    warnings = gate.get("warnings") or 0
    return f"PASS, {warnings} warning{'s' if warnings != 1 else ''}" if warnings else "PASS"


def _live_probe_rows(probe: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per probe step: the probe's numbers, the reward at that step and the gate at a checkpoint there."""
    reward = probe.get("reward") or {}
    reward_at = dict(zip(_list(reward.get("steps")), _list(reward.get("values"))))
    gate_at = {g.get("step"): g for g in _list(probe.get("gate")) if isinstance(g, dict)}
    stop = probe.get("stop") if isinstance(probe.get("stop"), dict) else {}
    rows = []
    for i, step in enumerate(_list(probe.get("steps"))):
        gate = gate_at.get(step)
        rows.append({
            "step": step,
            "reward": fmt_num(reward_at.get(step), 3),
            "projection": fmt_num(_at(probe.get("projection"), i), 3),
            "projection_sigma": fmt_num(_at(probe.get("projection_sigma"), i), 3),
            "rotation_deg": fmt_num(_at(probe.get("rotation_deg"), i), 3),
            "rotation_rms": fmt_num(_at(probe.get("rotation_rms"), i), 3),
            "gate": "–" if gate is None else _gate_cell(gate),
            "gate_title": "" if gate is None else str(gate.get("worst") or ""),
            "stopped": step == stop.get("step"),
        })
    # Checkpoints between probe steps still get a row: the gate's value is what the probe is read against.
    for step, gate in gate_at.items():
        if step not in _list(probe.get("steps")):
            rows.append({"step": step, "reward": fmt_num(reward_at.get(step), 3), "projection": "–", "projection_sigma": "–",
                         "rotation_deg": "–", "rotation_rms": "–",
                         "gate": _gate_cell(gate),
                         "gate_title": str(gate.get("worst") or ""), "stopped": step == stop.get("step")})
    return sorted(rows, key=lambda r: num(r["step"]) or 0)


def live_probe_context(data: dict[str, Any]) -> dict[str, Any] | None:
    """The template's "Live probe" section: the stop sentence and the per-step rows (None without a probe log)."""
    probe = data.get("live_probe")
    if not isinstance(probe, dict):
        return None
    return {"stop": stop_text(probe.get("stop")), "rows": _live_probe_rows(probe), "sigma": _probe_in_sigma(probe),
            "threshold": fmt_num(probe.get("threshold_sigma"), 3) if num(probe.get("threshold_sigma")) is not None else ""}


def _window_segments(steps: Sequence[Any], values: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """x and y of one flat segment per checkpoint, from the previous checkpoint to it, at its window-mean value;
    None between segments so the line breaks."""
    xs: list[Any] = []
    ys: list[Any] = []
    for i, (step, value) in enumerate(zip(steps, values)):
        if i == 0 or num(value) is None or num(step) is None or num(steps[i - 1]) is None:
            continue
        xs += [steps[i - 1], step, None]
        ys += [value, value, None]
    return xs, ys


def _max_dev(matrix: Sequence[Sequence[Any]], center: float) -> float:
    devs = [abs(v - center) for row in matrix for v in (num(x) for x in _list(row)) if v is not None]
    return max(devs, default=0.0)


def _trajectory_plots(traj: dict[str, Any], all_layers: list[Any], sides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    steps = _list(traj.get("steps"))
    target = traj.get("target_layer")
    t_idx = all_layers.index(target) if target in all_layers else (target if isinstance(target, int) else 0)
    shift = _list(traj.get("projection_shift"))
    thr = _list(traj.get("projection_threshold"))
    noise = _list(traj.get("noise_projection"))
    spear = traj.get("spearman") or {}
    shift_t = [_at(row, t_idx) for row in shift]

    def pca() -> str | None:
        p = traj.get("pca") or {}
        ev = _list(p.get("explained_variance"))
        xl = f"PC1 ({fmt_num((num(_at(ev, 0)) or math.nan) * 100, 3)}% var.)" if ev else "PC1"
        yl = f"PC2 ({fmt_num((num(_at(ev, 1)) or math.nan) * 100, 3)}% var.)" if ev else "PC2"
        if not p.get("persona_xy") and not p.get("steps_xy"):
            return None
        step_labels = [f"step {s}" for s in steps]
        names, persona_xy = _list(p.get("persona_names")), _list(p.get("persona_xy"))
        if names[:1] == ["default"] and step_labels and steps[0] == 0:
            # Step 0 is the baseline's default persona itself: one point, one label.
            names, persona_xy = names[1:], persona_xy[1:]
            step_labels[0] = "step 0 = baseline default"
        return sp.trajectory_chart(_list(p.get("steps_xy")), step_labels, persona_xy, names,
                                   title="Persona space (PCA of baseline role means)", xlabel=xl, ylabel=yl,
                                   width=1100, height=480)

    def shift_vs_step() -> str | None:
        if not shift:
            return None
        t, n = num(_at(thr, t_idx)), num(_at(noise, t_idx))
        zeros = [0.0] * len(steps)
        flags = [t is not None and num(v) is not None and abs(num(v)) > t and _fails_on_side("projection", num(v), sides or {})
                 for v in shift_t]
        return sp.line_chart(steps, [Series(f"shift at layer {target}", shift_t, color=sp.PALETTE[1], flags=flags)],
                             band=_band(zeros, [t] * len(steps)), band_label="± threshold",
                             inner_band=_band(zeros, [n] * len(steps)), inner_label="± noise (1σ)",
                             hlines=[(0.0, "↑ toward the assistant · toward the roles ↓")],
                             title=f"Projection shift over training (layer {target})",
                             xlabel="training step", ylabel="projection shift", xticks=[s for s in steps if num(s) is not None],
                             width=1100, height=300)

    def reward_drift() -> str | None:
        rlog = traj.get("reward_log") or {}
        left = []
        if _list(rlog.get("reward")):
            left.append(Series("reward (logged)", _list(rlog.get("reward")), x=_list(rlog.get("steps")), color=sp.PALETTE[2],
                               markers=False, width=1.2))
        window_x, window_y = _window_segments(steps, _list(traj.get("reward")))
        if window_x:
            # A checkpoint's reward is the mean over the steps since the previous checkpoint: drawn over that window.
            left.append(Series("mean reward since the previous checkpoint", window_y, x=window_x, color=sp.PALETTE[2],
                               markers=False, width=4))
        toward_roles = [None if num(v) is None else -num(v) for v in shift_t]
        right = ([Series(f"shift toward the roles, layer {target}", toward_roles, x=steps, color=sp.PALETTE[1])]
                 if shift_t else [])
        if not left and not right:
            return None
        return sp.dual_axis_chart(left, right, title="Reward and drift over training", xlabel="training step",
                                  left_label="reward", right_label="projection shift toward the roles",
                                  note=_spearman_text(spear), width=1100, height=320)

    def layer_step() -> str | None:
        if not shift:
            return None
        # Signed toward the roles, so red means "toward the roles" here as it means "more accessible" in (4)-(5).
        ratio = [[None if num(v) is None or not num(_at(thr, j)) else -num(v) / num(thr[j]) for j, v in enumerate(_list(row))]
                 for row in shift]
        return sp.heatmap(ratio, [f"step {s}" for s in steps], all_layers, center=0.0,
                          span=sp.round_span(max(1.5, _max_dev(ratio, 0.0))), mark_abs_over=1.0,
                          title="Projection shift toward the roles ÷ threshold, per layer and step", xlabel="layer",
                          legend_label="shift / threshold", below_text="toward the assistant", above_text="toward the roles",
                          cell_height=24)

    return [
        {"id": "trajectory", "title": "(6) Trajectory in persona space", "svg": _safe("trajectory", pca), "wide": True,
         "caption": "Baseline persona means projected on their first two principal components; the path is the "
                    "default assistant at each training step."},
        {"id": "shift-vs-step", "title": "(7) Projection shift vs step", "svg": _safe("shift-vs-step", shift_vs_step),
         "wide": True, "caption": "Drift of the default persona at the target layer: below 0 toward the roles, above 0 toward "
                                  "the assistant; outside the outer band the check fails."},
        {"id": "reward-drift", "title": "(8) Reward and drift", "svg": _safe("reward-drift", reward_drift), "wide": True,
         "caption": "Thin line: reward as the trainer logged it. Thick segments: its mean over the steps since the "
                    "previous checkpoint, the value paired with that checkpoint's drift. " + _spearman_text(spear, long=True)},
        {"id": "layer-step", "title": "(9) Layer × step", "svg": _safe("layer-step", layer_step), "wide": True,
         "caption": "Projection shift relative to its threshold, red toward the roles and blue toward the assistant: "
                    "beyond ±1 (dots) a check at that layer would fail."},
    ]


def _interval(spear: dict[str, Any]) -> tuple[float, float] | None:
    lo, hi = (num(_at(_list(spear.get("ci")), i)) for i in (0, 1))
    return (lo, hi) if lo is not None and hi is not None else None


def _correlation_clear(spear: dict[str, Any]) -> bool:
    ci = _interval(spear)
    return (spear.get("n") or 0) >= MIN_PAIRS_FOR_CI and ci is not None and (ci[0] > 0 or ci[1] < 0)


def _spearman_text(spear: dict[str, Any], long: bool = False) -> str:
    rho = num(spear.get("rho")) if spear else None
    if rho is None:
        return "Spearman ρ: – (too few steps with both reward and drift)" if long else "ρ = –"
    n = spear.get("n") or 0
    ci = _interval(spear)
    ci_text = f", 95% CI [{fmt_num(ci[0], 2)}, {fmt_num(ci[1], 2)}]" if ci and n >= MIN_PAIRS_FOR_CI else ""
    if n < MIN_PAIRS_FOR_CI:
        # The bootstrap of so few pairs is degenerate (ρ often on its own bound): no interval is shown.
        short, verdict = "too few steps for an interval", f"(one needs at least {MIN_PAIRS_FOR_CI}), so no link is claimed"
    elif ci is None:
        short, verdict = "no interval (degenerate bootstrap)", "as every resample gives about the same ρ"
    else:
        short = ""
        verdict = ("the CI excludes 0: drift tracks reward" if _correlation_clear(spear)
                   else "the CI includes 0: no clear link between reward and drift")
    if not long:
        return f"Spearman ρ = {fmt_num(rho, 2)}{ci_text}, n = {n}" + (f": {short}" if short else "")
    head = (f"Spearman ρ = {fmt_num(rho, 2)} between reward and {spear.get('drift_metric', 'drift')} over n = {n} "
            f"checkpoints{ci_text}")
    return f"{head}: {short} {verdict}." if short else f"{head}; {verdict}."


def _questions(data: dict[str, Any], by_family: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The research questions, each answered from the checks and pointing at its plots."""
    def family_answer(family: str, yes: str, no: str) -> tuple[str, str, str | None]:
        checks = by_family.get(family, [])
        if not checks:
            return "n/a", "Not checked in this run.", None
        failed = [c for c in checks if not c.get("passed")]
        warned = [c for c in checks if _status(c) == "warn"]
        if failed:
            more = f" ({len(warned)} more beyond it on a side that only warns)" if warned else ""
            return "yes", yes.format(n=len(failed), t=len(checks)).rstrip(".") + more + ".", None
        if warned:
            return "yes", (f"Yes, on a side that only warns: {len(warned)} of {len(checks)} beyond threshold, "
                           "none on a side that fails."), "warn"
        return "no", no.format(t=len(checks)), None

    traj = data.get("trajectory") or {}
    spear = traj.get("spearman") if traj else None
    if not traj:
        corr = ("n/a", "Needs a training trajectory (several checkpoints with rewards); this run checked one checkpoint.")
    elif not spear or num(spear.get("rho")) is None:
        corr = ("n/a", "Too few steps with both reward and drift to estimate a correlation.")
    else:
        corr = ("yes" if _correlation_clear(spear) else "unclear", _spearman_text(spear, long=True))
    prof = (data.get("layer_profile") or {}).get("shift_over_axis")
    vals = [(num(v), i) for i, v in enumerate(_list(prof)) if num(v) is not None]
    if vals:
        top = sorted(vals, reverse=True)[:3]
        total = sum(v for v, _ in vals) or 1.0
        share = sum(v for v, _ in top) / total
        layers = _list((data.get("layers") or {}).get("all")) or list(range(len(_list(prof))))
        names = ", ".join(str(_at(layers, i)) for _, i in sorted(top, key=lambda t: t[1]))
        concentrated = share > 3 / max(len(vals), 1) * 2  # top 3 carry twice their even share
        detail = f"largest relative shift at layers {names} ({fmt_num(share * 100, 2)}% of the total over {len(vals)} layers)."
        layer_checks = by_family.get("projection", []) + by_family.get("rotation", [])
        if not any(not c.get("passed") for c in layer_checks):
            # Where noise happens to peak says nothing about where RL acts.
            layer_ans = ("no", "Nothing moved beyond noise, so there is no effect to localise; " + detail)
        else:
            layer_ans = ("yes" if concentrated else "no", detail[0].upper() + detail[1:])
    else:
        layer_ans = ("n/a", "No layer profile in this run.")
    return [
        {"q": "Does RL shift the model in persona space?", "links": [("projection", "(1)"), ("shift-vs-step", "(7)")],
         **dict(zip(("status", "answer", "cls"), family_answer(
             "projection", "Yes: projection checks fail at {n} of {t} asserted layers.",
             "No: the projection stays within threshold at all {t} asserted layers.")))},
        {"q": "Does the Assistant Axis rotate?", "links": [("rotation", "(2)")],
         **dict(zip(("status", "answer", "cls"), family_answer(
             "rotation", "Yes: the axis rotated beyond threshold at {n} of {t} asserted layers.",
             "No: rotation stays within threshold at all {t} asserted layers.")))},
        {"q": "Do personas become more or less accessible?", "links": [("accessibility", "(4)"), ("accessibility-heatmap", "(5)")],
         **dict(zip(("status", "answer", "cls"), family_answer(
             "accessibility", "Yes: {n} of {t} personas changed beyond tolerance.",
             "No: all {t} personas are within tolerance.")))},
        {"q": "Does reward correlate with drift?", "links": [("reward-drift", "(8)")], "status": corr[0], "answer": corr[1]},
        {"q": "Are the effects layer-specific?", "links": [("layer-profile", "(3)"), ("layer-step", "(9)")],
         # Layer-specificity is a description, not a failure: neutral colour either way.
         "status": layer_ans[0], "answer": layer_ans[1], "cls": "info" if layer_ans[0] != "n/a" else "na"},
    ]


def _samples(data: dict[str, Any]) -> list[dict[str, Any]]:
    samples = data.get("samples") or {}
    base, ckpt = samples.get("baseline") or {}, samples.get("checkpoint") or {}
    out = []
    for persona in list(base) + [p for p in ckpt if p not in base]:
        b, c = _list(base.get(persona)), _list(ckpt.get(persona))
        pairs = [(_at(b, i), _at(c, i)) for i in range(max(len(b), len(c)))]
        out.append({"persona": persona, "pairs": pairs})
    return out


def build_context(data: dict[str, Any]) -> dict[str, Any]:
    """Everything the template needs, with numbers formatted and plots rendered to SVG."""
    checks = [c for c in _list(data.get("checks")) if isinstance(c, dict)]
    by_family = {f: [c for c in checks if c.get("family") == f] for f in FAMILIES}
    failed = [c for c in checks if not c.get("passed")]
    n_warned = sum(_status(c) == "warn" for c in checks)
    verdict = str(data.get("verdict") or ("FAIL" if failed else "PASS")).upper()
    families = [{"name": f, "title": FAMILY_TITLES[f], "total": len(by_family[f]),
                 "failed": sum(not c.get("passed") for c in by_family[f]),
                 "warned": sum(_status(c) == "warn" for c in by_family[f]),
                 "meaning": _family_meaning(f, by_family[f], data)} for f in FAMILIES]
    # Failed first, worst (most σ) first within each group.
    ordered = sorted(checks, key=lambda c: (bool(c.get("passed")), -(num(c.get("sigmas")) if num(c.get("sigmas")) is not None else math.inf)))
    rows = [_check_row(c) for c in ordered]
    plots = _plots(data)
    traj = data.get("trajectory") or {}
    return {
        "title": data.get("title") or "Assistant-Axis drift report",
        "created": data.get("created") or "",
        "verdict": verdict,
        "n_warned": n_warned,
        "verdict_text": f"{verdict} with {n_warned} warning{'' if n_warned == 1 else 's'}" if n_warned else verdict,
        "sides": data.get("sides") or {},
        "checkpoint": data.get("checkpoint") or "–",
        "baseline_dir": data.get("baseline_dir") or "–",
        "model": data.get("model") or {},
        "persona_set": data.get("persona_set") or {},
        "thresholds": data.get("thresholds") or {},
        "timings": data.get("timings") or {},
        "versions": data.get("versions") or {},
        "layers": data.get("layers") or {},
        "n_failed": len(failed), "n_total": len(checks),
        "families": families,
        "failed_rows": [r for r in rows if not r["passed"]],
        "warned_rows": [r for r in rows if r["status"] == "warn"],
        "passed_rows": [r for r in rows if r["status"] == "pass"],
        "questions": _questions(data, by_family),
        "plots": plots,
        "plot_ids": {p["id"] for p in plots},
        "samples": _samples(data),
        "baseline_update": _list(data.get("baseline_update")),
        "update_command": data.get("update_command"),
        "trajectory": bool(traj),
        "worst_step": (traj.get("worst_step") or {}) if traj else {},
        "steps": _list(traj.get("steps")) if traj else [],
        "live_probe": live_probe_context(data),
    }


def render_report(data: dict[str, Any], path: str | Path) -> Path:
    """Write the report for ``data`` (see the module docstring; ``tests/report_example.py`` builds a full one) as one HTML file.

    Returns the path written. Parent directories are created. Model text is autoescaped by jinja2.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    html = template_env().get_template("report.html.j2").render(**build_context(data))
    path.write_text(html, encoding="utf-8")
    return path
