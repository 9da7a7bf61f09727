"""The whole check without pytest: load → measure → compare with the baseline (or write it) → report data.

``DriftCheck(checkpoint, baseline_dir).run()`` is what the pytest plugin and the CLI call. ``checkpoint``
is one checkpoint (full or adapter dir, or hub id) or a training run dir holding ``checkpoint-N`` dirs;
for a run, step 0 is the baseline itself (the base model measured the same way) and every checkpoint is
measured and compared, the gate taking the worst step.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .baseline import (
    Baseline,
    baseline_write_lock,
    check_compatible,
    check_placement,
    create_baseline,
    describe_changes,
    load_baseline,
    save_baseline,
)
from .compare import Check, Comparison, compare
from .config import DriftConfig, resolve_layers
from ..measure.distributed import measure_across_processes
from ..common.process import on_main_then_share, process_context
from ..common.errors import BaselineError, CheckpointError, DriftSuiteError
from ..measure.measurement import Measurement, measure
from ..common.metrics import pca_fit, pca_transform, spearman, spearman_bootstrap_ci
from ..measure.models import (
    LoadedModel,
    adapter_base_model,
    check_if_local,
    check_model_dir,
    embedding_fingerprint,
    find_run_checkpoints,
    is_run_dir,
    load_model,
    looks_like_path,
    quantization_kwargs,
    read_model_shape,
)
from ..measure.personas import PersonaSet, resolve_persona_set
from ..measure.placement import Placement, resolve_placement
from ..common.progress import ConsoleReporter, Reporter, SilentReporter

RUN_MANIFEST = "run_manifest.json"

log = logging.getLogger(__name__)


@dataclass
class StepResult:
    step: int
    checkpoint: str
    comparison: Comparison
    measurement: Measurement


@dataclass
class DriftOutcome:
    """Everything a run found: the baseline, one comparison per checkpoint (one for a single checkpoint)."""

    checkpoint: str
    baseline_dir: str
    baseline: Baseline
    steps: list[StepResult]
    config: DriftConfig
    baseline_update: list[str] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    rewards: dict[int, float] = field(default_factory=dict)
    """``{step: reward}`` as logged by the trainer (run dirs only; every logged step, not just saved ones)."""
    placement: Placement | None = None
    """Where and in what precision the checkpoints were measured."""

    @property
    def is_run(self) -> bool:
        return any(result.step is not None for result in self.steps)

    @property
    def final(self) -> StepResult:
        return self.steps[-1]

    def decoder_notes(self) -> list[str]:
        """Each generation path other than the plain fast one that measured a step, with why (summary lines)."""
        return [d for d in dict.fromkeys(result.measurement.decoder for result in self.steps) if d != "fast"]

    def gate_checks(self) -> list[Check]:
        """One check per (family, subject): the worst over steps, so the gate names the step that failed.

        Worst is a failure before a warning before a pass, then the larger severity (the earlier step on a
        tie): a step that fails is never hidden behind a bigger change on a side that only warns.
        """
        worst: dict[tuple[str, str], Check] = {}
        for result in self.steps:
            for check in result.comparison.checks:
                key = (check.family, check.subject)
                if key not in worst or _gate_rank(check) > _gate_rank(worst[key]):
                    worst[key] = check
        return list(worst.values())

    def gate_warnings(self) -> list[Check]:
        """The gate checks beyond their threshold on a side that only warns, largest first."""
        return sorted((c for c in self.gate_checks() if c.warning), key=lambda c: -_gate_rank(c)[1])

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.gate_checks())


_STATUS_RANK = {"pass": 0, "warn": 1, "fail": 2}


def _gate_rank(check: Check) -> tuple[int, float]:
    """Status first, then severity; a not-finite severity (a broken value) ranks above every finite one."""
    severity = check.severity
    return _STATUS_RANK[check.status], math.inf if math.isnan(severity) else severity


def read_reward_log(run_dir: str | Path) -> dict[int, float]:
    """``{step: reward}`` from the trainer's ``log_history`` (the newest ``trainer_state.json`` in the run)."""
    root = Path(run_dir)
    candidates = [root / "trainer_state.json"] + [p / "trainer_state.json" for p in reversed(find_run_checkpoints(root).values())]
    for path in candidates:
        if path.is_file():
            try:
                history = json.loads(path.read_text()).get("log_history", [])
                return {int(entry["step"]): float(entry["reward"]) for entry in history if "reward" in entry and "step" in entry}
            except (ValueError, TypeError, AttributeError, RecursionError) as exc:  # the reward plot is optional
                log.warning("%s: unreadable trainer log (%s); reward curve left out", path, type(exc).__name__)
                return {}
    return {}


def reward_at_steps(reward_log: dict[int, float], steps: list[int]) -> list[float | None]:
    """The mean logged reward since the previous saved step, for each saved step."""
    values: list[float | None] = []
    previous = 0
    for step in steps:
        window = [r for s, r in reward_log.items() if previous < s <= step]
        values.append(float(np.mean(window)) if window else None)
        previous = step
    return values


class DriftCheck:
    """Check a checkpoint or a run against a baseline; ``update_baseline=True`` writes the baseline instead."""

    def __init__(
        self,
        checkpoint: str | Path,
        baseline_dir: str | Path = "baselines",
        base_model: str | None = None,
        persona_set: PersonaSet | str | Path | None = None,
        config: DriftConfig = DriftConfig(),
        cache_dir: str | Path | None = ".drift_cache",
        update_baseline: bool = False,
        use_4bit: bool = False,
        trust_remote_code: bool = False,
        progress: bool | Reporter = True,
        baseline_from_checkpoint: bool = False,
    ):
        """``progress``: True shows it on stderr, False shows nothing, or a :class:`~drift_suite.common.progress.Reporter`.
        ``baseline_from_checkpoint``: ``update_baseline`` measures a fine-tuned checkpoint itself rather than
        its base model (the default measures the base, so a fine-tune never becomes its own reference)."""
        self.checkpoint = str(checkpoint)
        self.baseline_dir = Path(baseline_dir)
        self.base_model = base_model
        self.persona_set = persona_set if isinstance(persona_set, PersonaSet) else resolve_persona_set(persona_set or config.persona_set)
        self.config = config
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.update_baseline = update_baseline
        self.use_4bit = use_4bit
        self.trust_remote_code = trust_remote_code
        self.placement = resolve_placement(config.device, config.dtype, config.device_map)
        # Under torchrun / accelerate launch only the main process shows progress.
        show_progress = process_context().is_main
        self.reporter: Reporter = (
            progress if not isinstance(progress, bool) else ConsoleReporter() if progress and show_progress else SilentReporter()
        )
        self.baseline_from_checkpoint = baseline_from_checkpoint
        self._stored_baseline: Baseline | None = None

    # -- planning (cheap: no weights) -------------------------------------------------------------------
    def targets(self) -> list[tuple[int | None, str]]:
        """``[(step, path)]`` to measure: one checkpoint, or every ``checkpoint-N`` of a run (plus ``final``)."""
        if is_run_dir(self.checkpoint):
            targets: list[tuple[int | None, str]] = [(step, str(path)) for step, path in find_run_checkpoints(self.checkpoint).items()]
            return targets
        return [(None, self.checkpoint)]

    def base_of_checkpoint(self) -> tuple[str, str] | None:
        """``(base model, where it was found)`` for a fine-tuned checkpoint or a run; None for a model of its own.

        Fine-tuned: a run dir, an adapter dir, or a dir inside a run (``checkpoint-N``, ``final``) whose
        run dir holds ``run_manifest.json``. ``--base-model`` overrides what the files say.
        """
        path = Path(self.checkpoint).expanduser()
        if self.base_model:
            return self.base_model, "--base-model"
        if is_run_dir(path):
            if (path / RUN_MANIFEST).is_file():
                return _manifest_model(path / RUN_MANIFEST), f"its {RUN_MANIFEST}"
            raise CheckpointError(f"{self.checkpoint}: a run dir without {RUN_MANIFEST}; pass --base-model to name its base model")
        if (path / "adapter_config.json").is_file():
            return adapter_base_model(path), "its adapter_config.json"
        if path.is_dir() and (path.parent / RUN_MANIFEST).is_file():
            return _manifest_model(path.parent / RUN_MANIFEST), f"{path.parent / RUN_MANIFEST}"
        return None

    def reference_model(self) -> str:
        """What ``--update-baselines`` measures: the base model of a fine-tuned checkpoint or run, else the checkpoint."""
        base = None if self.baseline_from_checkpoint else self.base_of_checkpoint()
        return base[0] if base else self.checkpoint

    def reference_description(self) -> str:
        """Whose baseline ``--update-baselines`` writes, for the summary: ``BASE (base model of CKPT, from …)``."""
        if self.baseline_from_checkpoint:
            return f"{self.checkpoint} itself (--baseline-from-checkpoint)"
        base = self.base_of_checkpoint()
        if base is None:
            return self.checkpoint
        return f"{base[0]} (base model of {self.checkpoint}, from {base[1]})"

    def validate(self) -> None:
        """Cheap checks before any weights load: options, checkpoint and base dirs, the baseline (unless updating)."""
        quantization_kwargs(self.use_4bit)  # --use-4bit without CUDA is refused here, before anything loads
        if self.baseline_from_checkpoint and is_run_dir(self.checkpoint):
            raise CheckpointError(f"{self.checkpoint}: --baseline-from-checkpoint takes one checkpoint, not a run dir")
        for _step, path in self.targets():
            if looks_like_path(path):
                check_model_dir(Path(path).expanduser())
                if (Path(path).expanduser() / "adapter_config.json").is_file():
                    check_if_local(adapter_base_model(Path(path).expanduser(), self.base_model), f"base model of adapter {path}")
        if self.update_baseline:
            check_if_local(self.reference_model(), "reference model for --update-baselines")
        else:
            self.check_placement_early(self.stored_baseline())

    def check_placement_early(self, baseline: Baseline) -> None:
        """Refuse a baseline of another precision before any weights load (check_compatible repeats it after)."""
        if not self.use_4bit:
            planned = {"device_type": self.placement.device_type, "dtype": self.placement.dtype, "gpu_name": self.placement.gpu_name}
            check_placement(baseline.manifest["model"], planned)

    def stored_baseline(self) -> Baseline:
        """The baseline on disk, read once (planning, validation and the run share it)."""
        if self._stored_baseline is None:
            try:
                hint = self.reference_model()
            except DriftSuiteError:
                hint = "<base model>"
            self._stored_baseline = load_baseline(self.baseline_dir, checkpoint_hint=hint)
        return self._stored_baseline

    def planned_layers(self) -> list[int]:
        """Asserted layers, known before any weights are loaded (for test parametrization)."""
        if not self.update_baseline and (self.baseline_dir / "manifest.json").is_file():
            try:
                return self.stored_baseline().asserted_layers
            except BaselineError:
                pass
        spec = self.reference_model() if self.update_baseline else self.targets()[0][1]
        num_layers, _ = read_model_shape(spec, self.base_model, trust_remote_code=self.trust_remote_code)
        return resolve_layers(self.config.layers, num_layers)

    def planned_roles(self) -> list[str]:
        return self.persona_set.role_names

    # -- work ------------------------------------------------------------------------------------------
    def _load(self, spec: str) -> LoadedModel:
        return load_model(
            spec,
            base_model=self.base_model,
            placement=self.placement,
            use_4bit=self.use_4bit,
            trust_remote_code=self.trust_remote_code,
        )

    def _timed_load(self, spec: str, label: str) -> tuple[LoadedModel, float]:
        start = time.perf_counter()
        loaded = self._load(spec)
        seconds = time.perf_counter() - start
        self.reporter.stage(f"load {label}: {seconds:.1f} s")
        return loaded, seconds

    def _measure(self, loaded: LoadedModel, label: str) -> Measurement:
        measurement = measure(
            loaded,
            self.persona_set,
            self.config.design,
            self.config.generation,
            cache_dir=self.cache_dir,
            progress=self.reporter.task(f"measure {label}"),
        )
        if measurement.from_cache:
            self.reporter.stage(f"measure {label}: from the cache ({sum(measurement.timings.values()):.1f} s)")
        return measurement

    def write_baseline(self) -> tuple[Baseline, list[str]]:
        """Measure the reference model and write its baseline; returns it and what changed."""
        with baseline_write_lock(self.baseline_dir):  # refuse a second writer before measuring, not after
            return self._write_baseline()

    def _write_baseline(self) -> tuple[Baseline, list[str]]:
        spec = self.reference_model()
        label = Path(spec).name or spec
        loaded, load_s = self._timed_load(spec, label)
        measurement = self._measure(loaded, label)
        start = time.perf_counter()
        layers = resolve_layers(self.config.layers, loaded.info.num_layers)
        baseline = create_baseline(
            measurement,
            self.persona_set,
            self.config.design,
            self.config.generation,
            layers,
            embedding_fingerprint(loaded.model),
            n_boot=self.config.n_boot,
        )
        try:
            old = load_baseline(self.baseline_dir)
            changes = describe_changes(old, baseline)
        except BaselineError:
            changes = ["new baseline"]
        save_baseline(baseline, self.baseline_dir)
        self.reporter.stage(f"baseline (noise floor, {self.config.n_boot} bootstrap replicates; write): {time.perf_counter() - start:.1f} s")
        changes.append(f"written from {self.reference_description()}")
        changes.append(f"written to {self.baseline_dir}/ ({measurement.labels.size} conversations, load {load_s:.1f}s, "
                       f"measure {measurement.timings.get('generate_and_capture_s', 0):.1f}s)")
        return baseline, changes

    def _reread_baseline(self) -> Baseline:
        self._stored_baseline = None
        return self.stored_baseline()

    def _load_and_measure(self, path: str, baseline: Baseline) -> tuple[Measurement, dict[str, float]]:
        """Load one target, check it fits ``baseline`` and measure it; returns the measurement and timings."""
        timings: dict[str, float] = {}
        loaded, timings[f"load {Path(path).name}"] = self._timed_load(path, Path(path).name)
        check_compatible(
            baseline, loaded.info.to_dict(), self.persona_set, self.config.design, self.config.generation,
            embedding_fingerprint(loaded.model),
        )
        measurement = self._measure(loaded, Path(path).name)
        timings[f"measure {Path(path).name}"] = sum(measurement.timings.values())
        return measurement, timings

    def run(self) -> DriftOutcome:
        """Measure and compare every target; with ``update_baseline`` write the baseline first."""
        timings: dict[str, float] = {}
        update_lines = None
        if self.update_baseline:
            start = time.perf_counter()
            # Several processes: the main one writes the baseline, the others read it once written.
            baseline, update_lines = on_main_then_share(self.write_baseline, lambda: (self._reread_baseline(), None))
            timings["baseline_s"] = time.perf_counter() - start
        else:
            baseline = self.stored_baseline()
            self.check_placement_early(baseline)
        steps = []
        targets = self.targets()
        if process_context().distributed:  # torchrun / accelerate launch: each rank measures its share
            measured = measure_across_processes(targets, lambda path: self._load_and_measure(path, baseline),
                                                self.persona_set, self.config.design)
        else:
            measured = [self._load_and_measure(path, baseline) for _step, path in targets]
        for (step, path), (measurement, measure_timings) in zip(targets, measured):
            timings.update(measure_timings)
            start = time.perf_counter()
            comparison = compare(baseline, measurement, self.config.thresholds, step=step, sides=self.config.sides)
            timings[f"metrics {Path(path).name}"] = time.perf_counter() - start
            self.reporter.stage(f"compare {Path(path).name}: {timings[f'metrics {Path(path).name}']:.1f} s")
            steps.append(StepResult(step, path, comparison, measurement))
        rewards = read_reward_log(self.checkpoint) if is_run_dir(self.checkpoint) else {}
        return DriftOutcome(
            self.checkpoint, str(self.baseline_dir), baseline, steps, self.config, update_lines, timings, rewards, self.placement
        )


def _manifest_model(manifest: Path) -> str:
    """The base model a training run recorded in its ``run_manifest.json``."""
    try:
        return str(json.loads(manifest.read_text())["model"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{manifest}: unreadable run manifest ({type(exc).__name__}); pass --base-model") from None


def trajectory(outcome: DriftOutcome, target_layer: int) -> dict[str, Any]:
    """Drift over a run's steps (step 0 = baseline): per-step metrics, PCA path, reward ↔ drift."""
    baseline = outcome.baseline
    steps = [0] + [r.step for r in outcome.steps]
    zero_layers = np.zeros(baseline.num_layers)
    shifts = [zero_layers] + [r.comparison.projection_shift for r in outcome.steps]
    rotations = [zero_layers] + [r.comparison.rotation_deg for r in outcome.steps]
    access = [np.ones(len(baseline.roles))] + [r.comparison.accessibility for r in outcome.steps]
    persona_vectors = np.concatenate([baseline.default_mean[None, target_layer], baseline.role_means[:, target_layer]])
    mean, components, explained = pca_fit(persona_vectors, 2)
    persona_xy = pca_transform(persona_vectors, mean, components)
    step_vectors = np.stack([baseline.default_mean[target_layer]] + [r.measurement.default_mean[target_layer] for r in outcome.steps])
    steps_xy = pca_transform(step_vectors, mean, components)
    reward = [None] + reward_at_steps(outcome.rewards, steps[1:])
    drift = np.array([-s[target_layer] for s in shifts])  # positive = away from the assistant
    paired = [(r, d) for r, d in zip(reward, drift) if r is not None]
    rho_info = None
    if len(paired) >= 3:
        rewards_arr, drift_arr = np.array(paired).T
        rho = spearman(rewards_arr, drift_arr)
        low, high = spearman_bootstrap_ci(rewards_arr, drift_arr)
        rho_info = {"rho": None if np.isnan(rho) else rho, "ci": [low, high], "n": len(paired),
                    "drift_metric": f"projection shift toward the roles at layer {target_layer}"}
    gate = outcome.gate_checks()
    worst = {}
    for family in ("projection", "rotation", "accessibility"):
        family_checks = [c for c in gate if c.family == family]
        if family_checks:
            worst_check = max(family_checks, key=_gate_rank)
            worst[family] = worst_check.step
    return {
        "steps": steps,
        "target_layer": target_layer,
        "checkpoints": ["(baseline)"] + [r.checkpoint for r in outcome.steps],
        "projection_shift": [s.tolist() for s in shifts],
        "projection_threshold": outcome.steps[-1].comparison.projection_threshold.tolist(),
        "noise_projection": baseline.noise.projection.tolist(),
        "rotation_deg": [r.tolist() for r in rotations],
        "accessibility": [a.tolist() for a in access],
        "pca": {
            "explained_variance": explained.tolist(),
            "persona_names": ["default"] + baseline.roles,
            "persona_xy": persona_xy.tolist(),
            "steps_xy": steps_xy.tolist(),
        },
        "reward": reward,
        "reward_log": {"steps": sorted(outcome.rewards), "reward": [outcome.rewards[s] for s in sorted(outcome.rewards)]},
        "spearman": rho_info,
        "worst_step": worst,
    }
