"""Token groups of one prompt, resolved from the processor's own output and chat template.

Groups (STUDY.md section 2):

- ``image``: the positions of the image placeholder tokens (``config.image_token_id``);
- ``object`` / ``background``: image tokens whose patch overlaps the object mask, or not;
- ``question``: tokens of the user's question text;
- ``role``: tokens the chat template adds before the answer (the generation prompt, e.g.
  "ASSISTANT" and ":" for LLaVA-1.5);
- ``final``: the last input position, which predicts the answer (for LLaVA-1.5 it is the ":" of
  the role tokens, so the two groups overlap there);
- ``system``: every other position (BOS, "USER", ":", template separators ...).

Nothing is hard-coded: the prompt is tokenised with character offsets, aligned with the
processor's ``input_ids`` (where each image placeholder expands into a run of image tokens), and
character spans of the question and of the generation prompt are read off the chat template.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .task import build_prompt, chat_messages

GROUPS = ("image", "object", "background", "question", "role", "final", "system")


@dataclass
class TokenGroups:
    """Positions (1-D ``LongTensor`` of indices into ``input_ids``) of each group of one prompt."""

    positions: dict[str, torch.Tensor]
    tokens: list[str]  # the token strings, for display
    grid: tuple[int, int] | None = None  # (rows, cols) of image tokens, row-major
    object_fraction: np.ndarray | None = field(default=None, repr=False)  # (rows, cols) mask share per token

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
        for name in ("image", "background", "object", "question", "role", "final"):
            for p in self.positions.get(name, torch.empty(0, dtype=torch.long)).tolist():
                labels[p] = name
        return labels


def _image_token_id(model_config, processor) -> int:
    for src in (model_config, processor):
        for attr in ("image_token_id", "image_token_index"):
            v = getattr(src, attr, None)
            if isinstance(v, int):
                return v
    raise ValueError("cannot find the image token id in the model config or processor; this model family "
                     "is not supported by headflow.tokens")


def _align(unexpanded: list[int], expanded: list[int], image_id: int) -> list[list[int]]:
    """For each unexpanded token, the expanded positions it became (a run for an image placeholder)."""
    out, j = [], 0
    for tid in unexpanded:
        if j >= len(expanded):
            raise ValueError("the processor's input_ids are shorter than the tokenised prompt; cannot align")
        if tid == image_id:
            start = j
            while j < len(expanded) and expanded[j] == image_id:
                j += 1
            if j == start:
                raise ValueError("an image placeholder in the prompt has no image tokens in input_ids")
            out.append(list(range(start, j)))
        elif expanded[j] == tid:
            out.append([j])
            j += 1
        else:
            raise ValueError(f"cannot align the tokenised prompt with the processor's input_ids at position {j} "
                             f"(prompt token {tid}, input_ids token {expanded[j]})")
    if j != len(expanded):
        raise ValueError("the processor's input_ids are longer than the tokenised prompt; cannot align")
    return out


def _span_positions(offsets, mapping, start: int, end: int) -> list[int]:
    """Expanded positions of the unexpanded tokens whose character span overlaps [start, end)."""
    pos = []
    for (a, b), where in zip(offsets, mapping):
        if b > a and a < end and b > start:
            pos.extend(where)
    return pos


def image_grid(model_config, processor, inputs, n_image: int) -> tuple[int, int]:
    """``(rows, cols)`` of the image tokens, from the processor's output."""
    if "image_grid_thw" in inputs:  # Qwen2-VL family: patches merged merge_size x merge_size
        t, h, w = [int(v) for v in inputs["image_grid_thw"][0]]
        m = getattr(processor.image_processor, "merge_size", 2)
        grid = (h // m, w // m)
        if t * grid[0] * grid[1] != n_image:
            raise ValueError(f"image grid {t}x{grid} does not match {n_image} image tokens")
        return grid
    pv = inputs.get("pixel_values")
    patch = getattr(processor, "patch_size", None) or getattr(model_config.vision_config, "patch_size", None)
    if pv is None or pv.dim() != 4 or patch is None:
        raise ValueError("cannot infer the image token grid for this model family; object/background groups "
                         "are supported for LLaVA-style (pixel_values + patch_size) and Qwen2-VL-style processors")
    grid = (pv.shape[-2] // patch, pv.shape[-1] // patch)
    if grid[0] * grid[1] != n_image:
        raise ValueError(f"image of {tuple(pv.shape[-2:])} px with patch {patch} gives a {grid} grid, but the prompt "
                         f"has {n_image} image tokens (multi-crop layouts are not supported for object/background)")
    return grid


def mask_to_grid(mask: np.ndarray, processor, inputs, grid: tuple[int, int]) -> np.ndarray:
    """Share of each image token's area covered by the object, ``(rows, cols)`` floats in [0, 1].

    The mask goes through the same geometry as the image: the image processor's resize/crop for
    LLaVA-style processors, a plain resize to the patch grid for Qwen2-VL-style ones.
    """
    from PIL import Image

    m = Image.fromarray(mask.astype(np.uint8) * 255)
    if "image_grid_thw" in inputs:
        _, h, w = [int(v) for v in inputs["image_grid_thw"][0]]
        patch = processor.image_processor.patch_size
        geo = np.asarray(m.resize((w * patch, h * patch), Image.NEAREST), np.float32) / 255.0
    else:
        pv = processor.image_processor(images=[m.convert("RGB")], do_normalize=False, do_rescale=True,
                                       return_tensors="pt")["pixel_values"]
        geo = (pv[0, 0].numpy() > 0.5).astype(np.float32)
    rows, cols = grid
    ph, pw = geo.shape[0] // rows, geo.shape[1] // cols
    return geo[:rows * ph, :cols * pw].reshape(rows, ph, cols, pw).mean(axis=(1, 3))


def resolve(processor, model_config, question: str, inputs, mask: np.ndarray | None = None,
            prompt: str | None = None) -> TokenGroups:
    """Token groups of one prompt (batch of 1, unpadded).

    ``inputs``: the processor's output for ``prompt`` (built from ``question`` with the chat
    template if not given) and one image; ``mask``: the object mask ``(H, W) bool`` in the
    image's pixels, needed for ``object``/``background``.
    """
    tok = getattr(processor, "tokenizer", processor)
    prompt = prompt if prompt is not None else build_prompt(processor, question)
    ids = inputs["input_ids"]
    if ids.dim() == 2:
        if ids.shape[0] != 1:
            raise ValueError(f"resolve() takes one prompt, got a batch of {ids.shape[0]}")
        ids = ids[0]
    expanded = ids.tolist()
    image_id = _image_token_id(model_config, processor)
    enc = tok(prompt, return_offsets_mapping=True)
    mapping = _align(enc["input_ids"], expanded, image_id)
    offsets = enc["offset_mapping"]

    image = [i for i, t in enumerate(expanded) if t == image_id]
    q0 = prompt.find(question)
    if q0 < 0:
        raise ValueError(f"the question {question!r} does not occur in the prompt {prompt!r}")
    question_pos = _span_positions(offsets, mapping, q0, q0 + len(question))
    no_gen = processor.apply_chat_template(chat_messages(question), add_generation_prompt=False)
    if not prompt.startswith(no_gen) or len(no_gen) == len(prompt):
        raise ValueError("cannot find the generation prompt (role tokens): the chat template with "
                         "add_generation_prompt=True does not extend the one without it")
    role = _span_positions(offsets, mapping, len(no_gen), len(prompt))
    final = [len(expanded) - 1]
    taken = set(image) | set(question_pos) | set(role) | set(final)
    system = [i for i in range(len(expanded)) if i not in taken]
    as_t = lambda xs: torch.tensor(sorted(set(xs)), dtype=torch.long)  # noqa: E731
    positions = {"image": as_t(image), "question": as_t(question_pos), "role": as_t(role),
                 "final": as_t(final), "system": as_t(system)}
    grid, frac = None, None
    if mask is not None:
        grid = image_grid(model_config, processor, inputs, len(image))
        frac = mask_to_grid(np.asarray(mask, bool), processor, inputs, grid)
        on = frac.reshape(-1) > 0
        positions["object"] = as_t([p for p, o in zip(image, on) if o])
        positions["background"] = as_t([p for p, o in zip(image, on) if not o])
    return TokenGroups(positions=positions, tokens=tok.convert_ids_to_tokens(expanded), grid=grid,
                       object_fraction=frac)
