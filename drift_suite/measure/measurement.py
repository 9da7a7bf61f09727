"""One measurement of one model: build the conversations, generate and capture, reduce per persona.

Each generation batch is cached as it finishes, so a measurement interrupted mid-way (Ctrl-C, a killed CI
job) resumes from the batches done; the finished measurement is cached whole.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..common.version import __version__
from . import cache
from .conversations import Conversation, Design, build_conversations, render_prompts
from ..common.errors import NonFiniteError
from .extract import GenerationSettings, generate_and_capture, join_decoder_paths, plan_batches
from ..common.metrics import assistant_axis, group_means
from .models import LoadedModel, decoder_layers, weights_digest
from .personas import DEFAULT_ROLE, PersonaSet
from ..common.progress import ProgressCallback


@dataclass
class Measurement:
    """Per-conversation answer means of one model over one persona set, and their per-persona reduction."""

    roles: list[str]
    labels: np.ndarray
    """``(N,)`` persona of each conversation (``"default"`` or a role name)."""
    means: np.ndarray
    """``(N, L, H)`` mean residual stream over each answer's tokens."""
    token_counts: np.ndarray
    responses: list[str]
    conversations: list[Conversation]
    model_info: dict[str, Any]
    weights_digest: str
    timings: dict[str, float] = field(default_factory=dict)
    from_cache: bool = False
    decoder: str = "fast"
    """Which generation path measured it (:attr:`drift_suite.measure.extract.Extraction.decoder`)."""

    @property
    def default_mean(self) -> np.ndarray:
        """``(L, H)`` the default assistant's mean activation."""
        return self.means[self.labels == DEFAULT_ROLE].mean(axis=0)

    @property
    def role_means(self) -> np.ndarray:
        """``(R, L, H)`` each role's mean activation, in ``roles`` order."""
        return group_means(self.means, self.labels, self.roles)

    @property
    def axis(self) -> np.ndarray:
        """``(L, H)`` this model's own Assistant Axis."""
        return assistant_axis(self.default_mean, self.role_means)

    def samples(self, per_persona: int = 2) -> dict[str, list[dict[str, str]]]:
        """A few (system prompt, question, answer) triples per persona, for reports."""
        out: dict[str, list[dict[str, str]]] = {}
        for conv, response in zip(self.conversations, self.responses):
            bucket = out.setdefault(conv.role, [])
            if len(bucket) < per_persona:
                bucket.append({"system": conv.system_prompt, "question": conv.question, "answer": response})
        return out


def measurement_key(
    digest: str, persona_set: PersonaSet, design: Design, settings: GenerationSettings, dtype: str, device: str = "cpu"
) -> str:
    fields = {
        "weights": digest,
        "personas": persona_set.persona_hash(),
        "questions": persona_set.question_hash(),
        "design": design.to_dict(),
        "generation": settings.key_dict(),
        "dtype": dtype,
        "version": __version__,
    }
    if device != "cpu":  # another device's kernels round differently; CPU keys stay as they were
        fields["device"] = device
    return cache.cache_key(fields)


def measure(
    loaded: LoadedModel,
    persona_set: PersonaSet,
    design: Design = Design(),
    settings: GenerationSettings = GenerationSettings(),
    cache_dir: Path | None = cache.DEFAULT_CACHE_DIR,
    progress: bool | str | ProgressCallback = True,
) -> Measurement:
    """Measure ``loaded`` over ``persona_set``; reuses a cached measurement of the same weights and settings."""
    conversations = build_conversations(persona_set, design)
    labels = np.array([c.role for c in conversations])
    timings: dict[str, float] = {}
    start = time.perf_counter()
    digest = weights_digest(loaded.model)
    timings["hash_weights_s"] = time.perf_counter() - start
    dtype = str(next(loaded.model.parameters()).dtype).removeprefix("torch.")
    info = loaded.info
    device = "cpu" if info.device_type == "cpu" else f"{info.device_type} {info.gpu_name}"
    key = measurement_key(digest, persona_set, design, settings, dtype, device)
    common = dict(
        roles=persona_set.role_names,
        labels=labels,
        conversations=conversations,
        model_info=loaded.info.to_dict(),
        weights_digest=digest,
    )
    if cache_dir is not None:
        hit = _finite_entry(cache.load(Path(cache_dir), key))
        if hit is not None:
            tensors, metadata = hit
            return Measurement(
                means=tensors["means"],
                token_counts=tensors["token_counts"],
                responses=json.loads(metadata["responses"]),
                timings=timings | {"generate_and_capture_s": 0.0},
                from_cache=True,
                decoder=metadata.get("decoder", "fast"),
                **common,
            )
    start = time.perf_counter()
    try:
        means, token_counts, responses, batch_keys, decoder = _generate_by_batch(
            loaded, conversations, settings, cache_dir, key, progress
        )
    except NonFiniteError as error:
        raise NonFiniteError(_non_finite_message(loaded, conversations, error), error.layer, error.row) from None
    timings["generate_and_capture_s"] = time.perf_counter() - start
    if cache_dir is not None:
        stored = cache.store(
            Path(cache_dir),
            key,
            {"means": means, "token_counts": token_counts},
            {"responses": json.dumps(responses), "model": json.dumps(loaded.info.to_dict()), "decoder": decoder},
        )
        if stored is not None:  # the whole is cached: its parts would only take space
            for part_key in batch_keys:
                cache.discard(Path(cache_dir), part_key)
    return Measurement(
        means=means, token_counts=token_counts, responses=responses, timings=timings, decoder=decoder, **common
    )


def _finite_entry(hit: tuple[dict[str, np.ndarray], dict[str, str]] | None) -> tuple[dict[str, np.ndarray], dict[str, str]] | None:
    """A cache entry, or None (a miss) if its means are not finite: measured again, it fails as it should."""
    if hit is None or not np.isfinite(hit[0].get("means", np.zeros(0))).all():
        return None
    return hit


def _non_finite_message(loaded: LoadedModel, conversations: list[Conversation], error: NonFiniteError) -> str:
    """``error`` as one line that names the model and the conversation where it was seen first."""
    info = loaded.info
    model = f"{info.model_id} + adapter {info.adapter}" if info.adapter else info.model_id
    where = ""
    if error.layer is not None:
        layer = decoder_layers(loaded.model)[error.layer]
        where = next((f" ({name})" for name, module in loaded.model.named_modules() if module is layer), "")
    if error.row is not None:
        conversation = conversations[error.row]
        question = conversation.question if len(conversation.question) <= 60 else conversation.question[:57] + "..."
        where += f", first in conversation {error.row} ({conversation.role}, question {question!r})"
    return f"{model}: {error}{where}; the checkpoint is broken, not drifted"


def batch_key(key: str, batch: list[int]) -> str:
    """Cache key of one generation batch of measurement ``key``: the conversations it holds name it, so
    a partial from another batch plan (other ``--max-batch-tokens``) is a miss, never a wrong hit."""
    return cache.cache_key({"measurement": key, "conversations": batch})


def _generate_by_batch(
    loaded: LoadedModel,
    conversations: list[Conversation],
    settings: GenerationSettings,
    cache_dir: Path | None,
    key: str,
    progress: bool | str | ProgressCallback,
) -> tuple[np.ndarray, np.ndarray, list[str], list[str], str]:
    """Generate and capture batch by batch, caching each finished batch, so an interrupted measurement
    resumes where it stopped; batches already in the cache are not generated again.

    Returns means, token counts and responses in conversation order, the batches' cache keys, and the
    decoder paths that ran (:attr:`~drift_suite.measure.extract.Extraction.decoder`, joined).
    """
    prompts = render_prompts(loaded.tokenizer, conversations)
    encoded = [loaded.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    batches = plan_batches(encoded, settings)
    config = loaded.model.config
    means = np.zeros((len(prompts), config.num_hidden_layers, config.hidden_size), dtype=np.float32)
    token_counts = np.zeros(len(prompts), dtype=np.int64)
    responses = [""] * len(prompts)
    paths: list[str] = []

    def fill(batch: list[int], batch_means: np.ndarray, batch_counts: np.ndarray, batch_responses: list[str]) -> None:
        means[batch], token_counts[batch] = batch_means, batch_counts
        for i, response in zip(batch, batch_responses):
            responses[i] = response

    todo = []
    for index, batch in enumerate(batches):
        hit = _finite_entry(cache.load(Path(cache_dir), batch_key(key, batch))) if cache_dir is not None else None
        if hit is not None and hit[0]["means"].shape == (len(batch), *means.shape[1:]):
            fill(batch, hit[0]["means"], hit[0]["token_counts"], json.loads(hit[1]["responses"]))
            paths.append(hit[1].get("decoder", "fast"))
        else:
            todo.append((index, batch))
    done = len(prompts) - sum(len(batch) for _, batch in todo)
    description = progress if isinstance(progress, str) else "generating"
    report = progress if callable(progress) else None  # a callback sees every decoding step, tqdm each batch
    with tqdm(total=len(prompts), initial=done, desc=description, disable=not progress or report is not None, unit="conv") as bar:
        for index, batch in todo:
            # A seed per batch makes a sampled batch the same whether or not the run was resumed.
            batch_settings = replace(settings, seed=settings.seed + index)
            step_report = False if report is None else (lambda d, _total, before=done: report(before + d, len(prompts)))
            try:
                part = generate_and_capture(loaded.model, loaded.tokenizer, [prompts[i] for i in batch], batch_settings, progress=step_report)
            except NonFiniteError as error:
                if cache_dir is not None:  # a broken model leaves nothing cached, not even its finite batches
                    for done_batch in batches:
                        cache.discard(Path(cache_dir), batch_key(key, done_batch))
                # Its row counts within this batch: make it the conversation's.
                raise NonFiniteError(str(error), error.layer, None if error.row is None else batch[error.row]) from None
            fill(batch, part.means, part.token_counts, part.responses)
            paths.append(part.decoder)
            if cache_dir is not None and batch is not todo[-1][1]:  # the last one is cached whole, next
                cache.store(
                    Path(cache_dir),
                    batch_key(key, batch),
                    {"means": part.means, "token_counts": part.token_counts},
                    {"responses": json.dumps(part.responses), "decoder": part.decoder},
                )
            bar.update(len(batch))
            done += len(batch)
    return means, token_counts, responses, [batch_key(key, batch) for batch in batches], join_decoder_paths(paths)
