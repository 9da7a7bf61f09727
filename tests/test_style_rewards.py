"""The persona-pulling style reward (drift_suite.train.style_rewards) on a tiny model: seconds."""

from __future__ import annotations

import pytest
import torch

from drift_suite.measure.personas import builtin_persona_set
from drift_suite.train.style_rewards import LIGHTHOUSE_KEEPER, StyleScorer, lighthouse_keeper_style, make_style_reward

PROMPT = [{"role": "user", "content": "Why do people like music?"}]


def _direct_mean_logprob(scorer: StyleScorer, turns: list[dict], completion: str) -> float:
    """The same number computed one sequence at a time, without padding: what the batched scorer must match."""
    prefix = scorer.tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True)
    prefix = list(prefix["input_ids"] if hasattr(prefix, "keys") else prefix)
    answer = scorer.tokenizer(completion, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prefix + answer])
    with torch.no_grad():
        logp = torch.log_softmax(scorer.model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    return float(torch.stack([logp[len(prefix) + i - 1, t] for i, t in enumerate(answer)]).mean())


def test_score_is_character_minus_plain_logprob_batched_as_one_by_one(tiny_checkpoint) -> None:
    scorer = StyleScorer(str(tiny_checkpoint), character="people like music")
    completions = ["people like music", "Why do people like music ? people like", ""]
    scores = scorer.scores([PROMPT] * 3, [[{"role": "assistant", "content": c}] for c in completions])
    system = [{"role": "system", "content": "people like music"}]
    for completion, score in zip(completions[:2], scores[:2]):
        expected = _direct_mean_logprob(scorer, system + PROMPT, completion) - _direct_mean_logprob(scorer, PROMPT, completion)
        assert score == pytest.approx(expected, abs=1e-4)
    assert scores[2] == 0.0  # an empty completion carries no style
    assert len({round(s, 6) for s in scores[:2]}) == 2  # different completions, different scores


def test_a_system_prompt_in_the_prompt_is_replaced_not_stacked(tiny_checkpoint) -> None:
    scorer = StyleScorer(str(tiny_checkpoint), character="people like music")
    completion = [{"role": "assistant", "content": "people like music"}]
    with_system = [{"role": "system", "content": "Why do people"}, *PROMPT]
    assert scorer.scores([with_system], [completion]) == pytest.approx(scorer.scores([PROMPT], [completion]), abs=1e-5)


def test_factory_loads_once_and_env_function_needs_the_scorer(tiny_checkpoint, monkeypatch) -> None:
    reward = make_style_reward(str(tiny_checkpoint))
    out = reward(prompts=[PROMPT], completions=[[{"role": "assistant", "content": "music"}]], answer=["x"])
    assert len(out) == 1 and isinstance(out[0], float)
    monkeypatch.delenv("DRIFT_STYLE_MODEL", raising=False)
    with pytest.raises(RuntimeError, match="DRIFT_STYLE_MODEL"):
        lighthouse_keeper_style([PROMPT], ["music"])
    monkeypatch.setenv("DRIFT_STYLE_MODEL", str(tiny_checkpoint))
    assert len(lighthouse_keeper_style([PROMPT, PROMPT], ["music", "people"])) == 2


def test_the_character_is_none_of_the_suites_roles() -> None:
    persona_set = builtin_persona_set()
    text = LIGHTHOUSE_KEEPER.lower()
    assert "lighthouse keeper" in text
    assert not any(f" {role.replace('_', ' ')}" in text for role in persona_set.role_names)


def test_usable_as_a_train_reward_spec() -> None:
    from drift_suite.train.rewards import resolve_reward

    reward = resolve_reward("drift_suite.train.style_rewards:lighthouse_keeper_style")
    assert reward.name == "lighthouse_keeper_style" and callable(reward.func)
