"""Fuzzing the two parsers that read text nobody vetted: the GSM8K answer grader (model output) and the
persona-set loader (files from elsewhere). They may only return a result or raise their documented error,
and never take long, whatever the input (long runs of digits, commas, dots and signs included)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drift_suite.train import gsm8k
from drift_suite.common.errors import PersonaSetError
from drift_suite.measure.personas import PersonaSet, load_persona_dir

FUZZ_EXAMPLES = int(os.environ.get("DRIFT_FUZZ_EXAMPLES", "200"))
"""Examples per fuzz test (raise it for a deeper run: DRIFT_FUZZ_EXAMPLES=5000)."""
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=timedelta(seconds=2), suppress_health_check=[HealthCheck.too_slow])

NUMBERY = "0123456789,.-+$€£/%\u2212 \n#*=:{}\\"
MARKERS = ["####", "\\boxed{", "\\frac{", "The answer is ", "Final answer: ", "Answer:", "\nA: ", "}", "=", "x = "]
number_soup = st.text(alphabet=NUMBERY, max_size=5000)
marked_soup = st.lists(st.one_of(st.sampled_from(MARKERS), st.text(alphabet=NUMBERY, max_size=60), st.text(max_size=20)), max_size=200).map("".join)
any_text = st.one_of(st.text(max_size=2000), number_soup, marked_soup)


@FUZZ
@given(any_text)
def test_grader_never_crashes(text):
    answer = gsm8k.extract_answer(text)
    assert answer is None or gsm8k.normalize_number(answer) == answer, "extracted answers are canonical numbers"
    assert isinstance(gsm8k.has_answer_marker(text), bool)
    assert isinstance(gsm8k.looks_truncated(text), bool)
    assert gsm8k.is_correct(text, "72") in (True, False)
    assert gsm8k.correctness_reward([text, [{"role": "assistant", "content": text}]], ["#### 72", "-3.5"]) in (
        [0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0])
    assert gsm8k.format_reward([text])[0] in (0.0, gsm8k.FORMAT_BONUS)


@FUZZ
@given(any_text)
def test_number_parsing_raises_only_its_documented_error(text):
    normalized = gsm8k.normalize_number(text)
    assert normalized is None or gsm8k.normalize_number(normalized) == normalized
    try:
        gold = gsm8k.gold_answer(text)
    except ValueError:
        return  # documented: a gold label without a number is a data bug
    assert gsm8k.normalize_number(gold) == gold


@pytest.mark.parametrize(
    "text",
    [
        "1," * 50_000,
        "1." * 50_000,
        "-" * 50_000 + "1",
        "1" * 100_000,
        "#### " * 20_000,
        "\\boxed{" * 20_000,
        "\\frac{" * 20_000 + "1}{2}",
        "The answer is " * 10_000,
        "answer" + " " * 100_000 + "is",
        "1,000" * 20_000,
        "1" + ",000" * 25_000 + ",00",  # found: quadratic before the thousands groups were capped (35 s)
        "9/" * 50_000,
        "= 1 " * 25_000,
    ],
    ids=lambda text: repr(text[:12]),
)
def test_grader_is_fast_on_adversarial_long_inputs(text):
    # Not a benchmark: a ceiling far above the linear-time cost (milliseconds) and far below a catastrophic
    # backtrack (minutes) on a 100 kB input.
    start = time.process_time()
    gsm8k.extract_answer(text)
    gsm8k.has_answer_marker(text)
    gsm8k.normalize_number(text)
    assert time.process_time() - start < 10


names = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
role_document = st.one_of(
    st.builds(lambda prompts: {"instruction": [{"pos": p} for p in prompts]}, st.lists(st.text(max_size=40), max_size=3)),
    st.dictionaries(st.sampled_from(["instruction", "pos", "other"]), json_values, max_size=3),
    json_values,
)
file_body = st.one_of(role_document.map(lambda doc: json.dumps(doc).encode()), st.binary(max_size=200))
question_line = st.one_of(
    st.builds(lambda q: json.dumps({"question": q}), st.text(max_size=40)),
    json_values.map(json.dumps),
    st.text(max_size=40),
)


@settings(FUZZ, max_examples=max(FUZZ_EXAMPLES // 4, 10))  # file I/O per example: fewer, same coverage per second
@given(
    roles=st.dictionaries(names, file_body, max_size=5),
    default=st.one_of(st.none(), file_body),
    questions=st.one_of(st.lists(question_line, max_size=5).map(lambda lines: "\n".join(lines).encode()), st.binary(max_size=100)),
    role_list=st.one_of(st.none(), json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=50)),
)
def test_persona_loader_returns_a_set_or_a_persona_set_error(roles, default, questions, role_list):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "set"
        instructions = root / "roles" / "instructions"
        instructions.mkdir(parents=True)
        for name, body in roles.items():
            try:
                (instructions / f"{name}.json").write_bytes(body)
            except OSError:  # a name the file system refuses (too long in bytes): not the loader's input
                continue
        if default is not None:
            (instructions / "default.json").write_bytes(default)
        (root / "extraction_questions.jsonl").write_bytes(questions)
        if role_list is not None:
            (root / "roles" / "role_list.json").write_bytes(role_list)
        try:
            loaded = load_persona_dir(root)
        except PersonaSetError as error:
            assert "\n" not in str(error), "errors are one line"
            return
    assert isinstance(loaded, PersonaSet)
    texts = [*loaded.default_prompts, *loaded.questions, *(p for ps in loaded.roles.values() for p in ps)]
    assert all(isinstance(text, str) for text in texts), "a set holds strings only"
    assert all(isinstance(d, str) for d in loaded.descriptions.values())
    assert loaded.persona_hash() and loaded.question_hash()


@pytest.mark.parametrize(
    "role_body, questions, role_list",
    [
        (b"\xff\xfe", b'{"question": "q"}', None),  # found by the fuzzer: UnicodeDecodeError escaped
        (b'{"instruction": [{"pos": "x"}]}', b"\xff", None),
        (b'{"instruction": [{"pos": "x"}]}', b'{"question": 5}', None),  # a number was loaded as a question
        (b'{"instruction": [{"pos": "x"}]}', b'{"question": "q"}', b"{"),  # JSONDecodeError escaped
        (b'{"instruction": [{"pos": "x"}]}', b'{"question": "q"}', b"[1]"),  # AttributeError escaped
        (b'{"instruction": "ab"}', b'{"question": "q"}', None),
        (b"[" * 100_000, b'{"question": "q"}', None),  # RecursionError territory
    ],
    ids=["role-not-utf8", "questions-not-utf8", "question-not-text", "role-list-not-json", "role-list-a-list",
         "instruction-a-string", "deep-nesting"],
)
def test_persona_loader_fuzz_findings(tmp_path, role_body, questions, role_list):
    instructions = tmp_path / "roles" / "instructions"
    instructions.mkdir(parents=True)
    (instructions / "default.json").write_text('{"instruction": [{"pos": ""}]}')
    for role in ("pirate", "ghost"):
        (instructions / f"{role}.json").write_bytes(role_body)
    (tmp_path / "extraction_questions.jsonl").write_bytes(questions)
    if role_list is not None:
        (tmp_path / "roles" / "role_list.json").write_bytes(role_list)
    with pytest.raises(PersonaSetError) as error:
        load_persona_dir(tmp_path)
    assert "\n" not in str(error.value)
