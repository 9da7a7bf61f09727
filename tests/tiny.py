"""Tiny in-process chat models for fast tests: a word-level tokenizer with a ChatML template and a small
random Llama, built from a config in seconds with no files from anywhere."""

from __future__ import annotations

from pathlib import Path

import torch

from drift_suite.measure.personas import PersonaSet

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Like Gemma-2's template: a system turn raises.
NO_SYSTEM_CHATML = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}" + CHATML
)

TINY_PERSONAS = PersonaSet(
    name="tiny",
    default_prompts=("", "You are a helpful assistant.", "You are an AI assistant."),
    roles={
        "tutor": ("You are a patient tutor.", "Act as a teacher."),
        "pirate": ("You are a pirate captain.", "Act as a sea dog who loves gold."),
        "ghost": ("You are a lonely ghost.", "Act as a spirit in an old house."),
        "robot": ("You are an old robot.", "Act as a cold machine."),
    },
    questions=(
        "How do I make tea?",
        "What is the sky made of?",
        "Who are you?",
        "How can I sleep better?",
        "What should I cook tonight?",
        "Why do people like music?",
    ),
)


def tiny_tokenizer(chat_template: str = CHATML):
    """A word-level tokenizer over the tiny persona set's words, with ChatML special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    whitespace = pre_tokenizers.Whitespace()
    words: set[str] = set()
    texts = [*TINY_PERSONAS.default_prompts, *TINY_PERSONAS.questions, "system user assistant"]
    texts += [p for prompts in TINY_PERSONAS.roles.values() for p in prompts]
    for text in texts:
        words.update(word for word, _span in whitespace.pre_tokenize_str(text))
    specials = ["<unk>", "<|im_start|>", "<|im_end|>", "<pad>"]
    vocab = {token: i for i, token in enumerate(specials + sorted(words) + ["\n"] + [f"w{i}" for i in range(40)])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<|im_end|>", pad_token="<pad>", bos_token="<|im_start|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = chat_template
    return tokenizer


def tiny_model(vocab_size: int, seed: int = 0, layers: int = 4, hidden: int = 32, eos_token_id: int = 2):
    """A random Llama small enough to generate dozens of answers in a second on a CPU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=eos_token_id,
        pad_token_id=3,
        bos_token_id=1,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.pad_token_id = 3
    return model


def save_tiny_checkpoint(path: Path, seed: int = 0, chat_template: str = CHATML, **model_kwargs) -> Path:
    """A full checkpoint dir (safetensors + tokenizer) of a tiny model."""
    tokenizer = tiny_tokenizer(chat_template)
    model = tiny_model(len(tokenizer), seed=seed, eos_token_id=tokenizer.eos_token_id, **model_kwargs)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_adapter(base_dir: Path, out_dir: Path, seed: int = 1) -> Path:
    """A LoRA adapter dir with non-zero weights on the tiny checkpoint at ``base_dir`` (its recorded base)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(seed)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(out_dir)
    return out_dir
