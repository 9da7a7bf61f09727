"""Residual-stream activations of the model's own answers, captured in one pass during generation.

Forward hooks on the decoder layers add each response token's hidden state to a running sum per
conversation and layer as the token is fed back into the model, so memory is O(batch × layers × hidden)
whatever the answer length, and no second forward over prompt + answer is needed. Generation itself is
:func:`drift_suite.decode.decode` (the model's own forward in a lean loop; shared prompt prefixes prefilled
once, an in-place KV cache, packed GEMM weights).

Which tokens count: the answer's content tokens, i.e. the generated tokens up to and excluding the first
end-of-turn token, at most ``max_new_tokens`` of them. The hidden state of a generated token is computed
only when it is fed back in, so the decoder feeds back every generated token, the last one included (one
forward more than ``generate`` would run; its logits are thrown away). The end-of-turn token itself is
not averaged (the two-pass reference excludes it too).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .decode import decode
from .models import decoder_layers


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are generated; part of every baseline and cache key."""

    max_new_tokens: int = 48
    do_sample: bool = False
    temperature: float = 1.0
    seed: int = 0
    batch_size: int = 256
    """Upper bound on conversations per batch: the default design's 196 fit in one (docs/benchmarks.md)."""
    max_batch_tokens: int = 32768
    """Upper bound on batch × (prompt + answer) tokens, which bounds the KV cache: 2 × layers × KV heads ×
    head size × 4 bytes a token, 46 kB on the demo model (1.5 GB at this budget), 213 kB on Gemma-2-2B."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key_dict(self) -> dict[str, Any]:
        """The settings that change the numbers (batching reorders work; results agree to ~1e-4)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("batch_size", "max_batch_tokens")}


@dataclass
class Extraction:
    """Per-conversation mean activation over answer tokens, in the order of the prompts given."""

    means: np.ndarray
    """``(conversations, layers, hidden)`` float32."""
    token_counts: np.ndarray
    """``(conversations,)`` answer tokens averaged per conversation."""
    responses: list[str]
    answer_ids: list[list[int]]
    """The answer's content token ids (what was averaged over)."""


def _eos_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _hidden_of(output: Any) -> torch.Tensor:
    # Decoder layers return a tensor in transformers 5 and a tuple (hidden, ...) in 4.x.
    return output[0] if isinstance(output, tuple) else output


class _AnswerAccumulator:
    """Hook state for one batch: which rows feed an answer token now, and the running sums."""

    def __init__(self, batch: int, n_layers: int, hidden: int, eos_ids: list[int], max_tokens: int):
        self.sums = torch.zeros(batch, n_layers, hidden, dtype=torch.float32)
        self.counts = torch.zeros(batch, dtype=torch.long)
        self.finished = torch.zeros(batch, dtype=torch.bool)
        self.eos = torch.tensor(eos_ids, dtype=torch.long)
        self.max_tokens = max_tokens
        self.mask: torch.Tensor | None = None

    def before_forward(self, fed: torch.Tensor | None) -> None:
        """Called before each forward with the generated tokens being fed back, or ``None`` for the prefill."""
        if fed is None:
            self.mask = None
            return
        self.finished |= torch.isin(fed, self.eos)
        self.mask = ~self.finished & (self.counts < self.max_tokens)
        self.counts += self.mask.long()

    def add(self, layer: int, hidden: torch.Tensor) -> None:
        if self.mask is not None:
            self.sums[:, layer] += hidden[:, -1].float() * self.mask[:, None]


def plan_batches(prompts: Sequence[Sequence[int]], settings: GenerationSettings) -> list[list[int]]:
    """Prompt indices in batches within the size and token budgets, prompts sharing a prefix kept together.

    Sorting by token ids puts prompts with the same system turn next to each other, so a batch holds whole
    groups whose shared prefix is prefilled once (:func:`drift_suite.decode.plan_prefill`).
    """
    order = sorted(range(len(prompts)), key=lambda i: (list(prompts[i]), i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        tokens = (len(current) + 1) * (max(longest, len(prompts[i])) + settings.max_new_tokens + 1)
        if current and (len(current) >= settings.batch_size or tokens > settings.max_batch_tokens):
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, len(prompts[i]))
    if current:
        batches.append(current)
    return batches


def _reporting_steps(
    before_forward: Callable[[torch.Tensor | None], None], report: Callable[[float, int], None],
    done: int, rows: int, max_new_tokens: int, total: int,
) -> Callable[[torch.Tensor | None], None]:
    """``before_forward`` that also reports progress after each decoding step of a batch of ``rows``."""
    steps = 0

    def hook(fed: torch.Tensor | None) -> None:
        nonlocal steps
        before_forward(fed)
        if fed is not None:
            steps += 1
        report(done + rows * min(steps / max_new_tokens, 1.0), total)  # the prefill (fed None) too: it starts a batch

    return hook


@torch.inference_mode()
def generate_and_capture(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    settings: GenerationSettings = GenerationSettings(),
    progress: bool | str | Callable[[float, int], None] = True,
) -> Extraction:
    """Generate an answer to each chat-formatted prompt and average its residual stream over answer tokens.

    Returns layer outputs of every decoder layer (the raw residual stream; the final norm is not applied).
    ``progress`` is a tqdm bar's label (or True / False), or a callback ``progress(done, total)`` called
    after every decoding step with the conversations done so far (a batch in flight counts by its share of
    ``max_new_tokens`` steps, so one big batch still gives a rate and an ETA).
    """
    n_layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    means = np.zeros((len(prompts), n_layers, hidden), dtype=np.float32)
    counts = np.zeros(len(prompts), dtype=np.int64)
    responses = [""] * len(prompts)
    answer_ids: list[list[int]] = [[] for _ in prompts]
    layers = decoder_layers(model)
    state: dict[str, _AnswerAccumulator] = {}

    def layer_hook(index: int):
        def hook(_module: Any, _args: Any, output: Any) -> None:
            state["acc"].add(index, _hidden_of(output).cpu())

        return hook

    handles = [layer.register_forward_hook(layer_hook(i)) for i, layer in enumerate(layers)]
    batches = plan_batches(encoded, settings)
    generator = torch.Generator().manual_seed(settings.seed) if settings.do_sample else None
    report = progress if callable(progress) else None
    bar = tqdm(total=len(prompts), desc=progress if isinstance(progress, str) else "generating",
               disable=not progress or report is not None, unit="conv")
    done = 0
    try:
        for batch in batches:
            acc = state["acc"] = _AnswerAccumulator(len(batch), n_layers, hidden, eos_ids, settings.max_new_tokens)
            step_hook = acc.before_forward
            if report is not None:
                step_hook = _reporting_steps(acc.before_forward, report, done, len(batch), settings.max_new_tokens, len(prompts))
            generated = decode(
                model, [encoded[i] for i in batch], settings.max_new_tokens, eos_ids, pad_id,
                before_forward=step_hook, do_sample=settings.do_sample,
                temperature=settings.temperature, generator=generator,
            )
            batch_counts = acc.counts.numpy()
            batch_means = (acc.sums / acc.counts.clamp(min=1)[:, None, None]).numpy()
            for row, i in enumerate(batch):
                means[i], counts[i] = batch_means[row], batch_counts[row]
                answer = generated[row, : batch_counts[row]]
                answer_ids[i] = answer.tolist()
                responses[i] = tokenizer.decode(answer, skip_special_tokens=True)
            bar.update(len(batch))
            done += len(batch)
            if report is not None:
                report(done, len(prompts))
    finally:
        for handle in handles:
            handle.remove()
        bar.close()
    return Extraction(means, counts, responses, answer_ids)


@torch.inference_mode()
def full_conversation(model: torch.nn.Module, tokenizer: Any, messages: list[dict[str, str]]) -> torch.Tensor:
    """Residual stream of every layer at every token of a whole conversation: ``(layers, tokens, hidden)``.

    For inspection and small experiments (the seed's ActivationExtractor); measurement uses
    :func:`generate_and_capture`, which never holds this much.
    """
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_tensors="pt", return_dict=True)["input_ids"]
    captured: list[torch.Tensor] = []
    handles = [
        layer.register_forward_hook(lambda _m, _a, out: captured.append(_hidden_of(out)[0].float().cpu()))
        for layer in decoder_layers(model)
    ]
    try:
        model(input_ids=ids.to(next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(captured)


@torch.inference_mode()
def reforward_answer_means(
    model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], responses_ids: Sequence[Sequence[int]]
) -> np.ndarray:
    """Two-pass reference: forward prompt + answer once more and average the answer positions.

    Used to prove the one-pass capture equal; not used in measurement.
    """
    rows = []
    layers = decoder_layers(model)
    for prompt, answer in zip(prompts, responses_ids):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([list(prompt_ids) + list(answer)])
        captured: list[torch.Tensor] = []
        handles = [layer.register_forward_hook(lambda _m, _a, out: captured.append(_hidden_of(out)[0])) for layer in layers]
        try:
            model(input_ids=ids)
        finally:
            for handle in handles:
                handle.remove()
        stacked = torch.stack(captured)[:, len(prompt_ids) :, :]
        rows.append(stacked.float().mean(dim=1).numpy() if len(answer) else np.zeros(stacked.shape[::2], np.float32))
    return np.stack(rows)

