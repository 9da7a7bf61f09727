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
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

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
) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` tokens for each prompt and feed every one of them back through the model.

    Unlike ``generate``, the last generated token is fed back too, so a forward hook sees the hidden state of
    every generated token. ``before_forward`` is called before each forward with the tokens being fed
    (``(rows,)``), or ``None`` for the prefill. Returns ``(rows, n)`` token ids, ``n <= max_new_tokens``;
    after a row's end-of-turn token its entries are ``pad_id``.

    Sampling, when asked for, is plain temperature sampling from the full softmax, from ``generator``.
    """
    device = next(model.parameters()).device
    eos = torch.as_tensor(list(eos_ids), dtype=torch.long)
    batch = len(rows)
    plan = plan_prefill(rows) if share_prefixes else None
    longest_prompt = max(len(r) for r in rows)
    prompt_columns = longest_prompt if plan is None else plan.prefix_columns + plan.suffix_columns
    cache = new_cache(model, prompt_columns + max_new_tokens)
    notify = before_forward or (lambda _fed: None)
    cache_keyword = _cache_keyword(model)

    def forward(ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = model(
            input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
            use_cache=True, logits_to_keep=1, **{cache_keyword: cache},
        )
        return out.logits[:, -1]

    def pick(logits: torch.Tensor) -> torch.Tensor:
        if not do_sample:
            return logits.argmax(-1)
        # On the CPU, where ``generator`` lives, so a seed gives the same answers on any device.
        probabilities = torch.softmax(logits.float().cpu() / temperature, dim=-1)
        return torch.multinomial(probabilities, 1, generator=generator).squeeze(-1)

    with contextlib.ExitStack() as stack:
        if pack_weights:
            stack.enter_context(packed_linears(model, batch))
        notify(None)
        if plan is None:
            ids, mask = left_pad(rows, pad_id)
            logits = forward(ids, mask, _positions(mask))
        else:
            prefix_ids, prefix_mask = left_pad(plan.prefixes, pad_id)
            forward(prefix_ids, prefix_mask, _positions(prefix_mask))
            groups = torch.as_tensor(plan.group_of_row, dtype=torch.long)
            cache.batch_select_indices(groups.to(device))
            suffix_ids, suffix_mask = left_pad([r[plan.prefix_length(i) :] for i, r in enumerate(rows)], pad_id)
            prefix_lengths = torch.as_tensor([plan.prefix_length(i) for i in range(batch)], dtype=torch.long)
            mask = torch.cat([prefix_mask[groups], suffix_mask], dim=1)
            logits = forward(suffix_ids, mask, _positions(suffix_mask, prefix_lengths))
        # Preallocated so each step passes a growing view instead of concatenating a new mask.
        full_mask = torch.cat([mask, torch.ones(batch, max_new_tokens, dtype=mask.dtype)], dim=1)
        position = mask.sum(-1) - 1  # the last prompt token's position: one per real column
        tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long)
        finished = torch.zeros(batch, dtype=torch.bool)
        pad = torch.tensor(pad_id)
        for step in range(max_new_tokens):
            fed = torch.where(finished, pad, pick(logits).cpu())
            tokens[:, step] = fed
            finished |= torch.isin(fed, eos)
            if bool(finished.all()):
                # Every row has ended: its end-of-turn token and the padding after it are not measured.
                return tokens[:, : step + 1]
            notify(fed)
            position = position + 1
            logits = forward(fed[:, None], full_mask[:, : mask.shape[1] + step + 1], position[:, None])
    return tokens
