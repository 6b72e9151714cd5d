"""The reference images of the ``dataset-mean`` baseline: class-stratified, and disjoint from every
image a chapter analyses.

The rule, one for every chapter (:func:`headflow.method.study.setup` applies it):

- The **reference pool** of an image set is, for each class of the main object, the *last*
  ``RESERVE_SHARE`` of its images in file order (at least one where the class has two or more, at
  most ``RESERVE_MAX``).  No chapter analyses an image of the pool: the analysed images are drawn
  from the rest (:func:`split`).
- A reference of ``n_reference`` images takes the same number ``m`` from every class:
  ``m = min(n_reference // c, largest pool)``, ``c`` the classes with a non-empty pool (at least 1).
  The classes whose pool holds fewer than ``m`` images are left out of the reference and named
  (:func:`choose`); where the set has more classes than ``n_reference``, one image each comes from
  the ``n_reference`` classes with the largest pools (ties in file order) and the rest are left out.
  So a reference may hold fewer images than ``n_reference``, never more; every result records its
  ``per_class`` counts.

FashionScenes' evaluation set (40 per class): a pool of 10 per class, 30 per class to analyse.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

RESERVE_SHARE = 0.25
RESERVE_MAX = 10


def pool_size(n_images: int) -> int:
    """Images of a class of ``n_images`` that the reference pool takes (the rule above)."""
    if n_images < 2:
        return 0
    return min(RESERVE_MAX, max(1, int(n_images * RESERVE_SHARE)))


def split(examples: list) -> tuple[list, dict[str, list]]:
    """``(analysable, pools)``: the examples that chapters may analyse (file order kept) and the
    reference pool per class name (file order kept).  ``examples`` carry ``class_name``."""
    by_class: dict[str, list] = {}
    for ex in examples:
        by_class.setdefault(ex.class_name, []).append(ex)
    pools = {c: exs[len(exs) - pool_size(len(exs)):] if pool_size(len(exs)) else [] for c, exs in by_class.items()}
    reserved = {id(e) for p in pools.values() for e in p}
    return [e for e in examples if id(e) not in reserved], pools


@dataclass
class Reference:
    """The chosen reference: ``examples`` (class by class), ``per_class`` counts (classes left out
    have none) and the names of the classes ``left_out`` (pool smaller than ``per_image_class``)."""

    examples: list
    per_class: dict[str, int]
    left_out: list[str]
    per_image_class: int

    def record(self) -> dict:
        """What a result records about its reference set."""
        return {"per_class": dict(self.per_class), "n": len(self.examples), "left_out": list(self.left_out),
                "rule": f"the first {self.per_image_class} of the last {RESERVE_SHARE:.0%} (at most {RESERVE_MAX}) "
                        "of each class's images in file order; no analysed image is among them"}


def choose(pools: dict[str, list], n_reference: int) -> Reference:
    """The class-stratified reference for ``n_reference`` images from ``pools`` (:func:`split`; the rule above)."""
    if n_reference < 1:
        raise ValueError(f"n_reference must be at least 1, not {n_reference}")
    filled = {c: p for c, p in pools.items() if p}
    if not filled:
        raise ValueError("no class of this image set has two or more images, so no reference pool can be set apart "
                         "from the analysed images; use baseline='image-mean' or 'zero', or a larger set")
    m = max(1, min(n_reference // len(filled), max(len(p) for p in filled.values())))
    kept = {c: p[:m] for c, p in filled.items() if len(p) >= m}
    if len(kept) * m > n_reference:  # more classes than n_reference: one each from the largest pools
        largest = sorted(kept, key=lambda c: -len(pools[c]))[:n_reference]  # stable: ties in file order
        kept = {c: p for c, p in kept.items() if c in largest}
    left_out = sorted(c for c in pools if c not in kept)
    return Reference([e for p in kept.values() for e in p], {c: len(p) for c, p in kept.items()}, left_out, m)


def table(examples: list, n_reference: int) -> tuple[dict, pd.DataFrame]:
    """What the rule gives on ``examples``: the reference's record (:meth:`Reference.record`; with a
    ``problem`` and no images where no class can spare one) and a DataFrame per class: the images,
    the reference pool, the images chapters may analyse, and the reference for ``n_reference``."""
    analysable, pools = split(examples)
    try:
        ref = choose(pools, n_reference)
        record, per_class = ref.record(), ref.per_class
    except ValueError as e:
        record, per_class = {"per_class": {}, "n": 0, "left_out": sorted(pools), "problem": str(e)}, {}
    counts = {c: sum(e.class_name == c for e in examples) for c in pools}
    return record, pd.DataFrame({"images": counts, "reference pool": {c: len(p) for c, p in pools.items()},
                                 "analysable": {c: counts[c] - len(pools[c]) for c in pools},
                                 f"reference (n_reference={n_reference})": {c: per_class.get(c, 0) for c in pools}})
