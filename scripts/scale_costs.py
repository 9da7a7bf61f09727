"""The cost-on-paper tables of docs/scale.md: every input is either measured (cited) or a stated estimate.

    python scripts/scale_costs.py
"""

from __future__ import annotations

import math

# Public model cards: parameters, layers, hidden size, KV heads, head dim.
MODELS = {
    "Gemma-2-2B": (2.61e9, 26, 2304, 4, 256),
    "Gemma-2-9B": (9.24e9, 42, 3584, 8, 256),
    "Gemma-2-27B": (27.2e9, 46, 4608, 16, 128),
    "Qwen3-32B": (32.8e9, 64, 5120, 8, 128),
    "Llama-3.3-70B": (70.6e9, 80, 8192, 8, 128),
}
# Designs: conversations (counted with drift_suite.measure.conversations.build_conversations).
DESIGNS = {"default (built-in, 196)": 196, "--thorough (built-in, 570)": 570, "upstream 275 roles, default design (1180)": 1180}
PROMPT_TOKENS, ANSWER_TOKENS = 35.5, 48  # measured mean prompt length (docs/benchmarks.md), answer budget
MAX_BATCH_TOKENS = 32768  # the default generation memory budget
# H100 SXM 80 GB datasheet: bf16 dense peak and HBM3 bandwidth.
H100_FLOPS, H100_BW, H100_MEM = 989e12, 3.35e12, 80e9
MFU = 0.5  # estimate: half of peak on the prefill and wide decode batches
# Measured on an H200 (shared/gpu/README.md): 196 conversations in 3.2 s on an 8B shape (32 layers x 4096),
# most of it per-step overhead (host copies of every layer's output); scaled here by layers x hidden.
OVERHEAD_S, OVERHEAD_LH = 3.2 - 0.5, 32 * 4096
HASH_BPS = 538e6 / 0.7  # measured here: SHA-256 of SmolLM2's 538 MB fp32 weights in 0.7 s (docs/benchmarks.md)
NVME_BPS, NETWORK_BPS = 2e9, 0.5e9  # estimates: local NVMe to GPU, network filesystem


def per_checkpoint(name: str, conversations: int) -> dict[str, float]:
    params, layers, hidden, kv_heads, head_dim = MODELS[name]
    weight_bytes = 2 * params
    tokens = conversations * (PROMPT_TOKENS + ANSWER_TOKENS)
    flops = 2 * params * tokens
    batches = math.ceil(tokens / MAX_BATCH_TOKENS)
    memory_floor = batches * (ANSWER_TOKENS + 1) * weight_bytes / H100_BW  # every decode step reads every weight
    compute_floor = flops / (MFU * H100_FLOPS)
    overhead = batches * OVERHEAD_S * max(1.0, layers * hidden / OVERHEAD_LH)
    kv_gb = min(tokens, MAX_BATCH_TOKENS) * 2 * layers * kv_heads * head_dim * 2 / 1e9
    return {
        "weights_gb": weight_bytes / 1e9,
        "gpus": math.ceil((weight_bytes + kv_gb * 1e9 + 4e9) / H100_MEM),
        "kv_gb": kv_gb,
        "tflop": flops / 1e12,
        "generate_s": max(memory_floor, compute_floor) + overhead,
        "floor_s": max(memory_floor, compute_floor),
        "load_nvme_s": weight_bytes / NVME_BPS,
        "load_network_s": weight_bytes / NETWORK_BPS,
        "hash_s": weight_bytes / HASH_BPS,
    }


def main() -> None:
    print("| model | bf16 weights | H100s (80 GB) | KV cache per batch | TFLOP, default design | load NVMe / network | weights hash | generate: floor / with measured overhead |")
    print("|---|---|---|---|---|---|---|---|")
    for name in MODELS:
        c = per_checkpoint(name, 196)
        print(f"| {name} | {c['weights_gb']:.0f} GB | {c['gpus']} | {c['kv_gb']:.1f} GB | {c['tflop']:.0f} | "
              f"{c['load_nvme_s']:.0f} s / {c['load_network_s']:.0f} s | {c['hash_s']:.0f} s | {c['floor_s']:.1f} s / {c['generate_s']:.1f} s |")
    print()
    print("| model | design | per checkpoint (NVMe load + hash + generate) | run of 10 checkpoints, 1 GPU set | on 8 GPU sets | fits 10 min? (8 sets) |")
    print("|---|---|---|---|---|---|")
    for name in MODELS:
        for design, conversations in DESIGNS.items():
            c = per_checkpoint(name, conversations)
            each = c["load_nvme_s"] + c["hash_s"] + c["generate_s"]
            sets = 8 // c["gpus"]
            print(f"| {name} | {design} | {each:.0f} s | {10 * each / 60:.1f} min | {math.ceil(10 / sets) * each / 60:.1f} min "
                  f"({sets} × {c['gpus']} GPU) | {'yes' if math.ceil(10 / sets) * each < 600 else 'no'} |")


if __name__ == "__main__":
    main()
