"""Rankings found on some images, judged on others (chapter 4's causal test).

Each method scores every head on every image (:func:`method_scores`, its cost counted by
:mod:`headflow.method.cost`).  Images are split into ``n_folds`` folds, stratified by class; for each
fold a **global** ranking is built from the *other* folds' images (class-equal mean of the
scores, logit-valued scores first divided by the image effect ``y_clean - y_none``; images with a
non-positive effect are not used to fit) and a **per-class** ranking from the other folds'
images of the same class.  Each ranking is then judged on the fold's images: faithfulness and
completeness at every k (:func:`judge`).  Every image is judged exactly once, by rankings that
never saw it.  The per-image *in-sample* view (each image ranked by its own scores) is kept as a
secondary, labelled result.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from headflow.method import attribution, cost, metrics, rankings, stats
from headflow.method.experiment import masks_y
from headflow.method.study import fits
from headflow.util import progress

METHODS = ("attribution", "single_head", "attention_weight", "attention_weight_text", "attribution_patching")
LOGIT_VALUED = {"attribution", "single_head", "attribution_patching"}  # divided by the image effect


def folds(keys: Sequence[str], classes: Sequence[str], n_folds: int, seed: int) -> list[list[str]]:
    """``n_folds`` disjoint lists of image keys, each class dealt round-robin after a seeded shuffle."""
    if n_folds < 2:
        raise ValueError("cross-fitting needs at least 2 folds")
    rng = np.random.default_rng(seed)
    out: list[list[str]] = [[] for _ in range(n_folds)]
    start = 0
    for c in sorted(set(classes)):
        members = [k for k, cc in zip(keys, classes) if cc == c]
        for j, k in enumerate(rng.permutation(members)):
            out[(start + j) % n_folds].append(str(k))
        start += len(members)
    return out


def method_scores(st, fits: dict, runs: dict, n_masks: int, batch_size: int = 128) -> tuple[dict, dict]:
    """Per method and image, head scores ``(n_layers, n_heads)`` (higher = more important), and per
    method the passes one image costs (mean over images; attribution counted on one image by
    rerunning its ``n_masks + 2`` masks, since its runs come from the run store)."""
    scores = {m: {} for m in METHODS}
    spent = {m: [] for m in METHODS}
    for t in progress.bar(st.tasks, desc="baseline rankings"):
        scores["attribution"][t.key] = fits[t.key].attribution.reshape(st.n_layers, st.n_heads)
        for m, fn in (("single_head", lambda: rankings.single_head(st.model, t, st.baseline, st.target, batch_size)),
                      ("attention_weight", lambda: rankings.attention_weight(st.model, t, "final")),
                      ("attention_weight_text", lambda: rankings.attention_weight(st.model, t, "text")),
                      ("attribution_patching", lambda: rankings.attribution_patching(st.model, t, st.baseline, st.target))):
            with cost.count(st.model) as n:
                scores[m][t.key] = fn()
            spent[m].append(n.as_dict())
    t = st.tasks[0]
    keep = attribution.sample_masks(n_masks + 2, st.n_layers, st.n_heads, 0.5, 0)
    with cost.count(st.model) as n:
        masks_y(st.model, t, st.baseline, keep, st.target, batch_size)
    spent["attribution"] = [n.as_dict()]
    mean_cost = {m: {k: float(np.mean([d[k] for d in v])) for k in v[0]} for m, v in spent.items()}
    return scores, mean_cost


def build_ranking(scores: dict, runs: dict, classes: dict, keys: Sequence[str], method: str) -> np.ndarray:
    """Head order (flat indices, best first) from the class-equal mean score over ``keys``."""
    used = {}
    for k in keys:
        effect = float(runs[k]["y_clean"]) - float(runs[k]["y_none"])
        if effect > 0:
            s = np.asarray(scores[k], float)
            used[k] = s / effect if method in LOGIT_VALUED else s
    if not used:
        raise ValueError("no fitting image with a positive image effect to build a ranking from")
    return attribution.ranking(stats.class_equal_mean(used, classes).ravel())


def judge(st, task, orders: dict, ks_of: dict, batch_size: int = 128) -> dict:
    """y under the top-k heads of each ranking kept alone and ablated: ``{name: (2, len(ks))}``
    (row 0: only top-k kept, row 1: top-k ablated)."""
    y = judge_split(st, task, orders, ks_of, ks_of, batch_size)
    return {n: np.stack([y[n][0], y[n][1]]) for n in orders}


def judge_split(st, task, orders: dict, ks_kept: dict, ks_ablated: dict, batch_size: int = 128) -> dict:
    """y with only the top-k heads kept at ``ks_kept[name]`` and with the top-k ablated at
    ``ks_ablated[name]``, in one batched call: ``{name: (y_kept (len(ks_kept[name]),),
    y_ablated (len(ks_ablated[name]),))}``.  A name with no k at all costs nothing.  Each distinct
    mask is judged once (rankings that agree on a top-k set, all heads and none, give the same mask;
    a mask's y is the same whichever masks share its batch, up to float rounding)."""
    masks, sizes, names = [], [], [n for n in orders if len(ks_kept.get(n, ())) + len(ks_ablated.get(n, ()))]
    for name in names:
        kk, ka = list(ks_kept.get(name, ())), list(ks_ablated.get(name, ()))
        only, _ = metrics.topk_masks(orders[name], kk, st.n_layers, st.n_heads)
        _, abl = metrics.topk_masks(orders[name], ka, st.n_layers, st.n_heads)
        masks += [only, abl]
        sizes.append((len(kk), len(ka)))
    empty = np.zeros(0)
    if not masks:
        return {n: (empty, empty) for n in orders}
    every = torch.cat(masks)
    distinct, inverse = torch.unique(every.reshape(len(every), -1), dim=0, return_inverse=True)
    y = masks_y(st.model, task, st.baseline, distinct.reshape(-1, *every.shape[1:]), st.target,
                batch_size)[inverse.numpy()]
    out, at = {n: (empty, empty) for n in orders}, 0
    for name, (a, b) in zip(names, sizes):
        out[name] = (y[at:at + a], y[at + a:at + a + b])
        at += a + b
    return out


# ------------------------------------------------------------------------------------ adaptive k
#: The adaptive design's rule, as the chapter states it (why no earlier crossing can be missed).
ADAPTIVE_RULE = (
    "Adaptive k (identical to evaluating every k): each ranking is first judged on a log-spaced grid of k "
    "(metrics.k_grid, always holding 0 and all heads) on every image. For each statistic the chapter reads (a "
    "ranking's aggregated curve, and each of its bootstrap replicates, drawn exactly as the summary draws them), "
    "the first grid k whose value reaches the threshold is an upper bound on that curve's first crossing: the "
    "curve reaches the threshold there, so its first crossing is at that k or before. Every k from 0 to the "
    "largest such bound is then judged on every image. So every k at or below any curve's first crossing is "
    "judged, and no earlier crossing can be missed however the curve wiggles between grid points; above the "
    "bound only grid points are judged, which no k at the threshold and no interval reads (the figures draw "
    "the curves through the judged k). A curve that reaches the threshold at no grid point bounds at all heads "
    "(every k is judged). Faithfulness (top-k kept) and completeness (top-k ablated) are bounded separately.")


def first_grid_crossings(values: np.ndarray, ks: Sequence[int], grid: Sequence[int], threshold: float) -> np.ndarray:
    """For curves ``values (..., len(ks))`` judged (finite) at least on ``grid``, the first grid k reaching
    ``threshold``; the largest k of ``ks`` where no grid point reaches it."""
    col = [list(ks).index(k) for k in grid]
    sub = np.asarray(values, float)[..., col]
    reached = sub >= threshold
    first = np.asarray(grid, float)[reached.argmax(-1)]
    return np.where(reached.any(-1), first, float(max(ks)))


def crossing_bound(numerators: np.ndarray, effects, classes, ks: Sequence[int], grid: Sequence[int],
                   threshold: float, min_images: int, n_boot: int = 0, seed: int = 0) -> int:
    """The largest k any read curve can first reach ``threshold`` at (:data:`ADAPTIVE_RULE`):
    ``numerators (n_images, len(ks))``, finite at ``grid``; the aggregate (metrics.aggregate) and, with
    ``n_boot``, the ``n_boot`` replicates of metrics.bootstrap_aggregate at ``seed``."""
    col = [list(ks).index(k) for k in grid]
    num = np.asarray(numerators, float)[:, col]
    curves = [metrics.aggregate(num, effects, classes, min_images)["value"][None]]
    if n_boot:
        curves.append(metrics.bootstrap_aggregate(num, effects, classes, n_boot, seed, min_images))
    return int(first_grid_crossings(np.concatenate(curves), grid, grid, threshold).max())


def heldout_orders(st, scores: dict, runs: dict, n_folds: int, seed: int, n_random: int) -> tuple[dict, list]:
    """Per image key, the rankings that judge it (``{name: order}``: every method's global ranking and
    per-class ranking fitted on the other folds, its in-sample ranking, ``n_random`` random ones), and the folds."""
    keys = [t.key for t in st.tasks]
    classes = {t.key: t.class_name for t in st.tasks}
    fold_list = folds(keys, [classes[k] for k in keys], n_folds, seed)
    orders_of = {}
    for held in fold_list:
        fit_keys = [k for k in keys if k not in set(held)]
        glob = {m: build_ranking(scores[m], runs, classes, fit_keys, m) for m in METHODS}
        for k in held:
            c = classes[k]
            same = [j for j in fit_keys if classes[j] == c
                    and float(runs[j]["y_clean"]) - float(runs[j]["y_none"]) > 0]
            orders = {f"{m}": glob[m] for m in METHODS}
            if same:
                orders.update({f"{m}/class": build_ranking(scores[m], runs, classes, same, m)
                               for m in ("attribution", "single_head", "attribution_patching")})
            orders.update({f"{m}/in-sample": attribution.ranking(np.asarray(scores[m][k]).ravel()) for m in METHODS})
            for r in range(n_random):
                orders[f"random/{r}"] = attribution.ranking(rankings.random_scores(st.n_layers, st.n_heads,
                                                                                    seed * 1000 + r).ravel())
            orders_of[k] = orders
    return orders_of, fold_list


REPEAT_SEED = 7919  # the seed step between repeated fold splits


def _members(name: str, names) -> list[str]:
    """``name`` and its repeats on other fold splits (``name@1``, ``name@2``, ...)."""
    return [name] + [n for n in names if n.startswith(name + "@")]


def _mean_over(judged: dict, members: list[str]) -> np.ndarray:
    """The mean of the members' numerators per image and k; nan where an image was not judged by every one
    (a per-class ranking exists on one split only if the class had fitting images there)."""
    return np.mean([judged[n] for n in members], axis=0)


def run(st, scores: dict, runs: dict, n_folds: int, seed: int, n_random: int, n_k_random: int,
        batch_size: int = 128, design: str = "every", n_boot: int = 0, min_images: int = 2,
        threshold: float = 0.8, n_grid: int = 16, n_repeats: int = 1, k_max: int | None = None) -> dict:
    """Cross-fitted curves of every method (global and per class), random rankings, and the
    in-sample per-image view.  Returns per ranking name the numerator arrays
    ``faithfulness``/``completeness`` ``(n_images, len(ks))`` (image order = ``keys``), with
    ``ks``, ``effects``, ``classes``, ``keys``, the folds and ``design`` (what was judged).

    ``design="every"`` judges every k (random rankings: every k, or ``metrics.k_grid(H, n_k_random)``);
    ``design="adaptive"`` judges a grid, then every k up to the bound of :data:`ADAPTIVE_RULE` (pass the
    ``n_boot``, ``min_images`` and ``threshold`` that :func:`summarise` will use: its k, intervals and
    p-values are then identical to the every-k design's); unjudged entries are nan.

    ``n_repeats > 1`` refits the rankings that depend on the folds (global and per class) on
    ``n_repeats`` fold splits (seeds ``seed``, ``seed + REPEAT_SEED``, ...): each image is judged by
    each split's rankings, none of which saw it, and its numerator is the mean over the splits, so the
    bootstrap over images carries the variation of refitting.  In-sample and random rankings do not
    depend on the split and are judged once.

    ``k_max`` (adaptive design only) caps the dense part: every k up to ``min(bound, k_max)`` is judged, so a
    first crossing at or below ``k_max`` is exact and a later one is *censored* (reported as "more than
    ``k_max``" by :func:`summarise`, never as a grid value); the passes then stay below
    :func:`headflow.scale.passes.judge_adaptive`'s bound whatever the data."""
    if design not in ("adaptive", "every"):
        raise ValueError(f"design must be 'adaptive' or 'every', not {design!r}")
    H = st.n_layers * st.n_heads
    keys = [t.key for t in st.tasks]
    classes = {t.key: t.class_name for t in st.tasks}
    all_k = list(range(H + 1))
    k_random = all_k if n_k_random <= 0 else metrics.k_grid(H, n_k_random)  # 0: every k (the chapters)
    if n_repeats < 1:
        raise ValueError(f"n_repeats must be at least 1, not {n_repeats}")
    if k_max is not None and (design != "adaptive" or not 1 <= k_max <= H):
        raise ValueError(f"k_max={k_max} needs design='adaptive' and 1 <= k_max <= {H} (all heads)")
    orders_of, fold_list = heldout_orders(st, scores, runs, n_folds, seed, n_random)
    repeat_folds = [fold_list]
    for r in range(1, n_repeats):  # the fold-dependent rankings of another split, named "<name>@<r>"
        more, folds_r = heldout_orders(st, scores, runs, n_folds, seed + r * REPEAT_SEED, 0)
        repeat_folds.append(folds_r)
        for k, orders in more.items():
            orders_of[k].update({f"{n}@{r}": o for n, o in orders.items() if not n.endswith("/in-sample")})
    task_of = {t.key: t for t in st.tasks}
    names = sorted({n for v in orders_of.values() for n in v})
    base = {n: (k_random if n.startswith("random/") else all_k) for n in names}
    effects = np.array([float(runs[k]["y_clean"]) - float(runs[k]["y_none"]) for k in keys])
    y_none = np.array([float(runs[k]["y_none"]) for k in keys])
    y_clean = np.array([float(runs[k]["y_clean"]) for k in keys])
    # judged[metric][name]: (n_images, len(base)) numerators, nan where not judged
    judged = {m: {n: np.full((len(keys), len(base[n])), np.nan) for n in names} for m in ("faithfulness", "completeness")}

    def judge_all(want: dict, desc: str):
        for i, k in enumerate(progress.bar(keys, desc=desc)):
            orders = orders_of[k]
            kk = {n: want["faithfulness"][n] for n in orders if n in want["faithfulness"]}
            ka = {n: want["completeness"][n] for n in orders if n in want["completeness"]}
            y = judge_split(st, task_of[k], orders, kk, ka, batch_size)
            for n, (y_kept, y_abl) in y.items():
                col = {kv: j for j, kv in enumerate(base[n])}
                for metric, ks, vals in (("faithfulness", kk.get(n, []), y_kept - y_none[i]),
                                         ("completeness", ka.get(n, []), y_clean[i] - y_abl)):
                    judged[metric][n][i, [col[kv] for kv in ks]] = vals

    t0 = time.perf_counter()
    if design == "every":
        judge_all({m: dict(base) for m in judged}, "judging held-out images (every k)")
    else:
        grid = {n: sorted(set(metrics.k_grid(H, n_grid)) & set(base[n]) | {0, max(base[n])}) for n in names}
        judge_all({m: dict(grid) for m in judged}, "judging held-out images on the k grid")
        cls = [classes[k] for k in keys]
        groups = {m: (_members(m, names), n_boot) for m in METHODS}
        groups["random"] = ([n for n in names if n.startswith("random/")], n_boot)
        groups.update({n: (_members(n, names), 0) for n in names if ("/class" in n or "/in-sample" in n) and "@" not in n})
        more = {m: {} for m in judged}
        for metric in judged:
            for g, (members, nb) in groups.items():
                if not members:
                    continue
                num = _mean_over(judged[metric], members) if g != "random" else \
                    np.mean([judged[metric][n] for n in members], axis=0)
                rows = np.isfinite(num[:, base[members[0]].index(0)])  # images this ranking judged
                b = crossing_bound(num[rows], effects[rows], [c for c, r in zip(cls, rows) if r], base[members[0]],
                                   grid[members[0]], threshold, min_images, nb, seed)
                b = b if k_max is None else min(b, k_max)
                for n in members:
                    more[metric][n] = [kv for kv in base[n] if kv <= b and kv not in set(grid[n])]
        judge_all(more, "judging held-out images below the crossing bounds")
    shown = [n for n in names if "@" not in n]  # a ranking's curve: the mean over the fold splits that judged it
    out = {"keys": keys, "classes": [classes[k] for k in keys], "effects": effects, "folds": fold_list,
           "repeat_folds": repeat_folds, "n_repeats": n_repeats, "ks": {n: base[n] for n in shown},
           "curves": {n: {m: (_mean_over(judged[m], _members(n, names)) if not n.startswith("random/")
                              else judged[m][n]) for m in judged} for n in shown}}
    judged_n = {m: int(sum(np.isfinite(judged[m][n]).sum() for n in names)) for m in judged}
    every_n = {m: int(sum(len(base[n]) * sum(n in orders_of[k] for k in keys) for n in names)) for m in judged}
    out["design"] = {"design": design, "rule": ADAPTIVE_RULE if design == "adaptive" else "every k judged",
                     "n_grid": n_grid, "n_boot": n_boot, "seed": seed, "min_images": min_images, "threshold": threshold,
                     "k_max": k_max,
                     "masks_judged": judged_n, "masks_every_k": every_n,
                     "fraction_of_every_k": sum(judged_n.values()) / max(sum(every_n.values()), 1),
                     "seconds": time.perf_counter() - t0,
                     # the extra fold splits' share of the judged entries (their share of the seconds, near enough)
                     "repeats_share": sum(int(np.isfinite(judged[m][n]).sum()) for m in judged for n in names if "@" in n)
                     / max(sum(judged_n.values()), 1)}
    return out


# ------------------------------------------------------------------------------------ summaries
ABOVE_ONE = ("A value above 1 is possible and means something: faithfulness above 1 says that keeping only "
             "the top-k heads gives a *larger* answer logit than keeping every head, so the other heads' image "
             "flow lowers the answer logit on net (suppressive heads); completeness above 1 says that ablating "
             "the top-k heads lowers the logit *below* y_none, so without them the remaining heads' image flow "
             "pushes away from the answer. Neither is an error of the ratio: each class's denominator is a sum "
             "of positive image effects.")


def _stack(cf: dict, names: Sequence[str], metric: str) -> np.ndarray:
    return np.stack([cf["curves"][n][metric] for n in names], axis=1)  # (n_images, n_names, K)


def censor(k, k_max: int | None):
    """A first crossing beyond ``k_max`` is not known exactly (:func:`run`'s cap): None for one k, inf in
    draws (read as "more than ``k_max``", as "never" is read without a cap)."""
    if k_max is None:
        return k
    if isinstance(k, np.ndarray):
        return np.where(k > k_max, np.inf, k)
    return None if k is None or k > k_max else k


def summarise(cf: dict, n_boot: int, seed: int, min_images: int = 2, threshold: float = 0.8) -> dict:
    """Aggregates (the rule of :mod:`headflow.method.metrics`), k at ``threshold`` with bootstrap intervals,
    paired bootstrap differences of k against attribution (each with a one-sided bootstrap p-value,
    Holm-adjusted over the whole family of methods x metrics: ``attribution_needs_fewer`` where the
    adjusted p is below ``stats.ALPHA`` and the median difference is positive), per-class curves, values above 1."""
    d = cf.get("design", {"design": "every"})
    if d["design"] == "adaptive":
        used = {"n_boot": n_boot, "seed": seed, "min_images": min_images, "threshold": threshold}
        other = {k: (d[k], v) for k, v in used.items() if d[k] != v}
        if other:
            raise ValueError(f"these curves were judged adaptively for other summary settings {other} (run, summarise): "
                             "pass run(...) the n_boot, seed, min_images and threshold you summarise with, or "
                             "design='every'")
    k_max = d.get("k_max")
    eff, cls = cf["effects"], cf["classes"]
    held = list(METHODS)
    random_names = sorted(n for n in cf["curves"] if n.startswith("random/"))
    ks_all, ks_rand = cf["ks"][held[0]], cf["ks"][random_names[0]]
    out = {"n_boot": n_boot, "min_images": min_images, "threshold": threshold, "ks": ks_all, "ks_random": ks_rand,
           "k_max": k_max,
           "design": {k: v for k, v in d.items() if k != "rule"}, "design_rule": d.get("rule", "every k judged"),
           "heldout": {}, "class_rankings": {}, "in_sample": {}, "paired_vs_attribution": {}, "above_one": []}
    for metric in ("faithfulness", "completeness"):
        main = _stack(cf, held, metric)  # (n, M, K)
        rand = _stack(cf, random_names, metric)  # (n, R, Kr)
        agg = metrics.aggregate(main, eff, cls, min_images)
        draws = metrics.bootstrap_aggregate(main, eff, cls, n_boot, seed, min_images)  # (B, M, K)
        r_each = np.stack([metrics.aggregate(rand[:, r], eff, cls, min_images)["value"] for r in range(rand.shape[1])])
        r_mean = metrics.aggregate(rand.mean(1), eff, cls, min_images)
        r_draws = metrics.bootstrap_aggregate(rand.mean(1), eff, cls, n_boot, seed, min_images)  # same resamples
        k_draws = {m: censor(metrics.k_at_draws(draws[:, i], ks_all, threshold), k_max) for i, m in enumerate(held)}
        k_draws["random"] = censor(metrics.k_at_draws(r_draws, ks_rand, threshold), k_max)
        res = {}
        for i, m in enumerate(held):
            res[m] = {"curve": agg["value"][i], "per_class": {c: v[i] for c, v in agg["per_class"].items()},
                      "k": censor(metrics.k_at(agg["value"][i], ks_all, threshold), k_max),
                      "ci": metrics.interval(k_draws[m])}
        res["random"] = {"curve": r_mean["value"], "band": np.quantile(r_each, [0.025, 0.975], axis=0),
                         "per_class": r_mean["per_class"],
                         "k": censor(metrics.k_at(r_mean["value"], ks_rand, threshold), k_max),
                         "ci": metrics.interval(k_draws["random"])}
        out["heldout"][metric] = res
        out["left_out"] = {"images": [cf["keys"][i] for i in agg["images_left_out"]],
                           "classes": agg["classes_left_out"], "n_images_used": agg["n_images_used"]}
        out["paired_vs_attribution"][metric] = {}
        for m in [x for x in held if x != "attribution"] + ["random"]:
            d = metrics.paired_k_difference(k_draws[m], k_draws["attribution"])
            lo, hi = metrics.interval(d)
            out["paired_vs_attribution"][metric][m] = {
                "median_difference": float(np.median(d)), "ci": [lo, hi],
                "p": stats.bootstrap_p(d, 0.0, "greater")}
        for suffix, key in (("/class", "class_rankings"), ("/in-sample", "in_sample")):
            names = [m + suffix for m in held if m + suffix in cf["curves"]]
            out[key][metric] = {}
            for n in names:
                num = cf["curves"][n][metric]
                ok = np.isfinite(num).any(1)  # the images this ranking judged (adaptive: nan above its bound)
                a = metrics.aggregate(num[ok], eff[ok], [c for c, o in zip(cls, ok) if o], min_images)
                out[key][metric][n.split("/")[0]] = {"curve": a["value"],
                                                    "k": censor(metrics.k_at(a["value"], ks_all, threshold), k_max),
                                                    "n_images_used": a["n_images_used"]}
        for m, r in res.items():
            for k, v in zip(ks_rand if m == "random" else ks_all, r["curve"]):
                if v > 1:
                    out["above_one"].append({"metric": metric, "method": m, "k": int(k), "value": float(v)})
    # the family: every paired difference of the chapter (methods x metrics), Holm at stats.ALPHA
    family = {(metric, m): d["p"] for metric, ds in out["paired_vs_attribution"].items() for m, d in ds.items()}
    adjusted = stats.holm(family)
    for (metric, m), p_adj in adjusted.items():
        d = out["paired_vs_attribution"][metric][m]
        d["p_holm"] = p_adj
        d["attribution_needs_fewer"] = bool(p_adj < stats.ALPHA and d["median_difference"] > 0)
    out["family"] = {"tests": len(family), "correction": "Holm", "alpha": stats.ALPHA,
                     "test": "one-sided paired bootstrap: k(method) - k(attribution) > 0"}
    return out


def k_table(summary: dict, cost_per_image: dict):
    """A DataFrame: per method, k at the threshold (95% CI) for both metrics on held-out images, the
    paired difference to attribution, and the passes one image costs."""

    def show(v):
        if v is None:
            return "never" if summary.get("k_max") is None else f"> {summary['k_max']}"
        return f"{int(v):+d}" if v < 0 else str(int(v))

    def fmt(d):
        k, (lo, hi) = d["k"], d["ci"]
        return f"{show(k)} [{show(lo)}, {show(hi)}]"

    rows = {}
    for m in list(METHODS) + ["random"]:
        row = {}
        for metric in ("faithfulness", "completeness"):
            row[f"{metric} k"] = fmt(summary["heldout"][metric][m])
            p = summary["paired_vs_attribution"][metric].get(m)
            row[f"{metric}: k - k(attribution)"] = ("" if p is None else
                                                    f"{p['median_difference']:+.0f} [{show(p['ci'][0])}, "
                                                    f"{show(p['ci'][1])}], Holm p {p['p_holm']:.3f}")
        c = cost_per_image.get(m, {})
        row["full passes / image"] = c.get("full_passes", 0)
        row["suffix passes / image"] = c.get("suffix_passes", 0)
        row["gradient passes / image"] = c.get("gradient_passes", 0)
        rows[m] = row
    return pd.DataFrame(rows).T


def secondary_table(summary: dict):
    """k at the threshold of the per-class rankings (held out) and of the in-sample view."""

    rows = {}
    for key, label in (("class_rankings", "per-class ranking, held out"), ("in_sample", "in-sample, per image")):
        for metric, d in summary[key].items():
            for m, r in d.items():
                rows.setdefault(m, {})[f"{metric}: {label}"] = "never" if r["k"] is None else r["k"]
    return pd.DataFrame(rows).T


def results_json(summary: dict, cost_per_image: dict, model: str, n_heads_total: int, params: dict) -> dict:
    """``book/results/attribution.json``."""
    main = {m: {metric: summary["heldout"][metric][m] for metric in ("faithfulness", "completeness")}
            for m in list(METHODS) + ["random"]}
    out = {"model": model, "n_heads_total": n_heads_total, **params, "n_boot": summary["n_boot"],
           "min_images": summary["min_images"], "left_out": summary["left_out"],
           "design": summary.get("design"), "design_rule": summary.get("design_rule"), "k_max": summary.get("k_max"),
           "k_at_0.8_heldout": {metric: {m: {"k": main[m][metric]["k"], "ci": main[m][metric]["ci"]}
                                          for m in main} for metric in ("faithfulness", "completeness")},
           "paired_vs_attribution": summary["paired_vs_attribution"], "family": summary["family"],
           "random_ks": "every k" if list(summary["ks_random"]) == list(summary["ks"]) else "grid",
           "cost_forward_passes": {**cost_per_image, "random": {"full_passes": 0, "suffix_passes": 0,
                                                                "gradient_passes": 0}},
           "curves_heldout": {metric: {m: main[m][metric]["curve"] for m in main}
                              for metric in ("faithfulness", "completeness")},
           "random_band": {metric: summary["heldout"][metric]["random"]["band"]
                           for metric in ("faithfulness", "completeness")},
           "ks": summary["ks"], "ks_random": summary["ks_random"],
           "k_at_0.8_class_rankings": {metric: {m: r["k"] for m, r in d.items()}
                                       for metric, d in summary["class_rankings"].items()},
           "k_at_0.8_in_sample": {metric: {m: r["k"] for m, r in d.items()} for metric, d in summary["in_sample"].items()}}
    if summary["above_one"]:
        out["above_one"] = {"cases": summary["above_one"], "explanation": ABOVE_ONE}
    return out


def top_heads(st, runs: dict, n_folds: int = 5, seed: int = 0, threshold: float = 0.8, min_images: int = 2,
              batch_size: int = 128) -> dict:
    """"The top heads" of chapters 6-9, from the study ``st`` (its fitting images) only.

    The global attribution ranking (class-equal mean of effect-normalised attribution over every
    fitting image) is cut at its *held-out* k at ``threshold``: k is read off the faithfulness curve
    of rankings cross-fitted within the fitting images (each fold judged by a ranking built on the
    other folds; the aggregation rule of :mod:`headflow.method.metrics`).  Chapters then use the heads on
    images disjoint from ``st``'s.  Returns ``order`` (flat head indices, best first), ``k``,
    ``heads`` (``order[:k]``), ``curve`` (faithfulness at k = 0..H) and ``n_images``."""
    H = st.n_layers * st.n_heads

    fitted = {k: f.attribution for k, f in fits({t.key: runs[t.key] for t in st.tasks}).items()}
    keys = [t.key for t in st.tasks]
    classes = {t.key: t.class_name for t in st.tasks}
    task_of = {t.key: t for t in st.tasks}
    all_k = list(range(H + 1))
    num, eff = np.zeros((len(keys), H + 1)), np.zeros(len(keys))
    for held in progress.bar(folds(keys, [classes[k] for k in keys], n_folds, seed), desc="top heads: cross-fitting"):
        fit_keys = [k for k in keys if k not in set(held)]
        order = build_ranking(fitted, runs, classes, fit_keys, "attribution")
        for k in held:
            i = keys.index(k)
            y_none = float(runs[k]["y_none"])
            num[i] = judge(st, task_of[k], {"a": order}, {"a": all_k}, batch_size)["a"][0] - y_none
            eff[i] = float(runs[k]["y_clean"]) - y_none
    curve = metrics.aggregate(num, eff, [classes[k] for k in keys], min_images)["value"]
    k = metrics.k_at(curve, all_k, threshold)
    if k is None:
        raise ValueError(f"the held-out faithfulness never reaches {threshold}; no top-head set can be cut")
    order = build_ranking(fitted, runs, classes, keys, "attribution")
    return {"order": order, "k": int(k), "heads": order[:k], "curve": curve, "n_images": len(keys)}

