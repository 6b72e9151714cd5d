"""How well can the main object's class be recognised at all?  A recognition ceiling for the organism.

A small convolutional classifier (not part of any organism) sees only the main object's own square,
cropped from rendered multi-object scenes (sizes, colours, backgrounds and renditions as the organism
sees them; the others' edges that overlap the square included) and resized to 32x32, and learns its
class from a fresh stream of train-split scenes.  Its per-class accuracy and confusion matrix on
held-out test-split scenes (95% Wilson intervals) say which Fashion-MNIST classes cap recognition,
before any organism trains (issue 28: at most one merge group of the classes Fashion-MNIST itself
confuses is allowed, and only from this measurement).  ``python -m headflow.organism.ceiling``
writes ``data/models/vision-tower/ceiling.json``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from headflow.images import fashionscenes as data
from headflow.mechanism.evaluate import wilson_interval
from headflow.util import progress

CROP = 32


def main_crops(specs) -> np.ndarray:
    """``(N, 3, CROP, CROP) float32`` in [0, 1]: each scene's main-object square, resized."""
    out = np.empty((len(specs), 3, CROP, CROP), np.float32)
    for i, s in enumerate(specs):
        img, _ = data.render_instances(s)
        crop = Image.fromarray(img[s.y0:s.y0 + s.size, s.x0:s.x0 + s.size]).resize((CROP, CROP), Image.BILINEAR)
        out[i] = np.asarray(crop, np.float32).transpose(2, 0, 1) / 255.0
    return out


def _specs(split, n, seed, objects, styles, rng=None):
    specs = data.sample_specs(split, n, seed, objects=objects)
    rng = rng or np.random.default_rng(seed + 1)
    return [s.__class__(**{**s.__dict__, "style": str(rng.choice(styles))}) for s in specs]


def classifier(n_classes: int) -> torch.nn.Module:
    def block(i, o):
        return [torch.nn.Conv2d(i, o, 3, padding=1), torch.nn.BatchNorm2d(o), torch.nn.ReLU()]
    return torch.nn.Sequential(*block(3, 32), *block(32, 32), torch.nn.MaxPool2d(2), *block(32, 64), *block(64, 64),
                               torch.nn.MaxPool2d(2), *block(64, 128), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Dropout(0.2), torch.nn.Linear(128, n_classes))


def measure(steps: int = 1500, batch: int = 128, n_test: int = 3000, layout: str = "main2x",
            styles=("photo",), seed: int = 0, threads: int = 2) -> dict:
    """Train the crop classifier for ``steps`` batches of fresh scenes; per-class accuracy, the
    confusion matrix (rows: true class, columns: predicted; counts) and intervals on ``n_test``
    held-out scenes."""
    previous = data.use_layout(layout)
    try:
        return _measure(steps, batch, n_test, layout, styles, seed, threads)
    finally:
        data.use_layout(previous)


def _measure(steps, batch, n_test, layout, styles, seed, threads) -> dict:
    objects = data.MULTI_OBJECTS
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    net = classifier(len(data.CLASSES))
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    n_items = len(data.load_fashion_mnist("train")[1])
    t0 = time.perf_counter()
    for step in progress.bar(range(steps), desc="recognition ceiling (crop classifier)", mininterval=5):
        for g in opt.param_groups:
            g["lr"] = 2e-3 * 0.5 * (1 + np.cos(np.pi * step / steps))
        specs = data.sample_specs("train", batch, int(rng.integers(2**31)), items=rng.integers(0, n_items, batch),
                                  objects=objects)
        specs = [s.__class__(**{**s.__dict__, "style": str(rng.choice(styles))}) for s in specs]
        x, y = torch.from_numpy(main_crops(specs)), torch.tensor([s.label for s in specs])
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    net.eval()
    test = _specs("test", n_test, 1000, objects, styles)
    with torch.inference_mode():
        xs = main_crops(test)
        pred = np.concatenate([net(torch.from_numpy(xs[s:s + 500])).argmax(-1).numpy() for s in range(0, len(xs), 500)])
    y = np.array([s.label for s in test])
    k = len(data.CLASSES)
    conf = np.zeros((k, k), np.int64)
    np.add.at(conf, (y, pred), 1)
    per_class = {}
    for c, name in enumerate(data.CLASSES):
        n, hit = int(conf[c].sum()), int(conf[c, c])
        per_class[name] = ({"accuracy": hit / n, "ci": wilson_interval(hit, n), "n": n} if n else
                           {"accuracy": None, "ci": None, "n": 0})
    hit = int(np.trace(conf))
    return {"steps": steps, "batch": batch, "n_test": n_test, "layout": layout, "objects": list(objects),
            "styles": list(styles),
            "seed": seed, "minutes": round((time.perf_counter() - t0) / 60, 2), "crop": CROP,
            "accuracy": hit / n_test, "ci": wilson_interval(hit, n_test), "per_class": per_class,
            "classes": list(data.CLASSES), "confusion": conf.tolist()}


def merged_accuracy(confusion, group: Sequence[int]) -> tuple[float, np.ndarray]:
    """Overall and per-class accuracy ``(n_merged,)`` after merging the classes ``group`` into one
    (``confusion``: counts, rows true, columns predicted)."""
    conf = np.asarray(confusion, float)
    k = len(conf)
    label = [k if i in group else i for i in range(k)]
    kept = sorted(set(label))
    index = np.array([kept.index(x) for x in label])
    merged = np.zeros((len(kept), len(kept)))
    np.add.at(merged, (index[:, None], index[None, :]), conf)
    per = np.diag(merged) / np.maximum(merged.sum(1), 1)
    return float(np.trace(merged) / merged.sum()), per


def choose_merge(confusion, classes: Sequence[str], bar: float = 0.60, min_classes: int = 7) -> dict:
    """The stated rule for issue 28's one merge group, from a confusion matrix of the main object's
    class (the recognition ceiling's or the tower probe's).  No merge where every class reaches
    ``bar``.  Otherwise, among the groups that hold every class below ``bar`` and leave at least
    ``min_classes`` classes, the smallest group after which every class reaches ``bar`` (ties: the
    higher overall accuracy); where no group lifts every class to ``bar``, the group with the highest
    worst class.  Returns ``{"group", "overall", "worst", "candidates"}`` (every candidate's numbers)."""
    conf = np.asarray(confusion, float)
    per = np.diag(conf) / np.maximum(conf.sum(1), 1)
    low = [i for i in range(len(conf)) if per[i] < bar]
    if not low:
        return {"group": [], "overall": float(np.trace(conf) / conf.sum()), "worst": float(per.min()), "candidates": []}
    others = [i for i in range(len(conf)) if i not in low]
    cands = []
    for extra in range(0, len(conf) - min_classes + 2 - len(low)):
        for add in itertools.combinations(others, extra):
            group = sorted(low + list(add))
            if len(group) < 2 or len(conf) - len(group) + 1 < min_classes:
                continue
            overall, merged = merged_accuracy(conf, group)
            cands.append({"group": [classes[i] for i in group], "size": len(group), "overall": overall,
                          "worst": float(merged.min()), "meets_bar": bool(merged.min() >= bar)})
    meeting = [c for c in cands if c["meets_bar"]]
    best = (min(meeting, key=lambda c: (c["size"], -c["overall"])) if meeting
            else max(cands, key=lambda c: (c["worst"], c["overall"])))
    return {"group": best["group"], "overall": best["overall"], "worst": best["worst"], "candidates": cands}


def merge_table(confusion, classes: Sequence[str], group: Sequence[str]):
    """Chapter 0's justification of the merge: per class, the main object's class accuracy before and after
    merging ``group`` (names of ``classes``), each with its 95% Wilson interval over the scenes of that
    class (``confusion``: counts, rows true, columns predicted).  A DataFrame, one row per class before
    the merge, the merged classes sharing the merged row's numbers."""
    conf = np.asarray(confusion, float)
    idx = [list(classes).index(g) for g in group]
    _, merged = merged_accuracy(conf, idx)
    kept = sorted({len(conf) if i in idx else i for i in range(len(conf))})
    rows = []
    for i, c in enumerate(classes):
        n = int(conf[i].sum())
        j = kept.index(len(conf) if i in idx else i)
        group_n = int(conf[idx].sum()) if i in idx else n
        lo, hi = wilson_interval(int(conf[i, i]), n)
        mlo, mhi = wilson_interval(int(round(merged[j] * group_n)), group_n)
        rows.append({"class": c, "scenes": n, "accuracy": f"{conf[i, i] / max(n, 1):.1%} [{lo:.1%}, {hi:.1%}]",
                     "merged into": "/".join(group) if i in idx else "", "after the merge":
                     f"{merged[j]:.1%} [{mlo:.1%}, {mhi:.1%}]"})
    return pd.DataFrame(rows).set_index("class")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--styles", default="photo")
    ap.add_argument("--out", type=Path, default=Path("data/models/vision-tower/ceiling.json"))
    a = ap.parse_args(argv)
    res = measure(steps=a.steps, styles=tuple(a.styles.split(",")))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({"accuracy": res["accuracy"], **{c: round(v["accuracy"], 3) for c, v in res["per_class"].items()}}))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
