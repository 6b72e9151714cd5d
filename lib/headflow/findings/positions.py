"""Image tokens by what they show (chapter 8): where in the image the flow reads.

Everything here is **position-level ablation** (``slots`` of
:class:`headflow.mechanism.interventions.HeadAblation` and of the fast path
:meth:`headflow.mechanism.prefix_reuse.PrefixReuse.final_logits`): in the chosen heads, only the chosen
image positions have their keys/values replaced by the baseline.

Token groups (:func:`object_slots`, from the processor's output): the **main object** (its patch
overlaps the main object's mask), the **other objects** (a patch that overlaps another instance and
not the main object) and the **background** (the rest of the patch grid).

- :func:`group_effects`: per head set (every head, the top heads), ablate each group alone, all of
  them, and each group's **size-matched control**: random background positions of the main
  object's and of the other objects' size, random grid positions of the background's size (so
  "the background carries information" is told from "most of the grid does").  Logit lost
  ``y_clean - y``, aggregated by the one rule relative to the image effect ``y_clean - y_none`` and
  relative to the head set's whole-image effect (all groups ablated together); per token too.
- :func:`token_attribution`: the regression of head attribution with *image positions* as the
  units: random position masks (each position ablated with probability ``rate``, in the chosen
  heads), ``y = b0 + sum_p b_p a_p``, attribution of position p = ``-b_p``.
- :func:`object_share`: the share of positive position attribution that falls on main-object
  tokens, aggregated as a ratio of sums within a class (images with no positive attribution are left
  out), set beside the share of the patch grid that the object covers.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from headflow.mechanism import interventions as iv
from headflow.mechanism import tokens
from headflow.mechanism.prefix_reuse import PrefixReuse
from headflow.method import attribution, metrics
from headflow.method.experiment import ImageTask, as_y, target_of
from headflow.util import progress

#: The token groups of chapter 8.
GROUPS = ("main object", "other objects", "background")
# where each group's size-matched control draws its random positions
#: Where each group's size-matched control is drawn from.
CONTROL_POOL = {"main object": "background", "other objects": "background", "background": "grid"}


def object_slots(st, task: ImageTask) -> dict:
    """Over the image span's positions in order (the slots ablation indexes; separators are in no
    group): ``(n_span,)`` bool masks ``main object``, ``other objects``, ``background`` and
    ``patches`` (their union); ``object`` (= main object), ``fraction``: ``(rows, cols)`` main-object
    share per token, ``grid``: ``(rows, cols)``; from the processor's own output."""
    ex = task.example
    others = ex.others if ex.others is not None and len(ex.others) else None
    g = tokens.resolve(st.processor, st.model.config, st.question, task.inputs, mask=ex.mask,
                       n_forced=task.n_forced, others=others)
    span = iv.image_mask(st.model, task.inputs["input_ids"])[0].nonzero().flatten()
    main = torch.isin(span, g["object"]).numpy()
    other = (torch.isin(span, g.nonempty("other_objects")).numpy() & ~main) if others is not None else np.zeros_like(main)
    background = torch.isin(span, g["background"]).numpy() & ~other
    return {"main object": main, "other objects": other, "background": background, "patches": main | other | background,
            "object": main, "fraction": g.object_fraction, "grid": g.grid}


def head_keep(heads: Sequence[int] | None, n_layers: int, n_heads: int) -> torch.Tensor:
    """``(n_layers, n_heads)`` keep-mask with ``heads`` (flat indices; None = every head) ablated."""
    keep = torch.ones(n_layers * n_heads, dtype=torch.bool)
    if heads is None:
        keep[:] = False
    else:
        keep[torch.as_tensor(np.asarray(heads, dtype=np.int64))] = False
    return keep.view(n_layers, n_heads)


def group_rows(slots: dict, n_random: int, rng) -> tuple[list[str], np.ndarray]:
    """The position sets of one image for one head set: each group of :data:`GROUPS`, ``all`` (every
    patch), then ``n_random`` draws of each group's control (:data:`CONTROL_POOL`, as many positions as
    the group, fewer if the pool is smaller): names and ``(rows, n_span)`` bool."""
    names = list(GROUPS) + ["all"]
    rows = [slots[g] for g in GROUPS] + [slots["patches"]]
    for g in GROUPS:
        pool = np.flatnonzero(slots["patches"] if CONTROL_POOL[g] == "grid" else slots[CONTROL_POOL[g]])
        size = min(int(slots[g].sum()), len(pool))
        for i in range(n_random):
            r = np.zeros(len(slots["patches"]), bool)
            r[rng.choice(pool, size, replace=False)] = True
            rows.append(r)
            names.append(f"control {g} {i}")
    return names, np.stack(rows)


def group_effects(st, tasks: Sequence[ImageTask], head_sets: dict, n_random: int, seed: int,
                  batch_size: int = 64) -> dict:
    """Logit lost when each head set's image keys/values are replaced at the positions of
    :func:`group_rows` (the same random positions for every head set): ``lost[set] (n_images, rows)``,
    ``names`` (the rows), ``effects`` (image effects ``(n_images,)``), ``n_tokens (n_images, groups)``,
    ``classes``, ``keys``.  ``head_sets``: name -> flat head indices (None: every head)."""
    out = {"lost": {s: [] for s in head_sets}, "effects": [], "n_tokens": [], "n_image": [], "classes": [], "keys": []}
    rng = np.random.default_rng(seed)
    names = None
    for t in progress.bar(tasks, desc="token-group ablations"):
        slots = object_slots(st, t)
        names, rows = group_rows(slots, n_random, rng)
        keeps = [head_keep(h, st.n_layers, st.n_heads)[None].expand(len(rows), -1, -1) for h in head_sets.values()]
        n = rows.shape[1]
        keep = torch.cat(keeps + [torch.ones(1, st.n_layers, st.n_heads, dtype=torch.bool),  # clean
                                  torch.zeros(1, st.n_layers, st.n_heads, dtype=torch.bool)])  # every head, whole image
        slot_rows = torch.as_tensor(np.concatenate([rows] * len(head_sets) + [np.ones((2, n), bool)]))
        reuse = PrefixReuse(st.model, t.inputs, st.baseline)
        y = as_y(reuse.final_logits(keep, batch_size, slots=slot_rows, reduce=target_of(t, st.target)))
        for i, s in enumerate(head_sets):
            out["lost"][s].append(y[-2] - y[i * len(rows):(i + 1) * len(rows)])
        out["effects"].append(y[-2] - y[-1])
        out["n_tokens"].append([int(slots[g].sum()) for g in GROUPS])
        out["n_image"].append(n)
        out["classes"].append(t.class_name)
        out["keys"].append(t.key)
    return {"lost": {s: np.array(v) for s, v in out["lost"].items()}, "names": names,
            "effects": np.array(out["effects"]), "n_tokens": np.array(out["n_tokens"]),
            "n_image": np.array(out["n_image"]), "classes": out["classes"], "keys": out["keys"]}


def summarise_groups(g: dict, n_boot: int, seed: int, min_images: int = 2) -> dict:
    """Per head set: for each group, its control (mean of the draws) and group minus control, the
    aggregate loss relative to the image effect and relative to the set's whole-image loss (``all``),
    and per token (each image's loss divided by the group's token count), each with a 95% bootstrap
    interval; with the images and classes that enter.  A denominator that is not positive leaves its
    image out (the one rule); where that leaves no class with ``min_images`` images, the share is
    undefined (None), never divided by."""
    names = g["names"]
    out = {}
    for s, lost in g["lost"].items():
        cols, labels = [], []
        for j, grp in enumerate(GROUPS):
            ctrl = lost[:, [i for i, n in enumerate(names) if n.startswith(f"control {grp} ")]].mean(1)
            cols += [lost[:, names.index(grp)], ctrl, lost[:, names.index(grp)] - ctrl]
            labels += [grp, f"{grp} control", f"{grp} - control"]
        cols.append(lost[:, names.index("all")])
        labels.append("all")
        num = np.column_stack(cols)
        size = np.repeat(np.maximum(g["n_tokens"], 1), 3, axis=1)
        per_token = np.column_stack([num[:, :-1] / size, num[:, -1] / np.maximum(g["n_image"], 1)])
        res = {"labels": labels}
        for what, (x, denominators) in {"image": (num, g["effects"]), "all": (num, lost[:, names.index("all")]),
                                        "per_token": (per_token, g["effects"])}.items():
            try:
                agg = metrics.aggregate(x, denominators, g["classes"], min_images)
            except ValueError:  # the rule leaves every class out: a head set whose whole-image loss is <= 0
                if what != "all":
                    raise
                res[what] = {lab: {"value": None, "ci": [None, None]} for lab in labels}
                continue
            draws = metrics.bootstrap_aggregate(x, denominators, g["classes"], n_boot, seed, min_images)
            res[what] = {lab: {"value": float(agg["value"][i]), "ci": metrics.interval(draws[:, i])}
                         for i, lab in enumerate(labels)}
            if what == "image":
                res["per_class"] = {c: dict(zip(labels, v.tolist())) for c, v in agg["per_class"].items()}
                res["n_images"] = agg["n_images_used"]
                res["images_left_out"] = len(agg["images_left_out"])
                res["classes"] = sorted(agg["per_class"])
                res["images_per_class"] = agg["images_per_class"]
                res["classes_left_out"] = agg["classes_left_out"]
        out[s] = res
    return out


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


def token_group_attribution(attr: dict, slots: dict, effects: dict, classes: dict, n_boot: int, seed: int,
                            min_images: int = 2) -> dict:
    """Per token of each group: the mean position attribution over the group's tokens divided by the
    image effect, aggregated by the one rule (:func:`headflow.method.metrics.aggregate`), with 95%
    intervals: the attribution counterpart of :func:`summarise_groups`' per-token losses."""
    keys = list(attr)
    num = np.array([[attr[k][slots[k][g]].mean() if slots[k][g].any() else 0.0 for g in GROUPS] for k in keys])
    eff = np.array([effects[k] for k in keys])
    cls = [classes[k] for k in keys]
    agg = metrics.aggregate(num, eff, cls, min_images)
    draws = metrics.bootstrap_aggregate(num, eff, cls, n_boot, seed, min_images)
    return {g: {"value": float(agg["value"][i]), "ci": metrics.interval(draws[:, i])} for i, g in enumerate(GROUPS)}


# ------------------------------------------------------------------------------------ the chapter
def analyse(st, top: dict, n_random: int, token_masks: int, token_rate: float, token_heads: str, n_boot: int,
            seed: int) -> dict:
    """Group ablations in every head (the primary analysis) and within the top heads, and token
    attribution (``token_heads``: "top" or "all") on the study's images (disjoint from the images the
    top heads were fitted on)."""

    if token_heads not in ("top", "all"):
        raise ValueError(f"token_heads must be 'top' or 'all', not {token_heads!r}")
    g = group_effects(st, st.tasks, {"all heads": None, "top heads": top["heads"]}, n_random, seed)
    groups = summarise_groups(g, n_boot, seed)
    heads = top["heads"] if token_heads == "top" else None
    attr, obj, fits, grids, slots = {}, {}, {}, {}, {}
    for t in progress.bar(st.tasks, desc="token attribution"):
        ta = token_attribution(st, t, heads, token_masks, token_rate, seed * 1_000_003 + int(t.example.image_id))
        o = object_slots(st, t)
        attr[t.key], obj[t.key], grids[t.key], slots[t.key] = ta["attribution"], o["object"], o, o
        fits[t.key] = ta
    classes = {t.key: t.class_name for t in st.tasks}
    effects = {k: f["y_clean"] - f["y_none"] for k, f in fits.items()}
    share = object_share(attr, obj, classes)
    share_draws = bootstrap_share(attr, obj, classes, n_boot, seed)
    return {"groups": g, "summary": groups, "attribution": attr, "object": obj, "grids": grids, "fits": fits,
            "share": share, "share_draws": share_draws, "k": int(top["k"]), "token_heads": token_heads,
            "attribution_per_token": token_group_attribution(attr, slots, effects, classes, n_boot, seed)}


def _effects(summary: dict) -> dict:
    """The group effects of one head set under the names of ``tokens.json``."""
    im, al, pt = summary["image"], summary["all"], summary["per_token"]
    name = {"main object": "object", "other objects": "other_objects", "background": "background"}
    out = {}
    for g, n in name.items():
        out[f"{n}_effect"] = im[g]
        out[f"{n}_random_effect"] = im[f"{g} control"]
        out[f"{n}_minus_random"] = im[f"{g} - control"]
        out[f"{n}_share_of_all"] = al[g]
        out[f"{n}_per_token"] = pt[g]
        out[f"{n}_random_per_token"] = pt[f"{g} control"]
    out["all_effect"] = im["all"]
    out.update(n_images=summary["n_images"], images_left_out=summary["images_left_out"], classes=summary["classes"],
               classes_left_out=summary["classes_left_out"])
    return out


def results_json(res: dict, model: str, params: dict) -> dict:
    """``book/results/tokens.json``: the group effects in every head (``all_heads``, the primary
    analysis, also at the top level) and in the top heads (``top_heads``), the controls, per-token
    losses and attributions, and the main object's share of the positive token attribution."""
    r = [f["r"] for f in res["fits"].values()]
    every, top = _effects(res["summary"]["all heads"]), _effects(res["summary"]["top heads"])
    return {"model": model, **params, "k": res["k"], **every, "all_heads": every, "top_heads": top,
            "controls": {g: f"random {CONTROL_POOL[g]} positions of the {g}'s size" for g in GROUPS},
            "attribution_per_token": {n: res["attribution_per_token"][g] for g, n in
                                      (("main object", "object"), ("other objects", "other_objects"),
                                       ("background", "background"))},
            "object_attribution_share": {"value": res["share"]["share"],
                                         "ci": metrics.interval(res["share_draws"][:, 0])},
            "object_area_share": res["share"]["area"],
            "share_minus_area": {"value": res["share"]["share"] - res["share"]["area"],
                                 "ci": metrics.interval(res["share_draws"][:, 1])},
            "token_fit_median_r": float(np.nanmedian(r)), "token_heads": res["token_heads"],
            "mean_tokens": {g: float(m) for g, m in zip(GROUPS, res["groups"]["n_tokens"].mean(0))},
            "mean_object_tokens": float(res["groups"]["n_tokens"][:, 0].mean()),
            "n_image_tokens": int(res["groups"]["n_image"][0])}


def effects_table(res: dict):
    """Group effects per head set: relative to the image effect, to the set's whole-image effect, and
    per token (value [95% CI])."""
    fmt = lambda d: "undefined" if d["value"] is None else f"{d['value']:.3f} [{d['ci'][0]:.3f}, {d['ci'][1]:.3f}]"  # noqa: E731
    rows = []
    for s, summ in res["summary"].items():
        for lab in summ["labels"]:
            rows.append({"heads": s, "positions": lab, "/ image effect": fmt(summ["image"][lab]),
                         "/ all positions in these heads": fmt(summ["all"][lab]),
                         "per token / image effect": fmt(summ["per_token"][lab])})
    return pd.DataFrame(rows).set_index(["heads", "positions"])
