"""Residual-stream activations of the model's own answers, captured in one pass during generation.

Forward hooks on the decoder layers add each response token's hidden state to a running sum per
conversation and layer as the token is fed back into the model, so memory is O(batch × layers × hidden)
whatever the answer length, and no second forward over prompt + answer is needed. Generation itself is
:func:`drift_suite.measure.decode.decode` (the model's own forward in a lean loop; shared prompt prefixes prefilled
once, an in-place KV cache, packed GEMM weights).

Which tokens count: the answer's content tokens, i.e. the generated tokens up to and excluding the first
end-of-turn token, at most ``max_new_tokens`` of them. The hidden state of a generated token is computed
only when it is fed back in, so the decoder feeds back every generated token, the last one included (one
forward more than ``generate`` would run; its logits are thrown away). The end-of-turn token itself is
not averaged (the two-pass reference excludes it too).

The running sums live on the model's device in float32 (whatever the model's dtype), so the hooks never copy
to the host or synchronise; each batch comes back to the host once, at its end, and with it the check that the
model computed with finite numbers (:func:`check_finite`: one reduction over the batch's means, plus the
picked tokens' logits summed on the device as it decodes). A broken model stops the measurement with
:class:`~drift_suite.common.errors.NonFiniteError` (exit 3) instead of reading as drift. A model the fast decoder
cannot drive (:func:`drift_suite.measure.decode.fast_decoder_blocker`) is measured with ``generate`` and a second
forward instead, and :attr:`Extraction.decoder` says which path ran.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .decode import decode, fast_decoder_blocker, is_end_of_turn, left_pad
from ..common.errors import NonFiniteError
from .models import decoder_layers
from .placement import model_device


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
    cuda_graphs: bool = True
    """On a CUDA GPU, replay each decoding step as one CUDA graph (``false``: launch its kernels one by one; the
    numbers are the same, see :func:`drift_suite.measure.decode.decode`)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key_dict(self) -> dict[str, Any]:
        """The settings that change the numbers (batching reorders work, results agree to ~1e-4; graphs replay
        the same kernels)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("batch_size", "max_batch_tokens", "cuda_graphs")}


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
    decoder: str = "fast"
    """Which path produced the numbers: ``"fast"``, ``"fast (<speed-up off>: <why>)"``, or
    ``"generate+reforward (<why>)"``; several batches' paths joined by ``"; "``."""


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

    def __init__(
        self, batch: int, n_layers: int, hidden: int, eos_ids: list[int], max_tokens: int,
        device: torch.device | str = "cpu",
    ):
        # Float32 whatever the model's dtype: ~50 bf16 terms would lose the last digits that the noise floor sees.
        self.sums = torch.zeros(batch, n_layers, hidden, dtype=torch.float32, device=device)
        self.counts = torch.zeros(batch, dtype=torch.long, device=device)
        self.finished = torch.zeros(batch, dtype=torch.bool, device=device)
        self.eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
        self.max_tokens = max_tokens
        self.mask: torch.Tensor | None = None
        self.picked_logits = torch.zeros(batch, dtype=torch.float32, device=device)
        """Summed logits of the picked tokens (:func:`~drift_suite.measure.decode.decode`'s ``picked_logits``)."""

    def to_host(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Means ``(rows, layers, hidden)``, token counts ``(rows,)`` and health ``(rows, layers + 1)``, in the
        batch's one transfer to the host (two copies: the means, and everything else as one small tensor).

        Health: each layer's squared norm of the mean (float32, as the model's next RMSNorm squares it), then the
        summed picked logits; a non-finite entry is a broken model (:func:`check_finite`). One reduction on the
        device, over the means, once per batch."""
        means = self.sums / self.counts.clamp(min=1)[:, None, None]
        # Counts ride along as float32: exact far beyond any max_new_tokens.
        small = torch.cat([self.counts[:, None].float(), means.square().sum(-1), self.picked_logits[:, None]], dim=1)
        host_means, host_small = means.cpu().numpy(), small.cpu().numpy()
        return host_means, host_small[:, 0].astype(np.int64), host_small[:, 1:]

    def before_forward(self, fed: torch.Tensor | None) -> None:
        """Called before each forward with the generated tokens being fed back, or ``None`` for the prefill.

        Tensor work in place only: under CUDA graphs this runs once, at capture, and is replayed every step."""
        if fed is None:
            self.mask = None
            return
        self.finished.logical_or_(is_end_of_turn(fed, self.eos))
        if self.mask is None:
            self.mask = torch.empty_like(self.finished)
        torch.logical_and(~self.finished, self.counts < self.max_tokens, out=self.mask)
        self.counts.add_(self.mask)

    def add(self, layer: int, hidden: torch.Tensor) -> None:
        """Add the last position's layer output of the rows feeding an answer token (nothing at the prefill)."""
        if self.mask is not None:
            last = hidden[:, -1].float()
            if last.device != self.sums.device:  # a layer on another GPU of a device map
                last = last.to(self.sums.device, non_blocking=True)
            self.sums[:, layer] += last * self.mask[:, None]


def plan_batches(prompts: Sequence[Sequence[int]], settings: GenerationSettings) -> list[list[int]]:
    """Prompt indices in batches within the size and token budgets, prompts sharing a prefix kept together.

    Sorting by token ids puts prompts with the same system turn next to each other, so a batch holds whole
    groups whose shared prefix is prefilled once (:func:`drift_suite.measure.decode.plan_prefill`).
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
    report: Callable[[float, int], None], done: int, rows: int, max_new_tokens: int, total: int,
) -> Callable[[int], None]:
    """``on_step`` for :func:`~drift_suite.measure.decode.decode` that reports progress after each decoding step of a
    batch of ``rows`` (and after its prefill, step 0: it starts the batch)."""

    def on_step(steps: int) -> None:
        report(done + rows * min(steps / max_new_tokens, 1.0), total)

    return on_step


@torch.inference_mode()
def generate_and_capture(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    settings: GenerationSettings = GenerationSettings(),
    progress: bool | str | Callable[[float, int], None] = True,
    *,
    fast_decoder: bool = True,
    share_prefixes: bool = True,
    pack_weights: bool = True,
    stop_check_every: int | None = None,
    static_cache: bool | None = None,
    cuda_graphs: bool | None = None,
) -> Extraction:
    """Generate an answer to each chat-formatted prompt and average its residual stream over answer tokens.

    Returns layer outputs of every decoder layer (the raw residual stream; the final norm is not applied).
    ``progress`` is a tqdm bar's label (or True / False), or a callback ``progress(done, total)`` called
    after every decoding step with the conversations done so far (a batch in flight counts by its share of
    ``max_new_tokens`` steps, so one big batch still gives a rate and an ETA).
    The keywords switch the speed-ups off, one by one (each changes nothing but the time):
    ``fast_decoder=False`` measures with ``generate`` and a second forward, the others are
    :func:`~drift_suite.measure.decode.decode`'s (``settings.cuda_graphs=False`` also switches CUDA graphs off).
    """
    n_layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    blocker = fast_decoder_blocker(model) if fast_decoder else "switched off"
    if blocker is not None:
        return _generate_then_reforward(model, tokenizer, encoded, settings, eos_ids, pad_id, progress, blocker)
    device = model_device(model)
    means = np.zeros((len(prompts), n_layers, hidden), dtype=np.float32)
    counts = np.zeros(len(prompts), dtype=np.int64)
    responses = [""] * len(prompts)
    answer_ids: list[list[int]] = [[] for _ in prompts]
    paths: list[str] = []
    layers = decoder_layers(model)
    state: dict[str, _AnswerAccumulator] = {}

    def layer_hook(index: int):
        def hook(_module: Any, _args: Any, output: Any) -> None:
            # Added where the layer ran: no copy to the host, no synchronisation.
            state["acc"].add(index, _hidden_of(output))

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
            acc = state["acc"] = _AnswerAccumulator(
                len(batch), n_layers, hidden, eos_ids, settings.max_new_tokens, device=device
            )
            on_step = None
            if report is not None:
                on_step = _reporting_steps(report, done, len(batch), settings.max_new_tokens, len(prompts))
            generated = decode(
                model, [encoded[i] for i in batch], settings.max_new_tokens, eos_ids, pad_id,
                before_forward=acc.before_forward, on_step=on_step, do_sample=settings.do_sample,
                temperature=settings.temperature, generator=generator, share_prefixes=share_prefixes,
                pack_weights=pack_weights, stop_check_every=stop_check_every, static_cache=static_cache,
                cuda_graphs=cuda_graphs if settings.cuda_graphs else False, on_path=paths.append,
                picked_logits=acc.picked_logits,
            )
            batch_means, batch_counts, health = acc.to_host()
            check_finite(health, batch)
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
    return Extraction(means, counts, responses, answer_ids, decoder=join_decoder_paths(paths))


def check_finite(health: np.ndarray, rows: Sequence[int]) -> None:
    """Raise :class:`~drift_suite.common.errors.NonFiniteError` if ``health`` (``(batch, layers + 1)``: each decoder
    layer's squared norm of the mean answer activation, then a logit sum) holds NaN or Inf.

    It names the first decoder layer with a non-finite entry (a corrupt layer leaves the layers before it
    finite: they never see its output) and the lowest of ``rows`` (prompt indices) where it is non-finite there.
    A squared norm overflows float32 only past |x| ~ 1.8e19, orders of magnitude beyond any working model.
    """
    bad = ~np.isfinite(health)
    if not bad.any():
        return
    column = int(bad.any(axis=0).argmax())
    row = min(rows[i] for i in np.flatnonzero(bad[:, column]))
    layers = health.shape[1] - 1
    if column < layers:
        raise NonFiniteError(f"non-finite activations (NaN, Inf, or too large to square in float32) from decoder layer "
                             f"{column} of {layers}", layer=column, row=row)
    raise NonFiniteError("non-finite logits (NaN or Inf) after finite decoder layers: the final norm or the output head",
                         layer=None, row=row)


def host_health(means: np.ndarray, logit_sums: np.ndarray) -> np.ndarray:
    """:func:`check_finite`'s ``health`` from means already on the host (the ``generate`` path)."""
    with np.errstate(over="ignore", invalid="ignore"):
        squared = np.square(means.astype(np.float32)).sum(-1, dtype=np.float32)
    return np.concatenate([squared, logit_sums.astype(np.float32)[:, None]], axis=1)


def join_decoder_paths(paths: Sequence[str]) -> str:
    """The decoder paths that ran, each named once in order of first use (``"fast"`` when none is named).

    A path may itself be a ``"; "``-joined list (an :attr:`Extraction.decoder` of several batches)."""
    return "; ".join(dict.fromkeys(part for path in paths for part in path.split("; "))) or "fast"


def _content_tokens(row: Sequence[int], eos_ids: Sequence[int]) -> list[int]:
    """Tokens before the first end-of-turn token."""
    content = []
    for token in row:
        if token in eos_ids:
            break
        content.append(int(token))
    return content


def _generate_then_reforward(
    model: torch.nn.Module,
    tokenizer: Any,
    encoded: Sequence[Sequence[int]],
    settings: GenerationSettings,
    eos_ids: list[int],
    pad_id: int,
    progress: bool | str | Callable[[float, int], None],
    reason: str,
) -> Extraction:
    """The slow, architecture-agnostic path: HF ``generate`` per batch, then a plain forward per conversation."""
    device = model_device(model)
    answer_ids: list[list[int]] = [[] for _ in encoded]
    report = progress if callable(progress) else None
    bar = tqdm(total=len(encoded), desc=progress if isinstance(progress, str) else "generating",
               disable=not progress or report is not None, unit="conv")
    # ``generate`` samples from the global generator; seeded here and restored after, so a seed still repeats.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(settings.seed)
        try:
            for batch in plan_batches(encoded, settings):
                ids, mask = left_pad([encoded[i] for i in batch], pad_id)
                sampling = {"do_sample": True, "temperature": settings.temperature, "top_k": 0, "top_p": 1.0} if settings.do_sample else {"do_sample": False}
                generated = model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=settings.max_new_tokens,
                    pad_token_id=pad_id, eos_token_id=eos_ids, **sampling,
                )[:, ids.shape[1] :].cpu()
                for row, i in enumerate(batch):
                    answer_ids[i] = _content_tokens(generated[row].tolist(), eos_ids)
                bar.update(len(batch))
                if report is not None:
                    report(bar.n, len(encoded))
        finally:
            bar.close()
    logit_sums: list[float] = []
    means = _reforward_ids(model, encoded, answer_ids, logit_sums)
    check_finite(host_health(means, np.array(logit_sums)), range(len(encoded)))
    responses = [tokenizer.decode(ids, skip_special_tokens=True) for ids in answer_ids]
    counts = np.array([len(ids) for ids in answer_ids], dtype=np.int64)
    return Extraction(means, counts, responses, answer_ids, decoder=f"generate+reforward ({reason})")


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
        model(input_ids=ids.to(model_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(captured)


@torch.inference_mode()
def reforward_answer_means(
    model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], responses_ids: Sequence[Sequence[int]]
) -> np.ndarray:
    """Two-pass reference: forward prompt + answer once more and average the answer positions.

    The reference the one-pass capture is proven equal to, and the second pass of the fallback path.
    """
    encoded = [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
    return _reforward_ids(model, encoded, responses_ids)


@torch.inference_mode()
def _reforward_ids(
    model: torch.nn.Module, prompts_ids: Sequence[Sequence[int]], responses_ids: Sequence[Sequence[int]],
    logit_sums: list[float] | None = None,
) -> np.ndarray:
    """``(conversations, layers, hidden)`` float32 means over answer positions, one unpadded forward each.

    ``logit_sums`` gets, per conversation, the sum over answer positions of the largest logit (NaN or Inf if any
    logit there is: the largest propagates NaN)."""
    rows = []
    layers = decoder_layers(model)
    device = model_device(model)
    for prompt_ids, answer in zip(prompts_ids, responses_ids):
        ids = torch.tensor([list(prompt_ids) + list(answer)], device=device)
        captured: list[torch.Tensor] = []
        handles = [layer.register_forward_hook(lambda _m, _a, out: captured.append(_hidden_of(out)[0])) for layer in layers]
        try:
            out = model(input_ids=ids)
        finally:
            for handle in handles:
                handle.remove()
        if logit_sums is not None:
            logit_sums.append(float(out.logits[0, len(prompt_ids) - 1 :].float().amax(-1).sum()))
        stacked = torch.stack(captured)[:, len(prompt_ids) :, :]
        rows.append(stacked.float().mean(dim=1).cpu().numpy() if len(answer) else np.zeros(stacked.shape[::2], np.float32))
    return np.stack(rows)
