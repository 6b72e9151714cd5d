"""Object and background image tokens (chapter 8): where in the image the flow reads.

Everything here is **position-level ablation** (``slots`` of
:class:`headflow.mechanism.interventions.HeadAblation` and of the fast path
:meth:`headflow.mechanism.prefix_reuse.PrefixReuse.final_logits`): in the chosen heads, only the chosen
image positions have their keys/values replaced by the baseline.

- :func:`group_effects`: within a head set, ablate the image keys/values at the object positions
  only, the background only, both, and size-matched random positions (the control); logit lost
  ``y_clean - y``, aggregated by the one rule relative to the image effect ``y_clean - y_none``.
- :func:`token_attribution`: the regression of head attribution with *image positions* as the
  units: random position masks (each position ablated with probability ``rate``, in the chosen
  heads), ``y = b0 + sum_p b_p a_p``, attribution of position p = ``-b_p``.
- :func:`object_share`: the share of positive position attribution that falls on object tokens,
  aggregated as a ratio of sums within a class (images with no positive attribution are left
  out), set beside the share of the patch grid that the object covers.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from headflow.mechanism import interventions as iv
from headflow.mechanism import tokens
from headflow.mechanism.prefix_reuse import PrefixReuse
from headflow.method import attribution, metrics
from headflow.method.experiment import ImageTask, as_y, target_of
from headflow.util import progress

GROUPS = ("object", "background", "object+background", "random")


def object_slots(st, task: ImageTask) -> dict:
    """``object``: ``(n_span,)`` bool over the image span's positions in order (a position is an
    object token if its patch overlaps the object mask; separators are neither), ``fraction``:
    ``(rows, cols)`` mask share per token, ``grid``: ``(rows, cols)``; from the processor's own output."""
    g = tokens.resolve(st.processor, st.model.config, st.question, task.inputs, mask=task.example.mask,
                       n_forced=task.n_forced)
    span = iv.image_mask(st.model, task.inputs["input_ids"])[0].nonzero().flatten()  # the slots ablation indexes
    obj = torch.isin(span, g["object"]).numpy()
    return {"object": obj, "fraction": g.object_fraction, "grid": g.grid}


def head_keep(heads: Sequence[int] | None, n_layers: int, n_heads: int) -> torch.Tensor:
    """``(n_layers, n_heads)`` keep-mask with ``heads`` (flat indices; None = every head) ablated."""
    keep = torch.ones(n_layers * n_heads, dtype=torch.bool)
    if heads is None:
        keep[:] = False
    else:
        keep[torch.as_tensor(np.asarray(heads, dtype=np.int64))] = False
    return keep.view(n_layers, n_heads)


def group_effects(st, tasks: Sequence[ImageTask], heads: Sequence[int] | None, n_random: int, seed: int,
                  batch_size: int = 64) -> dict:
    """Logit lost when the head set's image keys/values are replaced at each group's positions:
    ``lost (n_images, 3 + n_random)`` (object, background, both, random draws of the object's
    size), ``effects`` (image effects), ``n_object``, ``classes``, ``keys``."""
    keep_heads = head_keep(heads, st.n_layers, st.n_heads)
    out = {"lost": [], "effects": [], "n_object": [], "n_image": [], "classes": [], "keys": []}
    rng = np.random.default_rng(seed)
    for t in progress.bar(tasks, desc="object / background ablations"):
        obj = object_slots(st, t)["object"]
        n = len(obj)
        rows = [obj, ~obj, np.ones(n, bool)]
        for _ in range(n_random):
            r = np.zeros(n, bool)
            r[rng.choice(n, int(obj.sum()), replace=False)] = True
            rows.append(r)
        slots = torch.as_tensor(np.stack(rows + [np.ones(n, bool), np.ones(n, bool)]))
        keep = torch.cat([keep_heads[None].expand(len(rows), -1, -1),
                          torch.ones(1, st.n_layers, st.n_heads, dtype=torch.bool),  # clean
                          torch.zeros(1, st.n_layers, st.n_heads, dtype=torch.bool)])  # every head, whole image
        reuse = PrefixReuse(st.model, t.inputs, st.baseline)
        y = as_y(reuse.final_logits(keep, batch_size, slots=slots, reduce=target_of(t, st.target)))
        out["lost"].append(y[-2] - y[:-2])
        out["effects"].append(y[-2] - y[-1])
        out["n_object"].append(int(obj.sum()))
        out["n_image"].append(n)
        out["classes"].append(t.class_name)
        out["keys"].append(t.key)
    return {k: np.array(v) if k not in ("classes", "keys") else v for k, v in out.items()}


def token_attribution(st, task: ImageTask, heads: Sequence[int] | None, n_masks: int, rate: float, seed: int,
                      batch_size: int = 128) -> dict:
    """Position attribution of one image: ``attribution (n_image,)`` (logit lost when the position is
    ablated in the head set), the fit's held-out ``r``/``R2``, ``y_clean``/``y_none``."""
    reuse = PrefixReuse(st.model, task.inputs, st.baseline)
    n = reuse.n_image
    kept = attribution.sample_masks(n_masks, 1, n, rate, seed)[:, 0]  # (S, n_image): True = position kept
    keep_heads = head_keep(heads, st.n_layers, st.n_heads)
    keep = torch.cat([keep_heads[None].expand(n_masks, -1, -1), torch.ones(1, st.n_layers, st.n_heads, dtype=torch.bool),
                      torch.zeros(1, st.n_layers, st.n_heads, dtype=torch.bool)])
    slots = torch.cat([~kept, torch.ones(2, n, dtype=torch.bool)])
    y = as_y(reuse.final_logits(keep, batch_size, slots=slots, reduce=target_of(task, st.target)))
    f = attribution.fit(kept.numpy(), y[:-2])
    return {"attribution": f.attribution, "r": f.heldout_r, "R2": f.heldout_r2, "y_clean": float(y[-2]),
            "y_none": float(y[-1])}


def object_share(attr: dict, obj: dict, classes: dict, min_images: int = 2) -> dict:
    """Share of the positive position attribution on object tokens: per class the ratio of sums over
    its images (``sum object+ / sum all+``), then the mean over classes; images whose positive
    attribution sums to 0 are left out and counted.  ``area`` is the same statistic for the object
    token count (``n_object / n_image``), the share expected if attribution ignored the object."""
    by: dict[str, list] = {}
    left = 0
    for k, a in attr.items():
        pos = np.clip(a, 0, None)
        if pos.sum() <= 0:
            left += 1
            continue
        by.setdefault(classes[k], []).append((pos[obj[k]].sum(), pos.sum(), obj[k].sum(), len(obj[k])))
    used = {c: np.array(v) for c, v in by.items() if len(v) >= min_images}
    if not used:
        raise ValueError(f"no class has {min_images} images with positive position attribution")
    share = {c: v[:, 0].sum() / v[:, 1].sum() for c, v in used.items()}
    area = {c: v[:, 2].sum() / v[:, 3].sum() for c, v in used.items()}
    return {"share": float(np.mean(list(share.values()))), "area": float(np.mean(list(area.values()))),
            "per_class": share, "area_per_class": area, "images_left_out": left}


def bootstrap_share(attr: dict, obj: dict, classes: dict, n_boot: int, seed: int, min_images: int = 2) -> np.ndarray:
    """``(n_boot, 2)`` draws of (share, share - area) of :func:`object_share`, images resampled within classes."""
    rng = np.random.default_rng(seed)
    by: dict[str, list] = {}
    for k in attr:
        by.setdefault(classes[k], []).append(k)
    out = np.empty((n_boot, 2))
    for b in range(n_boot):
        pick, cls = {}, {}
        for c, ks in by.items():
            for j, i in enumerate(rng.integers(0, len(ks), len(ks))):
                pick[f"{ks[i]}#{j}"] = attr[ks[i]]
                cls[f"{ks[i]}#{j}"] = c
        res = object_share(pick, {k: obj[k.split("#")[0]] for k in pick}, cls, min_images)
        out[b] = res["share"], res["share"] - res["area"]
    return out


# ------------------------------------------------------------------------------------ the chapter
def analyse(st, top: dict, n_random: int, token_masks: int, token_rate: float, token_heads: str, n_boot: int,
            seed: int) -> dict:
    """Group ablations within the top heads and token attribution (``token_heads``: "top" or
    "all") on the study's images (disjoint from the images the top heads were fitted on)."""

    if token_heads not in ("top", "all"):
        raise ValueError(f"token_heads must be 'top' or 'all', not {token_heads!r}")
    g = group_effects(st, st.tasks, top["heads"], n_random, seed)
    num = np.column_stack([g["lost"][:, :3], g["lost"][:, 3:].mean(1)])  # object, background, both, random
    num = np.column_stack([num, num[:, 0] - num[:, 3]])  # object minus random (paired)
    agg = metrics.aggregate(num, g["effects"], g["classes"])
    draws = metrics.bootstrap_aggregate(num, g["effects"], g["classes"], n_boot, seed)
    heads = top["heads"] if token_heads == "top" else None
    attr, obj, fits, grids = {}, {}, {}, {}
    for i, t in enumerate(progress.bar(st.tasks, desc="token attribution")):
        ta = token_attribution(st, t, heads, token_masks, token_rate, seed * 1_000_003 + int(t.example.image_id))
        o = object_slots(st, t)
        attr[t.key], obj[t.key], grids[t.key] = ta["attribution"], o["object"], o
        fits[t.key] = ta
    classes = {t.key: t.class_name for t in st.tasks}
    share = object_share(attr, obj, classes)
    share_draws = bootstrap_share(attr, obj, classes, n_boot, seed)
    return {"groups": g, "aggregate": agg, "draws": draws, "names": ["object", "background", "object+background",
                                                                     "random", "object - random"],
            "attribution": attr, "object": obj, "grids": grids, "fits": fits, "share": share,
            "share_draws": share_draws, "k": int(top["k"]), "token_heads": token_heads}


def results_json(res: dict, model: str, params: dict) -> dict:
    """``book/results/tokens.json``."""

    val = lambda i: {"value": float(res["aggregate"]["value"][i]),  # noqa: E731
                     "ci": metrics.interval(res["draws"][:, i])}
    r = [f["r"] for f in res["fits"].values()]
    return {"model": model, **params, "k": res["k"], "n_images": res["aggregate"]["n_images_used"],
            "images_left_out": len(res["aggregate"]["images_left_out"]),
            "object_effect": val(0), "background_effect": val(1), "both_effect": val(2), "random_effect": val(3),
            "object_minus_random": val(4),
            "object_attribution_share": {"value": res["share"]["share"],
                                         "ci": metrics.interval(res["share_draws"][:, 0])},
            "object_area_share": res["share"]["area"],
            "share_minus_area": {"value": res["share"]["share"] - res["share"]["area"],
                                 "ci": metrics.interval(res["share_draws"][:, 1])},
            "token_fit_median_r": float(np.nanmedian(r)), "token_heads": res["token_heads"],
            "mean_object_tokens": float(np.mean(res["groups"]["n_object"])),
            "n_image_tokens": int(res["groups"]["n_image"][0])}
