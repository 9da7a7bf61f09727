"""The measurement decoder gives what ``model.generate`` gives, and each of its speed-ups changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drift_suite.measure import decode as decode_module
from drift_suite.measure.conversations import Design, build_conversations, render_prompts
from drift_suite.measure.decode import GrowingLayer, decode, left_pad, packed_linears, plan_prefill
from drift_suite.measure.extract import _eos_ids


@pytest.fixture()
def prompt_rows(tiny, tiny_personas):
    prompts = render_prompts(tiny.tokenizer, build_conversations(tiny_personas, Design(3, 2, 3)))
    return [tiny.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]


def _content(row: list[int], eos: set[int]) -> list[int]:
    out = []
    for token in row:
        if token in eos:
            break
        out.append(token)
    return out


def _stops_some_rows_early(tiny, rows) -> list[int]:
    """End-of-turn ids plus a token that one row generates mid-answer, so some rows end early (a random tiny
    model rarely says its end-of-turn token)."""
    eos = _eos_ids(tiny.model, tiny.tokenizer)
    first = decode(tiny.model, rows, 12, eos, tiny.tokenizer.pad_token_id, share_prefixes=False, pack_weights=False)
    return eos + [int(first[1, 4])]


def test_plan_groups_rows_by_their_shared_prefix():
    rows = [[1, 2, 3, 4, 5], [9, 9, 9, 9, 1], [1, 2, 3, 6, 7], [9, 9, 9, 9, 2], [1, 2, 3, 8]]
    plan = plan_prefill(rows)
    assert plan is not None
    prefixes = {tuple(plan.prefixes[g]) for g in plan.group_of_row}
    assert prefixes == {(1, 2, 3), (9, 9, 9, 9)}
    assert [plan.prefix_length(i) for i in range(len(rows))] == [3, 4, 3, 4, 3]
    assert (plan.prefix_columns, plan.suffix_columns) == (4, 2), "the widths of the two prefill stages"
    for i, row in enumerate(rows):
        assert row[: plan.prefix_length(i)] == plan.prefixes[plan.group_of_row[i]]
        assert plan.prefix_length(i) < len(row), "every row keeps a token of its own"


def test_plan_declines_when_sharing_saves_little():
    assert plan_prefill([[1, 2, 3], [4, 5, 6], [7, 8, 9]]) is None
    assert plan_prefill([[1, 2, 3, 4, 5, 6, 7, 8], [1, 9, 9, 9, 9, 9, 9, 9]]) is None  # 1 token of 16 shared
    assert plan_prefill([[5, 6]]) is None


def test_plan_prefers_one_large_group_over_many_small_ones():
    # All share [1, 2]; pairs share one more token. One group of six saves 10 tokens, three pairs save 9.
    rows = [[1, 2, 3, 10], [1, 2, 3, 11], [1, 2, 4, 12], [1, 2, 4, 13], [1, 2, 5, 14], [1, 2, 5, 15]]
    plan = plan_prefill(rows, min_saving=0.0)
    assert plan is not None and len(plan.prefixes) == 1 and plan.prefixes[0] == [1, 2]


@pytest.mark.parametrize("share_prefixes", [True, False])
@pytest.mark.parametrize("pack_weights", [True, False])
def test_greedy_tokens_equal_generate(tiny, prompt_rows, share_prefixes, pack_weights):
    if share_prefixes:
        assert plan_prefill(prompt_rows) is not None, "the persona prompts must exercise the shared-prefix prefill"
    model, tokenizer = tiny.model, tiny.tokenizer
    eos = _stops_some_rows_early(tiny, prompt_rows)
    ours = decode(model, prompt_rows, 12, eos, tokenizer.pad_token_id, share_prefixes=share_prefixes, pack_weights=pack_weights)
    ids, mask = left_pad(prompt_rows, tokenizer.pad_token_id)
    reference = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)[:, ids.shape[1]:]
    stops = set(eos)
    ours_content = [_content(row, stops) for row in ours.tolist()]
    assert ours_content == [_content(row, stops) for row in reference.tolist()]
    assert any(len(c) < 12 for c in ours_content) and any(len(c) == 12 for c in ours_content), "both early and full-length stops"


def _recorder(fed: list):
    """``before_forward`` that keeps a copy of each fed batch: decode feeds from one buffer, updated in place."""
    return lambda tokens: fed.append(None if tokens is None else tokens.clone())


def test_feeds_back_every_generated_token_and_stops_when_all_rows_end(tiny, prompt_rows):
    model, tokenizer = tiny.model, tiny.tokenizer
    eos = _stops_some_rows_early(tiny, prompt_rows)
    fed: list[torch.Tensor | None] = []
    tokens = decode(model, prompt_rows, 12, eos, tokenizer.pad_token_id, before_forward=_recorder(fed))
    assert fed[0] is None, "the prefill is announced as such"
    decoded = [f for f in fed if f is not None]
    assert torch.equal(torch.stack(decoded, 1), tokens[:, : len(decoded)])
    ended = torch.isin(tokens, torch.tensor(eos)).any(1)
    if tokens.shape[1] < 12:
        assert bool(ended.all()), "decoding stops early only when every row has ended"
    else:
        assert len(decoded) == 12, "the last generated token is fed back too"


def test_growing_layer_equals_concatenation():
    layer = GrowingLayer(capacity=3)
    keys, values = [], []
    for step, length in enumerate([2, 1, 1, 4]):  # crosses the capacity twice
        k, v = torch.randn(2, 3, length, 4), torch.randn(2, 3, length, 4)
        keys.append(k)
        values.append(v)
        got_k, got_v = layer.update(k, v)
        assert torch.equal(got_k, torch.cat(keys, -2)) and torch.equal(got_v, torch.cat(values, -2)), step
    assert layer.get_seq_length() == 8
    layer.batch_select_indices(torch.tensor([1, 1, 0]))
    assert torch.equal(layer.keys, torch.cat(keys, -2)[[1, 1, 0]])
    k = torch.randn(3, 3, 1, 4)
    assert torch.equal(layer.update(k, k)[0][:, :, -1:], k)


def test_packed_linears_compute_the_same_and_are_undone(tiny):
    model = tiny.model
    linear = model.model.layers[0].mlp.up_proj
    x_rows, x_other = torch.randn(5, 1, linear.in_features), torch.randn(7, 3, linear.in_features)
    with torch.inference_mode():
        expected = linear(x_rows), linear(x_other)
        with packed_linears(model, rows=5) as packed:
            assert packed and "forward" in linear.__dict__
            got = linear(x_rows), linear(x_other)
    assert "forward" not in linear.__dict__
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_packing_is_skipped_without_memory_for_the_copy(tiny, monkeypatch):
    monkeypatch.setattr(decode_module, "_available_memory_bytes", lambda: 2**20)
    with packed_linears(tiny.model, rows=4) as packed:
        assert not packed
        assert not any("forward" in m.__dict__ for m in tiny.model.modules())


@pytest.mark.parametrize(
    "switched_off",
    [
        {"share_prefixes": False, "pack_weights": False},
        {"stop_check_every": 4},  # the accelerator default (8 there) run on the CPU: rows fed padding after ending
        {"fast_decoder": False},
    ],
    ids=["prefixes-and-packing", "lazy-stop-check", "fast-decoder"],
)
def test_each_speedup_leaves_the_measured_means_unchanged(tiny, tiny_personas, switched_off):
    from drift_suite.measure.extract import GenerationSettings, generate_and_capture

    prompts = render_prompts(tiny.tokenizer, build_conversations(tiny_personas, Design(3, 2, 3)))
    settings = GenerationSettings(max_new_tokens=8)
    fast = generate_and_capture(tiny.model, tiny.tokenizer, prompts, settings, progress=False)
    plain = generate_and_capture(tiny.model, tiny.tokenizer, prompts, settings, progress=False, **switched_off)
    assert fast.decoder == "fast"
    assert plain.decoder.startswith("generate+reforward") == ("fast_decoder" in switched_off)
    assert fast.answer_ids == plain.answer_ids
    np.testing.assert_allclose(fast.means, plain.means, rtol=1e-5, atol=1e-6)
    assert list(fast.token_counts) == list(plain.token_counts)


def test_a_lazy_stop_check_returns_the_same_tokens(tiny, prompt_rows):
    model, pad = tiny.model, tiny.tokenizer.pad_token_id
    first = decode(model, prompt_rows, 3, [], pad)
    second_tokens = sorted(set(first[:, 1].tolist()))  # every row ends at its second token
    every_step = decode(model, prompt_rows, 12, second_tokens, pad, stop_check_every=1)
    fed: list[torch.Tensor | None] = []
    lazy = decode(model, prompt_rows, 12, second_tokens, pad, stop_check_every=5, before_forward=_recorder(fed))
    assert every_step.shape == (len(prompt_rows), 2) and torch.equal(lazy, every_step)
    assert len(fed) == 5, "the prefill and four fed steps: the check runs after the fifth pick"
    assert all(bool((f == pad).all()) for f in fed[3:]), "after every row ended, only padding is fed"


def test_stops_as_soon_as_every_row_has_ended(tiny, prompt_rows):
    model, tokenizer = tiny.model, tiny.tokenizer
    first = decode(model, prompt_rows, 3, [], tokenizer.pad_token_id)
    second_tokens = sorted(set(first[:, 1].tolist()))  # every row ends at its second token
    fed: list[torch.Tensor | None] = []
    tokens = decode(model, prompt_rows, 12, second_tokens, tokenizer.pad_token_id, before_forward=_recorder(fed))
    assert tokens.shape == (len(prompt_rows), 2)
    assert torch.equal(tokens[:, 0], first[:, 0])
    assert len(fed) == 2 and fed[0] is None, "the prefill and the first token; the ending tokens are not fed"


def test_sampling_is_seeded_and_tends_to_greedy_at_low_temperature(tiny, prompt_rows):
    model, pad = tiny.model, tiny.tokenizer.pad_token_id

    def sample(seed: int, temperature: float) -> torch.Tensor:
        return decode(model, prompt_rows, 8, [], pad, do_sample=True, temperature=temperature,
                      generator=torch.Generator().manual_seed(seed))

    assert torch.equal(sample(1, 1.0), sample(1, 1.0))
    assert not torch.equal(sample(1, 1.0), sample(2, 1.0))
    assert torch.equal(sample(3, 1e-8), decode(model, prompt_rows, 8, [], pad))


def test_the_loop_and_the_capture_read_nothing_back_but_the_stop_check(tiny, tiny_personas, monkeypatch):
    """On an accelerator every read of a tensor's value on the host is a synchronisation. Counted on the CPU,
    inside the decoding loop and the capture hooks: one read per ``stop_check_every`` steps, none per layer."""
    from pathlib import Path

    from drift_suite.measure import extract
    from drift_suite.measure.extract import GenerationSettings, generate_and_capture

    ours = {str(Path(decode_module.__file__).resolve()), str(Path(extract.__file__).resolve())}
    loop_functions = {"decode", "forward", "pick", "pick_and_record", "growing_step", "fixed_step", "before_forward", "add", "hook", "on_step"}
    reads: list[str] = []

    def counting(name: str):
        real = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            caller = __import__("sys")._getframe(1).f_code
            if str(Path(caller.co_filename).resolve()) in ours and caller.co_name in loop_functions:
                reads.append(f"{caller.co_name}:{name}")
            return real(self, *args, **kwargs)

        return wrapper

    for name in ("cpu", "item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    prompts = render_prompts(tiny.tokenizer, build_conversations(tiny_personas, Design(3, 1, 2)))
    settings = GenerationSettings(max_new_tokens=12)
    generate_and_capture(tiny.model, tiny.tokenizer, prompts, settings, progress=False, stop_check_every=4)
    assert reads == ["decode:__bool__"] * 3 + ["decode:cpu"], "three stop checks and the tokens at the end"


class _NoStreams:
    """CUDA's stream calls as no-ops, so the CUDA-graph orchestration of :func:`decode` runs on the CPU."""

    class Stream:
        def __init__(self, *_args, **_kwargs):
            pass

        def wait_stream(self, _other):
            pass

    @staticmethod
    def current_stream(*_args):
        return _NoStreams.Stream()

    @staticmethod
    def stream(_stream):
        import contextlib

        return contextlib.nullcontext()


def _graph_path(monkeypatch, capture):
    """Let :func:`decode` take its CUDA-graph path on the CPU, with ``capture`` standing in for the capture."""
    monkeypatch.setattr(decode_module, "cuda_graph_blocker", lambda *_args: None)
    monkeypatch.setattr(decode_module, "capture_step", capture)
    for name in ("Stream", "current_stream", "stream"):
        monkeypatch.setattr(torch.cuda, name, getattr(_NoStreams, name))


def test_the_graph_path_warms_up_captures_once_and_replays_every_later_step(tiny, prompt_rows, monkeypatch):
    """A stand-in capture whose replay runs the recorded step: warm-up steps, one capture, then replays only,
    with the same tokens as the growing cache and progress after every step."""
    model, pad = tiny.model, tiny.tokenizer.pad_token_id
    eos = _stops_some_rows_early(tiny, prompt_rows)
    calls = {"captures": 0, "replays": 0}

    def capture(step, _device):
        calls["captures"] += 1

        class Replay:
            def run(self):
                calls["replays"] += 1
                step()

        return Replay()

    _graph_path(monkeypatch, capture)
    paths, steps = [], []
    graphed = decode(model, prompt_rows, 12, eos, pad, static_cache=True, on_path=paths.append, on_step=steps.append)
    reference = decode(model, prompt_rows, 12, eos, pad, static_cache=False)
    assert torch.equal(graphed, reference)
    assert paths == ["fast (CUDA graphs)"]
    assert calls["captures"] == 1
    assert calls["replays"] == len(steps) - 1 - decode_module.WARMUP_STEPS
    assert steps == list(range(len(steps))), "progress after the prefill and after every step"


def test_a_failed_capture_runs_the_same_steps_eagerly_and_says_why(tiny, prompt_rows, monkeypatch):
    model, pad = tiny.model, tiny.tokenizer.pad_token_id
    eos = _stops_some_rows_early(tiny, prompt_rows)

    def failing_capture(_step, _device):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    _graph_path(monkeypatch, failing_capture)
    paths = []
    tokens = decode(model, prompt_rows, 12, eos, pad, static_cache=True, on_path=paths.append)
    assert torch.equal(tokens, decode(model, prompt_rows, 12, eos, pad, static_cache=False))
    assert paths == ["fast (static cache, CUDA graphs off: RuntimeError: operation not permitted when stream is capturing)"]


def test_sampling_never_takes_the_graph_path_and_says_so_only_where_graphs_were_asked_for(tiny, prompt_rows):
    model, pad = tiny.model, tiny.tokenizer.pad_token_id
    paths = []
    decode(model, prompt_rows, 4, [], pad, static_cache=True, cuda_graphs=True, do_sample=True,
           generator=torch.Generator().manual_seed(0), on_path=paths.append)
    decode(model, prompt_rows, 4, [], pad, static_cache=True, on_path=paths.append)
    assert paths == ["fast (static cache, CUDA graphs off: not on a CUDA device)", "fast (static cache)"]


def test_quantized_models_are_not_captured(tiny):
    from drift_suite.measure.decode import cuda_graph_blocker

    model = tiny.model
    assert cuda_graph_blocker(model, do_sample=False) == "CUDA graphs off: not on a CUDA device"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decode_module, "model_device", lambda _model: torch.device("cuda", 0))
        assert cuda_graph_blocker(model, do_sample=False) is None
        assert cuda_graph_blocker(model, do_sample=True) == "CUDA graphs off: sampling draws on the host"
        patch.setattr(model, "is_quantized", True, raising=False)
        assert cuda_graph_blocker(model, do_sample=False) == "CUDA graphs off: quantized weights"
