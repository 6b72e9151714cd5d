"""Faithfulness and completeness of a set of heads S (STUDY.md section 2).

- ``faithfulness(S) = (y(only S kept) - y_none) / (y_clean - y_none)``
- ``completeness(S) = (y_clean - y(S ablated)) / (y_clean - y_none)``

where ``y_none`` ablates all heads.  Curves run over k = ``|S|`` for the top-k heads of a ranking;
the summary is the smallest k reaching 0.8.

**Over images** (one rule for every chapter, :func:`aggregate`): within each class, the ratio of
sums over its images (sum of numerators / sum of image effects ``y_clean - y_none``); then the
mean over classes with equal weight.  Images whose image effect is not positive are left out and
counted; a class with fewer than ``min_images`` (default 2) usable images is left out and named
(one image is no estimate of a class).  Intervals: :func:`bootstrap_aggregate` resamples images
within classes and recomputes exactly this statistic.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


# The image effect y_clean - y_none below which one image's faithfulness and completeness are undefined
# (the ratio would divide by noise: 0.01 logits of effect turn 5 logits of change into 500).
#: The image effect (logits) below which one image's faithfulness and completeness are undefined.
MIN_IMAGE_EFFECT = 0.1


def _per_image(numerator, y_clean, y_none):
    effect = np.asarray(y_clean, np.float64) - np.asarray(y_none, np.float64)
    num = np.asarray(numerator, np.float64)
    ok = effect >= MIN_IMAGE_EFFECT
    out = np.where(ok, num / np.where(ok, effect, 1.0), np.nan)
    return None if out.ndim == 0 and not ok else (float(out) if out.ndim == 0 else out)


def faithfulness(y_only_kept, y_clean, y_none):
    """One image's faithfulness (array over k where ``y_only_kept`` is): undefined (None for a
    scalar, nan in an array) where the image effect ``y_clean - y_none`` is below
    :data:`MIN_IMAGE_EFFECT` (or negative).  Over images, use :func:`aggregate`."""
    return _per_image(np.asarray(y_only_kept, np.float64) - np.asarray(y_none, np.float64), y_clean, y_none)


def completeness(y_ablated, y_clean, y_none):
    """One image's completeness; undefined below :data:`MIN_IMAGE_EFFECT` as :func:`faithfulness`."""
    return _per_image(np.asarray(y_clean, np.float64) - np.asarray(y_ablated, np.float64), y_clean, y_none)


def k_grid(n_total: int, n_points: int = 16) -> list[int]:
    """Head counts from 0 to all, denser at small k."""
    ks = np.unique(np.round(np.geomspace(1, n_total, n_points - 1)).astype(int))
    return [0] + ks.tolist()


def topk_masks(order: np.ndarray, ks: Sequence[int], n_layers: int, n_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each k: ``only_kept`` keeps only the top-k heads of ``order``, ``ablated`` ablates them.
    Both ``(len(ks), n_layers, n_heads)`` bool keep-masks."""
    total = n_layers * n_heads
    only = torch.zeros(len(ks), total, dtype=torch.bool, device="cpu")
    abl = torch.ones(len(ks), total, dtype=torch.bool, device="cpu")
    for i, k in enumerate(ks):
        top = torch.as_tensor(np.asarray(order[:k], dtype=np.int64), device="cpu")
        only[i, top] = True
        abl[i, top] = False
    return only.view(-1, n_layers, n_heads), abl.view(-1, n_layers, n_heads)


def k_at(values: Sequence[float], ks: Sequence[int], threshold: float = 0.8) -> int | None:
    """Smallest k whose value reaches ``threshold`` (None if no k does)."""
    for k, v in zip(ks, values):
        if v >= threshold:
            return int(k)
    return None


# ------------------------------------------------------------------------------------ over images
def usable_groups(effects, classes, min_images: int = 2) -> tuple[dict, list[int], list[str]]:
    """``({class: image indices}, images left out (effect <= 0), classes left out (too few images))``."""
    effects = np.asarray(effects, float)
    left_images = [i for i, e in enumerate(effects) if not e > 0]
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(classes):
        if effects[i] > 0:
            groups.setdefault(c, []).append(i)
    left_classes = sorted(c for c, idx in groups.items() if len(idx) < min_images)
    groups = {c: np.array(idx) for c, idx in groups.items() if len(idx) >= min_images}
    if not groups:
        raise ValueError(f"no class has {min_images} images with a positive image effect; use more images per class "
                         "or min_images=1")
    return groups, left_images, left_classes


def aggregate(numerators, effects, classes, min_images: int = 2) -> dict:
    """The rule of this module.  ``numerators``: ``(n_images, ...)``; ``effects``: ``(n_images,)``
    image effects; ``classes``: a class name per image.  Returns ``value`` (``...``), ``per_class``
    ratios, ``images_per_class`` (the images that enter, class -> count), and what was left out."""
    num = np.asarray(numerators, float)
    eff = np.asarray(effects, float)
    groups, left_images, left_classes = usable_groups(eff, classes, min_images)
    per_class = {c: num[idx].sum(0) / eff[idx].sum() for c, idx in groups.items()}
    return {"value": np.mean(list(per_class.values()), axis=0), "per_class": per_class,
            "n_images_used": int(sum(len(i) for i in groups.values())), "images_left_out": left_images,
            "classes_left_out": left_classes, "images_per_class": {c: len(idx) for c, idx in groups.items()}}


def bootstrap_aggregate(numerators, effects, classes, n_boot: int, seed: int, min_images: int = 2) -> np.ndarray:
    """``(n_boot, ...)`` draws of :func:`aggregate`'s value, images resampled within each class."""
    num = np.asarray(numerators, float)
    eff = np.asarray(effects, float)
    groups, _, _ = usable_groups(eff, classes, min_images)
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot,) + num.shape[1:])
    for b in range(n_boot):
        ratios = []
        for idx in groups.values():
            pick = idx[rng.integers(0, len(idx), len(idx))]
            ratios.append(num[pick].sum(0) / eff[pick].sum())
        out[b] = np.mean(ratios, axis=0)
    return out


def class_mean(values, classes, n_boot: int, seed: int, min_images: int = 2, level: float = 0.95,
               none_if_empty: bool = False) -> dict | None:
    """A per-image statistic without a denominator (a fit's held-out r, say) over images by the same
    weighting as :func:`aggregate`: the mean within each class, then the mean over classes with equal
    weight; classes with fewer than ``min_images`` images left out and named.  The interval resamples
    images within classes (percentile, ``n_boot`` draws).  Returns ``value``, ``ci``, ``per_class``,
    ``images_per_class`` and ``classes_left_out`` (class -> count).  No class with ``min_images`` images
    is an error, or ``None`` with ``none_if_empty`` (a mechanics run of one image per class)."""
    v = np.asarray(values, float)
    if v.ndim != 1 or len(v) != len(classes):
        raise ValueError(f"values must be one number per image: got shape {v.shape} for {len(classes)} classes")
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(classes):
        if np.isfinite(v[i]):
            groups.setdefault(c, []).append(i)
    left = {c: len(idx) for c, idx in groups.items() if len(idx) < min_images}
    groups = {c: np.array(idx) for c, idx in groups.items() if len(idx) >= min_images}
    if not groups:
        if none_if_empty:
            return None
        raise ValueError(f"no class has {min_images} images with a finite value")
    per_class = {c: float(v[idx].mean()) for c, idx in groups.items()}
    rng = np.random.default_rng(seed)
    draws = np.array([np.mean([v[idx[rng.integers(0, len(idx), len(idx))]].mean() for idx in groups.values()])
                      for _ in range(n_boot)])
    return {"value": float(np.mean(list(per_class.values()))), "ci": interval(draws, level), "per_class": per_class,
            "images_per_class": {c: len(idx) for c, idx in groups.items()}, "classes_left_out": left}


def aggregate_ci(numerators, effects, classes, n_boot: int, seed: int, min_images: int = 2) -> dict:
    """:func:`aggregate` of a per-image numerator ``(n_images,)`` with its bootstrap interval
    (:func:`bootstrap_aggregate`): ``value``, ``ci``, ``images_per_class``, ``classes_left_out``."""
    agg = aggregate(numerators, effects, classes, min_images)
    draws = bootstrap_aggregate(numerators, effects, classes, n_boot, seed, min_images)
    groups, _, _ = usable_groups(effects, classes, min_images)
    left = {c: int(sum(1 for cc, e in zip(classes, effects) if cc == c and e > 0)) for c in agg["classes_left_out"]}
    return {"value": float(agg["value"]), "ci": interval(draws), "images_per_class": {c: len(i) for c, i in groups.items()},
            "classes_left_out": left, "images_left_out": len(agg["images_left_out"])}


def k_at_draws(curves: np.ndarray, ks: Sequence[int], threshold: float = 0.8) -> np.ndarray:
    """k at ``threshold`` of each curve ``(..., len(ks))``; ``inf`` where a curve never reaches it."""
    curves = np.asarray(curves)
    reached = curves >= threshold
    first = reached.argmax(-1)
    k = np.asarray(ks, float)[first]
    return np.where(reached.any(-1), k, np.inf)


def interval(draws: np.ndarray, level: float = 0.95) -> list:
    """Percentile interval of 1-D draws; an infinite end (never reached) is returned as None."""
    a = (1 - level) / 2
    d = np.asarray(draws, float)
    lo, hi = np.quantile(d, a, method="lower"), np.quantile(d, 1 - a, method="higher")
    return [None if not np.isfinite(lo) else float(lo), None if not np.isfinite(hi) else float(hi)]


def paired_k_difference(k_other: np.ndarray, k_ref: np.ndarray) -> np.ndarray:
    """``k_other - k_ref`` per bootstrap draw (both from the same resampled images); a draw where
    neither reaches the threshold counts as no difference."""
    a, b = np.asarray(k_other, float), np.asarray(k_ref, float)
    both_inf = np.isinf(a) & np.isinf(b)
    with np.errstate(invalid="ignore"):
        return np.where(both_inf, 0.0, a - b)
