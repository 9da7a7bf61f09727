"""What the GPU benchmark runs: random-weight models of real shapes, the GPU's spec, and the physical limit.

Random weights time the same as trained weights of the same shape (the answers run the full 48 tokens,
the worst case), so no weights need downloading: the models are built from the demo model's config and
tokenizer (``DRIFT_GPU_BENCH_TOKENIZER``, else ``.gpu/tok``, else ``$DRIFT_DEMO_MODEL``).

Environment: ``DRIFT_GPU_BENCH_SHAPES`` (comma list of :data:`SHAPES`, default ``135m,1.5b,8b``; ``tiny`` for
a seconds-long CPU run), ``DRIFT_GPU_BENCH_DEVICE`` (default ``cuda``; ``cpu`` runs the same code paths on
the CPU), ``DRIFT_GPU_BENCH_RESULTS`` (default ``benchmarks/results-gpu.json``), ``DRIFT_GPU_BENCH_PERSONAS``
(the upstream 275-role persona dir).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.workloads import REPO, linear_weights, workload_flops
from drift_suite.measure.extract import GenerationSettings, plan_batches

SHAPES: dict[str, dict[str, Any]] = {
    # A few-layer model of the demo's width family: the CPU smoke run of every code path, in seconds.
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=16, tie_word_embeddings=True),
    # SmolLM2-135M (the demo model's own shape).
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                 head_dim=64, tie_word_embeddings=True),
    # Qwen2.5-1.5B-like, as a Llama (the decoder treats both families alike).
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 head_dim=128, tie_word_embeddings=False),
    # Llama-3-8B-like.
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               head_dim=128, tie_word_embeddings=False),
}
DEFAULT_SHAPES = "135m,1.5b,8b"
LARGEST_SHAPE = "8b"
"""The shape --thorough and the 275-role persona set are timed on (the smallest listed shape when it is absent)."""


@dataclass(frozen=True)
class CardSpec:
    """Datasheet figures of one GPU: HBM bandwidth and dense bf16 tensor-core rate (no sparsity)."""

    name: str
    bandwidth_tb_s: float
    bf16_tflop_s: float


# NVIDIA datasheets (dense, no sparsity). Checked most specific first.
CARD_SPECS: tuple[tuple[tuple[str, ...], CardSpec], ...] = (
    (("H200",), CardSpec("H200 SXM", 4.8, 989.0)),
    (("H100", "NVL"), CardSpec("H100 NVL", 3.9, 835.0)),
    (("H100", "PCIE"), CardSpec("H100 PCIe", 2.0, 756.0)),
    (("H100",), CardSpec("H100 SXM", 3.35, 989.0)),
    (("A100", "80GB"), CardSpec("A100 80GB SXM", 2.039, 312.0)),
    (("A100",), CardSpec("A100 40GB", 1.555, 312.0)),
    (("L4",), CardSpec("L4", 0.3, 121.0)),
)


def card_spec(gpu_name: str | None) -> CardSpec | None:
    """The datasheet entry for a ``torch.cuda.get_device_name`` string; ``None`` for an unknown card."""
    upper = (gpu_name or "").upper()
    for needles, spec in CARD_SPECS:
        if all(needle in upper for needle in needles) and not (needles == ("L4",) and "L40" in upper):
            return spec
    return None


def bench_device() -> str:
    return os.environ.get("DRIFT_GPU_BENCH_DEVICE", "cuda")


def bench_shapes() -> list[str]:
    names = [s.strip() for s in os.environ.get("DRIFT_GPU_BENCH_SHAPES", DEFAULT_SHAPES).split(",") if s.strip()]
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        raise ValueError(f"DRIFT_GPU_BENCH_SHAPES: unknown {unknown}; known {sorted(SHAPES)}")
    return names


def results_path() -> Path:
    return Path(os.environ.get("DRIFT_GPU_BENCH_RESULTS", REPO / "benchmarks" / "results-gpu.json"))


def tokenizer_dir() -> Path | None:
    """A dir with the demo model's config.json and tokenizer; ``None`` when none is around."""
    for candidate in (os.environ.get("DRIFT_GPU_BENCH_TOKENIZER"), REPO / ".gpu" / "tok", os.environ.get("DRIFT_DEMO_MODEL")):
        if candidate and (Path(candidate) / "config.json").is_file() and (Path(candidate) / "tokenizer.json").is_file():
            return Path(candidate)
    return None


def persona_dir() -> Path | None:
    """The upstream assistant-axis persona dir (275 roles), where one is reachable."""
    for candidate in (os.environ.get("DRIFT_GPU_BENCH_PERSONAS"), REPO / ".gpu" / "assistant-axis",
                      REPO.parent / "shared" / "data" / "assistant-axis", Path("/work/shared/data/assistant-axis")):
        if candidate and (Path(candidate) / "roles").is_dir():
            return Path(candidate)
    return None


def make_model(shape: str, dtype: torch.dtype, device: str, source: Path) -> torch.nn.Module:
    """A random-weight causal LM of ``shape``, built directly on ``device`` (seeded: the same weights each run)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source)
    for key, value in SHAPES[shape].items():
        setattr(config, key, value)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def load_tokenizer(source: Path) -> Any:
    from drift_suite.measure.models import load_tokenizer as checked_tokenizer

    return checked_tokenizer(str(source), trust_remote_code=False, revision=None)


def physical_limit(
    model: torch.nn.Module,
    encoded: Sequence[Sequence[int]],
    settings: GenerationSettings,
    spec: CardSpec | None,
) -> dict[str, Any]:
    """The fastest the workload could run on ``spec``: every decode step reads all weights once at the card's
    bandwidth or does its FLOPs at the card's bf16 rate (whichever is longer), plus the prefill's FLOPs.

    The same batches as the project's path; KV-cache reads and attention are in the FLOPs, not the bytes
    (a lower bound, not an estimate of what is reachable).
    """
    element_bytes = next(model.parameters()).element_size()
    weight_bytes = linear_weights(model) * element_bytes
    flops = workload_flops(model, [len(e) for e in encoded], [settings.max_new_tokens] * len(encoded))
    batches = list(plan_batches(list(encoded), settings))
    steps = len(batches) * (settings.max_new_tokens + 1)
    out: dict[str, Any] = {
        "weight_gb_read_per_step": round(weight_bytes / 1e9, 3),
        "decode_tflop": round(flops["decode"] / 1e12, 3),
        "prefill_tflop": round(flops["prefill"] / 1e12, 3),
        "batches": len(batches),
        "decode_steps": steps,
    }
    if spec is None:
        return out | {"card": "unknown", "limit_s": None}
    read_s = weight_bytes / (spec.bandwidth_tb_s * 1e12)
    step_compute_s = flops["decode"] / steps / (spec.bf16_tflop_s * 1e12)
    prefill_s = flops["prefill"] / (spec.bf16_tflop_s * 1e12)
    limit = steps * max(read_s, step_compute_s) + prefill_s
    return out | {
        "card": spec.name,
        "bandwidth_tb_s": spec.bandwidth_tb_s,
        "bf16_tflop_s": spec.bf16_tflop_s,
        "weights_read_ms_per_step": round(read_s * 1e3, 3),
        "compute_ms_per_step": round(step_compute_s * 1e3, 3),
        "prefill_s": round(prefill_s, 4),
        "limit_s": round(limit, 4),
        "limit_conversations_per_s": round(len(encoded) / limit, 1),
    }
