"""The measurement decoder is right on every decoder-only family it claims, local attention windows included.

Each family is a tiny random-weight model built from its config in-process. For each: greedy answers equal
HF ``generate``, and the captured answer means equal a plain forward over prompt + answer (1e-4, fp32), with
prefix sharing on and off. Windows are set small enough to bind: prompts of 11-21 tokens plus 24-token
answers against a 12-token window.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from drift_suite.measure import decode as decode_module
from drift_suite.measure.conversations import Design, build_conversations, render_prompts, supports_system_role
from drift_suite.measure.decode import fast_decoder_blocker, left_pad, local_attention_span, plan_prefill
from drift_suite.measure.extract import (
    GenerationSettings, _content_tokens, _eos_ids, generate_and_capture, reforward_answer_means,
)
from tiny import CHATML, NO_SYSTEM_CHATML, TINY_PERSONAS, tiny_tokenizer

WINDOW = 12
MAX_NEW_TOKENS = 24


def _shape(vocab_size: int, **overrides) -> dict:
    shape = dict(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, eos_token_id=2, pad_token_id=3, bos_token_id=1,
        tie_word_embeddings=False,
    )
    shape.update(overrides)
    return shape


def _config_and_class(family: str, vocab_size: int, window: int) -> tuple[object, type]:
    import transformers as hf

    alternating = ["sliding_attention", "full_attention"] * 2
    families: dict[str, Callable[[], tuple[object, type]]] = {
        "llama": lambda: (hf.LlamaConfig(**_shape(vocab_size)), hf.LlamaForCausalLM),
        "mistral": lambda: (hf.MistralConfig(**_shape(vocab_size, sliding_window=window)), hf.MistralForCausalLM),
        "qwen2": lambda: (
            hf.Qwen2Config(**_shape(vocab_size, use_sliding_window=True, sliding_window=window, max_window_layers=2)),
            hf.Qwen2ForCausalLM,
        ),
        "qwen3": lambda: (
            hf.Qwen3Config(**_shape(vocab_size, head_dim=8, use_sliding_window=True, sliding_window=window, max_window_layers=2)),
            hf.Qwen3ForCausalLM,
        ),
        "gemma2": lambda: (
            hf.Gemma2Config(**_shape(
                vocab_size, head_dim=8, sliding_window=window, query_pre_attn_scalar=8, layer_types=alternating,
                attn_logit_softcapping=5.0, final_logit_softcapping=3.0,  # small caps, so they bind on random weights
            )),
            hf.Gemma2ForCausalLM,
        ),
        "gemma3": lambda: (
            hf.Gemma3TextConfig(**_shape(vocab_size, head_dim=8, sliding_window=window, query_pre_attn_scalar=8, layer_types=alternating)),
            hf.Gemma3ForCausalLM,
        ),
        "phi3": lambda: (hf.Phi3Config(**_shape(vocab_size, sliding_window=window)), hf.Phi3ForCausalLM),
        "olmo2": lambda: (hf.Olmo2Config(**_shape(vocab_size)), hf.Olmo2ForCausalLM),
        "granite": lambda: (hf.GraniteConfig(**_shape(vocab_size)), hf.GraniteForCausalLM),
        "cohere": lambda: (hf.CohereConfig(**_shape(vocab_size)), hf.CohereForCausalLM),
    }
    return families[family]()


WINDOWED = {"mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"}
FAMILIES = ["llama", *sorted(WINDOWED), "olmo2", "granite", "cohere"]
# Gemma's own templates have no system role: the system prompt is folded into the first user turn.
NO_SYSTEM_ROLE = {"gemma2", "gemma3"}


def build(family: str, window: int = WINDOW):
    """``(model, tokenizer)``: a seeded random-weight model of ``family`` and the tiny word-level tokenizer."""
    tokenizer = tiny_tokenizer(NO_SYSTEM_CHATML if family in NO_SYSTEM_ROLE else CHATML)
    config, model_class = _config_and_class(family, len(tokenizer), window)
    torch.manual_seed(0)
    model = model_class(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def persona_prompts(tokenizer) -> list[str]:
    """Eight conversations in groups that share a system turn, so the shared-prefix prefill has work to do."""
    return render_prompts(tokenizer, build_conversations(TINY_PERSONAS, Design(2, 1, 2)))[:8]


def generate_content(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    """HF ``generate``'s greedy answers, up to the first end-of-turn token: the reference for the answers."""
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    eos = _eos_ids(model, tokenizer)
    with torch.inference_mode():
        generated = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=eos,
        )[:, ids.shape[1]:]
    return [_content_tokens(row, eos) for row in generated.tolist()]


@pytest.mark.parametrize("share_prefixes", [True, False], ids=["shared-prefixes", "one-prefill"])
@pytest.mark.parametrize("family", FAMILIES)
def test_answers_equal_generate_and_means_equal_a_plain_forward(family, share_prefixes):
    model, tokenizer = build(family)
    prompts = persona_prompts(tokenizer)
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    assert plan_prefill(rows) is not None, "the prompts must exercise the shared-prefix prefill"
    if family in NO_SYSTEM_ROLE:
        assert not supports_system_role(tokenizer) and not any("system" in p for p in prompts)
    if family in WINDOWED:
        assert local_attention_span(model) == WINDOW < max(map(len, rows)) + MAX_NEW_TOKENS, "the window binds"
    settings = GenerationSettings(max_new_tokens=MAX_NEW_TOKENS)
    captured = generate_and_capture(model, tokenizer, prompts, settings, progress=False, share_prefixes=share_prefixes)
    assert captured.answer_ids == generate_content(model, tokenizer, prompts, MAX_NEW_TOKENS)
    assert max(captured.token_counts) > WINDOW, "answers run past the window"
    reference = reforward_answer_means(model, tokenizer, prompts, captured.answer_ids)
    np.testing.assert_allclose(captured.means, reference, rtol=1e-4, atol=1e-5)
    if share_prefixes and family in WINDOWED:
        assert captured.decoder.startswith("fast (prefix sharing off: attention window 12"), captured.decoder
    else:
        assert captured.decoder == "fast"


@pytest.mark.parametrize("family", ["mistral", "gemma2"])
def test_prefix_sharing_stays_on_and_right_where_the_window_cannot_bind(family):
    model, tokenizer = build(family, window=4096)
    prompts = persona_prompts(tokenizer)
    settings = GenerationSettings(max_new_tokens=MAX_NEW_TOKENS)
    captured = generate_and_capture(model, tokenizer, prompts, settings, progress=False)
    assert captured.decoder == "fast"
    assert captured.answer_ids == generate_content(model, tokenizer, prompts, MAX_NEW_TOKENS)
    reference = reforward_answer_means(model, tokenizer, prompts, captured.answer_ids)
    np.testing.assert_allclose(captured.means, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_fixed_shape_steps_of_the_gpu_path_are_right_on_every_family(family):
    """The static cache the GPU path decodes on (and captures as a CUDA graph), forced on here on the CPU:
    greedy answers equal ``generate``, means equal a plain forward, and the tokens equal the growing cache's.
    Windows are wide (the static cache is kept off where one binds)."""
    model, tokenizer = build(family, window=4096)
    prompts = persona_prompts(tokenizer)
    settings = GenerationSettings(max_new_tokens=MAX_NEW_TOKENS)
    static = generate_and_capture(model, tokenizer, prompts, settings, progress=False, static_cache=True)
    assert static.decoder == "fast (static cache)", static.decoder
    assert static.answer_ids == generate_content(model, tokenizer, prompts, MAX_NEW_TOKENS)
    reference = reforward_answer_means(model, tokenizer, prompts, static.answer_ids)
    np.testing.assert_allclose(static.means, reference, rtol=1e-4, atol=1e-5)
    growing = generate_and_capture(model, tokenizer, prompts, settings, progress=False, static_cache=False)
    assert growing.answer_ids == static.answer_ids
    np.testing.assert_allclose(static.means, growing.means, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", sorted(WINDOWED))
def test_a_binding_window_keeps_the_growing_cache_and_says_so(family):
    model, tokenizer = build(family)
    prompts = persona_prompts(tokenizer)
    settings = GenerationSettings(max_new_tokens=MAX_NEW_TOKENS)
    captured = generate_and_capture(model, tokenizer, prompts, settings, progress=False, static_cache=True)
    assert "static cache off: attention window 12" in captured.decoder, captured.decoder
    assert captured.answer_ids == generate_content(model, tokenizer, prompts, MAX_NEW_TOKENS)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_fixed_shape_steps_read_nothing_back_to_the_host(family):
    """The precondition of CUDA graph capture, checked on the CPU: between the prefill and the end, a decoding
    step (the model's own code, the mask, the cache and the capture hooks included) reads no tensor value back
    to the host and builds no tensor from host data (a copy to the GPU on every step). Only the stop checks read."""
    from torch.utils._python_dispatch import TorchDispatchMode

    host_ops = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default,
                torch.ops.aten.equal.default, torch.ops.aten.lift_fresh.default}
    seen: list[str] = []
    counting = {"on": False}

    class HostReads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if counting["on"] and func in host_ops:
                seen.append(str(func))
            return func(*args, **(kwargs or {}))

    model, tokenizer = build(family, window=4096)
    prompts = persona_prompts(tokenizer)
    settings = GenerationSettings(max_new_tokens=MAX_NEW_TOKENS)
    real_decode = decode_module.decode

    def decode_counting_steps(*args, **kwargs):
        def on_step(steps: int) -> None:
            counting["on"] = steps < MAX_NEW_TOKENS  # from the end of the prefill to the last step
        return real_decode(*args, **{**kwargs, "on_step": on_step, "stop_check_every": 10**6})

    from drift_suite.measure import extract

    with HostReads():
        original, extract.decode = extract.decode, decode_counting_steps
        try:
            captured = generate_and_capture(model, tokenizer, prompts, settings, progress=False, static_cache=True)
        finally:
            extract.decode = original
    assert captured.decoder == "fast (static cache)"
    assert seen == [], f"{len(seen)} host reads in the steps: {sorted(set(seen))}"


def test_shared_prefixes_under_a_binding_window_would_be_wrong(monkeypatch):
    """Why sharing is switched off: forced on under a binding window, the padding between a row's shared
    prefix and its own suffix takes columns of the window, and the answers move."""
    model, tokenizer = build("mistral")
    prompts = persona_prompts(tokenizer)
    monkeypatch.setattr(decode_module, "prefix_sharing_blocker", lambda *_args: None)
    forced = generate_and_capture(model, tokenizer, prompts, GenerationSettings(max_new_tokens=MAX_NEW_TOKENS), progress=False)
    assert forced.decoder == "fast"
    assert forced.answer_ids != generate_content(model, tokenizer, prompts, MAX_NEW_TOKENS)


def test_a_model_the_loop_cannot_drive_is_measured_by_generate_and_says_so():
    from transformers import LlamaForCausalLM

    class NoLogitsToKeep(LlamaForCausalLM):
        """Stands in for an architecture whose forward the fast loop cannot drive."""

        def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
            kwargs.pop("logits_to_keep", None)
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)

    reference_model, tokenizer = build("llama")
    model = NoLogitsToKeep(reference_model.config).eval()
    model.load_state_dict(reference_model.state_dict())
    model.generation_config = reference_model.generation_config
    assert fast_decoder_blocker(reference_model) is None
    assert fast_decoder_blocker(model) == "NoLogitsToKeep.forward takes no logits_to_keep"
    prompts = persona_prompts(tokenizer)
    settings = GenerationSettings(max_new_tokens=MAX_NEW_TOKENS)
    fallback = generate_and_capture(model, tokenizer, prompts, settings, progress=False)
    fast = generate_and_capture(reference_model, tokenizer, prompts, settings, progress=False)
    assert fallback.decoder == "generate+reforward (NoLogitsToKeep.forward takes no logits_to_keep)"
    assert fallback.answer_ids == fast.answer_ids
    np.testing.assert_allclose(fallback.means, fast.means, rtol=1e-4, atol=1e-5)
