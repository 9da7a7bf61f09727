"""GSM8K answer grading, GRPO reward functions and dataset loading.

Grading rule of ``extract_answer`` (what a completion "answered"):

1. Explicit final-answer markers win over any other number in the text: ``#### N``,
   ``\\boxed{N}``, ``the (final) answer is N``, ``Final answer: N``, a line opening with
   ``Answer: N`` / ``**Answer:** N``, and a short ``A: N`` line. If several markers carry
   a number, the LAST one counts (models often restate or correct themselves).
2. A marker's value is read from the rest of its sentence (or, if the marker ends its line,
   the next non-empty line), which must open with a number (markup, ``$`` and ``x =``
   aside), so "the answer is to add 3 and 4" is no marker. The value is the number right
   after the last ``=`` if there is one ("Answer: 3 + 4 = 7" -> 7), otherwise the first
   number ("The answer is 18 apples, 2 more than 16" -> 18). ``a/b`` written without
   spaces is evaluated as a fraction.
3. Without a marker the last number in the text counts, unless the text looks truncated
   (see ``looks_truncated``), in which case there is no answer (None). A truncated rollout
   must not be rewarded for whatever number it happened to stop on.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal, localcontext
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable

import datasets

__all__ = [
    "ANSWER_INSTRUCTION",
    "DatasetSourceError",
    "correctness_reward",
    "extract_answer",
    "format_reward",
    "gold_answer",
    "has_answer_marker",
    "is_correct",
    "load_gsm8k",
    "looks_truncated",
    "normalize_number",
    "to_prompt_dataset",
]

ANSWER_INSTRUCTION = (
    "Solve the problem step by step. End your response with the final numeric answer "
    'on its own line in the form "#### <number>".'
)
TOLERANCE = 1e-6
REQUIRED_COLUMNS = ("question", "answer")
FORMAT_BONUS = 0.1

# A number as written in prose: optional sign (ASCII or U+2212 minus) and currency symbol,
# thousands separators only in exact groups of three (so "1, 2, 3" stays three numbers),
# and an optional unspaced "/denominator" that makes it a fraction. The lookbehind keeps
# "16-3" from reading as 16 and -3, and "x2" or "1.2.3" from yielding stray numbers.
# The thousands groups are capped at what _MAX_DIGITS allows: unbounded, a run of groups that ends badly
# ("1,000,000,…,00") was rescanned from every comma, quadratic time (32 kB took 3.5 s, found by fuzzing).
_MAX_DIGITS = 100
_NUMBER_RE = re.compile(
    r"(?<![\w.])(?P<neg>[-\u2212])?[$€£]?(?P<neg2>-)?"
    + r"(?P<int>\d{1,3}(?:,\d{3}){1,%d}(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?!\d|,\d)" % (_MAX_DIGITS // 3)
    + r"(?:/(?P<den>\d+(?:\.\d+)?)(?!\d|\.\d))?"
)
_HASH_RE = re.compile(r"(?<!#)####(?!#)")
_ANSWER_RE = re.compile(
    r"(?:\banswer\b[\s*_]*(?:is|was|would be|will be|should be)\b[\s*_]*:?"
    r"|\bfinal\s+answer\b[\s*_]*[:=]"
    r"|^[ \t*_#>-]*answer\b[\s*_]*[:=])[*_]*",  # bare "Answer:" only opening a line
    re.IGNORECASE | re.MULTILINE,
)
# A marker's text must open with its number (after markup, "$", or "x ="); this keeps
# "#### Step 2" headings and "the answer is to multiply 3 by 4" from posing as answers.
_LEADS_WITH_NUMBER_RE = re.compile(
    r"[\s*_$€£(]*(?:[A-Za-z]\s*=\s*)?[-\u2212]?[$€£]?[-\u2212]?\.?\d"
)
_A_LINE_RE = re.compile(r"^[ \t*_]*A[*_]*[ \t]*:[*_]*", re.MULTILINE)
_A_LINE_MAX_WORDS = 5
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_SENTENCE_END_RE = re.compile(r"[.!?](?=\s|$)")

_TERMINAL_CHARS = ".!?)]}\"'`$>"
_CONNECTIVES = frozenset(
    "and or but so then thus is are was were be of to the a an by for with from which that "
    "this has have each per plus minus times than as at in on into if because since".split()
)
_SHORT_ANSWER_MAX_WORDS = 12
_SEGMENT_CHARS = 300

_LATEX_SUBS = [
    (re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}"), r"\1/\2"),
    (re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}"), r" \1 "),
    (re.compile(r"\^\s*\{?\\circ\}?"), ""),
    (re.compile(r"\\[$%]"), lambda m: m.group(0)[1]),
    (re.compile(r"\{,\}|\\[,;:! ]"), lambda m: "," if m.group(0) == "{,}" else ""),
    (re.compile(r"\\(?:times|cdot)"), " * "),
    (re.compile(r"\\div"), " / "),
    (re.compile(r"\\(?:left|right)\b"), ""),
    (re.compile(r"\\[()\[\]]"), ""),
    (re.compile(r"\\[A-Za-z]+"), " "),
    (re.compile(r"[{}]"), ""),
]


class DatasetSourceError(ValueError):
    """A GSM8K source could not be loaded (missing file, bad columns, hub unreachable)."""


# ---------------------------------------------------------------------------- numbers


def _fraction_to_str(value: Fraction) -> str:
    """Canonical decimal string: no exponent, no trailing zeros, "-0" folded to "0"."""
    if value.denominator == 1:
        return str(value.numerator)
    with localcontext() as ctx:
        ctx.prec = 28
        dec = (Decimal(value.numerator) / Decimal(value.denominator)).normalize()
    text = format(dec, "f")
    return "0" if text in ("-0", "0") else text


def _match_value(m: re.Match[str]) -> Fraction | None:
    """Value of a ``_NUMBER_RE`` match, or None for a zero denominator or absurd length."""
    digits, den = m.group("int").replace(",", ""), m.group("den")
    # No real answer is this long, and int() refuses over 4300 digits anyway.
    if len(digits) > _MAX_DIGITS or (den is not None and len(den) > _MAX_DIGITS):
        return None
    value = Fraction(digits)
    if den is not None:
        if Fraction(den) == 0:
            return None
        value /= Fraction(den)
    return -value if (m.group("neg") or m.group("neg2")) else value


def normalize_number(s: str) -> str | None:
    """Canonical string for one written number, or None if ``s`` is not a single number.

    Accepts signs (including U+2212), currency symbols, thousands separators, a trailing
    ``%`` or ``.``, and ``a/b`` fractions: ``"$1,234.50"`` -> ``"1234.5"``, ``"18.00"`` ->
    ``"18"``, ``"3/4"`` -> ``"0.75"``, ``"\u22125"`` -> ``"-5"``.
    """
    text = s.strip().replace("\u2212", "-").rstrip(".").rstrip("%").strip()
    if text.startswith("+"):
        text = text[1:]
    m = _NUMBER_RE.fullmatch(text)
    if m is None:
        return None
    value = _match_value(m)
    return None if value is None else _fraction_to_str(value)


def _numbers(text: str) -> list[Fraction]:
    return [v for m in _NUMBER_RE.finditer(text) if (v := _match_value(m)) is not None]


# ---------------------------------------------------------------------------- markers


def _clean_latex(text: str) -> str:
    for pattern, repl in _LATEX_SUBS:
        text = pattern.sub(repl, text)
    return text


def _value_of_segment(segment: str) -> Fraction | None:
    """The answer a marker introduces: the result after the last '=', else the first number."""
    segment = _clean_latex(segment)
    if "=" in segment:
        after = _numbers(segment.rsplit("=", 1)[1])
        if after:
            return after[0]
    found = _numbers(segment)
    return found[0] if found else None


def _segment_after(text: str, pos: int) -> str:
    """The rest of the marker's sentence; the next non-empty line if its own line is empty."""
    # Answers are short: reading at most _SEGMENT_CHARS keeps many markers linear in cost.
    window = text[pos : pos + _SEGMENT_CHARS]
    line, _, after = window.partition("\n")
    if not line.strip(" \t*_:$"):
        line = next((ln for ln in after.split("\n") if ln.strip()), line)
    end = _SENTENCE_END_RE.search(line)
    return line[: end.start()] if end else line


def _boxed_contents(text: str) -> Iterable[tuple[int, str]]:
    """(position, content) of each ``\\boxed{...}``, honouring nested braces."""
    # One pass over all braces keeps degenerate rollouts ("\\boxed{" repeated) linear.
    closing: dict[int, int] = {}
    stack: list[int] = []
    for m in re.finditer(r"[{}]", text):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            closing[stack.pop()] = m.start()
    for m in _BOXED_RE.finditer(text):
        end = closing.get(m.end() - 1)
        if end is not None and end - m.end() <= _SEGMENT_CHARS:
            yield m.start(), text[m.end() : end]


def _marker_segments(text: str) -> list[tuple[int, str]]:
    """(position, text after it) of every explicit final-answer marker, in text order."""
    found = []
    for m in [*_HASH_RE.finditer(text), *_ANSWER_RE.finditer(text)]:
        segment = _segment_after(text, m.end())
        if _LEADS_WITH_NUMBER_RE.match(_clean_latex(segment)):
            found.append((m.start(), segment))
    for m in _A_LINE_RE.finditer(text):
        rest = text[m.end() : m.end() + _SEGMENT_CHARS].partition("\n")[0]
        if len(rest.split()) <= _A_LINE_MAX_WORDS and _LEADS_WITH_NUMBER_RE.match(rest):
            found.append((m.start(), rest))
    found.extend(_boxed_contents(text))
    return sorted(found)


def _last_marker_value(text: str) -> Fraction | None:
    """Value of the last explicit marker that carries a number, or None."""
    for _, segment in reversed(_marker_segments(text)):
        value = _value_of_segment(segment)
        if value is not None:
            return value
    return None


def has_answer_marker(text: str) -> bool:
    """True if ``text`` states its final answer explicitly (####, boxed, "answer is", ...)."""
    return _last_marker_value(text) is not None


# ---------------------------------------------------------------------------- extraction


def looks_truncated(text: str) -> bool:
    """Whether a marker-free completion appears cut off mid-sentence or mid-number.

    Short answers ("72", "The total is 72") and text ending in terminal punctuation are
    complete. Longer text with no terminal punctuation is truncated when it stops on a
    connective ("... and", "... is"), an operator or comma, a partial thousands group
    ("1,2"), or a number straight after an operator or '=' (a calculation cut short:
    "... 9 * 2 = 1"). Any other ending, e.g. "... so she has 72 apples", counts as complete.
    """
    stripped = text.strip()
    if not stripped:
        return True
    if "\n" not in stripped and len(stripped.split()) <= _SHORT_ANSWER_MAX_WORDS:
        return False
    stripped = stripped[-200:]  # only the ending matters; bounds the regex work
    # "**" closes markdown bold; a lone "*" is a multiplication cut short.
    if stripped[-1] in _TERMINAL_CHARS or stripped.endswith("**"):
        return False
    if re.search(r"[,:;=+\-*/×÷\u2212(]$", stripped):
        return True
    if re.search(r"\d,\d{1,2}$", stripped):
        return True
    if re.search(r"[=+\-*/×÷\u2212]\s*[$€£]?\d[\d,.]*$", stripped):
        return True
    return stripped.split()[-1].lower() in _CONNECTIVES


def extract_answer(text: str) -> str | None:
    """The final numeric answer written in ``text`` as a canonical number string, or None.

    See the module docstring for the rule: last explicit marker, else last number unless
    the text looks truncated. ``"#### 1,234"`` -> ``"1234"``, ``"\\boxed{\\frac{3}{4}}"``
    -> ``"0.75"``, ``"The answer is 5. I used 3 steps."`` -> ``"5"``.
    """
    if not text or not text.strip():
        return None
    marked = _last_marker_value(text)
    if marked is not None:
        return _fraction_to_str(marked)
    if looks_truncated(text):
        return None
    found = _numbers(_clean_latex(text))
    return _fraction_to_str(found[-1]) if found else None


def gold_answer(answer_field: str) -> str:
    """Canonical gold answer from a GSM8K answer field (``"... #### 72"``) or a bare number.

    Raises ValueError if no number can be read, since a bad gold label is a data bug.
    """
    tail = answer_field.rsplit("####", 1)[-1]
    value = normalize_number(tail)
    if value is None:
        raise ValueError(f"GSM8K answer field has no readable final number: {tail.strip()!r}")
    return value


def is_correct(completion: str, answer: str) -> bool:
    """Whether ``completion``'s extracted answer equals the gold ``answer`` within 1e-6."""
    predicted = extract_answer(completion)
    if predicted is None:
        return False
    return abs(Fraction(predicted) - Fraction(gold_answer(answer))) <= Fraction(TOLERANCE)


# ---------------------------------------------------------------------------- rewards


def _completion_text(completion: Any) -> str:
    """Text of a TRL completion: a string, or the last assistant turn of a message list."""
    if isinstance(completion, str):
        return completion
    messages = list(completion)
    assistant = [m for m in messages if m.get("role") == "assistant"] or messages
    if not assistant:
        return ""
    content = assistant[-1].get("content", "")
    if isinstance(content, list):  # multimodal-style content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content or "")


def correctness_reward(completions: list[Any], answer: list[str], **kwargs: Any) -> list[float]:
    """GRPO reward: 1.0 where the completion's final answer matches the gold answer, else 0.0.

    Follows TRL's reward-function signature; ``answer`` is the dataset column of GSM8K
    answer fields (or bare numbers), aligned with ``completions``.
    """
    if len(completions) != len(answer):
        raise ValueError(f"{len(completions)} completions but {len(answer)} answers")
    return [
        1.0 if is_correct(_completion_text(c), a) else 0.0 for c, a in zip(completions, answer)
    ]


def format_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """GRPO reward: a small bonus (0.1) for stating the final answer with an explicit marker."""
    return [FORMAT_BONUS if has_answer_marker(_completion_text(c)) else 0.0 for c in completions]


# ---------------------------------------------------------------------------- datasets


def _read_local(path: Path) -> datasets.Dataset:
    if not path.is_file():
        raise DatasetSourceError(f"GSM8K file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return datasets.Dataset.from_dict(pq.read_table(path).to_pydict())
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DatasetSourceError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    return datasets.Dataset.from_list(rows)


def _is_local_path(source: str) -> bool:
    return source.endswith((".jsonl", ".json", ".parquet")) or Path(source).exists()


def load_gsm8k(
    source: str = "openai/gsm8k",
    split: str = "train",
    max_samples: int | None = None,
    seed: int = 0,
) -> datasets.Dataset:
    """Load GSM8K-format problems as a Dataset with columns ``question`` and ``answer``.

    ``source`` is a local ``.jsonl``/``.parquet`` file, ``"synthetic"`` (generated problems,
    see ``drift_suite.train.synthetic``; the split name varies the seed so train and test differ)
    or a Hugging Face hub id loaded with config ``"main"``. With ``max_samples`` a
    seed-shuffled subset of that size is returned.
    """
    if source == "synthetic":
        from drift_suite.train.synthetic import generate_problems

        split_seed = seed if split == "train" else seed + 1_000_003
        return datasets.Dataset.from_list(generate_problems(max_samples or 1000, seed=split_seed))
    if _is_local_path(source):
        ds = _read_local(Path(source))
    else:
        try:
            ds = datasets.load_dataset(source, "main", split=split)
        except Exception as exc:
            raise DatasetSourceError(
                f"could not load {source!r} from the Hugging Face Hub "
                f"({type(exc).__name__}); pass a local .jsonl/.parquet path or 'synthetic'"
            ) from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise DatasetSourceError(
            f"{source}: missing column(s) {missing}; found columns {ds.column_names}"
        )
    ds = ds.select_columns(list(REQUIRED_COLUMNS))
    if max_samples is not None and max_samples < len(ds):
        ds = ds.shuffle(seed=seed).select(range(max_samples))
    return ds


def to_prompt_dataset(ds: datasets.Dataset, system_prompt: str | None = None) -> datasets.Dataset:
    """Map question/answer rows to TRL's conversational prompt format.

    Each row becomes ``{"prompt": [{"role": "user", "content": question + instruction}],
    "answer": answer}``, with an optional leading system message.
    """

    def to_prompt(row: dict[str, Any]) -> dict[str, Any]:
        messages = [{"role": "user", "content": f"{row['question']}\n\n{ANSWER_INSTRUCTION}"}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
        return {"prompt": messages, "answer": row["answer"]}

    return ds.map(to_prompt, remove_columns=[c for c in ds.column_names if c != "answer"])
