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

**On a GPU** a decoding step of a large batch is short, and launching its few thousand kernels one by one
from Python costs more than running them. Two more things are done there (both switchable, both checked on
the CPU to give the growing cache's tokens and means on every architecture):

* **Fixed-shape steps** (``static_cache``): after the prefill the prompt's cache moves into preallocated
  full-size layers (transformers' ``StaticLayer``, which keeps its write position on the device), and every
  step passes the same full-width mask. transformers then never reads the mask back to the host to decide
  whether it can skip it (``_ignore_causal_mask_sdpa`` does, once a step, on a growing cache), and every
  step has the same shapes.
* **CUDA graphs** (``cuda_graphs``): after :data:`WARMUP_STEPS` eager steps on a side stream, one step
  (feeding the tokens, the forward with its capture hooks, picking the next tokens) is recorded as a CUDA
  graph and replayed for every later step: one launch instead of one per kernel. A step that cannot be
  captured (some op reads a value back) is run eagerly instead, and the path says why.

**Local attention.** A sliding window (Mistral, Gemma-2/3, Phi-3, Qwen2 with ``use_sliding_window``) or an
attention chunk is applied by transformers over cache *columns*, not over token positions. One left-padded
prefill keeps each row's tokens in contiguous columns, so columns and positions agree; the two-stage prefill
leaves padding between a row's shared prefix and its own suffix, so a window that binds would cover fewer real
tokens than it should. Prefix sharing is therefore used only when the window cannot bind within the batch
(:func:`prefix_sharing_blocker`). A model whose cache this loop cannot drive is reported by
:func:`fast_decoder_blocker`; callers then use ``generate`` (``drift_suite.measure.extract`` does).
"""

from __future__ import annotations

import contextlib
import functools
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


def binding_window(model: torch.nn.Module, columns: int) -> int | None:
    """The model's local-attention span if it can bind within ``columns`` cache columns, else None."""
    span = local_attention_span(model)
    # A query sees itself and the ``span - 1`` columns before it; ``>=`` leaves a column of margin for
    # implementations that count the window one shorter.
    return span if span is not None and columns >= span else None


def prefix_sharing_blocker(model: torch.nn.Module, plan: PrefillPlan, max_new_tokens: int) -> str | None:
    """Why ``plan`` would give wrong activations on ``model`` (a local-attention span it can exceed), else None."""
    columns = plan.prefix_columns + plan.suffix_columns + max_new_tokens
    if (span := binding_window(model, columns)) is not None:
        return f"prefix sharing off: attention window {span} <= {columns} columns"
    return None


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a PEFT wrapper (which passes keyword arguments through), else ``model``."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _dynamic_sliding_layer_class() -> type | None:
    from transformers import cache_utils

    return getattr(cache_utils, "DynamicSlidingWindowLayer", None)


def fast_decoder_blocker(model: torch.nn.Module) -> str | None:
    """Why :func:`decode` cannot drive ``model`` correctly, or None when it can.

    The loop needs a forward that takes ``attention_mask``, ``position_ids`` and ``logits_to_keep`` and a
    dynamic cache of plain or sliding-window attention layers (which left padding, ``batch_select_indices``
    and a 2D padding mask handle); recurrent or other special cache layers are not driven here.
    """
    base = _unwrapped(model)
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
    base = _unwrapped(model)
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


def is_end_of_turn(tokens: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
    """``torch.isin(tokens, eos)`` by broadcasting: never the sorting kernel, which reads sizes back on a GPU."""
    return (tokens[..., None] == eos).any(-1)


def _steps_until_all_ended(tokens: torch.Tensor, eos: torch.Tensor) -> int:
    """Columns of ``tokens`` up to and including the step at which the last row to end said its end-of-turn."""
    ended = is_end_of_turn(tokens, eos)
    if not bool(ended.any(1).all()):
        return tokens.shape[1]
    return int(ended.int().argmax(1).max()) + 1


# -- fixed-shape steps: static cache and CUDA graphs -----------------------------------------------------


@functools.cache
def _static_layer_class() -> type | None:
    """transformers' ``StaticLayer`` where it keeps its write position on the device (transformers 5)."""
    from transformers import cache_utils

    layer = getattr(cache_utils, "StaticLayer", None)
    try:
        on_device = isinstance(getattr(layer(max_cache_len=1), "cumulative_length", None), torch.Tensor)
    except TypeError:  # no StaticLayer, or one built differently (transformers 4: from a config)
        on_device = False
    return layer if on_device else None


def static_cache_blocker(model: torch.nn.Module, columns: int) -> str | None:
    """Why a batch of ``columns`` cache columns cannot decode in fixed-shape steps on ``model``, else None.

    The static cache here is plain full-attention layers, so a local-attention span that can bind within the
    batch (which transformers' own sliding static layers track with host-side counters) keeps the growing
    cache; so does a model spread over several devices, and a transformers without a device-side position.
    """
    if _static_layer_class() is None:
        import transformers

        return f"static cache off: transformers {transformers.__version__} keeps its position on the host"
    if (span := binding_window(model, columns)) is not None:
        return f"static cache off: attention window {span} <= {columns} columns"
    devices = {p.device for p in model.parameters()}
    if len(devices) > 1:
        return f"static cache off: the model spans {len(devices)} devices"
    return None


def to_static_cache(cache: object, capacity: int) -> object:
    """The filled layers of a dynamic ``cache`` moved into full-attention static layers of ``capacity`` columns.

    Layer by layer, each dynamic layer's buffers freed as soon as they are copied, so the copy costs at most one
    layer of memory beyond the static cache itself. Only for a cache whose local-attention span cannot bind
    (:func:`static_cache_blocker`): a sliding layer then still holds every column, like a full one.
    """
    from transformers.cache_utils import Cache

    static_layer = _static_layer_class()
    layers = []
    for layer in cache.layers:
        static = static_layer(max_cache_len=capacity)
        static.update(layer.keys, layer.values)
        layers.append(static)
        layer.keys = layer.values = None
        for name in ("_key_buffer", "_value_buffer"):
            if hasattr(layer, name):
                setattr(layer, name, None)
    return Cache(layers=layers)


def cuda_graph_blocker(model: torch.nn.Module, do_sample: bool) -> str | None:
    """Why the fixed-shape step of ``model`` is not captured as a CUDA graph, else None."""
    device = model_device(model)
    if device.type != "cuda":
        return "CUDA graphs off: not on a CUDA device"
    if do_sample:
        return "CUDA graphs off: sampling draws on the host"
    base = _unwrapped(model)
    if getattr(base, "is_quantized", False) or getattr(base, "hf_quantizer", None) is not None:
        # Not known to be capturable (bitsandbytes' kernels); a failed capture is recovered from, but not tried.
        return "CUDA graphs off: quantized weights"
    return None


@dataclass
class _CapturedStep:
    """A decode step recorded as a CUDA graph; :meth:`run` replays it."""

    graph: object

    def run(self) -> None:
        self.graph.replay()


def capture_step(step: Callable[[], None], device: torch.device) -> _CapturedStep:
    """Record ``step`` (one decode step on fixed buffers) as a CUDA graph, without running it.

    Every tensor the step reads or writes must already exist and be updated in place; anything that reads a
    value back to the host fails the capture, and the caller then runs the step eagerly.
    """
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.device(device), torch.cuda.graph(graph):
        step()
    return _CapturedStep(graph)


WARMUP_STEPS = 2
"""Decode steps run eagerly (on a side stream, as CUDA graph capture wants) before the step is captured:
lazy initialisations (cuBLAS workspaces, kernels' first-call set-up) must not happen inside a capture."""


@torch.inference_mode()
def decode(
    model: torch.nn.Module,
    rows: Sequence[Sequence[int]],
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_id: int,
    *,
    before_forward: Callable[[torch.Tensor | None], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    share_prefixes: bool = True,
    pack_weights: bool = True,
    stop_check_every: int | None = None,
    static_cache: bool | None = None,
    cuda_graphs: bool | None = None,
    on_path: Callable[[str], None] | None = None,
    picked_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` tokens for each prompt and feed every one of them back through the model.

    Unlike ``generate``, the last generated token is fed back too, so a forward hook sees the hidden state of
    every generated token. ``before_forward`` is called before each forward with the tokens being fed
    (``(rows,)``, on the model's device), or ``None`` for the prefill; it must only do tensor work in place
    (under CUDA graphs it runs once, at capture, and its kernels are replayed each step). ``on_step(n)`` is
    called on the host after each of the ``n`` decoding steps. Returns ``(rows, n)`` token ids on the CPU,
    ``n <= max_new_tokens``; after a row's end-of-turn token its entries are ``pad_id``.

    ``stop_check_every`` reads "has every row ended?" back from the device every that many steps (default: 1 on
    the CPU, 8 elsewhere; 1 switches the saving off). Between checks, rows that have all ended are fed padding,
    which ``before_forward`` sees as tokens after an end-of-turn; the tokens returned are the same.

    ``static_cache`` (default: on a GPU) decodes in fixed-shape steps on a preallocated cache, so transformers
    never reads the mask back to the host; ``cuda_graphs`` (default: with the static cache, greedy, on CUDA)
    then records one step as a CUDA graph and replays it, one launch a step instead of one per kernel.
    ``on_path`` is told which path ran: ``"fast"``, or ``"fast (<what was on or off, and why>)"``.

    Sampling, when asked for, is plain temperature sampling from the full softmax, from ``generator``.

    ``picked_logits`` (``(rows,)`` float32 on the model's device) gets the logit of each row's picked token
    added, in place, at every pick: a finite sum says no row's logits held NaN or +Inf, since the greedy pick
    takes such a logit wherever it is (a row of non-finite probabilities is picked greedily for that reason).
    One gather per step, no reduction over the vocabulary, nothing read back.
    """
    device = model_device(model)
    check_every = _stop_check_interval(stop_check_every, device)
    eos = torch.as_tensor(list(eos_ids), dtype=torch.long, device=device)
    batch = len(rows)
    plan = plan_prefill(rows) if share_prefixes else None
    notes: list[str] = []
    if plan is not None and (blocker := prefix_sharing_blocker(model, plan, max_new_tokens)) is not None:
        plan = None
        notes.append(blocker)
    longest_prompt = max(len(r) for r in rows)
    prompt_columns = longest_prompt if plan is None else plan.prefix_columns + plan.suffix_columns
    columns = prompt_columns + max_new_tokens
    use_static = device.type != "cpu" if static_cache is None else static_cache
    if use_static and (blocker := static_cache_blocker(model, columns)) is not None:
        use_static = False
        notes.append(blocker)
    use_graphs = use_static and (cuda_graphs is None or cuda_graphs)
    if use_graphs and (blocker := cuda_graph_blocker(model, do_sample)) is not None:
        use_graphs = False
        if cuda_graphs or device.type == "cuda":  # asked for, or expected on this device: say why not
            notes.append(blocker)
    # The static path copies the prompt's cache once into full-size layers, so the prefill needs no spare room.
    cache = new_cache(model, prompt_columns if use_static else columns)
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
        if not bool(torch.isfinite(probabilities).all()):  # on the host already; multinomial would raise
            return logits.argmax(-1)
        return torch.multinomial(probabilities, 1, generator=generator).squeeze(-1).to(device)

    with contextlib.ExitStack() as stack:
        if pack_weights and not use_static:
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
        # Preallocated so each step passes a growing view instead of concatenating a new mask. Columns not yet
        # written are hidden by causality, so the static path passes the whole mask every step.
        full_mask = torch.cat([mask, mask.new_ones(batch, max_new_tokens)], dim=1)
        position = mask.sum(-1) - 1  # the last prompt token's position: one per real column
        # One column more than is returned: a fixed-shape step picks the token after the one it fed.
        tokens = torch.full((batch, max_new_tokens + 1), pad_id, dtype=torch.long, device=device)
        step_index = torch.zeros(1, dtype=torch.long, device=device)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        pad = torch.tensor(pad_id, device=device)
        fed = torch.empty(batch, dtype=torch.long, device=device)

        def pick_and_record(logits: torch.Tensor) -> None:
            """The next token of every row into ``fed`` and ``tokens``; rows that have ended get padding."""
            picked = pick(logits)
            if picked_logits is not None:
                picked_logits.add_(logits.gather(-1, picked[:, None].to(logits.device)).squeeze(-1).to(picked_logits))
            fed.copy_(torch.where(finished, pad, picked))
            tokens.index_copy_(1, step_index, fed[:, None])
            finished.logical_or_(is_end_of_turn(fed, eos))
            step_index.add_(1)

        def growing_step(step: int) -> None:
            notify(fed)
            position.add_(1)
            logits = forward(fed[:, None], full_mask[:, : mask.shape[1] + step + 1], position[:, None])
            if step + 1 < max_new_tokens:  # no pick after the last step: a sampler's generator is not advanced
                pick_and_record(logits)

        def fixed_step() -> None:
            notify(fed)
            position.add_(1)
            pick_and_record(forward(fed[:, None], full_mask, position[:, None]))

        pick_and_record(logits)
        if use_static:
            cache = to_static_cache(cache, columns)
        captured: _CapturedStep | None = None
        if on_step is not None:
            on_step(0)
        # Warm-up steps run on a side stream and each is joined back, so the stop check reads finished values.
        side_stream = torch.cuda.Stream(device) if use_graphs else None
        for step in range(max_new_tokens):
            if (step + 1) % check_every == 0 and bool(finished.all()):
                # Every row has ended: its end-of-turn token and the padding after it are not measured.
                break
            if not use_static:
                growing_step(step)
            elif side_stream is not None and step < WARMUP_STEPS:
                side_stream.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side_stream):
                    fixed_step()
                torch.cuda.current_stream(device).wait_stream(side_stream)
            else:
                if side_stream is not None:
                    side_stream = None
                    try:
                        captured = capture_step(fixed_step, device)
                    except Exception as error:  # noqa: BLE001 - any capture failure: run the same step eagerly
                        first_line = str(error).splitlines()[0][:120] if str(error) else ""
                        notes.append(f"CUDA graphs off: {type(error).__name__}: {first_line}")
                if captured is not None:
                    captured.run()
                else:
                    fixed_step()
            if on_step is not None:
                on_step(step + 1)
    if use_static:
        notes.insert(0, "CUDA graphs" if captured is not None else "static cache")
    if on_path is not None:
        on_path("fast" + (f" ({', '.join(notes)})" if notes else ""))
    tokens = tokens[:, :max_new_tokens].cpu()
    return tokens[:, : _steps_until_all_ended(tokens, torch.as_tensor(list(eos_ids), dtype=torch.long))]
