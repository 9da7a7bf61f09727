"""Residual-stream activations of the model's own answers, captured in one pass during generation.

Forward hooks on the decoder layers add each response token's hidden state to a running sum per
conversation and layer as the token is fed back into the model, so memory is O(batch × layers × hidden)
whatever the answer length, and no second forward over prompt + answer is needed.

Which tokens count: the answer's content tokens, i.e. the generated tokens up to and excluding the first
end-of-turn token, at most ``max_new_tokens`` of them. Generation asks for one token more than that, because
the hidden state of a generated token is computed only when it is fed back in: the extra step makes the
last content token visible and its own output is thrown away. The end-of-turn token itself is never fed
back, so it is excluded by design (the two-pass reference excludes it too).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .models import decoder_layers


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are generated; part of every baseline and cache key."""

    max_new_tokens: int = 48
    do_sample: bool = False
    temperature: float = 1.0
    seed: int = 0
    batch_size: int = 64
    """Upper bound on conversations per batch (64 decoded 14 % faster than 32 on 2 cores; docs/benchmarks.md)."""
    max_batch_tokens: int = 16384
    """Upper bound on batch × (prompt + answer) tokens, which bounds the KV cache (~46 kB a token on the demo model)."""

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
        self.calls = 0
        self.mask: torch.Tensor | None = None

    def before_forward(self, input_ids: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 1:  # the prefill: prompt tokens only
            self.mask = None
            return
        fed = input_ids[:, -1]
        self.finished |= torch.isin(fed, self.eos)
        self.mask = ~self.finished & (self.counts < self.max_tokens)
        self.counts += self.mask.long()

    def add(self, layer: int, hidden: torch.Tensor) -> None:
        if self.mask is not None:
            self.sums[:, layer] += hidden[:, -1].float() * self.mask[:, None]


def _batches(lengths: Sequence[int], settings: GenerationSettings) -> list[list[int]]:
    """Prompt indices grouped by similar length (less padding), each batch within the token budget."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = max([lengths[j] for j in current] + [lengths[i]])
        tokens = (len(current) + 1) * (longest + settings.max_new_tokens + 1)
        if current and (len(current) >= settings.batch_size or tokens > settings.max_batch_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


@torch.inference_mode()
def generate_and_capture(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    settings: GenerationSettings = GenerationSettings(),
    progress: bool | str = True,
) -> Extraction:
    """Generate an answer to each chat-formatted prompt and average its residual stream over answer tokens.

    Returns layer outputs of every decoder layer (the raw residual stream; the final norm is not applied).
    """
    n_layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    tokenizer.padding_side = "left"
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    means = np.zeros((len(prompts), n_layers, hidden), dtype=np.float32)
    counts = np.zeros(len(prompts), dtype=np.int64)
    responses = [""] * len(prompts)
    answer_ids: list[list[int]] = [[] for _ in prompts]
    layers = decoder_layers(model)
    device = next(model.parameters()).device
    state: dict[str, _AnswerAccumulator] = {}

    def pre_hook(_module: Any, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        state["acc"].before_forward(input_ids.cpu())

    def layer_hook(index: int):
        def hook(_module: Any, _args: Any, output: Any) -> None:
            state["acc"].add(index, _hidden_of(output).cpu())

        return hook

    handles = [model.register_forward_pre_hook(pre_hook, with_kwargs=True)]
    handles += [layer.register_forward_hook(layer_hook(i)) for i, layer in enumerate(layers)]
    batches = _batches([len(e) for e in encoded], settings)
    bar = tqdm(total=len(prompts), desc=progress if isinstance(progress, str) else "generating", disable=not progress, unit="conv")
    try:
        for batch in batches:
            longest = max(len(encoded[i]) for i in batch)
            input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch), longest), dtype=torch.long)
            for row, i in enumerate(batch):
                input_ids[row, longest - len(encoded[i]) :] = torch.tensor(encoded[i])
                attention[row, longest - len(encoded[i]) :] = 1
            state["acc"] = _AnswerAccumulator(len(batch), n_layers, hidden, eos_ids, settings.max_new_tokens)
            if settings.do_sample:
                torch.manual_seed(settings.seed)
            generated = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=settings.max_new_tokens + 1,
                do_sample=settings.do_sample,
                temperature=settings.temperature if settings.do_sample else None,
                top_p=None,
                top_k=None,
                pad_token_id=pad_id,
                eos_token_id=eos_ids,
            )
            acc = state["acc"]
            batch_counts = acc.counts.numpy()
            batch_means = (acc.sums / acc.counts.clamp(min=1)[:, None, None]).numpy()
            for row, i in enumerate(batch):
                means[i], counts[i] = batch_means[row], batch_counts[row]
                answer = generated[row, longest : longest + batch_counts[row]]
                answer_ids[i] = answer.tolist()
                responses[i] = tokenizer.decode(answer, skip_special_tokens=True)
            bar.update(len(batch))
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

