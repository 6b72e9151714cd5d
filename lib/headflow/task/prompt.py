"""The task: one question about the main object, answered in one word.

The target y of STUDY.md is the logit of the *first token* of the correct answer word at the
final position (teacher forced).  For a real tokenizer the answer follows the generation prompt
("ASSISTANT:"), so the first token is that of " word" in context; :func:`answer_token_ids` finds
it by tokenising prompt + answer and taking the first new token.
"""
from __future__ import annotations

from typing import Sequence

QUESTIONS = {
    "object": "What is the main object in the image? Answer in one word.",
    "color": "What color is the main object?",
    "position": "Where is the main object?",
}
QUESTION_TYPES = list(QUESTIONS)


def question_text(qtype: str) -> str:
    """The question of type ``qtype`` ("object", "color" or "position")."""
    if qtype not in QUESTIONS:
        raise ValueError(f"unknown question type {qtype!r}; choose one of {QUESTION_TYPES}")
    return QUESTIONS[qtype]


def chat_messages(question: str) -> list[dict]:
    """One user turn holding the image, then the question."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def build_prompt(processor, question: str) -> str:
    """The prompt string from the processor's own chat template, ending in the generation prompt."""
    if getattr(processor, "chat_template", None) is None:
        raise ValueError("this processor has no chat template; pass a processor saved with one "
                         "(for LLaVA-1.5: llava-hf/llava-1.5-7b-hf)")
    return processor.apply_chat_template(chat_messages(question), add_generation_prompt=True, tokenize=False)


def _tokenizer(processor_or_tokenizer):
    return getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)


def answer_token_ids(processor, words: Sequence[str], prompt: str | None = None,
                     single_token: bool = False) -> list[int]:
    """First token id of each answer word, as it would follow ``prompt``.

    Raises ValueError if a word is unknown to the tokenizer (it maps to the unknown token), if
    ``single_token`` and a word is more than one token, or if two words share their first token
    (the target would be ambiguous).
    """
    tok = _tokenizer(processor)
    prompt = prompt if prompt is not None else "ASSISTANT:"
    base = tok(prompt, add_special_tokens=False)["input_ids"]
    ids = []
    for word in words:
        if not isinstance(word, str) or not word.strip():
            raise ValueError(f"answer {word!r} is empty; give a non-empty answer word")
        full = tok(prompt + " " + word, add_special_tokens=False)["input_ids"]
        if full[:len(base)] != base or len(full) == len(base):
            raise ValueError(f"answer word {word!r} does not tokenise as a continuation of the prompt")
        first = full[len(base)]
        if single_token and len(full) - len(base) != 1:
            pieces = tok.convert_ids_to_tokens(full[len(base):])
            raise ValueError(f"answer word {word!r} is {len(pieces)} tokens {pieces}, not one; choose a "
                             "one-token word or allow first-token targets (single_token=False)")
        if tok.unk_token_id is not None and first == tok.unk_token_id:
            raise ValueError(f"answer word {word!r} is not in the tokenizer's vocabulary (it maps to "
                             f"{tok.unk_token!r}); use a word the model knows")
        ids.append(first)
    seen: dict[int, str] = {}
    for word, i in zip(words, ids):
        if i in seen:
            raise ValueError(
                f"answer words {seen[i]!r} and {word!r} share their first token "
                f"{tok.convert_ids_to_tokens(i)!r}: the target logit would be ambiguous. "
                "Use answer words whose first tokens differ.")
        seen[i] = word
    return ids
