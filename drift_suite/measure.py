"""One measurement of one model: build the conversations, generate and capture, reduce per persona."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, cache
from .conversations import Conversation, Design, build_conversations, render_prompts
from .extract import GenerationSettings, generate_and_capture
from .metrics import assistant_axis, group_means
from .models import LoadedModel, weights_digest
from .personas import DEFAULT_ROLE, PersonaSet


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


def measurement_key(digest: str, persona_set: PersonaSet, design: Design, settings: GenerationSettings, dtype: str) -> str:
    return cache.cache_key(
        {
            "weights": digest,
            "personas": persona_set.persona_hash(),
            "questions": persona_set.question_hash(),
            "design": design.to_dict(),
            "generation": settings.key_dict(),
            "dtype": dtype,
            "version": __version__,
        }
    )


def measure(
    loaded: LoadedModel,
    persona_set: PersonaSet,
    design: Design = Design(),
    settings: GenerationSettings = GenerationSettings(),
    cache_dir: Path | None = cache.DEFAULT_CACHE_DIR,
    progress: bool | str = True,
) -> Measurement:
    """Measure ``loaded`` over ``persona_set``; reuses a cached measurement of the same weights and settings."""
    conversations = build_conversations(persona_set, design)
    labels = np.array([c.role for c in conversations])
    timings: dict[str, float] = {}
    start = time.perf_counter()
    digest = weights_digest(loaded.model)
    timings["hash_weights_s"] = time.perf_counter() - start
    dtype = str(next(loaded.model.parameters()).dtype).removeprefix("torch.")
    key = measurement_key(digest, persona_set, design, settings, dtype)
    common = dict(
        roles=persona_set.role_names,
        labels=labels,
        conversations=conversations,
        model_info=loaded.info.to_dict(),
        weights_digest=digest,
    )
    if cache_dir is not None:
        hit = cache.load(Path(cache_dir), key)
        if hit is not None:
            tensors, metadata = hit
            return Measurement(
                means=tensors["means"],
                token_counts=tensors["token_counts"],
                responses=json.loads(metadata["responses"]),
                timings=timings | {"generate_and_capture_s": 0.0},
                from_cache=True,
                **common,
            )
    start = time.perf_counter()
    prompts = render_prompts(loaded.tokenizer, conversations)
    extraction = generate_and_capture(loaded.model, loaded.tokenizer, prompts, settings, progress=progress)
    timings["generate_and_capture_s"] = time.perf_counter() - start
    if cache_dir is not None:
        cache.store(
            Path(cache_dir),
            key,
            {"means": extraction.means, "token_counts": extraction.token_counts},
            {"responses": json.dumps(extraction.responses), "model": json.dumps(loaded.info.to_dict())},
        )
    return Measurement(
        means=extraction.means,
        token_counts=extraction.token_counts,
        responses=extraction.responses,
        timings=timings,
        **common,
    )
