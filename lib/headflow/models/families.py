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
:func:`patch_layout` maps each image token to the patch of the original image it encodes (anyres
tiles and base view, InternVL tiles and thumbnail, Idefics3 tiles and global image, 2x2 merges,
pixel shuffle, Gemma 3's pooling; ``None`` for a slot that is no patch, such as LLaVA-NeXT's
newline); :func:`prefix_reuse_problem` says why the fast path may not be used (None if it may);
:func:`forward_inputs` names the per-position inputs a family needs besides ``input_ids``
(Gemma 3's ``token_type_ids``, Qwen's ``mm_token_type_ids``).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from transformers.image_processing_utils import select_best_resolution
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas


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
    video_processor: bool = False  # its processor carries a video processor (needs torchvision)
    layout: str = ""  # name of its patch-layout function in _LAYOUTS ("" = none known)
    tested: bool = False


QWEN_MARKERS = ("vision_start_token_id", "vision_end_token_id")
FAMILIES = {f.name: f for f in (
    Family("llava", layout="grid", tested=True),
    Family("llava_next", non_patch_inside="image_newline slots (same id as the patches) after each grid row",
           layout="anyres", tested=True),
    Family("llava_onevision", non_patch_inside="image_newline slots after each grid row"),
    Family("qwen2_vl", boundary_attrs=QWEN_MARKERS, positions="M-RoPE", video_processor=True, layout="merged",
           tested=True),
    Family("qwen2_5_vl", boundary_attrs=QWEN_MARKERS, positions="M-RoPE", video_processor=True, layout="merged",
           tested=True),
    Family("qwen3_vl", boundary_attrs=QWEN_MARKERS, positions="M-RoPE", video_processor=True,
           flow_outside_attention="deepstack adds visual features to the residual stream at image positions"),
    Family("internvl", non_patch_inside="none (<img> and </img> are just outside the run)", video_processor=True,
           layout="tiles", tested=True),
    Family("idefics3", non_patch_inside="<fake_token_around_image>, <row_r_col_c>, <global-img> and newlines",
           layout="split", tested=True),
    Family("smolvlm", non_patch_inside="<fake_token_around_image>, <row_r_col_c>, <global-img> and newlines",
           layout="split"),
    Family("gemma3", boundary_attrs=("boi_token_index", "eoi_token_index"), layout="pooled", tested=True),
    Family("mistral3", non_patch_inside="[IMG_BREAK] after each row ([IMG_END] after the last)"),
    Family("paligemma", prefix_lm=True, positions="1-D from 1"),
)}


def family_of(model) -> Family:
    """The record of ``model``'s family (by ``config.model_type``); a clear error if unknown."""
    name = getattr(model.config, "model_type", None)
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}: headflow knows {sorted(FAMILIES)}; add a record to "
                         "headflow.models.families.FAMILIES (what its image span and masks look like)")
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
    ids = input_ids if torch.is_tensor(input_ids) else torch.as_tensor(input_ids, device="cpu")
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


# ------------------------------------------------------------------------------------ patch layout
@dataclass
class View:
    """One view of the image the tokens encode: ``rows x cols`` tokens over ``box``, the view's
    region of the original image as fractions ``(top, bottom, left, right)``."""

    name: str
    rows: int
    cols: int
    box: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0)


@dataclass
class PatchLayout:
    """Where each image token of one prompt comes from: ``slots[i]`` is ``(view, row, col)`` for the
    i-th image-token position (in order), or None for a slot that is no patch (a newline)."""

    views: list[View]
    slots: list[tuple[int, int, int] | None]
    overview: int = 0  # the view that covers the whole image (for display)

    def boxes(self) -> np.ndarray:
        """``(n_slots, 4)`` float: each slot's region of the original image as fractions
        (top, bottom, left, right); NaN rows for slots that are no patch."""
        out = np.full((len(self.slots), 4), np.nan)
        for i, s in enumerate(self.slots):
            if s is None:
                continue
            v = self.views[s[0]]
            t, b, l, r = v.box
            h, w = (b - t) / v.rows, (r - l) / v.cols
            out[i] = (t + s[1] * h, t + (s[1] + 1) * h, l + s[2] * w, l + (s[2] + 1) * w)
        return out

    def shares(self, mask: np.ndarray) -> np.ndarray:
        """``(n_slots,)`` share of each slot's region covered by ``mask`` (``(H, W)`` bool, the
        original image's pixels; pixels whose centre falls in the region count); NaN for non-patches."""
        mask = np.asarray(mask, bool)
        H, W = mask.shape
        out = np.full(len(self.slots), np.nan)
        for i, (t, b, l, r) in enumerate(self.boxes()):
            if np.isnan(t):
                continue
            y0, y1 = int(math.ceil(t * H - 0.5)), int(math.ceil(b * H - 0.5))
            x0, x1 = int(math.ceil(l * W - 0.5)), int(math.ceil(r * W - 0.5))
            y1, x1 = max(y1, y0 + 1), max(x1, x0 + 1)  # a region smaller than a pixel reads its pixel
            out[i] = mask[min(y0, H - 1):min(y1, H), min(x0, W - 1):min(x1, W)].mean()
        return out

    def overview_grid(self, values: np.ndarray) -> np.ndarray:
        """``values (n_slots,)`` of the overview view's slots as its ``(rows, cols)`` grid."""
        v = self.views[self.overview]
        grid = np.full((v.rows, v.cols), np.nan)
        for val, s in zip(values, self.slots):
            if s is not None and s[0] == self.overview:
                grid[s[1], s[2]] = val
        return grid


def _grid_slots(view: int, rows: int, cols: int, newline: bool = False) -> list:
    out = []
    for r in range(rows):
        out += [(view, r, c) for c in range(cols)] + ([None] if newline else [])
    return out


def _size(d, *keys):
    d = dict(d) if d is not None else {}
    return [d.get(k) for k in keys]


def _crop_box(ip, H: int, W: int) -> tuple[float, float, float, float]:
    """The region of an ``H x W`` image that a resize (shortest edge or fixed size) and a centre
    crop keep, as fractions (LLaVA-1.5's CLIP processing)."""
    rh, rw = float(H), float(W)
    short, height, width = _size(ip.size, "shortest_edge", "height", "width")
    if getattr(ip, "do_resize", True):
        if short:
            s = short / min(H, W)
            rh, rw = H * s, W * s
        elif height and width:
            rh, rw = float(height), float(width)
    ch, cw = _size(getattr(ip, "crop_size", None), "height", "width")
    if not getattr(ip, "do_center_crop", False) or not ch:
        return (0.0, 1.0, 0.0, 1.0)
    top, left = max(rh - ch, 0) / 2, max(rw - cw, 0) / 2
    return (top / rh, min(top + ch, rh) / rh, left / rw, min(left + cw, rw) / rw)


def visible_region(model, processor, height: int, width: int) -> tuple[float, float, float, float]:
    """The part of a ``height x width`` image the model sees, as fractions ``(top, bottom, left,
    right)``: LLaVA-1.5's processor resizes the shortest edge and centre-crops a square (a 640 x 480
    image loses 80 px on each side); the other families' processors keep the whole image."""
    if family_of(model).layout == "grid":
        return _crop_box(processor.image_processor, height, width)
    return (0.0, 1.0, 0.0, 1.0)


def _layout_grid(model, processor, inputs, hw, n):
    """LLaVA-1.5: one grid over the resized, centre-cropped image."""
    pv = inputs["pixel_values"]
    patch = getattr(processor, "patch_size", None) or model.config.vision_config.patch_size
    rows, cols = pv.shape[-2] // patch, pv.shape[-1] // patch
    return PatchLayout([View("image", rows, cols, _crop_box(processor.image_processor, *hw))],
                       _grid_slots(0, rows, cols))


def _layout_merged(model, processor, inputs, hw, n):
    """Qwen2-VL / Qwen2.5-VL: one grid of merged 2x2 patches over the whole (resized) image."""
    t, h, w = [int(v) for v in inputs["image_grid_thw"][0]]
    m = int(getattr(processor.image_processor, "merge_size", 2))
    return PatchLayout([View("image", h // m, w // m)], _grid_slots(0, h // m, w // m) * t)


def _layout_pooled(model, processor, inputs, hw, n):
    """Gemma 3: a k x k average pool of the patch grid of the image squashed to a square."""
    k = math.isqrt(int(model.config.mm_tokens_per_image))
    return PatchLayout([View("image", k, k)], _grid_slots(0, k, k))


def _layout_anyres(model, processor, inputs, hw, n):
    """LLaVA-NeXT: the base view (the image squashed to one tile) first, then the high-resolution
    grid, unpadded to the image, row-major with a newline slot after each row."""

    ip = processor.image_processor
    tile = inputs["pixel_values"].shape[-1]
    patch = processor.patch_size
    p = tile // patch
    H, W = hw
    bh, bw = select_best_resolution([H, W], ip.image_grid_pinpoints)
    unpadded, rows = processor._get_unpadded_features(H, W, p, p, bh // tile, bw // tile)
    cols = unpadded // rows
    return PatchLayout([View("base", p, p), View("grid", rows, cols)],
                       _grid_slots(0, p, p) + _grid_slots(1, rows, cols, newline=True))


def _image_setting(processor, name: str, default):
    """What the processor will use for image setting ``name``: its call-time defaults (a processor
    class may override the image processor's own attribute, as InternVL's sets ``crop_to_patches``),
    else the image processor's attribute."""
    merged = processor._merge_kwargs()["images_kwargs"] if hasattr(processor, "_merge_kwargs") else {}
    return merged.get(name, getattr(processor.image_processor, name, default))


def _layout_tiles(model, processor, inputs, hw, n):
    """InternVL: tiles of the image resized to the best tile canvas, row-major, each an s x s grid
    after pixel shuffle, then a thumbnail (the whole image) when there are several tiles."""

    ip = processor.image_processor
    s = math.isqrt(int(processor.image_seq_length))
    th, tw = _size(ip.size, "height", "width")
    cols, rows = (1, 1)
    if _image_setting(processor, "crop_to_patches", False):
        cols, rows = get_optimal_tiled_canvas(tuple(hw), (th, tw), _image_setting(processor, "min_patches", 1),
                                              _image_setting(processor, "max_patches", 12))
    views = [View(f"tile {r},{c}", s, s, (r / rows, (r + 1) / rows, c / cols, (c + 1) / cols))
             for r in range(rows) for c in range(cols)]
    if len(views) > 1 and getattr(ip, "use_thumbnail", True):
        views.append(View("thumbnail", s, s))
    slots = [sl for i in range(len(views)) for sl in _grid_slots(i, s, s)]
    return PatchLayout(views, slots, overview=len(views) - 1)


def _layout_split(model, processor, inputs, hw, n):
    """Idefics3 / SmolVLM: tiles ``<row_r_col_c>`` (read from the prompt's own markers), each an
    s x s grid after pixel shuffle, then the global image (the whole image)."""
    s = math.isqrt(int(processor.image_seq_len))
    toks = processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0].tolist())
    cells = [tuple(int(x) for x in m.groups()) for t in toks if (m := re.fullmatch(r"<row_(\d+)_col_(\d+)>", t))]
    rows, cols = (max(r for r, _ in cells), max(c for _, c in cells)) if cells else (0, 0)
    views = [View(f"tile {r},{c}", s, s, ((r - 1) / rows, r / rows, (c - 1) / cols, c / cols)) for r, c in cells]
    views.append(View("global", s, s))
    slots = [sl for i in range(len(views)) for sl in _grid_slots(i, s, s)]
    return PatchLayout(views, slots, overview=len(views) - 1)


_LAYOUTS: dict[str, Callable] = {"grid": _layout_grid, "merged": _layout_merged, "pooled": _layout_pooled,
                                 "anyres": _layout_anyres, "tiles": _layout_tiles, "split": _layout_split}


def patch_layout(model, processor, inputs, image_hw: tuple[int, int]) -> PatchLayout:
    """The :class:`PatchLayout` of one prompt (batch of 1) with one image of ``image_hw`` (height,
    width) pixels, from the processor's output and settings; a clear error if the family has no
    known layout or the layout does not account for every image token."""
    fam = family_of(model)
    if not fam.layout:
        raise ValueError(f"{fam.name}: no patch layout is known, so object/background token groups cannot be "
                         "formed; the other groups and every intervention work without it")
    n = int(image_token_mask(model, inputs["input_ids"][:1]).sum())
    layout = _LAYOUTS[fam.layout](model, processor, inputs, tuple(int(x) for x in image_hw), n)
    if len(layout.slots) != n:
        raise ValueError(f"{fam.name}: the patch layout has {len(layout.slots)} slots but the prompt has {n} image "
                         "tokens; the processor's settings differ from what headflow.models.families expects")
    return layout


def forward_inputs(model, inputs: dict, stop: int) -> dict:
    """The per-position inputs besides ``input_ids``/``attention_mask`` cut to the first ``stop``
    positions (Gemma 3's ``token_type_ids``, which make attention within the image bidirectional;
    Qwen's ``mm_token_type_ids``)."""
    L = inputs["input_ids"].shape[1]
    return {k: v[:, :stop] for k, v in inputs.items()
            if k in ("token_type_ids", "mm_token_type_ids") and torch.is_tensor(v) and v.shape[-1] == L}


def prefix_reuse_problem(model, n_prompt: int) -> str | None:
    """Why the prefix-reusing fast path would be wrong for this model and a prompt of ``n_prompt``
    tokens (None if it is valid)."""
    fam = family_of(model)
    if fam.prefix_lm:
        return (f"{fam.name} uses a prefix-LM mask: the image keys/values depend on the question, so the image "
                "prefix cannot be computed once and reused")
    text = model.config.get_text_config()
    if getattr(text, "attn_logit_softcapping", None):
        return "attention logits are soft-capped, which the fast path's own softmax does not apply"
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


def image_only_processor(cls):
    """``cls`` (a processor class with a video processor: Qwen2-VL, Qwen2.5-VL, InternVL) made to
    work without one: the stock video processors need torchvision, which an image-only study does
    not.  Saves and loads with ``save_pretrained``/``from_pretrained`` like ``cls``."""
    class ImageOnly(cls):
        @classmethod
        def get_attributes(cls_):
            return [a for a in super().get_attributes() if a != "video_processor"]

        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    ImageOnly.__name__ = ImageOnly.__qualname__ = cls.__name__
    return ImageOnly
