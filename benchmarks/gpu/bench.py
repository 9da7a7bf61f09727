"""The timed work of the GPU benchmark, as plain functions (the pytest tests and the CPU smoke test call them).

``speed_run`` times, on one random-weight model and the same prompts: the project's path
(:func:`~drift_suite.measure.extract.generate_and_capture`), the two-pass reference (HF ``generate`` + a hooked
re-forward, :func:`benchmarks.workloads.two_pass_reference`), and sets them against the card's physical limit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from benchmarks.gpu.shapes import SHAPES, card_spec, make_model, physical_limit
from benchmarks.workloads import BENCH_DESIGN, encode, two_pass_reference
from drift_suite.measure.conversations import Design, build_conversations, render_prompts
from drift_suite.measure.extract import Extraction, GenerationSettings, generate_and_capture, plan_batches
from drift_suite.measure.personas import PersonaSet, builtin_persona_set

SETTINGS = GenerationSettings(max_new_tokens=48)
SWITCHED_OFF = {
    "no_cuda_graphs": {"cuda_graphs": False},
    "no_static_cache": {"static_cache": False},
    "stop_check_every_1": {"stop_check_every": 1},
    "stop_check_every_16": {"stop_check_every": 16},
}
"""Variants of the project's path timed once each beside it (on the CPU the first two are the default)."""
FP32_TOLERANCE = 1e-4
"""fp32 paths must agree to this (relative to the largest mean), as the CPU benchmark requires."""


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def conversation_cap() -> int | None:
    """``DRIFT_GPU_BENCH_CONVERSATIONS``: take only the first N prompts of every design (the CPU smoke run)."""
    value = os.environ.get("DRIFT_GPU_BENCH_CONVERSATIONS")
    return int(value) if value else None


def design_prompts(tokenizer: Any, persona_set: PersonaSet | None = None, design: Design = BENCH_DESIGN) -> list[str]:
    prompts = render_prompts(tokenizer, build_conversations(persona_set or builtin_persona_set(), design))
    cap = conversation_cap()
    return prompts[:cap] if cap else prompts


def timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


def gpu_info(device: str) -> dict[str, Any]:
    if not device.startswith("cuda"):
        return {"device": device, "gpu_name": None, "card": None}
    name = torch.cuda.get_device_name(torch.device(device))
    spec = card_spec(name)
    return {
        "device": device,
        "gpu_name": name,
        "card": spec.name if spec else "unknown",
        "memory_gib": round(torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30, 1),
        "cuda": torch.version.cuda,
        "bf16_supported": torch.cuda.is_bf16_supported(),
    }


def kv_cache_bytes(model: torch.nn.Module, encoded: Sequence[Sequence[int]], settings: GenerationSettings) -> int:
    """The largest batch's KV cache: 2 × layers × KV heads × head dim × batch × (longest prompt + answer)."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    element = next(model.parameters()).element_size()
    largest = 0
    for batch in plan_batches(list(encoded), settings):
        tokens = len(batch) * (max(len(encoded[i]) for i in batch) + settings.max_new_tokens + 1)
        largest = max(largest, 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * tokens * element)
    return largest


def agreement(project: Extraction, reference: Any) -> dict[str, Any]:
    """How the two paths' answers and means compare (rows where both ran the full answer length)."""
    same_lengths = int((project.token_counts == reference.token_counts).sum())
    full = (project.token_counts == SETTINGS.max_new_tokens) & (reference.token_counts == SETTINGS.max_new_tokens)
    if not full.any():
        return {"rows_compared": 0, "max_rel_diff": None, "same_answer_lengths": same_lengths}
    diff = np.abs(project.means[full] - reference.means[full]).max() / max(np.abs(reference.means[full]).max(), 1e-12)
    return {"rows_compared": int(full.sum()), "max_rel_diff": float(diff), "same_answer_lengths": same_lengths}


def speed_run(shape: str, dtype: str, device: str, tokenizer_source: Any, rounds: int | None = None) -> dict[str, Any]:
    """Project path vs two-pass reference vs physical limit for one shape and dtype (best of ``rounds``,
    default ``DRIFT_GPU_BENCH_ROUNDS`` or 2)."""
    from benchmarks.gpu.shapes import load_tokenizer

    rounds = rounds or int(os.environ.get("DRIFT_GPU_BENCH_ROUNDS", "2"))
    tokenizer = load_tokenizer(tokenizer_source)
    start = time.perf_counter()
    model = make_model(shape, getattr(torch, dtype), device, tokenizer_source)
    build_s = time.perf_counter() - start
    prompts = design_prompts(tokenizer)
    encoded = encode(tokenizer, prompts)
    warm = GenerationSettings(max_new_tokens=4)
    generate_and_capture(model, tokenizer, prompts[:8], warm, progress=False)
    two_pass_reference(model, tokenizer, prompts[:8], warm)

    project_times, reference_times = [], []
    peak_gib = None
    for _ in range(rounds):
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(torch.device(device))
        seconds, project = timed(lambda: generate_and_capture(model, tokenizer, prompts, SETTINGS, progress=False), device)
        if device.startswith("cuda"):
            peak_gib = torch.cuda.max_memory_allocated(torch.device(device)) / 2**30
        project_times.append(seconds)
        seconds, reference = timed(lambda: two_pass_reference(model, tokenizer, prompts, SETTINGS), device)
        reference_times.append(seconds)
    variants = {}
    for label, switches in SWITCHED_OFF.items():
        # Each speed-up switched off in turn, timed on the same warm model: what each one is worth here.
        seconds, variant = timed(lambda: generate_and_capture(model, tokenizer, prompts, SETTINGS, progress=False, **switches), device)
        variants[label] = {"seconds": round(seconds, 3), "decoder": variant.decoder,
                           "same_answers_as_default": sum(a == b for a, b in zip(variant.answer_ids, project.answer_ids))}
    n = len(prompts)
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kv_bytes = kv_cache_bytes(model, encoded, SETTINGS)
    spec = card_spec(torch.cuda.get_device_name(torch.device(device))) if device.startswith("cuda") else None
    limit = physical_limit(model, encoded, SETTINGS, spec)
    project_s, reference_s = min(project_times), min(reference_times)
    out = {
        "shape": shape,
        "dtype": dtype,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "conversations": n,
        "build_model_s": round(build_s, 2),
        "project_s": round(project_s, 3),
        "project_conversations_per_s": round(n / project_s, 1),
        "two_pass_s": round(reference_s, 3),
        "two_pass_generate_s": round(reference.generate_s, 3),
        "two_pass_reforward_s": round(reference.reforward_s, 3),
        "two_pass_conversations_per_s": round(n / reference_s, 1),
        "speedup_over_two_pass": round(reference_s / project_s, 2),
        "rounds": rounds,
        "physical_limit": limit,
        "fraction_of_limit": round(limit["limit_s"] / project_s, 3) if limit.get("limit_s") else None,
        "weights_gib": round(weights_bytes / 2**30, 3),
        "kv_cache_gib": round(kv_bytes / 2**30, 3),
        "peak_gib": round(peak_gib, 3) if peak_gib is not None else None,
        "peak_over_weights_plus_kv": round(peak_gib / ((weights_bytes + kv_bytes) / 2**30), 3) if peak_gib else None,
        "agreement": agreement(project, reference),
        "decoder": project.decoder,
        "switched_off": variants,
    }
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def design_cost(shape: str, device: str, tokenizer_source: Any, persona_set: PersonaSet | None, design: Design, label: str) -> dict[str, Any]:
    """One timed run of the project's path for a larger design or persona set, in bf16."""
    from benchmarks.gpu.shapes import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_source)
    model = make_model(shape, torch.bfloat16, device, tokenizer_source)
    prompts = design_prompts(tokenizer, persona_set, design)
    generate_and_capture(model, tokenizer, prompts[:8], GenerationSettings(max_new_tokens=4), progress=False)
    seconds, extraction = timed(lambda: generate_and_capture(model, tokenizer, prompts, SETTINGS, progress=False), device)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {
        "what": label,
        "shape": shape,
        "dtype": "bfloat16",
        "design": design.to_dict(),
        "roles": len((persona_set or builtin_persona_set()).role_names),
        "conversations": len(prompts),
        "seconds": round(seconds, 3),
        "conversations_per_s": round(len(prompts) / seconds, 1),
        "answer_tokens": int(extraction.token_counts.sum()),
    }


def fp32_devices_agree(shape: str, device: str, tokenizer_source: Any, n_prompts: int = 16) -> dict[str, Any]:
    """The same random-weight fp32 model on the CPU and on ``device``: answers and means (acceptance: 1e-4)."""
    from benchmarks.gpu.shapes import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_source)
    prompts = design_prompts(tokenizer)[:n_prompts]
    results = {}
    for where in ("cpu", device):
        model = make_model(shape, torch.float32, where, tokenizer_source)
        results[where] = generate_and_capture(model, tokenizer, prompts, SETTINGS, progress=False)
        del model
    cpu, other = results["cpu"], results[device]
    same = [a == b for a, b in zip(cpu.responses, other.responses)]
    diff = float(np.abs(cpu.means - other.means).max() / max(np.abs(cpu.means).max(), 1e-12))
    return {"shape": shape, "prompts": len(prompts), "same_answers": int(sum(same)), "max_rel_diff": diff}


def acceptance(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue F's acceptance figures, each read from ``results`` (a missing measurement is ``None``, not a pass)."""
    speed = results.get("speed", {})
    fp32 = results.get("fp32_gpu_vs_cpu")

    def figure(key: str, field: str) -> Any:
        return speed.get(key, {}).get(field)

    checks = [
        ("8B bf16: >= 200 conversations/s", figure("8b-bfloat16", "project_conversations_per_s"), lambda v: v >= 200),
        ("8B bf16: >= 5x the two-pass reference", figure("8b-bfloat16", "speedup_over_two_pass"), lambda v: v >= 5),
        ("135M bf16: >= 3x the two-pass reference", figure("135m-bfloat16", "speedup_over_two_pass"), lambda v: v >= 3),
        ("135M fp32: >= 3x the two-pass reference", figure("135m-float32", "speedup_over_two_pass"), lambda v: v >= 3),
    ]
    checks += [
        (f"{key}: peak <= 1.1 x (weights + KV cache)", entry.get("peak_over_weights_plus_kv"), lambda v: v <= 1.1)
        for key, entry in speed.items()
    ]
    checks.append((
        "fp32 GPU = CPU: same answers, means to 1e-4",
        None if fp32 is None else (fp32["same_answers"] == fp32["prompts"], fp32["max_rel_diff"]),
        lambda v: v[0] and v[1] < FP32_TOLERANCE,
    ))
    return [{"what": what, "measured": value, "met": None if value is None else bool(test(value))}
            for what, value, test in checks]


__all__ = ["SHAPES", "acceptance", "design_cost", "fp32_devices_agree", "gpu_info", "speed_run"]
