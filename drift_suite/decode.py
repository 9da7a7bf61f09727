"""Batched decoding for measurement: the model's own forward in a lean loop, faster than ``generate`` on CPU.

Measuring a checkpoint is ~200 short answers from one model, so decoding is nearly all of its cost. This loop
calls the model's ordinary ``forward`` (any Hugging Face decoder-only model; no architecture code is copied)
and adds three things ``model.generate`` does not do, each measured in ``docs/benchmarks.md``:

* **Shared prompt prefixes are prefilled once.** Persona prompts share their system turn across questions;
  the prefix is run once per group, its KV cache is copied to the group's rows, then each row's own suffix is
  prefilled on top (:func:`plan_prefill`).
* **The KV cache grows in place** (:class:`GrowingLayer`): preallocated storage instead of a ``torch.cat`` of
  the whole cache per layer per step.
* **MKL-packed weights for the decode GEMMs** (:func:`packed_linears`): decode multiplies a few dozen rows by
  every weight matrix, a shape where MKL's packed sgemm is ~1.3x faster than the plain one, with the same
  results. Used only on CPU, fp32, when the packed copy fits in free memory.

Rows that are done keep their place in the batch (the packed GEMMs need a fixed row count) and are fed the
pad token, as ``generate`` does; decoding stops when every row is done.

Everything in the loop stays on the model's device: tokens, masks and end-of-turn bookkeeping. The only
device-to-host reads are the "has every row ended?" check (every ``stop_check_every`` steps) and the final
tokens; greedy picking never leaves the device.

**Local attention.** A sliding window (Mistral, Gemma-2/3, Phi-3, Qwen2 with ``use_sliding_window``) or an
attention chunk is applied by transformers over cache *columns*, not over token positions. One left-padded
prefill keeps each row's tokens in contiguous columns, so columns and positions agree; the two-stage prefill
leaves padding between a row's shared prefix and its own suffix, so a window that binds would cover fewer real
tokens than it should. Prefix sharing is therefore used only when the window cannot bind within the batch
(:func:`prefix_sharing_blocker`). A model whose cache this loop cannot drive is reported by
:func:`fast_decoder_blocker`; callers then use ``generate`` (``drift_suite.extract`` does).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from .placement import model_device

PackedLinearForward = Callable[[torch.Tensor], torch.Tensor]


# -- prefill plan -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrefillPlan:
    """How a batch of prompts is prefilled in two stages: shared prefixes once, then each row's suffix."""

    prefixes: list[list[int]]
    """Token ids of each distinct shared prefix."""
    group_of_row: list[int]
    """Index into :attr:`prefixes` for each row."""
    suffix_columns: int
    """Longest suffix: the width of the second prefill stage (rows left-padded to it)."""

    def prefix_length(self, row: int) -> int:
        return len(self.prefixes[self.group_of_row[row]])

    @property
    def prefix_columns(self) -> int:
        """Longest prefix: the width of the first prefill stage."""
        return max(len(p) for p in self.prefixes)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def plan_prefill(rows: Sequence[Sequence[int]], min_saving: float = 0.2) -> PrefillPlan | None:
    """Group prompts into runs that share a prefix, choosing the runs that save the most prefill tokens.

    Rows are sorted, so rows sharing a prefix are adjacent; a dynamic programme over the sorted order picks the
    runs (each run's prefix is its rows' common prefix, leaving every row at least one token of its own) that
    maximize tokens not recomputed. Returns ``None`` when the two-stage prefill, counting its padding, would
    not compute at least ``min_saving`` fewer token positions than one left-padded prefill of the batch.
    """
    if len(rows) < 2 or min(len(r) for r in rows) < 2:
        return None
    order = sorted(range(len(rows)), key=lambda i: list(rows[i]))
    lcp = [_common_prefix(rows[a], rows[b]) for a, b in zip(order, order[1:])]
    # best[j]: most tokens saved by splitting the first j sorted rows into runs; cut[j]: where the last run starts.
    best = [0] * (len(order) + 1)
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        best[end], cut[end] = best[end - 1], end - 1  # the last row alone
        shared = len(rows[order[end - 1]]) - 1
        for start in range(end - 2, -1, -1):
            shared = min(shared, lcp[start], len(rows[order[start]]) - 1)
            if shared == 0:
                break
            saving = best[start] + (end - start - 1) * shared
            if saving > best[end]:
                best[end], cut[end] = saving, start
    prefixes: list[list[int]] = []
    group_of_row = [0] * len(rows)
    end = len(order)
    while end > 0:
        start = cut[end]
        run = order[start:end]
        length = min([lcp[k] for k in range(start, end - 1)] + [len(rows[i]) - 1 for i in run])
        prefixes.append(list(rows[run[0]][:length]))
        for i in run:
            group_of_row[i] = len(prefixes) - 1
        end = start
    suffix_columns = max(len(r) - len(prefixes[group_of_row[i]]) for i, r in enumerate(rows))
    plan = PrefillPlan(prefixes, group_of_row, suffix_columns)
    one_stage = len(rows) * max(len(r) for r in rows)
    two_stage = len(prefixes) * plan.prefix_columns + len(rows) * plan.suffix_columns
    return plan if two_stage <= (1 - min_saving) * one_stage else None


# -- KV cache ---------------------------------------------------------------------------------------------


def _dynamic_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    return DynamicLayer


class GrowingLayer(_dynamic_layer_class()):  # type: ignore[misc]
    """A full-attention KV cache layer that writes new states into spare capacity instead of concatenating.

    ``keys``/``values`` are views of the filled part of preallocated buffers; capacity doubles when a write
    would overflow it, so a wrong hint costs a copy, never a wrong result.
    """

    def __init__(self, capacity: int = 256):
        super().__init__()
        self.capacity = capacity
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        self._length = 0

    def _reserve(self, like: torch.Tensor, length: int) -> None:
        if self._key_buffer is not None and length <= self._key_buffer.shape[-2]:
            return
        capacity = max(length, self.capacity, 2 * (self._key_buffer.shape[-2] if self._key_buffer is not None else 0))
        shape = (*like.shape[:-2], capacity, like.shape[-1])
        keys, values = like.new_empty(shape), like.new_empty(shape)
        if self._key_buffer is not None:
            keys[..., : self._length, :] = self._key_buffer[..., : self._length, :]
            values[..., : self._length, :] = self._value_buffer[..., : self._length, :]
        self._key_buffer, self._value_buffer = keys, values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        # Set directly rather than through lazy_initialization, whose signature differs between transformers
        # 4.56 and 5; both versions read only these attributes.
        self.is_initialized, self.dtype, self.device = True, key_states.dtype, key_states.device
        end = self._length + key_states.shape[-2]
        self._reserve(key_states, end)
        self._key_buffer[..., self._length : end, :] = key_states
        self._value_buffer[..., self._length : end, :] = value_states
        self._length = end
        self.keys = self._key_buffer[..., :end, :]
        self.values = self._value_buffer[..., :end, :]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._key_buffer is not None:
            self._key_buffer = self._key_buffer[indices]
            self._value_buffer = self._value_buffer[indices]
            self.keys = self._key_buffer[..., : self._length, :]
            self.values = self._value_buffer[..., : self._length, :]

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        if self.keys is not None:
            self._length = self.keys.shape[-2]

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.batch_select_indices(torch.arange(self.keys.shape[0]).repeat_interleave(repeats))


def new_cache(model: torch.nn.Module, capacity: int) -> object:
    """The model's usual dynamic cache, with every plain full-attention layer replaced by a :class:`GrowingLayer`.

    Sliding-window and other special layers are kept as the model's config makes them.
    """
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    dynamic_layer = _dynamic_layer_class()
    for index, layer in enumerate(cache.layers):
        if type(layer) is dynamic_layer:
            cache.layers[index] = GrowingLayer(capacity)
    return cache


def local_attention_span(model: torch.nn.Module) -> int | None:
    """The narrowest local-attention span (sliding window or attention chunk) the model's config declares, if any.

    Read from the config, not from the cache: Mistral applies its window through the mask while its cache
    layers are plain ones. A span is counted even where ``layer_types`` marks every layer full (conservative:
    it only costs the prefix sharing when a batch is wider than it).
    """
    config = model.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    spans = [getattr(config, name, None) for name in ("sliding_window", "attention_chunk_size")]
    spans = [span for span in spans if isinstance(span, int) and not isinstance(span, bool) and span > 0]
    return min(spans, default=None)


def prefix_sharing_blocker(model: torch.nn.Module, plan: PrefillPlan, max_new_tokens: int) -> str | None:
    """Why ``plan`` would give wrong activations on ``model`` (a local-attention span it can exceed), else None."""
    span = local_attention_span(model)
    columns = plan.prefix_columns + plan.suffix_columns + max_new_tokens
    # A query sees itself and the ``span - 1`` columns before it; ``>=`` leaves a column of margin for
    # implementations that count the window one shorter.
    if span is not None and columns >= span:
        return f"prefix sharing off: attention window {span} <= {columns} columns"
    return None


def _dynamic_sliding_layer_class() -> type | None:
    from transformers import cache_utils

    return getattr(cache_utils, "DynamicSlidingWindowLayer", None)


def fast_decoder_blocker(model: torch.nn.Module) -> str | None:
    """Why :func:`decode` cannot drive ``model`` correctly, or None when it can.

    The loop needs a forward that takes ``attention_mask``, ``position_ids`` and ``logits_to_keep`` and a
    dynamic cache of plain or sliding-window attention layers (which left padding, ``batch_select_indices``
    and a 2D padding mask handle); recurrent or other special cache layers are not driven here.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    parameters = inspect.signature(type(base).forward).parameters
    missing = [name for name in ("attention_mask", "position_ids", "logits_to_keep") if name not in parameters]
    if missing:
        return f"{type(base).__name__}.forward takes no {', '.join(missing)}"
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=base.config)
    except Exception as error:  # noqa: BLE001 - any failure means this loop cannot build the model's cache
        return f"cannot build its dynamic cache ({type(error).__name__})"
    known = {_dynamic_layer_class(), _dynamic_sliding_layer_class()}
    special = sorted({type(layer).__name__ for layer in getattr(cache, "layers", []) if type(layer) not in known})
    if special:
        return f"cache layers {', '.join(special)}"
    return None


# -- packed weights ---------------------------------------------------------------------------------------


def _available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _packable(module: torch.nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (
        isinstance(module, torch.nn.Linear)
        and isinstance(weight, torch.Tensor)
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and weight.layout == torch.strided
    )


def can_pack_linears(model: torch.nn.Module) -> bool:
    """Whether :func:`packed_linears` would pack: CPU fp32 weights, MKL, and twice their size in free memory."""
    if not (torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight")):
        return False
    linears = [m for m in model.modules() if _packable(m)]
    if not linears:
        return False
    weight_bytes = sum(m.weight.numel() * 4 for m in linears)
    available = _available_memory_bytes()
    # The packed copy measured 1.25x the weights it packs; keep a margin for the rest of the run.
    return available is not None and available > 2 * weight_bytes + 2**30


@contextlib.contextmanager
def packed_linears(model: torch.nn.Module, rows: int) -> Iterator[bool]:
    """Within the block, every packable ``nn.Linear`` multiplies ``rows``-row inputs with MKL-packed weights.

    MKL's packed sgemm reuses a reordered copy of the weight on every call; with any other row count (the
    prefill) the op falls back to the plain GEMM. Yields whether anything was packed. The packed copies are
    freed on exit, so weights edited between calls are always the ones used.
    """
    if not can_pack_linears(model):
        yield False
        return
    patched: list[torch.nn.Module] = []

    def packed_forward(module: torch.nn.Linear) -> PackedLinearForward:
        packed = torch.ops.mkl._mkl_reorder_linear_weight(module.weight.detach(), rows)
        weight, bias = module.weight.detach(), module.bias

        def forward(x: torch.Tensor) -> torch.Tensor:
            return torch.ops.mkl._mkl_linear(x, packed, weight, bias, rows)

        return forward

    try:
        for module in model.modules():
            if _packable(module) and "forward" not in module.__dict__:
                module.forward = packed_forward(module)
                patched.append(module)
        yield True
    finally:
        for module in patched:
            del module.forward


# -- the loop ---------------------------------------------------------------------------------------------


def _cache_keyword(model: torch.nn.Module) -> str:
    """``cache`` in transformers >= 5.24 (``past_key_values`` is deprecated there), ``past_key_values`` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT passes kwargs through
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of token-id rows left-padded to the longest one."""
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for index, row in enumerate(rows):
        if len(row):
            ids[index, longest - len(row) :] = torch.as_tensor(list(row), dtype=torch.long)
            mask[index, longest - len(row) :] = 1
    return ids, mask


def _positions(mask: torch.Tensor, start: torch.Tensor | int = 0) -> torch.Tensor:
    """Rotary positions counted from each row's first real token (padding gets 0, which is masked anyway)."""
    positions = mask.cumsum(-1) - 1
    return (positions + (start[:, None] if isinstance(start, torch.Tensor) else start)).clamp(min=0) * mask


def _stop_check_interval(stop_check_every: int | None, device: torch.device) -> int:
    if stop_check_every is not None:
        if stop_check_every < 1:
            raise ValueError(f"stop_check_every must be at least 1, got {stop_check_every}")
        return stop_check_every
    # On the CPU the check costs nothing and an extra forward does; on an accelerator the check is a
    # synchronisation that stalls the queue of kernels, and a few forwards of padding are cheap.
    return 1 if device.type == "cpu" else 8


def _steps_until_all_ended(tokens: torch.Tensor, eos: torch.Tensor) -> int:
    """Columns of ``tokens`` up to and including the step at which the last row to end said its end-of-turn."""
    ended = torch.isin(tokens, eos)
    if not bool(ended.any(1).all()):
        return tokens.shape[1]
    return int(ended.int().argmax(1).max()) + 1


@torch.inference_mode()
def decode(
    model: torch.nn.Module,
    rows: Sequence[Sequence[int]],
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_id: int,
    *,
    before_forward: Callable[[torch.Tensor | None], None] | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    share_prefixes: bool = True,
    pack_weights: bool = True,
    stop_check_every: int | None = None,
    on_path: Callable[[str], None] | None = None,
) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` tokens for each prompt and feed every one of them back through the model.

    Unlike ``generate``, the last generated token is fed back too, so a forward hook sees the hidden state of
    every generated token. ``before_forward`` is called before each forward with the tokens being fed
    (``(rows,)``, on the model's device), or ``None`` for the prefill. Returns ``(rows, n)`` token ids on the
    CPU, ``n <= max_new_tokens``; after a row's end-of-turn token its entries are ``pad_id``.

    ``stop_check_every`` reads "has every row ended?" back from the device every that many steps (default: 1 on
    the CPU, 8 elsewhere; 1 switches the saving off). Between checks, rows that have all ended are fed padding,
    which ``before_forward`` sees as tokens after an end-of-turn; the tokens returned are the same.
    ``on_path`` is told which path ran: ``"fast"``, or ``"fast (<why a speed-up was off>)"``.

    Sampling, when asked for, is plain temperature sampling from the full softmax, from ``generator``.
    """
    device = model_device(model)
    check_every = _stop_check_interval(stop_check_every, device)
    eos = torch.as_tensor(list(eos_ids), dtype=torch.long, device=device)
    batch = len(rows)
    plan = plan_prefill(rows) if share_prefixes else None
    path = "fast"
    if plan is not None and (blocker := prefix_sharing_blocker(model, plan, max_new_tokens)) is not None:
        plan, path = None, f"fast ({blocker})"
    if on_path is not None:
        on_path(path)
    longest_prompt = max(len(r) for r in rows)
    prompt_columns = longest_prompt if plan is None else plan.prefix_columns + plan.suffix_columns
    cache = new_cache(model, prompt_columns + max_new_tokens)
    notify = before_forward or (lambda _fed: None)
    cache_keyword = _cache_keyword(model)

    def forward(ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = model(
            input_ids=ids, attention_mask=mask, position_ids=positions,
            use_cache=True, logits_to_keep=1, **{cache_keyword: cache},
        )
        return out.logits[:, -1]

    def pick(logits: torch.Tensor) -> torch.Tensor:
        if not do_sample:
            return logits.argmax(-1)
        # On the CPU, where ``generator`` lives, so a seed gives the same answers on any device.
        probabilities = torch.softmax(logits.float().cpu() / temperature, dim=-1)
        return torch.multinomial(probabilities, 1, generator=generator).squeeze(-1).to(device)

    with contextlib.ExitStack() as stack:
        if pack_weights:
            stack.enter_context(packed_linears(model, batch))
        notify(None)
        if plan is None:
            ids, mask = (t.to(device) for t in left_pad(rows, pad_id))
            logits = forward(ids, mask, _positions(mask))
        else:
            prefix_ids, prefix_mask = (t.to(device) for t in left_pad(plan.prefixes, pad_id))
            forward(prefix_ids, prefix_mask, _positions(prefix_mask))
            groups = torch.as_tensor(plan.group_of_row, dtype=torch.long, device=device)
            cache.batch_select_indices(groups)
            suffixes = [r[plan.prefix_length(i) :] for i, r in enumerate(rows)]
            suffix_ids, suffix_mask = (t.to(device) for t in left_pad(suffixes, pad_id))
            prefix_lengths = torch.as_tensor([plan.prefix_length(i) for i in range(batch)], dtype=torch.long, device=device)
            mask = torch.cat([prefix_mask[groups], suffix_mask], dim=1)
            logits = forward(suffix_ids, mask, _positions(suffix_mask, prefix_lengths))
        # Preallocated so each step passes a growing view instead of concatenating a new mask.
        full_mask = torch.cat([mask, mask.new_ones(batch, max_new_tokens)], dim=1)
        position = mask.sum(-1) - 1  # the last prompt token's position: one per real column
        tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        pad = torch.tensor(pad_id, device=device)
        for step in range(max_new_tokens):
            fed = torch.where(finished, pad, pick(logits))
            tokens[:, step] = fed
            finished |= torch.isin(fed, eos)
            if (step + 1) % check_every == 0 and bool(finished.all()):
                # Every row has ended: its end-of-turn token and the padding after it are not measured.
                break
            notify(fed)
            position = position + 1
            logits = forward(fed[:, None], full_mask[:, : mask.shape[1] + step + 1], position[:, None])
    tokens = tokens.cpu()
    return tokens[:, : _steps_until_all_ended(tokens, torch.as_tensor(list(eos_ids), dtype=torch.long))]
