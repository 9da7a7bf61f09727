"""Trainer callbacks: a cheap persona-drift probe logged next to the reward while GRPO trains.

Every ``every`` optimizer steps, :class:`DriftProbeCallback` generates short answers to a small fixed subset
of the persona conversations and logs, at one layer (the middle asserted layer of the baseline):

* ``drift/projection``: how far the default assistant's mean activation moved along the Assistant Axis since
  step 0, in units of the axis length (negative = away from the assistant);
* ``drift/rotation_deg``: the angle between the subset's own axis now and at step 0;
* ``drift/projection_sigma`` and ``drift/rotation_rms``: the same two in noise units. At train start the probe
  bootstraps its own conversations on the untrained model (stratified by persona, as the gate's noise floor
  is made) for the σ of the projection and the RMS of the angle; ``drift/sigma`` is the larger of the two
  magnitudes, the number ``stop_sigma`` (``--drift_stop``) is compared with. :data:`PROBE_KEYS` lists all keys.

The baseline stores per-persona means of the *full* design; a subset's means differ from those by sampling
alone, so the probe never compares its means with the baseline's. It compares the subset with itself on the
untrained model (measured at train start) and borrows only the baseline's axis *direction and length*. These
numbers are a trend for stopping a run early, not the gate: run ``drift-suite check`` on the checkpoints.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from ..measure.conversations import Design, build_conversations, render_prompts
from ..common.errors import BaselineError, NonFiniteError, one_line
from ..common.process import barrier, process_context
from ..measure.extract import GenerationSettings, generate_and_capture
from ..common.metrics import angle_deg, assistant_axis, group_means, projection_shift
from ..measure.personas import DEFAULT_ROLE, PersonaSet, builtin_persona_set

log = logging.getLogger(__name__)

# Roles from both ends of the built-in set (assistant-like to far away), so the subset axis is well defined.
PROBE_ROLES = ("tutor", "librarian", "pirate", "ghost", "nihilist", "trickster")
PROBE_DESIGN = Design(default_questions=4, role_prompts=1, role_questions=2)
PROBE_SETTINGS = GenerationSettings(max_new_tokens=24)


def probe_persona_set(full: PersonaSet | None = None) -> PersonaSet:
    """The probe's fixed subset: 2 default prompts, 6 contrasting roles with one wording, 4 questions."""
    full = full or builtin_persona_set()
    roles = [r for r in PROBE_ROLES if r in full.roles] or full.role_names[:: max(1, len(full.roles) // 6)][:6]
    return PersonaSet(
        name=f"{full.name}[probe]",
        default_prompts=full.default_prompts[:2],
        roles={r: full.roles[r][:1] for r in roles},
        questions=full.questions[:4],
    )


@dataclass
class ProbeResult:
    """Per-layer means of one probe measurement."""

    default_mean: np.ndarray
    """``(L, H)``"""
    axis: np.ndarray
    """``(L, H)`` the subset's own Assistant Axis."""
    means: np.ndarray | None = None
    """``(N, L, H)`` per-conversation means (what the noise floor resamples)."""
    labels: np.ndarray | None = None
    """``(N,)`` persona of each conversation."""


@dataclass
class ProbeNoise:
    """The probe's own noise floor at its layer, bootstrapped over its conversations on the untrained model."""

    projection: float
    """σ of the default persona's projection, in axis lengths (the unit of ``drift/projection``)."""
    rotation_deg: float
    """Bootstrap RMS angle of the subset's axis, in degrees (the unit of ``drift/rotation_deg``)."""
    n_boot: int


def stop_reading(metric: str, value_sigma: float) -> str:
    """A drift stop's reading in words: ``projection -4.2σ`` or ``rotation 3.1× RMS``."""
    return f"projection {value_sigma:+.1f}σ" if metric == "projection" else f"rotation {value_sigma:.1f}× RMS"


def sharded_weights(args: TrainingArguments | None) -> str:
    """The engine that shards the weights across processes (FSDP, DeepSpeed ZeRO-3), or ``""``."""
    import os

    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" or (args is not None and getattr(args, "fsdp", None)):
        return "FSDP"
    deepspeed = getattr(args, "deepspeed_plugin", None) if args is not None else None
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") or str(getattr(deepspeed, "zero_stage", ""))
    return "DeepSpeed ZeRO-3" if stage == "3" else ""


def _callback_handler_of(callback: TrainerCallback, depth: int = 4) -> Any:
    """The ``CallbackHandler`` dispatching the event ``callback`` is handling now, or None.

    A callback is not handed its handler or trainer; the handler is the caller a frame or two up the stack
    (``CallbackHandler.call_event``), found by identity, so a test calling the event itself gets None.
    """
    import sys

    from transformers.trainer_callback import CallbackHandler

    frame = sys._getframe(2)
    for _ in range(depth):
        if frame is None:
            return None
        handler = frame.f_locals.get("self")
        if isinstance(handler, CallbackHandler) and any(c is callback for c in handler.callbacks):
            return handler
        frame = frame.f_back
    return None


PROBE_KEYS = {
    "drift/projection": "shift of the default persona along the axis since step 0, in axis lengths",
    "drift/rotation_deg": "angle between the probe subset's axis now and at step 0, degrees",
    "drift/projection_sigma": "drift/projection in noise units: / the probe's bootstrap σ (signed)",
    "drift/rotation_rms": "drift/rotation_deg in noise units: / the probe's bootstrap RMS angle",
    "drift/sigma": "max(|drift/projection_sigma|, drift/rotation_rms): what --drift_stop compares with K",
    "drift/probe_s": "seconds the probe took",
    "drift/layer": "the layer probed (step 0 and the first probe)",
    "drift/noise_projection": "the probe's σ of drift/projection, axis lengths (step 0 and the first probe)",
    "drift/noise_rotation_deg": "the probe's RMS of drift/rotation_deg, degrees (step 0 and the first probe)",
}
"""Every key :class:`DriftProbeCallback` logs, and what it holds."""


class DriftProbeCallback(TrainerCallback):
    """Log the drift probe's numbers every ``every`` steps (see the module docstring and :data:`PROBE_KEYS`).

    The numbers reach every ``report_to`` integration (TensorBoard, W&B, MLflow, ...) at the step they were
    measured: the probe moves itself to the head of the trainer's callback list when the trainer starts, so
    its ``on_log`` adds them to the log before the integrations write it, whatever order it was given in.

    ``stop_sigma`` (K) and ``patience`` (N): when ``drift/sigma`` passes K for N probes in a row, the probe
    saves a checkpoint and stops training; :attr:`stop` then says why.
    """

    def __init__(
        self,
        every: int,
        baseline_dir: str | Path | None = "baselines",
        persona_set: PersonaSet | None = None,
        design: Design = PROBE_DESIGN,
        settings: GenerationSettings = PROBE_SETTINGS,
        stop_sigma: float | None = None,
        patience: int = 1,
        n_boot: int = 200,
        seed: int = 0,
    ):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if stop_sigma is not None and not stop_sigma > 0:
            raise ValueError(f"stop_sigma must be > 0 (noise-floor units), got {stop_sigma}")
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.every = every
        self.baseline_dir = Path(baseline_dir) if baseline_dir is not None else None
        self.persona_set = persona_set or probe_persona_set()
        self.design = design
        self.settings = settings
        self.stop_sigma = stop_sigma
        self.patience = patience
        self.n_boot = n_boot
        self.seed = seed
        self.reference: ProbeResult | None = None
        self.axis: np.ndarray | None = None
        """``(L, H)`` the axis projected on: the baseline's, or the step-0 subset's."""
        self.axis_source = ""
        self.layer = 0
        self.noise: ProbeNoise | None = None
        self.stop: dict[str, Any] | None = None
        """Set when the probe stopped the run: step, metric, value_sigma, threshold_sigma, patience."""
        self._over = 0
        self._pending: dict[int, dict[str, float]] = {}
        self._constants_logged = False
        self._active = False
        self.latest: tuple[int, dict[str, float]] | None = None
        """``(step, metrics)`` of the last probe."""

    # -- measuring ---------------------------------------------------------------------------------------
    def probe(self, model: torch.nn.Module, tokenizer: Any) -> ProbeResult:
        """Measure the subset on ``model`` as it is now (eval mode and no grad; restores train mode)."""
        # Decode with the wrapped model (the LoRA layers are injected into it and active): its decoder layers
        # are the ones the capture hooks find, and it takes the cache keyword of its own transformers class.
        target = model.get_base_model() if hasattr(model, "get_base_model") else model
        conversations = build_conversations(self.persona_set, self.design)
        labels = np.array([c.role for c in conversations])
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                prompts = render_prompts(tokenizer, conversations)
                # Not measure(): it hashes every weight for its cache key, costly for a 2B model each probe.
                # No CUDA graphs inside a training run: a capture would hold a memory pool beside the
                # optimizer's and must not overlap other streams' work (DDP's); the probe is a few batches.
                extraction = generate_and_capture(target, tokenizer, prompts, self.settings, progress=False, cuda_graphs=False)
        finally:
            model.train(was_training)
        default_mean = extraction.means[labels == DEFAULT_ROLE].mean(axis=0)
        role_means = group_means(extraction.means, labels, self.persona_set.role_names)
        return ProbeResult(default_mean, assistant_axis(default_mean, role_means), extraction.means, labels)

    def _probe_reference(self, model: torch.nn.Module, tokenizer: Any) -> ProbeResult:
        # With LoRA the untrained model is the base with adapters off, even when resuming from a checkpoint.
        if hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                return self.probe(model, tokenizer)
        return self.probe(model, tokenizer)

    def _choose_axis(self, model: torch.nn.Module, reference: ProbeResult) -> None:
        from ..gate.config import resolve_layers
        from ..measure.models import embedding_fingerprint

        num_layers = reference.default_mean.shape[0]
        baseline = None
        if self.baseline_dir is not None:
            try:
                from ..gate.baseline import FINGERPRINT_MIN_COSINE, load_baseline

                baseline = load_baseline(self.baseline_dir)
                if baseline.default_mean.shape != reference.default_mean.shape:
                    raise BaselineError(f"made for a model of shape {baseline.default_mean.shape}")
                theirs = baseline.embed_fingerprint.ravel()
                ours = embedding_fingerprint(model).ravel()
                cosine = float(np.dot(theirs, ours) / max(np.linalg.norm(theirs) * np.linalg.norm(ours), 1e-12))
                if theirs.shape != ours.shape or cosine < FINGERPRINT_MIN_COSINE:
                    raise BaselineError("made for another model (embedding fingerprint differs)")
            except BaselineError as exc:
                log.warning("drift probe: baseline in %s not used (%s); projecting on the step-0 subset axis", self.baseline_dir, exc)
                baseline = None
        if baseline is not None:
            self.axis, self.axis_source = baseline.axis, f"baseline {self.baseline_dir}"
            layers = baseline.asserted_layers
        else:
            self.axis, self.axis_source = reference.axis, "step-0 probe subset"
            layers = resolve_layers("auto", num_layers)
        self.layer = layers[len(layers) // 2]

    def noise_floor(self, reference: ProbeResult) -> ProbeNoise:
        """The probe's noise at its layer: the gate's stratified bootstrap over the reference's conversations."""
        from ..common.metrics import bootstrap_noise_floor

        assert reference.means is not None and reference.labels is not None and self.axis is not None
        floor = bootstrap_noise_floor(
            reference.means, reference.labels, self.persona_set.role_names, DEFAULT_ROLE, [self.layer],
            n_boot=self.n_boot, seed=self.seed, projection_axis=self.axis,
        )  # fmt: skip
        norm = max(float(np.linalg.norm(self.axis[self.layer])), 1e-12)
        return ProbeNoise(float(floor.projection[self.layer]) / norm, float(floor.angle_deg[self.layer]), self.n_boot)

    def drift_metrics(self, current: ProbeResult) -> dict[str, float]:
        """The logged numbers for ``current`` against the step-0 reference (σ units once the noise is known)."""
        assert self.reference is not None and self.axis is not None, "probe the reference first"
        layer = self.layer
        shift = projection_shift(self.reference.default_mean, current.default_mean, self.axis)[layer]
        norm = float(np.linalg.norm(self.axis[layer]))
        rotation = angle_deg(current.axis[layer], self.reference.axis[layer])
        metrics = {"drift/projection": float(shift) / max(norm, 1e-12), "drift/rotation_deg": float(rotation)}
        if self.noise is not None and self.noise.projection > 0 and self.noise.rotation_deg > 0:
            metrics["drift/projection_sigma"] = metrics["drift/projection"] / self.noise.projection
            metrics["drift/rotation_rms"] = metrics["drift/rotation_deg"] / self.noise.rotation_deg
            metrics["drift/sigma"] = max(abs(metrics["drift/projection_sigma"]), metrics["drift/rotation_rms"])
        return metrics

    def _constants(self) -> dict[str, float]:
        constants: dict[str, float] = {"drift/layer": self.layer}
        if self.noise is not None:
            constants |= {"drift/noise_projection": self.noise.projection, "drift/noise_rotation_deg": self.noise.rotation_deg}
        return constants

    def _judge(self, step: int, metrics: dict[str, float]) -> bool:
        """Whether this probe ends the run under ``stop_sigma``/``patience`` (records :attr:`stop` if so)."""
        if self.stop_sigma is None or self.stop is not None or "drift/sigma" not in metrics:
            return False
        self._over = self._over + 1 if metrics["drift/sigma"] > self.stop_sigma else 0
        if self._over < self.patience:
            return False
        projection, rotation = abs(metrics["drift/projection_sigma"]), metrics["drift/rotation_rms"]
        metric, value = ("projection", metrics["drift/projection_sigma"]) if projection >= rotation else ("rotation", rotation)
        self.stop = {"step": step, "metric": metric, "value_sigma": float(value), "threshold_sigma": float(self.stop_sigma),
                     "patience": self.patience}
        reading = stop_reading(metric, value)
        log.warning("drift probe: stopping at step %d: %s past %gσ for %d probe(s) in a row; saving checkpoint-%d",
                    step, reading, self.stop_sigma, self.patience, step)
        return True

    def last_step_within_budget(self, log_history: list[dict[str, Any]], checkpoint_steps: list[int]) -> int | None:
        """The last of ``checkpoint_steps`` whose latest probe (at or before it) read within ``stop_sigma``.

        A checkpoint saved before the first probe counts as within budget (the model then is the step-0 one
        or close to it, and the step-0 reading is 0 σ); None when no checkpoint qualifies or no threshold is set.
        """
        if self.stop_sigma is None:
            return None
        readings = sorted((int(e["step"]), float(e["drift/sigma"])) for e in log_history if "drift/sigma" in e and "step" in e)
        within = None
        for step in sorted(checkpoint_steps):
            latest = [sigma for probe_step, sigma in readings if probe_step <= step]
            if not latest or latest[-1] <= self.stop_sigma:
                within = step
        return within

    # -- trainer events ----------------------------------------------------------------------------------
    def _lead(self) -> None:
        # transformers calls on_log in list order: its defaults, then the report_to integrations, then the
        # callbacks given to the trainer. At the head of the list the probe's numbers are in ``logs`` before
        # TensorBoard/W&B/MLflow write it. The probe only adds to logs and only sets control flags, so running
        # before DefaultFlowCallback changes nothing else.
        handler = _callback_handler_of(self)
        if handler is not None and handler.callbacks[0] is not self:
            handler.callbacks = [self, *(c for c in handler.callbacks if c is not self)]

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self._lead()
        return control

    # Several processes (torchrun / accelerate launch): the main process probes while the others wait at a
    # barrier. Measured against sharding the conversations across ranks (scripts/probe_sharding.py, 2 gloo
    # processes on 2 busy CPU cores): main 28.7 s, sharded 23.9 s (1.2x), sharded means off by 4e-7 relative.
    # On a GPU the probe's 20 conversations cost per decode step, not per conversation, so halving them gains
    # little there; probing on one process keeps the numbers exactly those of a one-process run.
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self._lead()  # again: a callback added with trainer.add_callback after __init__ missed on_init_end
        sharded = sharded_weights(args)
        if sharded:
            if state.is_world_process_zero:
                log.warning("drift probe: off under %s (weights are sharded across processes; one process cannot "
                            "generate alone); run drift-suite check on the checkpoints instead", sharded)
            return
        model, tokenizer = kwargs["model"], kwargs["processing_class"]
        if state.is_world_process_zero:
            start = time.perf_counter()
            try:
                self.reference = self._probe_reference(model, tokenizer)
            except NonFiniteError as exc:
                log.error("drift probe: off, the untrained model's measurement failed: %s", one_line(exc))
                self.reference = None
            if self.reference is not None:
                self._choose_axis(model, self.reference)
                self.noise = self.noise_floor(self.reference)
                if not (self.noise.projection > 0 and self.noise.rotation_deg > 0):
                    log.warning("drift probe: its noise floor is zero (identical conversations?); no σ units and no --drift_stop")
                seconds = time.perf_counter() - start
                others = process_context().world_size - 1
                log.warning(
                    "drift probe: %d conversations every %d steps, layer %d, axis from the %s, noise floor σ %.4f axis "
                    "lengths / RMS %.2f° (reference took %.1f s)%s",
                    len(build_conversations(self.persona_set, self.design)), self.every, self.layer, self.axis_source,
                    self.noise.projection, self.noise.rotation_deg, seconds,
                    f"; on the main process, {others} other process{'es' if others > 1 else ''} wait" if others else "",
                )  # fmt: skip
                if state.global_step == 0:
                    zero = {"drift/projection": 0.0, "drift/rotation_deg": 0.0}
                    if self.noise.projection > 0 and self.noise.rotation_deg > 0:
                        zero |= {"drift/projection_sigma": 0.0, "drift/rotation_rms": 0.0, "drift/sigma": 0.0}
                    state.log_history.append({**zero, **self._constants(), "step": 0})
        self._active = True
        barrier()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if not self._active or state.global_step % self.every:
            return control
        stop = False
        if self.reference is not None:  # the main process
            start = time.perf_counter()
            try:
                metrics = self.drift_metrics(self.probe(kwargs["model"], kwargs["processing_class"]))
            except NonFiniteError as exc:
                log.error("drift probe: step %d: %s; no drift numbers at this step, training goes on", state.global_step, one_line(exc))
                metrics = None
            if metrics is not None:
                metrics["drift/probe_s"] = round(time.perf_counter() - start, 2)
                if not self._constants_logged:  # once where the trackers see it (step 0 is never logged to them)
                    metrics |= self._constants()
                    self._constants_logged = True
                self._pending[state.global_step] = metrics
                self.latest = (state.global_step, metrics)
                stop = self._judge(state.global_step, metrics)
        if process_context().distributed:
            # Every rank waits for the probe and stops with it, and holds its numbers for on_evaluate (the
            # trainer picks the best checkpoint on every rank).
            from ..common.process import all_gather_bytes

            shared = json.loads(all_gather_bytes(json.dumps({"stop": stop, "metrics": self.latest}).encode())[0])
            stop = shared["stop"]
            if self.reference is None and shared["metrics"] is not None:
                self.latest = (int(shared["metrics"][0]), shared["metrics"][1])
        # Log at this step even off the --logging_steps grid, so the drift sits next to a reward. Every rank
        # sets it: the trainer's logging gathers the loss across processes.
        control.should_log = True
        if stop:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs: Any):
        metrics = self._pending.pop(state.global_step, None)
        if metrics is None:
            return control
        if logs is not None:
            logs.update(metrics)  # what the progress bar prints
        # Trainer.log stored a copy of ``logs`` before calling us; amend that entry, which is what gets saved.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(metrics)
        else:
            state.log_history.append({**metrics, "step": state.global_step})
        return control

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, metrics=None, **kwargs: Any):
        # The latest probe's numbers as eval metrics (eval_drift/sigma, ...), so metric_for_best_model and
        # EarlyStoppingCallback can use them; the probe runs before both (it leads the callback list, and the
        # trainer picks the best checkpoint from this same dict after the callbacks).
        if metrics is not None and self.latest is not None:
            metrics.update({f"eval_{key}": value for key, value in self.latest[1].items() if key in PROBE_KEYS})
        return control

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        for step, metrics in sorted(self._pending.items()):  # a probe whose log never came
            state.log_history.append({**metrics, "step": step})
        self._pending.clear()
        return control


# ------------------------------------------------------------------------------------------ training log

SUMMARY_KEYS = (("reward", "reward {:.3f}"), ("reward_std", "± {:.3f}"), ("loss", "loss {:.4g}"),
                ("drift/projection", "drift {:+.4f}"), ("drift/projection_sigma", " ({:+.1f}σ)"),
                ("drift/rotation_deg", "{:.1f}°"), ("drift/rotation_rms", " ({:.1f}× rms)"))
"""(log key, template) of the terminal line; a template starting with a space joins the part before it."""


def summary_line(entry: dict[str, Any], max_steps: int, seconds_per_step: float | None) -> str:
    """One terminal line for one trainer log: step, reward (± std), loss, drift if probed, s/step."""
    if "train_runtime" in entry:  # the trainer's end-of-training log
        return f"done: {entry.get('step', '?')} steps in {entry['train_runtime']:.0f} s"
    parts = [f"step {entry.get('step', '?')}" + (f"/{max_steps}" if max_steps > 0 else "")]
    for key, template in SUMMARY_KEYS:
        if isinstance(entry.get(key), (int, float)):
            if template.startswith(" "):
                parts[-1] += template.format(entry[key])
            else:
                parts.append(template.format(entry[key]))
    if seconds_per_step is not None:
        parts.append(f"{seconds_per_step:.1f} s/step")
    return "  ".join(parts)


class TrainingLogCallback(TrainerCallback):
    """Every trainer log in full to ``path`` (JSON lines) and one summary line per log on the terminal.

    Main process only. Registered after :class:`DriftProbeCallback`, so the drift numbers it adds to a log
    are in the line. A fresh run (step 0) starts the file anew; a resumed run appends.
    """

    def __init__(self, path: str | Path, print_line: Any = print):
        self.path = Path(path)
        self.print_line = print_line
        self._last: tuple[float, int] | None = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if state.is_world_process_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if state.global_step == 0:
                self.path.write_text("")
        self._last = (time.perf_counter(), state.global_step)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs: Any):
        if not state.is_world_process_zero or logs is None:
            return control
        entry = {"step": state.global_step, **logs}
        with self.path.open("a") as handle:  # one whole line per write: a crash loses at most the last entry
            handle.write(json.dumps(entry, default=str) + "\n")
        now, seconds_per_step = time.perf_counter(), None
        if self._last is not None and state.global_step > self._last[1]:
            seconds_per_step = (now - self._last[0]) / (state.global_step - self._last[1])
            self._last = (now, state.global_step)
        self.print_line(summary_line(entry, state.max_steps, seconds_per_step))
        return control
