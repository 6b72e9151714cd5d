"""Answers in any vocabulary: a target for every class of any label set on any tokenizer.

The target ``y`` of STUDY.md is the logit of the correct answer's first token.  Real vocabularies
break that rule three ways: a class name is often several tokens, classes share first tokens
(LLaMA-2: ``▁car`` for car and carrot, ``▁to`` for toilet, toaster and toothbrush), and the
answer's surface form depends on the chat template (LLaVA answers ``" dog"`` after ``ASSISTANT:``,
Qwen answers ``"dog"`` right after ``assistant\\n``).  The rules here, which reduce to the old
one wherever every answer is one token with a first token of its own:

**Form.**  The answer's surface form is read off the checkpoint's own chat template: an assistant
turn holding a sentinel is rendered after the user turn, and the text between the generation
prompt and the sentinel is the *separator* (``" "`` or ``""``); the template text right after the
sentinel ends the answer (``</s>``, ``<|im_end|>``).  Case: the label as written in the label set
(``case="as-labelled"``, COCO's and FashionScenes' names are lower case), or ``"capitalized"``
for checkpoints that answer capitalised.

**Tokens.**  Each class's answer sequence is the tokens of ``prompt + separator + name`` after the
prompt's own tokens, then the *end-of-answer* token: the first token of the template's end-of-turn
text where that is a special token (``</s>``, ``<|im_end|>``), else the tokenizer's EOS (LLaVA-1.5's
template ends an answer with a plain space; LLaVA-NeXT-Mistral's with the literal text ``<\\s>``).
With the end token, no class's sequence is a prefix of another's (car = ``▁car </s>``, carrot =
``▁car rot``).

**Decision token.**  A class's *decision position* ``d`` is the first position at which its
sequence differs from every other class's; its target token is the token there, and the tokens
before it (``sequence[:d]``) are *teacher forced*: appended to the prompt, so the model's last
input position predicts the decision token.  ``y`` = the logit of the decision token at the last
position.  For an answer decided by its first token (``d = 0``), nothing is appended and ``y`` is
the first token's logit, as before.

**Logit difference.**  ``y`` minus the largest logit, at the same position, among the
*competitors*: the tokens other classes put there while agreeing with this class up to ``d``
(for ``d = 0``: every other class's first token).

**Cost.**  No extra pass: a mask's suffix pass (the text after the image) is ``d`` tokens longer
for a class decided at position ``d``, and only the last position's logits are read.

Correctness is judged on what the model would say: a short greedy decode, cut at the end of the
answer, normalised (:func:`normalise`) and matched against the class name, its plural and a short
list of synonyms (:data:`SYNONYMS`), never on one token id.
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Sequence

from headflow.task.prompt import build_prompt, chat_messages

#: How an answer is spelled: as labelled, or capitalised.
CASES = ("as-labelled", "capitalized")
SENTINEL = "HEADFLOWANSWERSENTINEL"
#: Names a model may use for a COCO or FashionScenes class (the old one-way table; the judge uses
#: headflow.task.judge.SYNONYM_GROUPS).
SYNONYMS = {
    "tv": ("television", "tv monitor", "monitor"),
    "couch": ("sofa",),
    "motorcycle": ("motorbike",),
    "airplane": ("aeroplane", "plane", "jet"),
    "cell phone": ("phone", "mobile phone", "cellphone", "smartphone"),
    "dining table": ("table",),
    "potted plant": ("plant", "houseplant"),
    "hair drier": ("hair dryer", "hairdryer"),
    "sports ball": ("ball",),
    "laptop": ("computer", "notebook"),
    "bicycle": ("bike",),
    "donut": ("doughnut",),
    "t-shirt": ("tshirt", "tee", "t shirt"),
    "boot": ("ankle boot",),
    "bag": ("handbag",),
}


@dataclass(frozen=True)
class AnswerForm:
    """How an answer follows the generation prompt in this checkpoint's chat template."""

    prompt: str  # the generation prompt the model reads (ends in the role tokens)
    separator: str  # the text between the prompt and the answer (" " or "")
    end: str  # the template text that ends the answer ("</s> ", "<|im_end|>\n", ...)


@dataclass(frozen=True)
class Answer:
    """One class's target: ``forced`` token ids appended to the prompt (teacher forced, empty for
    an answer decided by its first token), the decision token ``target_id`` and the
    ``competitor_ids`` (other classes' tokens at the same position, for the logit difference)."""

    word: str
    tokens: tuple[int, ...]  # the whole answer: the name's tokens, then the end-of-answer token
    forced: tuple[int, ...]
    target_id: int
    competitor_ids: tuple[int, ...]

    @property
    def decision(self) -> int:
        """The decision position: the number of teacher-forced tokens."""
        return len(self.forced)


def _tokenizer(processor_or_tokenizer):
    return getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)


def answer_form(processor, question: str) -> AnswerForm:
    """The answer's surface form, from an assistant turn rendered with the processor's own chat
    template (see the module's rules)."""
    prompt = build_prompt(processor, question)
    turn = [{"role": "assistant", "content": [{"type": "text", "text": SENTINEL}]}]
    full = processor.apply_chat_template(chat_messages(question) + turn, add_generation_prompt=False, tokenize=False)
    at = full.find(SENTINEL)
    if at < 0:
        raise ValueError("the chat template drops the assistant's text; cannot find where an answer goes")
    before, after = full[:at], full[at + len(SENTINEL):]
    if not before.startswith(prompt):
        stripped = prompt.rstrip()
        if prompt != stripped or not before.startswith(stripped):
            raise ValueError(f"the chat template renders an assistant turn as {before[-40:]!r}, which does not "
                             f"continue the generation prompt {prompt[-40:]!r}; cannot tell where the answer goes")
    return AnswerForm(prompt=prompt, separator=before[len(prompt):], end=after)


# Labels a capitalising checkpoint writes in capitals (``case="capitalized"``).
#: Labels a capitalising checkpoint writes in capitals.
ACRONYMS = {"tv": "TV", "tvmonitor": "TV monitor", "tv monitor": "TV monitor", "atm": "ATM", "suv": "SUV",
            "dvd": "DVD", "cd": "CD", "pc": "PC", "ufo": "UFO"}


def surface(word: str, case: str = "as-labelled") -> str:
    """The answer word as the target spells it (``case`` in :data:`CASES`).  ``capitalized``: a label
    that already holds a capital ("iPhone", "TV") is kept as written, a known acronym
    (:data:`ACRONYMS`) is written in capitals, any other gets its first letter upper-cased."""
    if case not in CASES:
        raise ValueError(f"unknown answer case {case!r}; choose one of {CASES}")
    if case != "capitalized" or word != word.lower():
        return word
    return ACRONYMS.get(word, word[:1].upper() + word[1:])


def _continuation(tok, base: list[int], text: str, word: str) -> list[int]:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if ids[:len(base)] != base or len(ids) == len(base):
        raise ValueError(f"answer {word!r} does not tokenise as a continuation of the prompt")
    return ids[len(base):]


def answer_sequences(processor, words: Sequence[str], form: AnswerForm, case: str = "as-labelled") -> list[tuple]:
    """Per word, its answer tokens: the name's tokens after the prompt, then the end-of-answer token."""
    tok = _tokenizer(processor)
    base = tok(form.prompt, add_special_tokens=False)["input_ids"]
    out = []
    for word in words:
        if not isinstance(word, str) or not word.strip():
            raise ValueError(f"answer {word!r} is empty; give a non-empty answer word")
        text = form.prompt + form.separator + surface(word, case)
        name = _continuation(tok, base, text, word)
        if tok.unk_token_id is not None and tok.unk_token_id in name:
            raise ValueError(f"answer word {word!r} is not in the tokenizer's vocabulary (it maps to "
                             f"{tok.unk_token!r}); use a word the model knows")
        whole = _continuation(tok, base, text + form.end, word) if form.end else name
        if whole[:len(name)] == name and len(whole) > len(name) and whole[len(name)] in tok.all_special_ids:
            end = whole[len(name)]
        elif tok.eos_token_id is not None:
            end = tok.eos_token_id
        else:
            raise ValueError("the chat template ends an answer with no token and the tokenizer has no EOS: "
                             "answers that are prefixes of other answers cannot be told apart")
        out.append(tuple(name) + (end,))
    return out


def answers(processor, words: Sequence[str], question: str, case: str = "as-labelled") -> list[Answer]:
    """The :class:`Answer` of every word, in order (the module's rules)."""
    words = list(words)
    if len(words) < 2:
        raise ValueError(f"an answer target needs at least two classes (the logit difference and the judge compare "
                         f"the answer with the others), got {words!r}")
    form = answer_form(processor, question)
    tok = _tokenizer(processor)
    end_text = form.end.strip()
    for w in words:
        if not isinstance(w, str):
            raise ValueError(f"answer {w!r} is not a string; give every class a name")
        bad = [t for t in ([end_text] if end_text else []) + list(tok.all_special_tokens) if t and t in w]
        if bad:
            raise ValueError(f"answer {w!r} contains {bad[0]!r}, the text that ends an answer or a special token of "
                             "this tokenizer: an answer cannot hold it; remove it from the label")
    seqs = answer_sequences(processor, words, form, case)
    for i, a in enumerate(seqs):
        for j in range(i):
            if seqs[j] == a:
                raise ValueError(f"answer words {words[j]!r} and {words[i]!r} tokenise identically "
                                 f"{tok.convert_ids_to_tokens(list(a))}: the classes cannot be told apart")
    out = []
    for i, (word, seq) in enumerate(zip(words, seqs)):
        others = [s for j, s in enumerate(seqs) if j != i]
        d = 0
        while any(len(s) > d and s[:d + 1] == seq[:d + 1] for s in others):
            d += 1
        competitors = tuple(dict.fromkeys(s[d] for s in others if len(s) > d and s[:d] == seq[:d]))
        out.append(Answer(word=word, tokens=seq, forced=seq[:d], target_id=seq[d], competitor_ids=competitors))
    return out


def normalise(text: str) -> str:
    """A decoded answer as compared: lower case, cut at a line break, outer punctuation and a leading
    article removed, white space collapsed."""
    text = text.split("\n")[0].strip().lower()
    text = text.strip(string.punctuation.replace("-", "") + " ")
    text = re.sub(r"^(a|an|the)\s+", "", text)
    return re.sub(r"\s+", " ", text)


def names_of(word: str) -> tuple[str, ...]:
    """The names that count as ``word``: itself, its synonyms, and their plurals."""
    base = (word.lower(), *SYNONYMS.get(word.lower(), ()))
    return tuple(dict.fromkeys([*base, *(b + "s" for b in base), *(b + "es" for b in base)]))


def matches(text: str, word: str) -> bool:
    """Whether a normalised answer ``text`` says ``word``: it is one of :func:`names_of` or begins with
    one followed by a space (whole words: "carrot" does not say "car")."""
    return any(text == n or text.startswith(n + " ") for n in names_of(word))
