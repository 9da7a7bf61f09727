"""Baselines on disk: a JSON manifest plus a safetensors file of tensors (and a JSON file of sample answers).

Layout of a baseline dir::

    manifest.json                  what was measured, how, and which data files hold it
    baseline-<hash>.safetensors    default_mean (L,H), role_means (R,L,H), noise floors, embedding fingerprint
    samples-<hash>.json            a few generated answers per persona (for the report)

Writes are atomic: the data files get new content-addressed names, then ``manifest.json`` is replaced in
one ``os.replace``, the commit point; a crash at any moment leaves a manifest whose files exist.
Writers hold the dir's lock (:func:`baseline_write_lock`), so two runs never interleave their writes.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from safetensors.numpy import load_file

from ..common.version import __version__
from ..common.files import TMP_SUFFIX, atomic_write_bytes, safetensors_bytes, write_failure
from ..measure.conversations import Design
from ..common.errors import BaselineError
from ..measure.extract import GenerationSettings
from ..measure.measurement import Measurement
from ..common.metrics import NoiseFloor, angle_deg, assistant_axis, bootstrap_noise_floor, project
from ..measure.personas import DEFAULT_ROLE, PersonaSet
from ..common.provenance import git_provenance

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FINGERPRINT_MIN_COSINE = 0.9
"""Below this cosine between embedding fingerprints, a checkpoint is from another model, not a fine-tune."""


@dataclass
class Baseline:
    manifest: dict[str, Any]
    default_mean: np.ndarray
    role_means: np.ndarray
    noise: NoiseFloor
    embed_fingerprint: np.ndarray
    samples: dict[str, list[dict[str, str]]]

    @property
    def roles(self) -> list[str]:
        return list(self.manifest["persona_set"]["roles"])

    @property
    def asserted_layers(self) -> list[int]:
        return list(self.manifest["layers"]["asserted"])

    @property
    def axis(self) -> np.ndarray:
        return assistant_axis(self.default_mean, self.role_means)

    @property
    def num_layers(self) -> int:
        return int(self.manifest["model"]["num_layers"])


def _versions() -> dict[str, str]:
    from ..measure.placement import library_versions

    return {"drift_suite": __version__, **library_versions()}


def measured_placement(model: dict[str, Any]) -> tuple[str, str]:
    """``(device_type, dtype)`` a baseline or measurement was made on; manifests before 0.3 recorded neither
    device nor (sometimes) dtype, and were all measured in float32 on the CPU."""
    return str(model.get("device_type") or "cpu"), str(model.get("dtype") or "float32")


def create_baseline(
    measurement: Measurement,
    persona_set: PersonaSet,
    design: Design,
    settings: GenerationSettings,
    asserted_layers: list[int],
    embed_fingerprint: np.ndarray,
    n_boot: int = 200,
    seed: int = 0,
) -> Baseline:
    """A baseline from a measurement of the reference model, with its noise floor."""
    noise = bootstrap_noise_floor(
        measurement.means, measurement.labels, measurement.roles, DEFAULT_ROLE, asserted_layers, n_boot, seed
    )
    axis = measurement.axis
    info = measurement.model_info
    manifest = {
        "format": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {**info, "weights_sha256": measurement.weights_digest},
        "persona_set": {
            "name": persona_set.name,
            "persona_hash": persona_set.persona_hash(),
            "question_hash": persona_set.question_hash(),
            "roles": measurement.roles,
            "n_questions": len(persona_set.questions),
        },
        "design": design.to_dict(),
        "generation": settings.key_dict(),
        "n_conversations": int(len(measurement.labels)),
        "mean_answer_tokens": float(np.mean(measurement.token_counts)),
        "layers": {"asserted": list(asserted_layers)},
        "noise_floor": {
            "method": "stratified bootstrap over conversations within each persona",
            "n_boot": n_boot,
            "seed": seed,
            "projection_over_axis_norm": [float(x) for x in noise.projection / np.linalg.norm(axis, axis=-1)],
            "angle_deg": [float(x) for x in noise.angle_deg],
        },
        "axis_norm": [float(x) for x in np.linalg.norm(axis, axis=-1)],
        "versions": _versions(),
        "provenance": {"git": git_provenance()},
    }
    return Baseline(manifest, measurement.default_mean, measurement.role_means, noise, embed_fingerprint, measurement.samples())


def _tensors(baseline: Baseline) -> dict[str, np.ndarray]:
    return {
        "default_mean": baseline.default_mean.astype(np.float32),
        "role_means": baseline.role_means.astype(np.float32),
        "noise_projection": baseline.noise.projection.astype(np.float32),
        "noise_angle_deg": baseline.noise.angle_deg.astype(np.float32),
        "noise_accessibility": baseline.noise.accessibility.astype(np.float32),
        "embed_fingerprint": baseline.embed_fingerprint.astype(np.float32),
    }


LOCK_FILE = ".drift-suite-write.lock"
_held_locks: dict[Path, int] = {}
"""Baseline dirs this process holds the write lock of, and how many ``with`` blocks hold it (re-entrant)."""


@contextlib.contextmanager
def baseline_write_lock(directory: str | Path) -> Iterator[None]:
    """Hold the write lock of a baseline dir, or raise a one-line :class:`BaselineError` at once.

    A ``flock`` on a lock file in the dir: the kernel drops it when its holder dies, so a killed run never
    leaves the dir locked. The lock file is removed on release; re-checking after locking that the name
    still points at the locked file keeps that removal race-free. Re-entrant within one process.
    """
    folder = Path(directory).absolute()
    if folder in _held_locks:
        _held_locks[folder] += 1
        try:
            yield
        finally:
            _held_locks[folder] -= 1
        return
    lock_path = folder / LOCK_FILE
    while True:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise BaselineError(f"cannot write baseline to {folder}/ ({write_failure(exc)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise BaselineError(
                f"baseline dir {folder} is being written by another run (pid {holder}); wait or use another --baseline-dir"
            ) from None
        try:
            same_file = os.path.samestat(os.fstat(fd), os.stat(lock_path))
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        os.close(fd)  # its holder removed it between our open and flock: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        _held_locks[folder] = 1
        yield
    finally:
        _held_locks.pop(folder, None)
        with contextlib.suppress(OSError):
            lock_path.unlink()  # while still locked: a waiter that opened it re-checks and retries
        os.close(fd)


def save_baseline(baseline: Baseline, directory: str | Path) -> Path:
    """Write ``baseline`` into ``directory`` atomically; returns the manifest path.

    Under the dir's write lock. A failed write (disk full, read-only) is a one-line :class:`BaselineError`
    and leaves the old baseline and no new file behind.
    """
    folder = Path(directory)
    with baseline_write_lock(folder):
        for leftover in folder.glob(f".*{TMP_SUFFIX}"):  # from writers killed mid-write; we hold the lock
            leftover.unlink(missing_ok=True)
        tensor_bytes = safetensors_bytes(_tensors(baseline))
        tensor_name = f"baseline-{hashlib.sha256(tensor_bytes).hexdigest()[:16]}.safetensors"
        samples_bytes = json.dumps(baseline.samples, indent=1, ensure_ascii=False).encode()
        samples_name = f"samples-{hashlib.sha256(samples_bytes).hexdigest()[:16]}.json"
        manifest = {**baseline.manifest, "files": {"tensors": tensor_name, "samples": samples_name}}
        manifest_path = folder / MANIFEST
        written: list[Path] = []
        try:
            for name, data in ((tensor_name, tensor_bytes), (samples_name, samples_bytes)):
                if not (folder / name).is_file():  # content-addressed: an existing file holds these bytes
                    atomic_write_bytes(folder / name, data)
                    written.append(folder / name)
            atomic_write_bytes(manifest_path, json.dumps(manifest, indent=2).encode() + b"\n")
        except OSError as exc:
            for path in written:  # not named by the old manifest: nothing refers to them
                path.unlink(missing_ok=True)
            raise BaselineError(
                f"cannot write baseline to {folder}/ ({write_failure(exc)}); the old baseline, if any, is unchanged"
            ) from None
        baseline.manifest = manifest
        for stale in list(folder.glob("baseline-*.safetensors")) + list(folder.glob("samples-*.json")):
            if stale.name not in (tensor_name, samples_name):
                stale.unlink()
    return manifest_path


def update_command(directory: str | Path, checkpoint: str = "<reference model>") -> str:
    return f"pytest suites/ --checkpoint {checkpoint} --update-baselines --baseline-dir {directory}"


def load_baseline(directory: str | Path, checkpoint_hint: str = "<reference model>") -> Baseline:
    """Read a baseline; every problem is a one-line :class:`BaselineError` that says how to fix it."""
    folder = Path(directory)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise BaselineError(f"no baseline in {folder}/ (no {MANIFEST}); create it with: {update_command(folder, checkpoint_hint)}")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        fmt = manifest["format"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BaselineError(f"{manifest_path}: corrupt baseline manifest ({type(exc).__name__}: {exc}); regenerate with --update-baselines") from None
    if fmt != FORMAT_VERSION:
        raise BaselineError(f"{manifest_path}: baseline format {fmt}, this drift_suite reads format {FORMAT_VERSION}; regenerate with --update-baselines")
    missing = [name for name in (files["tensors"], files["samples"]) if not (folder / name).is_file()]
    if missing:
        raise BaselineError(f"{folder}: baseline data file missing ({missing[0]}); regenerate with --update-baselines")
    try:
        tensors = load_file(str(folder / files["tensors"]))
        samples = json.loads((folder / files["samples"]).read_text())
        noise = NoiseFloor(
            projection=tensors["noise_projection"],
            angle_deg=tensors["noise_angle_deg"],
            accessibility=tensors["noise_accessibility"],
            n_boot=manifest["noise_floor"]["n_boot"],
            seed=manifest["noise_floor"]["seed"],
        )
        baseline = Baseline(manifest, tensors["default_mean"], tensors["role_means"], noise, tensors["embed_fingerprint"], samples)
    except Exception as exc:  # safetensors raises its own error types for truncated files
        raise BaselineError(f"{folder}: corrupt baseline data ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    non_finite = sorted(name for name, tensor in tensors.items() if not np.isfinite(tensor).all())
    if non_finite:
        raise BaselineError(
            f"{folder}: baseline tensor {non_finite[0]} holds NaN or Inf (measured from a broken model, or damaged); "
            "regenerate with --update-baselines from a working reference model"
        )
    layers, hidden = manifest["model"]["num_layers"], manifest["model"]["hidden_size"]
    if baseline.default_mean.shape != (layers, hidden) or baseline.role_means.shape[0] != len(baseline.roles):
        raise BaselineError(f"{folder}: baseline tensors do not match its manifest; regenerate with --update-baselines")
    return baseline


def describe_placement(model: dict[str, Any]) -> str:
    """``"cuda (NVIDIA H200), bfloat16"``: where and in what precision a baseline or a run was measured."""
    device, dtype = measured_placement(model)
    gpu = f" ({model['gpu_name']})" if model.get("gpu_name") else ""
    return f"{device}{gpu}, {dtype}"


def _where(model: dict[str, Any]) -> str:
    return describe_placement(model).rsplit(", ", 1)[0]


def check_placement(baseline_model: dict[str, Any], run_model: dict[str, Any]) -> None:
    """Refuse a comparison whose precision differs from the baseline's (docs/precision.md has the measurement).

    Reduced precision moves the activations by a sizeable part of the noise floor (bfloat16 against the
    float32 baseline on the demo model: docs/precision.md), so a baseline is only compared with a run in
    the same dtype, and in bfloat16/float16 on the same kind of device (another kernel rounds differently).
    float32 agrees across devices (to 1e-4, benchmarks/gpu), so a CPU float32 baseline serves a GPU float32 run.
    """
    base_device, base_dtype = measured_placement(baseline_model)
    run_device, run_dtype = measured_placement(run_model)
    made = f"baseline measured in {base_dtype} on {_where(baseline_model)}"
    here = f"this run is {run_dtype} on {_where(run_model)}"
    if base_dtype != run_dtype:
        raise BaselineError(
            f"{made}, {here}: pass --dtype {base_dtype}, or refresh the baseline with --update-baselines --dtype {run_dtype} "
            "(see docs/precision.md)"
        )
    same_kind = (base_device, baseline_model.get("gpu_name")) == (run_device, run_model.get("gpu_name"))
    if run_dtype != "float32" and not same_kind:
        fix = f"pass --device {base_device}" if base_device != run_device else f"run on a {baseline_model.get('gpu_name')}"
        raise BaselineError(
            f"{made}, {here}: {run_dtype} rounds differently on another device; {fix}, or refresh the baseline here "
            f"with --update-baselines --dtype {run_dtype}, or use --dtype float32 on both (see docs/precision.md)"
        )


def check_compatible(
    baseline: Baseline,
    model_info: dict[str, Any],
    persona_set: PersonaSet,
    design: Design,
    settings: GenerationSettings,
    embed_fingerprint: np.ndarray,
) -> None:
    """Refuse to compare a checkpoint with a baseline made for another model, persona set or method."""
    base_model = baseline.manifest["model"]
    made_for = f"{base_model['model_id']} ({base_model['num_layers']} layers × {base_model['hidden_size']} hidden)"
    if (model_info["num_layers"], model_info["hidden_size"]) != (base_model["num_layers"], base_model["hidden_size"]):
        raise BaselineError(
            f"baseline was made for {made_for}; this checkpoint has {model_info['num_layers']} layers × "
            f"{model_info['hidden_size']} hidden: use its own --baseline-dir or --update-baselines"
        )
    if embed_fingerprint.shape == baseline.embed_fingerprint.shape:
        cosine = float(
            np.dot(embed_fingerprint.ravel(), baseline.embed_fingerprint.ravel())
            / max(np.linalg.norm(embed_fingerprint) * np.linalg.norm(baseline.embed_fingerprint), 1e-12)
        )
    else:
        cosine = 0.0
    if cosine < FINGERPRINT_MIN_COSINE:
        raise BaselineError(
            f"baseline was made for {made_for}, and this checkpoint is not a fine-tune of it "
            f"(embedding fingerprint cosine {cosine:.2f} < {FINGERPRINT_MIN_COSINE}): use its own --baseline-dir"
        )
    check_placement(base_model, model_info)
    stored = baseline.manifest["persona_set"]
    if stored["persona_hash"] != persona_set.persona_hash() or stored["question_hash"] != persona_set.question_hash():
        raise BaselineError(
            f"baseline was made with persona set {stored['name']!r} ({stored['persona_hash']}/{stored['question_hash']}), "
            f"this run uses {persona_set.name!r} ({persona_set.persona_hash()}/{persona_set.question_hash()}): "
            "pass the same --persona-set or --update-baselines"
        )
    if baseline.manifest["design"] != design.to_dict():
        raise BaselineError(f"baseline design {baseline.manifest['design']} differs from this run's {design.to_dict()}: use the same design or --update-baselines")
    if baseline.manifest["generation"] != settings.key_dict():
        raise BaselineError(
            f"baseline generation settings {baseline.manifest['generation']} differ from this run's {settings.key_dict()}: "
            "use the same settings or --update-baselines"
        )


def describe_changes(old: Baseline, new: Baseline) -> list[str]:
    """Lines saying what an update changed, for the terminal summary."""
    if old.default_mean.shape != new.default_mean.shape or old.roles != new.roles:
        return ["baseline replaced (different model shape or persona set)"]
    lines = []
    shift = project(new.default_mean - old.default_mean, old.axis)
    norm = np.linalg.norm(old.axis, axis=-1)
    worst = int(np.argmax(np.abs(shift) / norm))
    lines.append(f"default projection: largest change {shift[worst]:+.4g} ({abs(shift[worst]) / norm[worst]:.1%} of axis) at layer {worst}")
    angles = angle_deg(old.axis, new.axis)
    lines.append(f"axis rotation: largest {angles.max():.3g}° at layer {int(angles.argmax())}")
    for key in ("model", "design", "generation", "layers"):
        if old.manifest.get(key) != new.manifest.get(key):
            lines.append(f"{key} changed")
    return lines
