"""Tests for the GSM8K grader, reward functions and dataset loading."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from drift_suite.train import gsm8k
from drift_suite.train.gsm8k import (
    ANSWER_INSTRUCTION,
    DatasetSourceError,
    correctness_reward,
    extract_answer,
    format_reward,
    gold_answer,
    is_correct,
    load_gsm8k,
    normalize_number,
    to_prompt_dataset,
)

SHARED_GSM8K = Path(__file__).resolve().parents[2] / "shared/data/gsm8k"
TRAIN_JSONL = SHARED_GSM8K / "train.jsonl"
TEST_JSONL = SHARED_GSM8K / "test.jsonl"

JANET = (
    "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
    "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer's market.\n"
)

# (id, completion text, expected canonical answer or None)
EXTRACT_CASES = [
    # --- GSM8K "####" marker
    ("hash-plain", "#### 72", "72"),
    ("hash-after-solution", JANET + "#### 18", "18"),
    ("hash-thousands", "So the total is 1,234 dollars.\n#### 1,234", "1234"),
    ("hash-dollar", "#### $45", "45"),
    ("hash-units", "#### 18 apples", "18"),
    ("hash-negative", "#### -10", "-10"),
    ("hash-no-space", "####42", "42"),
    ("hash-beats-later-number", "#### 18\nI double-checked with 3 methods.", "18"),
    ("markdown-heading-is-not-marker", "#### Step 1\nShe has 3 and 4 more, 7 in all.", "7"),
    # --- "the answer is"
    ("answer-is", "The answer is 42.", "42"),
    ("final-answer-is-colon", "Therefore, the final answer is: 1,234", "1234"),
    ("answer-is-dollars", "So the answer is $5 per hour.", "5"),
    ("answer-is-marker-beats-last-number", "The answer is 5. I used 3 steps.", "5"),
    ("answer-is-units-then-comparison", "The answer is 18 apples, 2 more than 16.", "18"),
    ("answer-is-equation", "The answer is 3 + 4 = 7.", "7"),
    ("answer-is-next-line", "The answer is:\n\n42", "42"),
    ("answer-would-be", "So the answer would be 64 marbles.", "64"),
    ("answer-is-boxed", "The final answer is $\\boxed{42}$.", "42"),
    # --- "Answer:" styles
    ("answer-colon-currency", "Answer: $1,234.50", "1234.5"),
    ("answer-colon-equation", "Answer: 3 + 4 = 7", "7"),
    ("answer-colon-calc-annotation", "Answer: 48/2 = <<48/2=24>>24", "24"),
    ("bold-answer", "**Answer:** 42", "42"),
    ("bold-answer-colon-outside", "**Answer**: 42", "42"),
    ("bold-final-answer", "**Final Answer: 1,000**", "1000"),
    ("a-colon", "A: 42", "42"),
    ("a-colon-units", "Q: How many eggs?\nA: 16 eggs", "16"),
    ("a-colon-long-line-not-marker", "A: Janet has 16 eggs, sells 9. She makes 18 dollars.", "18"),
    ("answer-equals", "answer = 12", "12"),
    ("answer-colon-mid-sentence-not-marker", "To find the answer: 3 * 4 = 12, 12 + 6 = 18.", "18"),
    ("answer-is-not-number-first", "The key to the answer is to add 3 and 4, giving 7.", "7"),
    ("answer-is-variable", "The answer is x = 15.", "15"),
    # --- \boxed{}
    ("boxed-plain", "\\boxed{18}", "18"),
    ("boxed-escaped-dollar", "\\boxed{\\$1,234}", "1234"),
    ("boxed-text-units", "\\boxed{18\\text{ apples}}", "18"),
    ("boxed-fraction-slash", "\\boxed{3/4}", "0.75"),
    ("boxed-frac", "So it is $\\boxed{\\frac{3}{4}}$.", "0.75"),
    ("boxed-dfrac-negative", "\\boxed{-\\dfrac{1}{2}}", "-0.5"),
    ("boxed-nested-braces", "\\boxed{{1{,}000}}", "1000"),
    ("boxed-percent", "\\boxed{45\\%}", "45"),
    ("boxed-equation", "\\boxed{x = 12}", "12"),
    ("boxed-thin-space", "\\boxed{1\\,500}", "1500"),
    ("boxed-beats-later-number", "\\boxed{18}\nThat took 2 steps", "18"),
    # --- several markers: the last one wins
    ("two-answer-is", "The answer is 10. Wait, I made an error. The answer is 12.", "12"),
    ("answer-is-then-hash", "The answer is 10.\n#### 12", "12"),
    ("hash-then-boxed", "#### 10\nCorrection: \\boxed{11}", "11"),
    ("marker-without-number-ignored", "The answer is 7.\nThe answer is unclear to me", "7"),
    # --- no marker: last number
    ("bare-number", "72", "72"),
    ("short-sentence", "The total is 72.", "72"),
    ("short-sentence-no-period", "The total is 72", "72"),
    ("reference-style-solution", JANET, "18"),
    ("trailing-units", "She picks 18 apples.", "18"),
    ("trailing-rate", "He earns $5 per hour.", "5"),
    ("percent", "The discount is 45%.", "45"),
    ("thousands-separators", "The city has 1,234,567 people.", "1234567"),
    ("list-is-not-thousands", "The numbers are 1, 2, 3.", "3"),
    ("decimal-zeros", "It costs 18.00", "18"),
    ("decimal", "Each costs $2.50.", "2.5"),
    ("leading-dot-decimal", "The probability is .5", "0.5"),
    ("negative", "The temperature is -5 degrees.", "-5"),
    ("unicode-minus", "The change is \u22125.", "-5"),
    ("hyphen-is-subtraction", "16-3", "3"),
    ("calculator-annotation-last", "She has 48/2 = <<48/2=24>>24 left.", "24"),
    ("multiline-ends-with-number", "First 3 + 4 = 7.\nSo she has 72 apples", "72"),
    ("latex-inline", "So she pays $\\$18$ in total.", "18"),
    # --- no answer
    ("empty", "", None),
    ("whitespace", "   \n ", None),
    ("no-digits", "I don't know how to solve this.", None),
    ("truncated-connective", "She buys 3 boxes of 12 eggs.\nThen she sells 9 of them and", None),
    ("truncated-mid-calculation", "Janet sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = 1", None),
    ("truncated-thousands-group", "First we find the cost.\nThe house costs $1,2", None),
    ("truncated-trailing-operator", "There are 5 bags.\nEach has 4 so 5 *", None),
    ("truncated-trailing-comma", "We add the amounts one at a time.\nFirst 12, 15,", None),
]

# (id, completion, gold answer field, expected)
CORRECT_CASES = [
    ("exact", "#### 18", "... #### 18", True),
    ("decimal-zeros-equal", "The answer is 18.00", "18", True),
    ("half-equals-dot-five", "\\boxed{0.5}", ".5", True),
    ("thousands-gold", "#### 1000", "1,000", True),
    ("thousands-both", "Answer: $1,450,000", "x\n#### 1,450,000", True),
    ("negative-gold", "The answer is \u221210.", "#### -10", True),
    ("fraction-vs-decimal", "\\boxed{\\frac{3}{4}}", "0.75", True),
    ("wrong-number", "#### 17", "#### 18", False),
    ("no-answer", "I give up", "18", False),
    ("truncated", "She sells 9 eggs.\nShe makes 9 * 2 = 18 and", "18", False),
    ("marker-beats-right-last-number", "The answer is 5. Check: 18", "18", False),
    ("tolerance-edge", "#### 18.0000001", "18", True),
    ("beyond-tolerance", "#### 18.001", "18", False),
]

NORMALIZE_CASES = [
    ("int", "72", "72"),
    ("thousands", "1,234,567", "1234567"),
    ("currency-decimal", "$1,234.50", "1234.5"),
    ("trailing-zeros", "18.00", "18"),
    ("unicode-minus", "\u22125", "-5"),
    ("plus-sign", "+7", "7"),
    ("percent", "45%", "45"),
    ("fraction", "3/4", "0.75"),
    ("negative-zero", "-0.0", "0"),
    ("bad-thousands", "1,23", None),
    ("words", "eighteen", None),
    ("two-numbers", "3 4", None),
    ("zero-denominator", "1/0", None),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in EXTRACT_CASES], ids=[c[0] for c in EXTRACT_CASES]
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [c[1:] for c in CORRECT_CASES],
    ids=[c[0] for c in CORRECT_CASES],
)
def test_is_correct(completion: str, answer: str, expected: bool) -> None:
    assert is_correct(completion, answer) is expected


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in NORMALIZE_CASES], ids=[c[0] for c in NORMALIZE_CASES]
)
def test_normalize_number(text: str, expected: str | None) -> None:
    assert normalize_number(text) == expected


def test_extract_case_ids_are_unique_and_plentiful() -> None:
    ids = [c[0] for c in EXTRACT_CASES] + [c[0] for c in CORRECT_CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 60


@pytest.mark.parametrize(
    ("field", "expected"),
    [("Step.\n#### 72", "72"), ("72", "72"), ("1,000", "1000"), ("a\n#### -3", "-3")],
    ids=["solution", "bare", "bare-thousands", "negative"],
)
def test_gold_answer(field: str, expected: str) -> None:
    assert gold_answer(field) == expected


def test_gold_answer_rejects_unreadable_label() -> None:
    with pytest.raises(ValueError, match="no readable final number"):
        gold_answer("#### seventy-two")


# ----------------------------------------------------------------------- rewards


def test_correctness_reward_string_completions() -> None:
    rewards = correctness_reward(
        ["#### 18", "The answer is 17.", "truncated at 9 *"], answer=["x\n#### 18"] * 3
    )
    assert rewards == [1.0, 0.0, 0.0]


def test_correctness_reward_conversational_completions() -> None:
    completions = [
        [{"role": "assistant", "content": "9 * 2 = 18\n#### 18"}],
        [
            {"role": "assistant", "content": "#### 18"},
            {"role": "user", "content": "Are you sure? Maybe it is 17."},
            {"role": "assistant", "content": "You are right, the answer is 17."},
        ],
        [{"role": "assistant", "content": [{"type": "text", "text": "\\boxed{18}"}]}],
        [],
    ]
    rewards = correctness_reward(completions, answer=["18", "18", "18", "18"], prompts=None)
    assert rewards == [1.0, 0.0, 1.0, 0.0]


def test_correctness_reward_length_mismatch() -> None:
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        correctness_reward(["1", "2"], answer=["1"])


def test_format_reward() -> None:
    completions = ["work...\n#### 5", "It is 5.", [{"role": "assistant", "content": "\\boxed{5}"}]]
    assert format_reward(completions) == [gsm8k.FORMAT_BONUS, 0.0, gsm8k.FORMAT_BONUS]
    assert gsm8k.FORMAT_BONUS == pytest.approx(0.1)


# ----------------------------------------------------------------------- datasets


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_load_real_train_jsonl_with_max_samples() -> None:
    if not TRAIN_JSONL.is_file():
        pytest.skip(f"{TRAIN_JSONL} not present")
    ds = load_gsm8k(str(TRAIN_JSONL), max_samples=25, seed=1)
    assert len(ds) == 25
    assert ds.column_names == ["question", "answer"]
    assert all("####" in a for a in ds["answer"])
    assert load_gsm8k(str(TRAIN_JSONL), max_samples=25, seed=1)["question"] == ds["question"]


def test_reference_solutions_grade_as_correct() -> None:
    """Self-consistency: each real reference solution extracts to its own gold answer."""
    if not TEST_JSONL.is_file():
        pytest.skip(f"{TEST_JSONL} not present")
    with TEST_JSONL.open(encoding="utf-8") as fh:
        rows = [json.loads(line) for _, line in zip(range(200), fh)]
    assert len(rows) == 200
    wrong = [
        r["answer"][-60:]
        for r in rows
        if extract_answer(r["answer"]) != gold_answer(r["answer"])
        or not is_correct(r["answer"], r["answer"])
    ]
    assert wrong == []


def test_load_local_jsonl_and_parquet(tmp_path: Path) -> None:
    rows = [{"question": f"q{i}", "answer": f"s\n#### {i}", "extra": i} for i in range(5)]
    jsonl = _write_jsonl(tmp_path / "d.jsonl", rows)
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    for path in (jsonl, tmp_path / "d.parquet"):
        ds = load_gsm8k(str(path))
        assert ds.column_names == ["question", "answer"]
        assert ds["question"] == [f"q{i}" for i in range(5)]


def test_load_missing_columns_names_found_columns(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"problem": "q", "solution": "1"}])
    with pytest.raises(DatasetSourceError, match=r"missing column.*found columns.*problem"):
        load_gsm8k(str(path))


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetSourceError, match="not found"):
        load_gsm8k(str(tmp_path / "nope.jsonl"))


def test_load_hub_failure_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DatasetSourceError) as info:
        load_gsm8k("openai/gsm8k")
    message = str(info.value)
    assert "\n" not in message
    assert "local" in message and "synthetic" in message


def test_load_synthetic() -> None:
    ds = load_gsm8k("synthetic", max_samples=30, seed=4)
    assert len(ds) == 30
    assert ds.column_names == ["question", "answer"]
    assert load_gsm8k("synthetic", split="test", max_samples=30, seed=4)["question"] != ds[
        "question"
    ]


@pytest.mark.parametrize("system_prompt", [None, "You are a careful tutor."], ids=["user", "sys"])
def test_to_prompt_dataset(system_prompt: str | None) -> None:
    ds = datasets.Dataset.from_list([{"question": "What is 2+2?", "answer": "2+2=4\n#### 4"}])
    out = to_prompt_dataset(ds, system_prompt=system_prompt)
    assert sorted(out.column_names) == ["answer", "prompt"]
    prompt = out[0]["prompt"]
    assert prompt[-1]["role"] == "user"
    assert prompt[-1]["content"].startswith("What is 2+2?")
    assert prompt[-1]["content"].endswith(ANSWER_INSTRUCTION)
    has_system = prompt[0] == {"role": "system", "content": system_prompt}
    assert has_system is (system_prompt is not None)
    assert out[0]["answer"] == "2+2=4\n#### 4"
    assert correctness_reward(["#### 4"], answer=out["answer"]) == [1.0]
