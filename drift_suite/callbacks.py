"""Trainer callbacks: a cheap persona-drift probe logged next to the reward while GRPO trains.

Every ``every`` optimizer steps, :class:`DriftProbeCallback` generates short answers to a small fixed subset
of the persona conversations and logs, at one layer (the middle asserted layer of the baseline):

* ``drift/projection``: how far the default assistant's mean activation moved along the Assistant Axis since
  step 0, in units of the axis length (negative = away from the assistant);
* ``drift/rotation_deg``: the angle between the subset's own axis now and at step 0.

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

from .conversations import Design, build_conversations, render_prompts
from .process import barrier, process_context
from .errors import BaselineError
from .extract import GenerationSettings, generate_and_capture
from .metrics import angle_deg, assistant_axis, group_means, projection_shift
from .personas import DEFAULT_ROLE, PersonaSet, builtin_persona_set

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


def sharded_weights(args: TrainingArguments | None) -> str:
    """The engine that shards the weights across processes (FSDP, DeepSpeed ZeRO-3), or ``""``."""
    import os

    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" or (args is not None and getattr(args, "fsdp", None)):
        return "FSDP"
    deepspeed = getattr(args, "deepspeed_plugin", None) if args is not None else None
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") or str(getattr(deepspeed, "zero_stage", ""))
    return "DeepSpeed ZeRO-3" if stage == "3" else ""


class DriftProbeCallback(TrainerCallback):
    """Log ``drift/projection`` and ``drift/rotation_deg`` every ``every`` steps (see the module docstring)."""

    def __init__(
        self,
        every: int,
        baseline_dir: str | Path | None = "baselines",
        persona_set: PersonaSet | None = None,
        design: Design = PROBE_DESIGN,
        settings: GenerationSettings = PROBE_SETTINGS,
    ):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.baseline_dir = Path(baseline_dir) if baseline_dir is not None else None
        self.persona_set = persona_set or probe_persona_set()
        self.design = design
        self.settings = settings
        self.reference: ProbeResult | None = None
        self.axis: np.ndarray | None = None
        """``(L, H)`` the axis projected on: the baseline's, or the step-0 subset's."""
        self.axis_source = ""
        self.layer = 0
        self._pending: dict[int, dict[str, float]] = {}
        self._active = False

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
        return ProbeResult(default_mean, assistant_axis(default_mean, role_means))

    def _probe_reference(self, model: torch.nn.Module, tokenizer: Any) -> ProbeResult:
        # With LoRA the untrained model is the base with adapters off, even when resuming from a checkpoint.
        if hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                return self.probe(model, tokenizer)
        return self.probe(model, tokenizer)

    def _choose_axis(self, model: torch.nn.Module, reference: ProbeResult) -> None:
        from .config import resolve_layers
        from .models import embedding_fingerprint

        num_layers = reference.default_mean.shape[0]
        baseline = None
        if self.baseline_dir is not None:
            try:
                from .baseline import FINGERPRINT_MIN_COSINE, load_baseline

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

    def drift_metrics(self, current: ProbeResult) -> dict[str, float]:
        """The logged numbers for ``current`` against the step-0 reference."""
        assert self.reference is not None and self.axis is not None, "probe the reference first"
        layer = self.layer
        shift = projection_shift(self.reference.default_mean, current.default_mean, self.axis)[layer]
        norm = float(np.linalg.norm(self.axis[layer]))
        rotation = angle_deg(current.axis[layer], self.reference.axis[layer])
        return {"drift/projection": float(shift) / max(norm, 1e-12), "drift/rotation_deg": float(rotation)}

    # -- trainer events ----------------------------------------------------------------------------------
    # Several processes (torchrun / accelerate launch): the main process probes while the others wait at a
    # barrier. Measured against sharding the conversations across ranks (scripts/probe_sharding.py, 2 gloo
    # processes on 2 busy CPU cores): main 28.7 s, sharded 23.9 s (1.2x), sharded means off by 4e-7 relative.
    # On a GPU the probe's 20 conversations cost per decode step, not per conversation, so halving them gains
    # little there; probing on one process keeps the numbers exactly those of a one-process run.
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        sharded = sharded_weights(args)
        if sharded:
            if state.is_world_process_zero:
                log.warning("drift probe: off under %s (weights are sharded across processes; one process cannot "
                            "generate alone); run drift-suite check on the checkpoints instead", sharded)
            return
        model, tokenizer = kwargs["model"], kwargs["processing_class"]
        if state.is_world_process_zero:
            start = time.perf_counter()
            self.reference = self._probe_reference(model, tokenizer)
            self._choose_axis(model, self.reference)
            seconds = time.perf_counter() - start
            others = process_context().world_size - 1
            log.warning(
                "drift probe: %d conversations every %d steps, layer %d, axis from the %s (reference took %.1f s)%s",
                len(build_conversations(self.persona_set, self.design)), self.every, self.layer, self.axis_source, seconds,
                f"; on the main process, {others} other process{'es' if others > 1 else ''} wait" if others else "",
            )
            if state.global_step == 0:
                state.log_history.append({"drift/projection": 0.0, "drift/rotation_deg": 0.0, "drift/layer": self.layer, "step": 0})
        self._active = True
        barrier()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if not self._active or state.global_step % self.every:
            return control
        if self.reference is not None:  # the main process
            start = time.perf_counter()
            metrics = self.drift_metrics(self.probe(kwargs["model"], kwargs["processing_class"]))
            metrics["drift/probe_s"] = round(time.perf_counter() - start, 2)
            self._pending[state.global_step] = metrics
        barrier()
        # Log at this step even off the --logging_steps grid, so the drift sits next to a reward. Every rank
        # sets it: the trainer's logging gathers the loss across processes.
        control.should_log = True
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

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        for step, metrics in sorted(self._pending.items()):  # a probe whose log never came
            state.log_history.append({**metrics, "step": step})
        self._pending.clear()
        return control


# ------------------------------------------------------------------------------------------ training log

SUMMARY_KEYS = (("reward", "reward {:.3f}"), ("reward_std", "± {:.3f}"), ("loss", "loss {:.4g}"),
                ("drift/projection", "drift {:+.4f}"), ("drift/rotation_deg", "{:.1f}°"))


def summary_line(entry: dict[str, Any], max_steps: int, seconds_per_step: float | None) -> str:
    """One terminal line for one trainer log: step, reward (± std), loss, drift if probed, s/step."""
    if "train_runtime" in entry:  # the trainer's end-of-training log
        return f"done: {entry.get('step', '?')} steps in {entry['train_runtime']:.0f} s"
    parts = [f"step {entry.get('step', '?')}" + (f"/{max_steps}" if max_steps > 0 else "")]
    parts += [template.format(entry[key]) for key, template in SUMMARY_KEYS if isinstance(entry.get(key), (int, float))]
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
