"""What differs between LVLM families, in one table (as pyvene's per-model mappings).

Everything else in ``headflow`` is family-agnostic: the intervention acts inside attention
through one registered attention function, which every family below reaches.  What differs is
*which positions carry the image* and what the fast path may assume:

- **image span**: the positions an ablation replaces and a knockout blocks.  It is the hull of
  the image-token positions of each row (first to last image token, so separators *inside* the
  image run are covered: LLaVA-NeXT ``image_newline`` slots, Idefics3 tile and row markers,
  Mistral3 ``[IMG_BREAK]``), plus the family's boundary markers right before or after it
  (Qwen2-VL ``<|vision_start|>``/``<|vision_end|>``, Gemma 3 start/end of image).  A span keyed on
  the image token id alone lets image information flow around an ablated head through the
  separators (tests/test_families.py shows it);
- **prefix reuse**: valid when nothing before the end of the image depends on the text after it.
  Not so for PaliGemma's prefix-LM mask (image keys depend on the question) or a sliding window
  shorter than the prompt (a suffix query would not see the whole prefix);
- **image flow outside attention**: Qwen3-VL's "deepstack" adds visual features to the residual
  stream at image positions, so head ablation cannot block all image-to-text flow there.

:func:`family_of` finds the record of a model; :func:`image_span` computes the span;
:func:`prefix_reuse_problem` says why the fast path may not be used (None if it may).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Family:
    """One family's differences.  ``boundary_attrs``: config attributes holding the ids of the markers
    just outside the image run; ``tested``: covered by tiny-model tests here."""

    name: str
    boundary_attrs: tuple[str, ...] = ()
    non_patch_inside: str = ""  # what sits inside the image run that is not a patch (for the docs)
    prefix_lm: bool = False  # the text before the answer attends both ways (prefix reuse invalid)
    flow_outside_attention: str = ""  # why head ablation cannot block all flow (empty: it can)
    positions: str = "1-D"
    tested: bool = False


FAMILIES = {f.name: f for f in (
    Family("llava", tested=True),
    Family("llava_next", non_patch_inside="image_newline slots (same id as the patches) after each grid row"),
    Family("llava_onevision", non_patch_inside="image_newline slots after each grid row"),
    Family("qwen2_vl", boundary_attrs=("vision_start_token_id", "vision_end_token_id"), positions="M-RoPE",
           tested=True),
    Family("qwen2_5_vl", boundary_attrs=("vision_start_token_id", "vision_end_token_id"), positions="M-RoPE"),
    Family("qwen3_vl", boundary_attrs=("vision_start_token_id", "vision_end_token_id"), positions="M-RoPE",
           flow_outside_attention="deepstack adds visual features to the residual stream at image positions"),
    Family("internvl", non_patch_inside="none (<img> and </img> are outside the run)"),
    Family("idefics3", non_patch_inside="<fake_token_around_image>, <row_r_col_c>, <global-img> and newlines"),
    Family("smolvlm", non_patch_inside="<fake_token_around_image>, <row_r_col_c>, <global-img> and newlines"),
    Family("gemma3", boundary_attrs=("boi_token_index", "eoi_token_index")),
    Family("mistral3", non_patch_inside="[IMG_BREAK] after each row ([IMG_END] after the last)"),
    Family("paligemma", prefix_lm=True, positions="1-D from 1"),
)}


def family_of(model) -> Family:
    """The record of ``model``'s family (by ``config.model_type``); a clear error if unknown."""
    name = getattr(model.config, "model_type", None)
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}: headflow knows {sorted(FAMILIES)}; add a record to "
                         "headflow.families.FAMILIES (what its image span and masks look like)")
    return FAMILIES[name]


def image_token_id(config) -> int:
    for attr in ("image_token_id", "image_token_index"):
        v = getattr(config, attr, None)
        if isinstance(v, int):
            return v
    raise ValueError(f"{type(config).__name__} has no image_token_id: cannot find the image in the prompt")


def image_token_mask(model, input_ids: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` bool: the positions holding the image token id (patches, and same-id slots)."""
    return input_ids == image_token_id(model.config)


def image_span(model, input_ids: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` bool: every position that carries the image (see the module docstring): the hull
    of each row's image-token positions plus the family's boundary markers next to it."""
    ids = torch.as_tensor(input_ids)
    img = image_token_mask(model, ids)
    fam = family_of(model)
    bounds = [getattr(model.config, a, None) for a in fam.boundary_attrs]
    bounds = [b for b in bounds if isinstance(b, int)]
    span = torch.zeros_like(img)
    L = ids.shape[1]
    for b in range(ids.shape[0]):
        where = img[b].nonzero().flatten()
        if where.numel() == 0:
            continue
        lo, hi = int(where.min()), int(where.max())
        if lo > 0 and int(ids[b, lo - 1]) in bounds:
            lo -= 1
        if hi + 1 < L and int(ids[b, hi + 1]) in bounds:
            hi += 1
        span[b, lo:hi + 1] = True
    return span


def prefix_reuse_problem(model, n_prompt: int) -> str | None:
    """Why the prefix-reusing fast path would be wrong for this model and a prompt of ``n_prompt``
    tokens (None if it is valid)."""
    fam = family_of(model)
    if fam.prefix_lm:
        return (f"{fam.name} uses a prefix-LM mask: the image keys/values depend on the question, so the image "
                "prefix cannot be computed once and reused")
    text = model.config.get_text_config()
    window = getattr(text, "sliding_window", None)
    if isinstance(window, int) and window < n_prompt:
        layer_types = getattr(text, "layer_types", None) or []
        if not layer_types or any("sliding" in str(t) for t in layer_types):
            return (f"a sliding window of {window} tokens is shorter than the prompt ({n_prompt} tokens): a suffix "
                    "query would not see the whole prefix")
    return None


def blocking_problem(model) -> str | None:
    """Why head ablation cannot block all image-to-text flow in this family (None if it can)."""
    fam = family_of(model)
    return f"{fam.name}: {fam.flow_outside_attention}" if fam.flow_outside_attention else None
