"""The benchmarked workloads: the project's one-pass capture, a two-pass reference, FLOP counts and a roofline.

Everything here runs on the same conversations: what measuring one checkpoint costs, i.e. all 196 prompts
of the built-in persona set under :data:`BENCH_DESIGN` (the project's default design), 48-token greedy
answers, fp32, so that numbers from different paths are directly comparable. ``DRIFT_BENCH_CONVERSATIONS=N``
takes the first N instead (64 reproduces the earlier runs). Generation uses the project's default batching
(:class:`GenerationSettings` defaults), so the benchmark follows the project when that default changes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drift_suite.measure import decode as decode_module
from drift_suite.measure import extract
from drift_suite.measure.conversations import Design, build_conversations, render_prompts
from drift_suite.measure.decode import left_pad
from drift_suite.measure.extract import (
    GenerationSettings,
    _AnswerAccumulator,
    plan_batches,
    _eos_ids,
    _hidden_of,
)
from drift_suite.measure.models import decoder_layers
from drift_suite.measure.personas import builtin_persona_set
from drift_suite.measure.placement import model_device

REPO = Path(__file__).resolve().parents[1]
BENCH_DESIGN = Design(default_questions=16, role_prompts=1, role_questions=4)
"""Pinned (the project's default design) so the prompts stay the same if the default changes."""
SETTINGS = GenerationSettings(max_new_tokens=48)
"""The measured workload: 48-token greedy answers with the project's default batch size and token budget."""
ARTIFACTS: dict[str, Any] = {}
"""Outputs shared between benchmarks of one session (the capture's means, to check other paths against)."""


def bench_threads() -> int:
    """Torch intra-op threads for every benchmark: ``DRIFT_BENCH_THREADS``, else torch's default (physical cores)."""
    value = os.environ.get("DRIFT_BENCH_THREADS")
    return int(value) if value else torch.get_num_threads()


def bench_rounds(default: int) -> int:
    """Rounds for the headline timings (``DRIFT_BENCH_ROUNDS`` overrides ``default``)."""
    value = os.environ.get("DRIFT_BENCH_ROUNDS")
    return max(1, int(value)) if value else default


def other_processes_cpu(min_percent: float = 20.0) -> dict[str, float]:
    """``{"pid name": cores}`` of other processes busy right now (one ``top -bn1`` snapshot)."""
    import subprocess

    try:
        out = subprocess.run(["top", "-bn1"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    busy: dict[str, float] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 12 or not parts[0].isdigit() or int(parts[0]) == os.getpid():
            continue
        try:
            percent = float(parts[8])
        except ValueError:
            continue
        if percent >= min_percent:
            busy[f"{parts[0]} {parts[11]}"] = round(percent / 100, 2)
    return busy


def bench_conversations() -> int | None:
    """``DRIFT_BENCH_CONVERSATIONS``: how many of the design's prompts to run (all when unset)."""
    value = os.environ.get("DRIFT_BENCH_CONVERSATIONS")
    return int(value) if value else None


def benchmark_prompts(tokenizer: Any, n: int | None = None) -> list[str]:
    """The first ``n`` (default :func:`bench_conversations`, else all) chat-formatted prompts of :data:`BENCH_DESIGN`."""
    conversations = build_conversations(builtin_persona_set(), BENCH_DESIGN)
    n = n or bench_conversations() or len(conversations)
    if len(conversations) < n:
        raise ValueError(f"{BENCH_DESIGN} gives {len(conversations)} conversations, fewer than {n}")
    return render_prompts(tokenizer, conversations)[:n]


def encode(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt, as :func:`generate_and_capture` encodes them (no extra special tokens)."""
    return [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]


def _pad_id(model: torch.nn.Module, tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _eos_ids(model, tokenizer)[0]


def _content(tokens: Sequence[int], eos: set[int], limit: int) -> list[int]:
    """Generated tokens up to (excluding) the first end-of-turn token, at most ``limit``."""
    out: list[int] = []
    for token in tokens[:limit]:
        if token in eos:
            break
        out.append(token)
    return out


@torch.inference_mode()
def generate_batch(
    model: torch.nn.Module,
    tokenizer: Any,
    rows: Sequence[Sequence[int]],
    settings: GenerationSettings = SETTINGS,
    steps: int | None = None,
    **generate_kwargs: Any,
) -> list[list[int]]:
    """Plain HF ``generate`` (no hooks) of one left-padded batch of prompt ids; the answers' content ids.

    ``steps`` is how many tokens to generate (default ``max_new_tokens``; the capture path runs one more).
    """
    eos = _eos_ids(model, tokenizer)
    pad_id = _pad_id(model, tokenizer)
    ids, mask = left_pad(rows, pad_id)
    device = model_device(model)  # the GPU benchmark runs these on CUDA
    generated = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=steps or settings.max_new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        pad_token_id=pad_id,
        eos_token_id=eos,
        **generate_kwargs,
    )
    return [_content(row[ids.shape[1] :].tolist(), set(eos), settings.max_new_tokens) for row in generated]


def generate_answers(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    settings: GenerationSettings = SETTINGS,
    steps: int | None = None,
    **generate_kwargs: Any,
) -> list[list[int]]:
    """:func:`generate_batch` over all prompts, batched exactly like the project path."""
    encoded = encode(tokenizer, prompts)
    answers: list[list[int]] = [[] for _ in prompts]
    for batch in plan_batches(encoded, settings):
        out = generate_batch(model, tokenizer, [encoded[i] for i in batch], settings, steps, **generate_kwargs)
        for i, answer in zip(batch, out):
            answers[i] = answer
    return answers


def decode_answers(
    model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], settings: GenerationSettings = SETTINGS
) -> list[list[int]]:
    """The project's decoder without the capture hooks, batched like the project path: what the hooks cost."""
    encoded = encode(tokenizer, prompts)
    eos = _eos_ids(model, tokenizer)
    answers: list[list[int]] = [[] for _ in prompts]
    for batch in plan_batches(encoded, settings):
        tokens = extract.decode(model, [encoded[i] for i in batch], settings.max_new_tokens, eos, _pad_id(model, tokenizer))
        for i, row in zip(batch, tokens.tolist()):
            answers[i] = _content(row, set(eos), settings.max_new_tokens)
    return answers


@dataclass
class TwoPassResult:
    """Output and cost of the two-pass reference."""

    means: np.ndarray
    """``(conversations, layers, hidden)`` float32, as :class:`~drift_suite.measure.extract.Extraction`."""
    token_counts: np.ndarray
    answer_ids: list[list[int]]
    generate_s: float = 0.0
    reforward_s: float = 0.0
    largest_activation_tensor_mb: float = 0.0
    """The biggest ``layers × batch × tokens × hidden`` tensor held at once."""
    largest_logits_mb: float = 0.0


@torch.inference_mode()
def reforward_means(
    model: torch.nn.Module,
    tokenizer: Any,
    encoded: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    batch: Sequence[int],
    result: TwoPassResult,
) -> None:
    """Second pass for one batch, as upstream assistant-axis does it (``pipeline/2_activations.py``).

    One batched forward of the full model over prompt + answer (left-padded), forward hooks keep every
    decoder layer's whole output, stacked to ``(layers, batch, tokens, hidden)``; then the mean over each
    answer's span. Positions are counted from each row's first real token, as ``generate`` counts them, so
    the padding does not shift the rotary positions.
    """
    pad_id = _pad_id(model, tokenizer)
    ids, mask = left_pad([list(encoded[i]) + list(answers[i]) for i in batch], pad_id)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    layers = decoder_layers(model)
    captured: list[torch.Tensor | None] = [None] * len(layers)

    def keep(index: int):
        def hook(_module: Any, _args: Any, output: Any) -> None:
            captured[index] = _hidden_of(output)

        return hook

    handles = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(layers)]
    try:
        device = model_device(model)
        output = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position_ids.to(device))
    finally:
        for handle in handles:
            handle.remove()
    activations = torch.stack(captured)  # (layers, batch, tokens, hidden)
    result.largest_activation_tensor_mb = max(result.largest_activation_tensor_mb, activations.nbytes / 2**20)
    result.largest_logits_mb = max(result.largest_logits_mb, output.logits.nbytes / 2**20)
    tokens = ids.shape[1]
    for row, i in enumerate(batch):
        n = len(answers[i])
        if n:
            result.means[i] = activations[:, row, tokens - n :].float().mean(dim=1).cpu().numpy()
        result.token_counts[i] = n


def two_pass_reference(
    model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], settings: GenerationSettings = SETTINGS
) -> TwoPassResult:
    """Generate without hooks, then re-forward prompt + answer batch by batch (same batches as the project)."""
    cfg = model.config
    encoded = encode(tokenizer, prompts)
    result = TwoPassResult(
        means=np.zeros((len(prompts), cfg.num_hidden_layers, cfg.hidden_size), dtype=np.float32),
        token_counts=np.zeros(len(prompts), dtype=np.int64),
        answer_ids=[[] for _ in prompts],
    )
    for batch in plan_batches(encoded, settings):
        start = time.perf_counter()
        batch_answers = generate_batch(model, tokenizer, [encoded[i] for i in batch], settings)
        result.generate_s += time.perf_counter() - start
        for i, answer in zip(batch, batch_answers):
            result.answer_ids[i] = answer
        start = time.perf_counter()
        reforward_means(model, tokenizer, encoded, result.answer_ids, batch, result)
        result.reforward_s += time.perf_counter() - start
    return result


# -- FLOPs and the roofline ------------------------------------------------------------------------------


def linear_weights(model: torch.nn.Module) -> int:
    """Weights that multiply every token: all ``nn.Linear`` layers, the (tied) ``lm_head`` included."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def lm_head_weights(model: torch.nn.Module) -> int:
    return model.get_output_embeddings().weight.numel()


def attention_flops(model: torch.nn.Module, context: int) -> int:
    """FLOPs of ``QKᵀ`` and ``AV`` for one query token over ``context`` keys, over all layers."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * 2 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * context


def workload_flops(model: torch.nn.Module, prompt_lengths: Sequence[int], answer_lengths: Sequence[int]) -> dict[str, float]:
    """Useful FLOPs of generating the answers (padding and finished rows excluded).

    ``decode``: per generated token ``2 × linear weights`` (non-embedding layers + lm_head) plus attention
    over the context so far. ``prefill``: every prompt token, without lm_head (only the last position's
    logits are needed), as a one-stage prefill computes it.
    """
    per_token = 2 * linear_weights(model)
    no_head = per_token - 2 * lm_head_weights(model)
    decode = prefill = 0
    for p, n in zip(prompt_lengths, answer_lengths):
        decode += sum(per_token + attention_flops(model, p + t) for t in range(1, n + 1))
        prefill += sum(no_head + attention_flops(model, t) for t in range(1, p + 1))
    return {"decode": float(decode), "prefill": float(prefill), "per_token_linear": float(per_token)}


def prefill_flops_computed(model: torch.nn.Module, encoded: Sequence[Sequence[int]], settings: GenerationSettings) -> float:
    """Prefill FLOPs the project path actually runs (padding excluded): a shared prefix once per group.

    Lower than :func:`workload_flops`'s ``prefill`` by what prefix sharing skips; this is the count that
    may be set against the roofline.
    """
    no_head = 2 * (linear_weights(model) - lm_head_weights(model))
    total = 0
    for batch in plan_batches(encoded, settings):
        rows = [encoded[i] for i in batch]
        plan = decode_module.plan_prefill(rows)
        if plan is None:
            positions = [(0, len(r)) for r in rows]
        else:
            positions = [(0, len(prefix)) for prefix in plan.prefixes]
            positions += [(plan.prefix_length(i), len(r)) for i, r in enumerate(rows)]
        for start, end in positions:
            total += sum(no_head + attention_flops(model, t) for t in range(start + 1, end + 1))
    return float(total)


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` GFLOP/s of one ``size × size`` fp32 matmul (after one warm-up)."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def gemm_gflops(m: int, k: int, n: int, min_seconds: float = 0.2, packed: bool = False) -> float:
    """GFLOP/s of ``(m × k) · (k × n)`` as the model runs it: ``F.linear``, or MKL's packed sgemm as
    :func:`drift_suite.measure.decode.packed_linears` runs it (``packed``), timed for ``min_seconds``."""
    x = torch.randn(m, k)
    w = torch.randn(n, k)
    if packed:
        weight = torch.ops.mkl._mkl_reorder_linear_weight(w, m)

        def multiply() -> torch.Tensor:
            return torch.ops.mkl._mkl_linear(x, weight, w, None, m)
    else:

        def multiply() -> torch.Tensor:
            return torch.nn.functional.linear(x, w)

    multiply()
    calls, start = 0, time.perf_counter()
    while True:
        multiply()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return 2 * m * k * n * calls / elapsed / 1e9


def read_bandwidth_gbs(megabytes: int = 512, repeats: int = 3) -> float:
    """Best-of-``repeats`` GB/s of summing a ``megabytes`` fp32 tensor: the rate weights can be streamed in."""
    x = torch.ones(megabytes * 2**20 // 4)
    x.sum()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    return x.nbytes / best / 1e9


def decode_gemm_shapes(model: torch.nn.Module) -> dict[str, tuple[int, int, int]]:
    """``name: (k, n, count per token)`` of the GEMMs one decode step runs, from the model's own layers."""
    shapes: dict[str, tuple[int, int, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            short = name.rsplit(".", 1)[-1]
            k, n = module.in_features, module.out_features
            key = f"{short} {k}x{n}"
            prev = shapes.get(key)
            shapes[key] = (k, n, (prev[2] if prev else 0) + 1)
    return shapes


def hook_work_seconds(n_layers: int, hidden: int, batch: int, steps: int, repeats: int = 3) -> float:
    """CPU time the capture hooks add to ``steps`` forward calls of one batch, measured in isolation.

    The same work as :func:`~drift_suite.measure.extract.generate_and_capture` does per step (the accumulator told
    which tokens are fed, one forward hook per layer adding the last position's output) on identity layers,
    minus the same calls without hooks: hook dispatch + the hooks' own tensor work.
    """
    layers = [torch.nn.Identity() for _ in range(n_layers)]
    x = torch.randn(batch, 1, hidden)
    fed = torch.full((batch,), 5, dtype=torch.long)
    state: dict[str, _AnswerAccumulator] = {}

    def layer_hook(index: int):
        def hook(_module: Any, _args: Any, output: Any) -> None:
            state["acc"].add(index, _hidden_of(output))

        return hook

    def run(notify: bool) -> float:
        state["acc"] = _AnswerAccumulator(batch, n_layers, hidden, [2], steps)
        start = time.perf_counter()
        with torch.inference_mode():
            for _ in range(steps):
                if notify:
                    state["acc"].before_forward(fed)
                for layer in layers:
                    layer(x)
        return time.perf_counter() - start

    bare = min(run(False) for _ in range(repeats))
    handles = [layer.register_forward_hook(layer_hook(i)) for i, layer in enumerate(layers)]
    try:
        hooked = min(run(True) for _ in range(repeats))
    finally:
        for handle in handles:
            handle.remove()
    return max(hooked - bare, 0.0)


# -- experiments on the project path, without editing it -----------------------------------------------


@contextlib.contextmanager
def decoder_variant(share_prefixes: bool = True, pack_weights: bool = True, growing_cache: bool = True) -> Iterator[None]:
    """Run the project path with some of its decoder speed-ups turned off (for the ablation experiment)."""
    from transformers import DynamicCache

    real_decode, real_new_cache = extract.decode, decode_module.new_cache
    extract.decode = functools.partial(real_decode, share_prefixes=share_prefixes, pack_weights=pack_weights)
    if not growing_cache:
        decode_module.new_cache = lambda model, capacity: DynamicCache(config=model.config)
    try:
        yield
    finally:
        extract.decode, decode_module.new_cache = real_decode, real_new_cache


@dataclass
class Timed:
    """Wall times of repeated runs of one callable (collected by the benchmark target itself)."""

    seconds: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.seconds)

    def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.seconds.append(time.perf_counter() - start)
        return out
