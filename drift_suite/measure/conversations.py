"""Conversations to measure: which (persona, system prompt, question) triples, rendered with a chat template.

The design decides how many conversations a measurement costs. Questions are spread over roles in a Latin
square (role i starts at question i·q), so a small design still covers every question across roles.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .personas import DEFAULT_ROLE, PersonaSet


@dataclass(frozen=True)
class Design:
    """How many conversations to build from a persona set.

    Defaults are the smallest design whose measured noise floor met the 5 %-of-axis target on the demo
    model (see docs/noise-floor.md); ``thorough()`` asks for more.
    """

    default_questions: int = 16
    """Questions asked under every default-assistant prompt."""
    role_prompts: int = 1
    """System-prompt wordings per role."""
    role_questions: int = 4
    """Questions per (role, wording)."""

    @classmethod
    def thorough(cls) -> "Design":
        return cls(default_questions=20, role_prompts=3, role_questions=6)  # 570 conversations on the built-in set

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Conversation:
    """One system prompt + one user question; ``role`` is ``"default"`` for the assistant's own prompts."""

    role: str
    prompt_index: int
    question_index: int
    system_prompt: str
    question: str

    @property
    def is_default(self) -> bool:
        return self.role == DEFAULT_ROLE

    def messages(self) -> list[dict[str, str]]:
        """Chat messages; an empty system prompt means no system turn (the model's own default)."""
        if self.system_prompt:
            return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": self.question}]
        return [{"role": "user", "content": self.question}]


def build_conversations(persona_set: PersonaSet, design: Design = Design()) -> list[Conversation]:
    """All conversations of ``design`` over ``persona_set``: default ones first, then roles in set order."""
    n_questions = len(persona_set.questions)
    conversations = []
    for p, prompt in enumerate(persona_set.default_prompts):
        for q in range(min(design.default_questions, n_questions)):
            conversations.append(Conversation(DEFAULT_ROLE, p, q, prompt, persona_set.questions[q]))
    per_role = min(design.role_questions, n_questions)
    for r, (role, prompts) in enumerate(persona_set.roles.items()):
        for p, prompt in enumerate(prompts[: design.role_prompts]):
            start = (r * design.role_prompts + p) * per_role
            for j in range(per_role):
                q = (start + j) % n_questions
                conversations.append(Conversation(role, p, q, prompt, persona_set.questions[q]))
    return conversations


def supports_system_role(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template accepts a system turn (Gemma-2's raises on one)."""
    probe = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    try:
        rendered = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    except Exception:  # jinja2 TemplateError from raise_exception(); the type is not exported stably
        return False
    return "S" in rendered


def fold_system_prompt(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Put a system prompt at the top of the first user turn, for templates without a system role."""
    if not messages or messages[0]["role"] != "system":
        return messages
    system, first, *rest = messages
    return [{"role": "user", "content": f"{system['content']}\n\n{first['content']}"}, *rest]


def render_prompts(tokenizer: Any, conversations: list[Conversation]) -> list[str]:
    """Chat-template text of each conversation, ending where the assistant's answer starts."""
    fold = not supports_system_role(tokenizer)
    rendered = []
    for conv in conversations:
        messages = conv.messages()
        if fold:
            messages = fold_system_prompt(messages)
        rendered.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return rendered
