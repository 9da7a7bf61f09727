"""One-pass capture during generation equals a second forward pass, and keeps no per-token activations."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch

from drift_suite.measure import extract
from drift_suite.measure.conversations import Design, build_conversations, render_prompts
from drift_suite.measure.extract import GenerationSettings, full_conversation, generate_and_capture, reforward_answer_means


@pytest.fixture()
def prompts(tiny, tiny_personas):
    return render_prompts(tiny.tokenizer, build_conversations(tiny_personas, Design(3, 1, 2)))


@pytest.mark.parametrize("max_new_tokens", [1, 5, 16])
def test_one_pass_equals_two_pass(tiny, prompts, max_new_tokens):
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=4)
    captured = generate_and_capture(tiny.model, tiny.tokenizer, prompts, settings, progress=False)
    assert all(1 <= len(ids) <= max_new_tokens for ids in captured.answer_ids if ids)
    assert list(captured.token_counts) == [len(ids) for ids in captured.answer_ids]
    reference = reforward_answer_means(tiny.model, tiny.tokenizer, prompts, captured.answer_ids)
    answered = captured.token_counts > 0
    assert answered.sum() >= len(prompts) // 2, "most conversations should produce an answer"
    np.testing.assert_allclose(captured.means[answered], reference[answered], rtol=1e-4, atol=1e-5)


def test_answers_stop_at_end_of_turn(tiny, prompts):
    """Content tokens exclude the end-of-turn token and anything after it."""
    captured = generate_and_capture(tiny.model, tiny.tokenizer, prompts, GenerationSettings(max_new_tokens=40), progress=False)
    eos = tiny.tokenizer.eos_token_id
    assert all(eos not in ids for ids in captured.answer_ids)


def test_batching_does_not_change_results(tiny, prompts):
    one = generate_and_capture(tiny.model, tiny.tokenizer, prompts, GenerationSettings(max_new_tokens=6, batch_size=1), progress=False)
    many = generate_and_capture(tiny.model, tiny.tokenizer, prompts, GenerationSettings(max_new_tokens=6, batch_size=8), progress=False)
    assert one.answer_ids == many.answer_ids
    np.testing.assert_allclose(one.means, many.means, rtol=1e-4, atol=1e-5)


def test_no_hidden_state_outlives_its_step(tiny, prompts, monkeypatch):
    """Memory stays O(batch × layers × hidden): every hidden state handed to the hooks is released.

    Keeping full activations (layers × tokens × hidden) would keep references to these tensors and fail here.
    """
    seen: list[weakref.ref] = []
    accumulators: list = []
    real_add = extract._AnswerAccumulator.add

    def spying_add(self, layer, hidden):
        seen.append(weakref.ref(hidden))
        if self not in accumulators:
            accumulators.append(self)
        return real_add(self, layer, hidden)

    monkeypatch.setattr(extract._AnswerAccumulator, "add", spying_add)
    settings = GenerationSettings(max_new_tokens=12, batch_size=4)
    generate_and_capture(tiny.model, tiny.tokenizer, prompts, settings, progress=False)
    gc.collect()
    assert len(seen) > 12 * tiny.info.num_layers
    assert all(ref() is None for ref in seen)
    for acc in accumulators:
        assert acc.sums.shape == (acc.sums.shape[0], tiny.info.num_layers, tiny.info.hidden_size)


def test_full_conversation_shape_and_agrees_with_layer_outputs(tiny):
    messages = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am a robot."}]
    stack = full_conversation(tiny.model, tiny.tokenizer, messages)
    ids = tiny.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert stack.shape == (tiny.info.num_layers, len(ids), tiny.info.hidden_size)
    with torch.inference_mode():
        hidden = tiny.model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    # hidden_states[i + 1] is layer i's output, except the last entry, which has the final norm applied
    np.testing.assert_allclose(stack[0].numpy(), hidden[1][0].numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(stack[-1].numpy(), hidden[-1][0].numpy(), atol=1e-3)


def test_the_path_taken_reaches_the_measurement_and_its_cache(tiny, tiny_personas, tmp_path, monkeypatch):
    from drift_suite.measure.measurement import measure

    monkeypatch.setattr(extract, "fast_decoder_blocker", lambda _model: "a stand-in reason")
    design, settings = Design(3, 1, 2), GenerationSettings(max_new_tokens=4)
    first = measure(tiny, tiny_personas, design, settings, cache_dir=tmp_path, progress=False)
    again = measure(tiny, tiny_personas, design, settings, cache_dir=tmp_path, progress=False)
    assert first.decoder == "generate+reforward (a stand-in reason)"
    assert again.from_cache and again.decoder == first.decoder


def test_sums_stay_float32_when_the_model_runs_in_bfloat16():
    """48 bf16 hidden states per row are summed in float32: exact to float32 rounding, where a bf16 running sum
    would be off by ~1e-2 relative."""
    torch.manual_seed(0)
    steps, batch, layers, hidden = 48, 3, 2, 16
    states = [torch.randn(batch, 1, hidden).to(torch.bfloat16) for _ in range(steps)]
    acc = extract._AnswerAccumulator(batch, layers, hidden, eos_ids=[2], max_tokens=steps)
    for state in states:
        acc.before_forward(torch.full((batch,), 7))
        for layer in range(layers):
            acc.add(layer, state)
    exact = torch.stack([s[:, -1].double() for s in states]).sum(0)
    assert acc.sums.dtype == torch.float32 and list(acc.counts) == [steps] * batch
    for layer in range(layers):
        torch.testing.assert_close(acc.sums[:, layer].double(), exact, rtol=1e-6, atol=1e-5)
    bf16_running = torch.zeros(batch, hidden, dtype=torch.bfloat16)
    for state in states:
        bf16_running += state[:, -1]
    assert not torch.allclose(bf16_running.double(), exact, rtol=1e-6, atol=1e-5), "the test can tell the two apart"
