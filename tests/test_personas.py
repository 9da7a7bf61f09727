"""Persona sets: the built-in set's shape, the upstream loader, subsampling, and chat-template handling."""

from __future__ import annotations

import json

import pytest

from conftest import SHARED_DATA
from drift_suite.measure.conversations import Design, build_conversations, fold_system_prompt, render_prompts, supports_system_role
from drift_suite.common.errors import PersonaSetError
from drift_suite.measure.personas import builtin_persona_set, load_persona_dir, resolve_persona_set
from tiny import NO_SYSTEM_CHATML, tiny_tokenizer

UPSTREAM = SHARED_DATA / "assistant-axis"


def test_builtin_set_spans_assistant_to_far_personas():
    personas = builtin_persona_set()
    assert len(personas.default_prompts) >= 5
    assert len(personas.roles) >= 24
    assert all(len(prompts) >= 3 for prompts in personas.roles.values())
    assert len(personas.questions) >= 16
    for role in ("tutor", "librarian", "pirate", "ghost", "nihilist", "trickster"):
        assert role in personas.roles


def test_hashes_follow_content():
    a = builtin_persona_set()
    b = a.subsample(max_roles=10, seed=1)
    assert a.persona_hash() == builtin_persona_set().persona_hash()
    assert a.persona_hash() != b.persona_hash()
    assert a.question_hash() == b.question_hash()


def test_subsample_is_deterministic_and_bounded():
    personas = builtin_persona_set()
    one = personas.subsample(max_roles=5, max_prompts_per_role=2, max_questions=7, seed=3)
    two = personas.subsample(max_roles=5, max_prompts_per_role=2, max_questions=7, seed=3)
    assert one == two
    assert len(one.roles) == 5 and all(len(p) == 2 for p in one.roles.values()) and len(one.questions) == 7
    assert list(one.roles) == [r for r in personas.roles if r in one.roles], "set order kept"


@pytest.mark.skipif(not UPSTREAM.is_dir(), reason="shared upstream persona data not present")
def test_upstream_format_loads():
    personas = load_persona_dir(UPSTREAM, model_name="SmolLM2")
    assert len(personas.roles) == 275
    assert "default" not in personas.roles and "pirate" in personas.roles
    assert len(personas.questions) == 240
    assert all("{model_name}" not in p for p in personas.default_prompts)
    assert any("SmolLM2" in p for p in personas.default_prompts)
    small = personas.subsample(max_roles=20, max_prompts_per_role=2, max_questions=10)
    assert len(build_conversations(small, Design(4, 2, 3))) == len(small.default_prompts[:2]) * 4 + 20 * 2 * 3


def test_upstream_format_errors(tmp_path):
    with pytest.raises(PersonaSetError, match="not a persona set"):
        load_persona_dir(tmp_path)
    (tmp_path / "roles" / "instructions").mkdir(parents=True)
    (tmp_path / "extraction_questions.jsonl").write_text('{"question": "Hi?", "id": 0}\n')
    (tmp_path / "roles" / "instructions" / "pirate.json").write_text(json.dumps({"instruction": [{"pos": "Be a pirate."}]}))
    (tmp_path / "roles" / "instructions" / "ghost.json").write_text(json.dumps({"instruction": [{"pos": "Be a ghost."}]}))
    with pytest.raises(PersonaSetError, match="default.json"):
        load_persona_dir(tmp_path)
    (tmp_path / "roles" / "instructions" / "default.json").write_text(json.dumps({"instruction": [{"pos": ""}]}))
    assert load_persona_dir(tmp_path).role_names == ["ghost", "pirate"]
    (tmp_path / "roles" / "instructions" / "bad.json").write_text(json.dumps({"instructions": []}))
    with pytest.raises(PersonaSetError, match="bad.json"):
        load_persona_dir(tmp_path)
    assert resolve_persona_set("builtin").name == "builtin"


def test_latin_square_spreads_questions_over_roles():
    personas = builtin_persona_set()
    conversations = build_conversations(personas, Design(default_questions=2, role_prompts=1, role_questions=4))
    role_questions = {c.question_index for c in conversations if not c.is_default}
    assert role_questions == set(range(len(personas.questions))), "every question is asked by some role"
    defaults = [c for c in conversations if c.is_default]
    assert len(defaults) == len(personas.default_prompts) * 2


def test_empty_system_prompt_means_no_system_turn():
    conversation = build_conversations(builtin_persona_set(), Design(1, 1, 1))[0]
    assert conversation.system_prompt == "" and conversation.messages()[0]["role"] == "user"


def test_system_prompt_folded_for_templates_without_system_role():
    plain, gemma_like = tiny_tokenizer(), tiny_tokenizer(NO_SYSTEM_CHATML)
    assert supports_system_role(plain) and not supports_system_role(gemma_like)
    folded = fold_system_prompt([{"role": "system", "content": "Be a pirate."}, {"role": "user", "content": "Hi?"}])
    assert folded == [{"role": "user", "content": "Be a pirate.\n\nHi?"}]
    conversations = [c for c in build_conversations(builtin_persona_set(), Design(1, 1, 1)) if c.role == "pirate"]
    rendered = render_prompts(gemma_like, conversations)[0]
    assert "system" not in rendered and conversations[0].system_prompt in rendered
