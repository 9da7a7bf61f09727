"""The GPU path itself, on a CUDA device: the static cache captured as a CUDA graph gives what the growing cache
gives. Skipped without CUDA (the same orchestration runs on the CPU in tests/test_decode.py, with a stand-in
capture, and the fixed-shape steps are checked on every family in tests/test_architectures.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drift_suite.measure.extract import GenerationSettings, generate_and_capture
from test_architectures import FAMILIES, MAX_NEW_TOKENS, build, generate_content, persona_prompts

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none available here)"),
]


@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_graphs_give_the_growing_cache_answers_and_means_in_fp32(family):
    model, tokenizer = build(family, window=4096)
    model = model.to("cuda")
    prompts = persona_prompts(tokenizer)
    settings = GenerationSettings(max_new_tokens=MAX_NEW_TOKENS)
    graphed = generate_and_capture(model, tokenizer, prompts, settings, progress=False)
    assert graphed.decoder == "fast (CUDA graphs)", graphed.decoder
    growing = generate_and_capture(model, tokenizer, prompts, settings, progress=False, static_cache=False)
    assert graphed.answer_ids == growing.answer_ids == generate_content(model, tokenizer, prompts, MAX_NEW_TOKENS)
    np.testing.assert_allclose(graphed.means, growing.means, rtol=1e-4, atol=1e-5)


def test_cuda_graphs_run_in_bfloat16_and_switch_off_cleanly(tiny):
    prompts = persona_prompts(tiny.tokenizer)
    settings = GenerationSettings(max_new_tokens=MAX_NEW_TOKENS)
    model = tiny.model.to("cuda", torch.bfloat16)
    graphed = generate_and_capture(model, tiny.tokenizer, prompts, settings, progress=False)
    assert graphed.decoder == "fast (CUDA graphs)"
    assert np.isfinite(graphed.means).all() and graphed.token_counts.min() > 0
    eager = generate_and_capture(model, tiny.tokenizer, prompts, settings, progress=False, cuda_graphs=False)
    assert eager.decoder == "fast (static cache)"
    growing = generate_and_capture(model, tiny.tokenizer, prompts, settings, progress=False, static_cache=False)
    assert growing.decoder == "fast"
