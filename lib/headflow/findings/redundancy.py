"""Single-head ablation is not enough (chapter 2): single-head effects against the all-heads
effect, and random head sets ablated together against the sum of their single effects.

Shares divide by an image's effect ``y_clean - y_none``; images whose effect is not positive are
left out (and counted), so no share divides by a quantity near zero or negative.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from headflow.method import metrics, rankings
from headflow.method.experiment import masks_y


def clean_and_none(st) -> dict[str, tuple[float, float]]:
    """Per image: ``(y_clean, y_none)``, the target with nothing and with every head ablated."""
    ends = torch.stack([torch.ones(st.n_layers, st.n_heads, dtype=torch.bool, device="cpu"),
                        torch.zeros(st.n_layers, st.n_heads, dtype=torch.bool, device="cpu")])
    out = {}
    for t in st.tasks:
        y = masks_y(st.model, t, st.baseline, ends, st.target)
        out[t.key] = (float(y[0]), float(y[1]))
    return out


def single_and_joint(st, ends: dict | None = None) -> tuple[dict, dict]:
    """Per image: single-head effects ``(n_layers, n_heads)`` and the all-heads effect
    ``y_clean - y_none`` (from ``ends``, :func:`clean_and_none`, computed when not given)."""
    ends = clean_and_none(st) if ends is None else ends
    single = {t.key: rankings.single_head(st.model, t, st.baseline, st.target) for t in st.tasks}
    return single, {k: c - n for k, (c, n) in ends.items()}


def ends_by_class(st, ends: dict):
    """A DataFrame: per class of the main object, the images and the median ``y_clean``, ``y_none``
    and image effect (the baseline's reference set is class-stratified: :mod:`headflow.method.reference`)."""
    rows = [{"class": t.class_name, "y_clean": ends[t.key][0], "y_none": ends[t.key][1],
             "effect": ends[t.key][0] - ends[t.key][1]} for t in st.tasks]
    df = pd.DataFrame(rows)
    out = df.groupby("class")[["y_clean", "y_none", "effect"]].median()
    out.insert(0, "images", df.groupby("class").size())
    return out


def usable(joint: dict) -> tuple[list[str], list[str]]:
    """``(keys with a positive image effect, keys left out)``."""
    return [k for k, j in joint.items() if j > 0], [k for k, j in joint.items() if not j > 0]


def random_sets(st, single: dict, joint: dict, n_random_sets: int, seed: int, n_k: int = 10):
    """For random sets of k heads (``n_random_sets`` per k on a ``n_k``-point grid), per image with a
    positive effect: the logit lost ablating the set together and the sum of its single effects, both
    over the image effect.  Returns a DataFrame (image, k, sum_of_singles, joint)."""

    rng = np.random.default_rng(seed)
    H = st.n_layers * st.n_heads
    ks = [k for k in metrics.k_grid(H, n_k) if k > 0]
    keep_key = set(usable(joint)[0])
    rows = []
    for t in st.tasks:
        masks, meta = [], []
        for k in ks:
            for _ in range(n_random_sets):
                heads = rng.choice(H, k, replace=False)
                keep = torch.ones(H, dtype=torch.bool, device="cpu")
                keep[torch.as_tensor(heads, device="cpu")] = False
                masks.append(keep.view(st.n_layers, st.n_heads))
                meta.append((k, float(single[t.key].ravel()[heads].sum())))
        if t.key not in keep_key:
            continue
        clean = torch.ones(1, st.n_layers, st.n_heads, dtype=torch.bool, device="cpu")
        y = masks_y(st.model, t, st.baseline, torch.cat([torch.stack(masks), clean]), st.target)
        for (k, s), yk in zip(meta, y[:-1]):
            rows.append({"image": t.key, "k": k, "sum_of_singles": s / joint[t.key], "joint": (y[-1] - yk) / joint[t.key]})
    return pd.DataFrame(rows)


SUPERADDITIVE_FACTOR = 1.5  # chapter 2: random sets lose at least this times the sum of their single effects


def summary_json(model: str, st, single: dict, joint: dict, red, ends: dict | None = None, n_boot: int = 1000,
                 seed: int = 0, min_images: int = 2) -> dict:
    """``book/results/single_head.json``.  The verdict's statistics by the one aggregation rule
    (:func:`headflow.method.metrics.aggregate`: ratio of sums per class over the image effects, classes
    weighted equally), each with its bootstrap interval: ``max_single_share`` (the largest single head's
    effect) and, at the largest random-set size below all heads, ``joint_share``, ``singles_share`` and
    ``superadditive_margin`` = joint - ``SUPERADDITIVE_FACTOR`` x singles (a difference: no division by a
    sum of single effects that can be near zero).  Medians over images are kept for the figures' tables;
    with ``ends`` also the per-class medians of ``y_clean``, ``y_none`` and the effect."""
    keys, left = usable(joint)
    S = np.stack([single[k].ravel() for k in keys])
    J = np.array([joint[k] for k in keys])
    by_k = red.groupby("k")[["sum_of_singles", "joint"]].median()
    big = by_k.index[-2]
    sums = by_k.loc[big, "sum_of_singles"]
    cls_of = {t.key: t.class_name for t in st.tasks}
    cls = [cls_of[k] for k in keys]
    at = red[red.k == big].groupby("image")[["sum_of_singles", "joint"]].mean()  # per image, over its random sets
    shares = at.reindex(keys)
    stat = lambda num: metrics.aggregate_ci(num, J, cls, n_boot, seed, min_images)  # noqa: E731
    names = ("max_single_share", "joint_share", "singles_share", "superadditive_margin")
    try:
        rule = {"max_single_share": stat(S.max(1)), "joint_share": stat(shares.joint.to_numpy() * J),
                "singles_share": stat(shares.sum_of_singles.to_numpy() * J),
                "superadditive_margin": stat((shares.joint.to_numpy()
                                              - SUPERADDITIVE_FACTOR * shares.sum_of_singles.to_numpy()) * J)}
        counts = {"images_per_class": rule["max_single_share"]["images_per_class"],
                  "classes_left_out": rule["max_single_share"]["classes_left_out"]}
    except ValueError as e:  # no class with min_images usable images: no statistic, the verdict says so
        rule = dict.fromkeys(names)
        counts = {"images_per_class": {}, "classes_left_out": {c: cls.count(c) for c in sorted(set(cls))},
                  "no_statistic": str(e)}
    return {"model": model, "n_images": len(keys), "n_asked": st.n_images, "left_out_non_positive_effect": left,
            **rule, **counts, "n_boot": n_boot,
            "superadditive_factor": SUPERADDITIVE_FACTOR,
            "median_max_single_share": float(np.median(S.max(1) / J)),
            "median_sum_single_share": float(np.median(S.sum(1) / J)), "median_joint_effect": float(np.median(J)),
            "redundancy_by_k": by_k.reset_index().to_dict("records"), "superadditivity_k": int(big),
            # the ratio needs a positive sum of single effects; with none the sets are called super-additive (inf)
            "superadditivity": float(by_k.loc[big, "joint"] / sums) if sums > 0 else float("inf"),
            **({"by_class": ends_by_class(st, ends).to_dict("index")} if ends is not None else {})}
