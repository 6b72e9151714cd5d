"""Token groups of one prompt, resolved from the processor's own output and chat template.

Groups (STUDY.md section 2):

- ``image``: the positions of the image placeholder tokens (``config.image_token_id``);
- ``object`` / ``background``: image tokens whose patch overlaps the (main) object's mask, or not;
- ``other_objects``: the background tokens whose patch overlaps another instance's mask (a
  subset of ``background``, which stays every non-object image token);
- ``question``: tokens of the user's question text;
- ``role``: tokens the chat template adds before the answer (the generation prompt, e.g.
  "ASSISTANT" and ":" for LLaVA-1.5; for a template without a generation-prompt branch, such as
  LLaVA-NeXT-Mistral's ``[INST] ... [/INST]``, the template's text between the question and
  where the answer begins, ``[/INST]``);
- ``answer``: the teacher-forced tokens of an answer decided after its first token
  (:mod:`headflow.task.answers`; empty for one-token answers);
- ``final``: the last input position, which predicts the answer (for LLaVA-1.5 it is the ":" of
  the role tokens, so the two groups overlap there);
- ``system``: every other position (BOS, "USER", ":", template separators ...).

Nothing is hard-coded: the prompt is tokenised with character offsets, aligned with the
processor's ``input_ids`` (where the image placeholder expands into a block: image tokens and the
family's markers, which fall in ``system``), and
character spans of the question and of the generation prompt are read off the chat template.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch

from headflow.models import families
from headflow.task.answers import answer_form
from headflow.task.prompt import build_prompt, chat_messages

#: The token groups a prompt is split into (:class:`TokenGroups`).
GROUPS = ("image", "object", "background", "other_objects", "question", "role", "answer", "final", "system")


@dataclass
class TokenGroups:
    """Positions (1-D ``LongTensor`` of indices into ``input_ids``) of each group of one prompt."""

    positions: dict[str, torch.Tensor]
    tokens: list[str]  # the token strings, for display
    grid: tuple[int, int] | None = None  # (rows, cols) of the view covering the whole image, row-major
    object_fraction: np.ndarray | None = field(default=None, repr=False)  # (rows, cols) mask share per token of it
    patch_share: np.ndarray | None = field(default=None, repr=False)  # (n_image,) mask share per image token (NaN: no patch)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in GROUPS:
            raise KeyError(f"unknown token group {name!r}; choose one of {GROUPS}")
        if name not in self.positions:
            raise ValueError(f"token group {name!r} was not resolved for this prompt "
                             "(object/background need the object mask: pass mask= to resolve())")
        return self.positions[name]

    def nonempty(self, name: str) -> torch.Tensor:
        """Positions of ``name``, or a ValueError if the group is empty for this prompt."""
        pos = self[name]
        if pos.numel() == 0:
            raise ValueError(f"token group {name!r} is empty for this prompt; choose another group "
                             f"(sizes: { {k: int(v.numel()) for k, v in self.positions.items()} })")
        return pos

    @property
    def sizes(self) -> dict[str, int]:
        return {k: int(v.numel()) for k, v in self.positions.items()}

    def label_of(self) -> list[str]:
        """One group name per position (the most specific: final > role > question > object/background > image > system)."""
        n = len(self.tokens)
        labels = ["system"] * n
        for name in ("image", "background", "object", "question", "role", "answer", "final"):
            for p in self.positions.get(name, torch.empty(0, dtype=torch.long)).tolist():
                labels[p] = name
        return labels


def _align(unexpanded: list[int], expanded: list[int]) -> list[list[int]]:
    """For each token of the tokenised prompt, the positions of the processor's ``input_ids`` it
    became.  The processor expands the one image placeholder into a block (image tokens, and
    whatever markers the family adds around and inside it); the tokens before the block and after
    it are matched from either end, and the placeholder (if any) maps to the whole block."""
    n, m = len(unexpanded), len(expanded)
    if m < n:
        raise ValueError("the processor's input_ids are shorter than the tokenised prompt; cannot align")
    p = 0
    while p < n and unexpanded[p] == expanded[p]:
        p += 1
    s = 0
    while s < n - p and unexpanded[n - 1 - s] == expanded[m - 1 - s]:
        s += 1
    if m == n and p == n:
        raise ValueError("the processor's input_ids hold no image tokens beyond the prompt; cannot find the image")
    block = list(range(p, m - s))
    out = [[i] for i in range(p)] + [block] * (n - s - p) + [[m - s + i] for i in range(s)]
    if n - s - p > 1:
        raise ValueError(f"cannot align the tokenised prompt with the processor's input_ids: {n - s - p} prompt "
                         "tokens differ around the image, expected the image placeholder only")
    return out


def _span_positions(offsets, mapping, start: int, end: int) -> list[int]:
    """Expanded positions of the unexpanded tokens whose character span overlaps [start, end)."""
    pos = []
    for (a, b), where in zip(offsets, mapping):
        if b > a and a < end and b > start:
            pos.extend(where)
    return pos


def role_span(processor, question: str, prompt: str) -> tuple[int, int]:
    """Character span ``[start, end)`` of the role tokens in ``prompt``: what the generation prompt
    adds to the user turn; for a template with no generation-prompt branch (the prompt equals the
    user turn), the template's text after the question, where the answer begins once an assistant
    turn is rendered (:func:`headflow.task.answers.answer_form`), leading white space left out."""
    no_gen = processor.apply_chat_template(chat_messages(question), add_generation_prompt=False, tokenize=False)
    if prompt.startswith(no_gen) and len(no_gen) < len(prompt):
        return len(no_gen), len(prompt)
    answer_form(processor, question)  # the answer must continue this prompt (a clear error otherwise)
    start = prompt.rfind(question)
    if start < 0:
        raise ValueError(f"the question {question!r} does not occur in the prompt {prompt!r}")
    start += len(question)
    while start < len(prompt) and prompt[start].isspace():
        start += 1
    if start == len(prompt):
        raise ValueError("cannot find the role tokens: the chat template adds nothing between the question and "
                         "the answer, with or without a generation prompt")
    return start, len(prompt)


def resolve(processor, model, question: str, inputs, mask: np.ndarray | None = None,
            prompt: str | None = None, n_forced: int = 0, others: np.ndarray | None = None) -> TokenGroups:
    """Token groups of one prompt (batch of 1, unpadded).

    ``model``: the model or its config (which says the family); ``inputs``: the processor's output for
    ``prompt`` (built from ``question`` with the chat template if not given) and one image;
    ``mask``: the object mask ``(H, W) bool`` in the image's pixels, needed for
    ``object``/``background``: an image token is an object token if the region of the image its
    patch encodes (:func:`headflow.models.families.patch_layout`) overlaps the mask; slots that are no
    patch (LLaVA-NeXT newlines) are in neither group.  ``n_forced``: teacher-forced answer tokens
    at the end of ``input_ids`` (:class:`headflow.method.experiment.ImageTask`), the ``answer`` group.
    ``others``: the other instances' masks ``(K, H, W) bool`` (with ``mask``), for ``other_objects``.
    """

    model = model if hasattr(model, "config") else SimpleNamespace(config=model)
    tok = getattr(processor, "tokenizer", processor)
    prompt = prompt if prompt is not None else build_prompt(processor, question)
    ids = inputs["input_ids"]
    if ids.dim() == 2:
        if ids.shape[0] != 1:
            raise ValueError(f"resolve() takes one prompt, got a batch of {ids.shape[0]}")
        ids = ids[0]
    expanded = ids.tolist()
    n_prompt = len(expanded) - n_forced
    image_id = families.image_token_id(model.config)
    enc = tok(prompt, return_offsets_mapping=True)
    mapping = _align(enc["input_ids"], expanded[:n_prompt])
    offsets = enc["offset_mapping"]

    image = [i for i, t in enumerate(expanded) if t == image_id]
    q0 = prompt.find(question)
    if q0 < 0:
        raise ValueError(f"the question {question!r} does not occur in the prompt {prompt!r}")
    question_pos = _span_positions(offsets, mapping, q0, q0 + len(question))
    role = _span_positions(offsets, mapping, *role_span(processor, question, prompt))
    final = [len(expanded) - 1]
    answer = list(range(n_prompt, len(expanded)))
    taken = set(image) | set(question_pos) | set(role) | set(answer) | set(final)
    system = [i for i in range(len(expanded)) if i not in taken]
    as_t = lambda xs: torch.tensor(sorted(set(xs)), dtype=torch.long, device="cpu")  # noqa: E731
    positions = {"image": as_t(image), "question": as_t(question_pos), "role": as_t(role),
                 "answer": as_t(answer), "final": as_t(final), "system": as_t(system)}
    grid, frac, shares = None, None, None
    if mask is not None:
        mask = np.asarray(mask, bool)
        layout = families.patch_layout(model, processor, {k: v[:1] if k == "input_ids" and v.dim() == 2 else v
                                                          for k, v in inputs.items()}, mask.shape)
        shares = layout.shares(mask)
        view = layout.views[layout.overview]
        grid, frac = (view.rows, view.cols), layout.overview_grid(shares)
        positions["object"] = as_t([p for p, sh in zip(image, shares) if sh > 0])
        positions["background"] = as_t([p for p, sh in zip(image, shares) if sh == 0])
        if others is not None:
            other = layout.shares(np.asarray(others, bool).any(0)) if len(others) else np.zeros(len(image))
            positions["other_objects"] = as_t([p for p, sh, o in zip(image, shares, other) if sh == 0 and o > 0])
    return TokenGroups(positions=positions, tokens=tok.convert_ids_to_tokens(expanded), grid=grid,
                       object_fraction=frac, patch_share=shares)
