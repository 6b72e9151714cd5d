"""Where the heads are (chapter 5): how head attribution spreads over layers, and where the class
becomes linearly decodable.

Attribution maps are ``(n_layers, n_heads)``.  The rules, stated once:

- **Normalised attribution** of an image: its attribution map divided by its *image effect*
  ``y_clean - y_none`` (the logit lost when every head is ablated), so images with large logits
  do not dominate.  Images whose effect is not positive are left out and counted.
- **Class-equal mean**: the mean over an image set's classes of each class's mean map.
- **Layer share**: the share of a map's *positive* attribution in each layer,
  ``sum_h max(a_lh, 0) / sum_lh max(a_lh, 0)`` (heads whose ablation raises the logit carry no
  flow to the answer; the denominator is a sum of positive parts, so it cannot be near zero
  unless nothing carries flow, which is an error).
- **Top heads at cut-off c**: the ``round(c * n_heads_total)`` (at least 1) heads of largest
  class-equal mean normalised attribution.
- **Relative depth** of layer l of L: ``(l + 0.5) / L``.  **First-third share**: the layer shares
  summed over layers of relative depth below 1/3 (layers 0-2 of 8); under a **uniform**
  placement it is the share of layers that lie there (3 of 8 = 0.375).  **Mean relative depth**:
  the layer shares' weighted mean of relative depth.  **Negative share**: the negative part of
  the map as a share of its absolute mass, ``sum max(-a, 0) / sum |a|`` (reported, not used).
- Uncertainty: bootstrap over images, resampled within each class, recomputing exactly the
  reported statistic (class-equal mean, then share or count).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from headflow.util.devices import to_device
from headflow.images import coco, sets
from headflow.mechanism import tokens
from headflow.mechanism.evaluate import wilson_interval
from headflow.method import crossfit, experiment
from headflow.method import stats
from headflow.method.stats import class_equal_mean
from headflow.method import study as studies
from headflow.method.study import pick_per_class
from headflow.models.families import visible_region


# ------------------------------------------------------------------------------------ attribution by layer
def normalised_attribution(fits: dict, runs: dict, n_layers: int, n_heads: int) -> tuple[dict, list[str]]:
    """Per image ``attribution / (y_clean - y_none)`` as ``(n_layers, n_heads)``; returns
    ``(maps, left_out)`` where ``left_out`` lists the images with a non-positive image effect."""
    maps, left_out = {}, []
    for key, f in fits.items():
        effect = float(runs[key]["y_clean"]) - float(runs[key]["y_none"])
        if effect <= 0:
            left_out.append(key)
            continue
        maps[key] = f.attribution.reshape(n_layers, n_heads) / effect
    return maps, left_out


def layer_share(m: np.ndarray) -> np.ndarray:
    """Share of the positive attribution per layer, ``(n_layers,)``; see the module rules."""
    pos = np.clip(np.asarray(m, float), 0, None)
    total = pos.sum()
    if total <= 0:
        raise ValueError("no head has positive attribution: the map carries no flow to share out")
    return pos.sum(axis=-1) / total


def per_class_shares(maps: dict, classes: dict) -> dict:
    """Layer share of each class's mean map: ``{class: (n_layers,)}`` (classes with no positive map left out)."""
    by: dict[str, list] = {}
    for key, m in maps.items():
        by.setdefault(classes[key], []).append(m)
    out = {}
    for c, v in sorted(by.items()):
        mean = np.mean(v, axis=0)
        if (mean > 0).any():
            out[c] = layer_share(mean)
    return out


def n_top(share: float, n_total: int) -> int:
    return max(1, int(round(share * n_total)))


def relative_depth(n_layers: int) -> np.ndarray:
    """``(n_layers,)``: ``(l + 0.5) / L``."""
    return (np.arange(n_layers) + 0.5) / n_layers


def first_third(n_layers: int) -> np.ndarray:
    """``(n_layers,)`` bool: the layers whose relative depth is below 1/3."""
    return relative_depth(n_layers) < 1 / 3


def depth_stats(m: np.ndarray) -> tuple[float, float, float]:
    """``(first-third share, mean relative depth, negative share)`` of one map (see the module rules)."""
    share = layer_share(m)
    a = np.asarray(m, float)
    neg = float(np.clip(-a, 0, None).sum() / np.abs(a).sum()) if np.abs(a).sum() > 0 else 0.0
    return float(share[first_third(len(share))].sum()), float(share @ relative_depth(len(share))), neg


def top_per_layer(m: np.ndarray, share: float) -> np.ndarray:
    """How many of the top ``share`` of heads sit in each layer, ``(n_layers,)``."""
    return top_k_per_layer(m, n_top(share, m.size))


def top_k_per_layer(m: np.ndarray, k: int) -> np.ndarray:
    """How many of the ``k`` largest heads sit in each layer, ``(n_layers,)``."""
    n_layers, n_heads = m.shape
    top = np.argsort(-m.ravel(), kind="stable")[:k]
    return np.bincount(top // n_heads, minlength=n_layers)


def _top_stats(counts: np.ndarray, late_from: int) -> tuple:
    """Per-layer counts of a top set -> (counts, late share, layer-0 share, mean layer)."""
    k = counts.sum()
    return counts, counts[late_from:].sum() / k, counts[0] / k, float(np.arange(len(counts)) @ counts / k)


def strata(groups: list) -> list[tuple[np.ndarray, int]]:
    """Resampling strata of the class groups (arrays of one class's members): ``(members, weight)``, a class
    of two or more members its own stratum of weight 1, every one-member class pooled into one stratum
    of weight = their number.  Resampled within a one-member class, an image would never vary; pooled, the
    one-image classes vary together, and the point estimate (each class weighted equally) is unchanged."""
    out = [(np.asarray(g), 1) for g in groups if len(g) >= 2]
    single = [g[0] for g in groups if len(g) == 1]
    if single:
        out.append((np.asarray(single), len(single)))
    return out


def resampled_class_mean(st: list[tuple[np.ndarray, int]], rng, value=lambda members: members.mean(0)):
    """One bootstrap draw of the class-equal mean over :func:`strata` ``st``: each stratum's members
    resampled with replacement, its ``value`` weighted by the classes it holds."""
    total = sum(w for _, w in st)
    return sum(w * value(m[rng.integers(0, len(m), len(m))]) for m, w in st) / total


def bootstrap_maps(maps: dict, classes: dict, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot, n_layers, n_heads)``: class-equal means of image sets resampled within classes
    (one-image classes pooled into one stratum, :func:`strata`)."""
    rng = np.random.default_rng(seed)
    by: dict[str, list] = {}
    for key, m in maps.items():
        by.setdefault(classes[key], []).append(m)
    st = strata([np.stack(v) for v in by.values()])
    out = np.empty((n_boot,) + st[0][0].shape[1:])
    for b in range(n_boot):
        out[b] = resampled_class_mean(st, rng)
    return out


def ci(draws: np.ndarray, level: float = 0.95) -> np.ndarray:
    """Percentile interval over the first axis: ``(2, ...)``."""
    a = (1 - level) / 2
    return np.quantile(draws, [a, 1 - a], axis=0)


def summarise(maps: dict, classes: dict, cutoffs: Sequence[float], n_boot: int, seed: int,
              late_from: int | None = None) -> dict:
    """Layer shares and top-head layers of one model, each with its bootstrap interval.

    ``late_from``: first layer counted as "late" (default: the second half).  Returns a dict with
    ``share_per_layer`` (+ ``_ci``), ``by_cutoff[c]`` = per-layer counts of the top heads, the share
    of them in late layers and in layer 0, their mean layer (each + ``_ci``), and ``boot_draws``
    (the bootstrap draws of the layer-0 share and of the top-10% mean layer, for contrasts)."""
    m = class_equal_mean(maps, classes)
    n_layers = m.shape[0]
    late_from = n_layers // 2 if late_from is None else late_from
    boots = bootstrap_maps(maps, classes, n_boot, seed)
    shares = np.stack([layer_share(b) for b in boots])
    out = {"n_images": len(maps), "n_classes": len(set(classes[k] for k in maps)), "n_boot": n_boot,
           "late_from_layer": late_from, "class_mean_map": m,
           "share_per_layer": layer_share(m), "share_per_layer_ci": ci(shares).T, "by_cutoff": {},
           "per_class_share": per_class_shares(maps, classes)}

    def stats(x, share):
        return _top_stats(top_per_layer(x, share), late_from)

    draws = {}
    for c in cutoffs:
        counts, late, zero, mean_layer = stats(m, c)
        b = np.array([stats(x, c)[1:] for x in boots])
        draws[c] = b
        out["by_cutoff"][str(c)] = {
            "n_top": int(counts.sum()), "per_layer": counts, "late_share": late, "late_share_ci": ci(b[:, 0]),
            "layer0_share": zero, "layer0_share_ci": ci(b[:, 1]), "mean_layer": mean_layer,
            "mean_layer_ci": ci(b[:, 2])}
    depth = np.array([depth_stats(b) for b in boots])
    first, mean_depth, negative = depth_stats(m)
    out.update(first_third_share=first, first_third_share_ci=ci(depth[:, 0]),
               first_third_uniform=float(first_third(n_layers).mean()), first_third_layers=int(first_third(n_layers).sum()),
               mean_relative_depth=mean_depth, mean_relative_depth_ci=ci(depth[:, 1]), negative_share=negative)
    out["boot_draws"] = {"layer0_attribution_share": shares[:, 0], "first_third_share": depth[:, 0],
                         "mean_relative_depth": depth[:, 1],
                         **{f"mean_layer_top{c}": d[:, 2] for c, d in draws.items()}}
    return out


def contrast(a: dict, b: dict, stat: str) -> dict:
    """``a - b`` of one bootstrapped statistic of two independent :func:`summarise` results, with a
    95% interval from differences of independent draws."""
    da, db = np.asarray(a["boot_draws"][stat]), np.asarray(b["boot_draws"][stat])
    n = min(len(da), len(db))
    diff = da[:n] - db[:n]
    return {"statistic": stat, "difference": float(np.median(diff)), "ci": ci(diff).tolist(),
            "excludes_zero": bool((ci(diff) > 0).all() or (ci(diff) < 0).all()),
            "p": stats.bootstrap_p(diff, 0.0, "two-sided")}


def top_set(m: np.ndarray, k: int) -> set[int]:
    """The flat indices of the ``k`` largest entries of a map (ties by index)."""
    return set(np.argsort(-np.asarray(m).ravel(), kind="stable")[:k].tolist())


def split_half_overlap(maps: dict, classes: dict, k: int, n_splits: int, seed: int) -> dict | None:
    """Stability of the top-k heads between disjoint halves of the images: each class's images are
    split at random into two halves of equal size (an odd one out is left out of both), the
    class-equal mean map is computed on each half (over the classes with at least 2 images), and the
    overlap is ``|top_k(A) & top_k(B)| / k``.  Over ``n_splits`` random splits: the mean overlap,
    its 95% interval over splits, and ``chance`` = k / H (the expected overlap of two random k-sets).
    None where fewer than 2 classes have 2 images."""
    by: dict[str, list] = {}
    for key in maps:
        by.setdefault(classes[key], []).append(key)
    split = {c: v for c, v in by.items() if len(v) >= 2}
    if len(split) < 2:
        return None
    rng = np.random.default_rng(seed)
    H = next(iter(maps.values())).size
    got = []
    for _ in range(n_splits):
        halves = ([], [])
        for c, keys in split.items():
            perm = rng.permutation(len(keys))
            h = len(keys) // 2
            halves[0].extend(keys[i] for i in perm[:h])
            halves[1].extend(keys[i] for i in perm[h:2 * h])
        a, b = (class_equal_mean({key: maps[key] for key in half}, classes) for half in halves)
        got.append(len(top_set(a, k) & top_set(b, k)) / k)
    got = np.array(got)
    return {"k": int(k), "overlap": float(got.mean()), "ci": ci(got).tolist(), "chance": k / H, "n_splits": n_splits,
            "images_per_half": int(sum(len(v) // 2 for v in split.values())), "classes": len(split)}


def count_stats(maps: dict, classes: dict, k: int, n_boot: int, seed: int, late_from: int | None = None) -> dict:
    """The top ``k`` heads of the class-equal mean map by layer (as :func:`summarise` does for its
    cut-offs): per-layer counts, the share in late layers and in layer 0 and the mean layer, each with
    a 95% interval from images resampled within classes and the top k recomputed in every draw."""
    m = class_equal_mean(maps, classes)
    n_layers, n_heads = m.shape
    late_from = n_layers // 2 if late_from is None else late_from

    def stats(x):
        return _top_stats(top_k_per_layer(x, k), late_from)

    counts, late, zero, mean_layer = stats(m)
    b = np.array([stats(x)[1:] for x in bootstrap_maps(maps, classes, n_boot, seed)])
    return {"n_top": int(k), "per_layer": counts, "late_share": late, "late_share_ci": ci(b[:, 0]),
            "layer0_share": zero, "layer0_share_ci": ci(b[:, 1]), "mean_layer": mean_layer, "mean_layer_ci": ci(b[:, 2])}


# ------------------------------------------------------------------------------------ attention as a proxy
def proxy_correlation(proxy: dict, maps: dict, classes: dict, n_boot: int, seed: int) -> dict:
    """Spearman rho over heads between the class-equal mean of a per-image proxy (e.g. attention
    weight, ``key -> (n_layers, n_heads)``) and the class-equal mean normalised attribution, with a
    95% bootstrap interval (images resampled within classes, the same draws for both)."""

    keys = [k for k in maps if k in proxy]
    by: dict[str, list] = {}
    for k in keys:
        by.setdefault(classes[k], []).append(k)
    groups = [np.array(v) for v in by.values()]

    def rho(picks):
        a = np.mean([np.mean([maps[k] for k in g], axis=0) for g in picks], axis=0).ravel()
        b = np.mean([np.mean([proxy[k] for k in g], axis=0) for g in picks], axis=0).ravel()
        return float(spearmanr(a, b)[0])

    rng = np.random.default_rng(seed)
    st = strata(groups)  # one-image classes pooled (their images resampled together, each weighing one class)

    def draw():
        picks = []
        for members, w in st:
            pick = members[rng.integers(0, len(members), len(members))]
            picks += [pick] if w == 1 else [pick[i:i + 1] for i in range(len(pick))]
        return rho(picks)
    draws = np.array([draw() for _ in range(n_boot)])
    return {"rho": rho(groups), "ci": ci(draws).tolist(), "n_images": len(keys), "n_boot": n_boot,
            "resampling": "within classes; one-image classes pooled into one stratum"}


# ------------------------------------------------------------------------------------ probes
#: At most this many positions per image enter a probe.
MAX_PROBE_POSITIONS = 64  # single-token probes at most at this many image positions (LLaVA-NeXT has 2,340)

@torch.inference_mode()
def residual_states(model, tasks, image_positions: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
    """Language-model residual stream of each task's prompt (batch of 1 each), after the embedding
    (layer 0) and after each decoder layer: ``final (N, L+1, D)``, ``image_mean (N, L+1, D)`` (the
    mean over the image positions), ``image_tokens (N, P, D)`` at the input (layer 0), at
    ``P = min(n_image,`` :data:`MAX_PROBE_POSITIONS` ``)`` evenly spaced image positions (all 64 on
    the organism): memory is ``N x (2 (L+1) + P) x D`` floats, whatever the image-token count."""
    final, mean, single = [], [], []
    for t, pos in zip(tasks, image_positions):
        inputs = to_device(t.inputs, model.device)
        hs = model(**inputs, output_hidden_states=True).hidden_states  # L+1 x (1, T, D)
        h = torch.stack([x[0] for x in hs])  # (L+1, T, D)
        pos = pos.to(model.device)
        final.append(h[:, -1].float().cpu().numpy())
        mean.append(h[:, pos].mean(1).float().cpu().numpy())
        few = pos[torch.linspace(0, len(pos) - 1, min(len(pos), MAX_PROBE_POSITIONS), device="cpu").round().long()
                  .to(pos.device)]
        single.append(h[0, few].float().cpu().numpy())
    return {"final": np.stack(final), "image_mean": np.stack(mean), "image_tokens": np.stack(single)}


def probe_accuracy(X: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated accuracy of a logistic-regression probe (features standardised), folds
    stratified by class: ``folds``, or as many as the smallest class has images (at least 2)."""
    smallest = int(np.unique(y, return_counts=True)[1].min())
    if smallest < 2:
        raise ValueError(f"a probe needs at least 2 images of every class (the smallest has {smallest}); "
                         "raise n_probe_per_class")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    cv = StratifiedKFold(n_splits=min(folds, smallest), shuffle=True, random_state=seed)
    pred = cross_val_predict(probe, X, y, cv=cv)
    return float((pred == y).mean())


def probes_by_layer(states: dict, labels: np.ndarray, folds: int = 5, seed: int = 0) -> dict:
    """Class-probe accuracy per layer for the final token and the mean image token, and for single
    image tokens at the language model's input (mean and max over image positions)."""

    n = len(labels)
    out = {"n_images": n, "folds": folds, "chance": float(np.bincount(labels).max() / n)}
    for name in ("final", "image_mean"):
        acc = [probe_accuracy(states[name][:, layer], labels, folds, seed) for layer in range(states[name].shape[1])]
        out[name] = acc
        out[name + "_ci"] = [wilson_interval(int(round(a * n)), n) for a in acc]
    tokens = states["image_tokens"]
    single = [probe_accuracy(tokens[:, p], labels, folds, seed) for p in range(tokens.shape[1])]
    out["single_image_token_input"] = {"mean": float(np.mean(single)), "max": float(np.max(single)),
                                       "per_position": single}
    return out


# ------------------------------------------------------------------------------------ one model, end to end
def analyse(st, fits: dict, runs: dict, cutoffs: Sequence[float], n_boot: int, seed: int,
            n_probe_per_class: int = 0, folds: int = 5, probes: bool = True) -> dict:
    """Chapter 5's analyses of one study: :func:`summarise` of the normalised attribution of its
    images, plus (if ``probes``) class probes by layer on ``n_probe_per_class`` images of each
    class of the set (0: all), answered correctly or not (decodability does not need a correct answer)."""

    maps, left_out = normalised_attribution(fits, runs, st.n_layers, st.n_heads)
    classes = {t.key: t.class_name for t in st.tasks}
    out = summarise(maps, classes, cutoffs, n_boot, seed)
    out["left_out_non_positive_effect"] = left_out
    if not probes:
        return out
    view = lambda h, w: visible_region(st.model, st.processor, h, w)  # noqa: E731 - what the processor keeps
    examples = pick_per_class(coco.load_set(sets.resolve(st.meta["image_set"]),
                                             size=tuple(st.meta.get("image_size") or ()) or None, view=view),
                              n_probe_per_class)
    tasks = experiment.prepare(st.processor, examples, st.words, st.question)
    pos = [tokens.resolve(st.processor, st.model.config, st.question, t.inputs, n_forced=t.n_forced)["image"]
           for t in tasks]
    labels = np.array([st.words.index(e.class_name) for e in examples])
    out["probe_by_layer"] = probes_by_layer(residual_states(st.model, tasks, pos), labels, folds, seed)
    return out


def study_layers(model: str, image_set: str, question: str, per_class: int, n_masks: int, *, n_reference: int,
                 baseline: str, target: str, seed: int, ablation_rate: float, regression: str, cutoffs, n_boot: int,
                 n_probe_per_class: int = 0, probes: bool = True, image_size=(), keep: str = "correct",
                 masks_per_head: float = 0, device=None, dtype=None, spec_k: bool = False,
                 n_splits: int = 200, correct_per_class: int = 0) -> tuple[dict, object]:
    """One model, image set and question through chapter 5: set-up (correct answers of
    ``per_class`` images per class, or the first ``correct_per_class`` correctly answered ones of each class),
    attribution runs, fits and :func:`analyse` (probes only if ``probes``).  Returns ``(result, study)``; the
    result also holds ``fits``, ``runs`` and the counts ``n_chosen`` (images asked), ``n_correct`` (analysed)
    and ``images_per_class`` (analysed, class -> count), and ``split_half`` (:func:`split_half_overlap`
    at 10% of the heads, over ``n_splits`` splits).  With ``spec_k`` also the spec's top heads: the
    held-out k at 0.8 (:func:`headflow.method.crossfit.top_heads`; suffix passes on the same images),
    their layers (:func:`count_stats`) and their split-half overlap."""
    st = studies.setup(model, image_set, question, per_class=per_class, n_reference=n_reference, baseline=baseline,
                       target=target, image_size=image_size, keep=keep, device=device, dtype=dtype,
                       correct_per_class=correct_per_class)
    runs = studies.attribution_runs(st, studies.masks_for(st, n_masks, masks_per_head), ablation_rate, seed)
    fits = studies.fits(runs, regression)
    res = analyse(st, fits, runs, cutoffs, n_boot, seed, n_probe_per_class, probes=probes)
    n_used = int(len(next(iter(runs.values()))["y"]))
    res.update(fits=fits, runs=runs, n_chosen=st.n_images, n_correct=len(st.tasks), n_masks=n_used,
               model=model, image_set=image_set, question=question,
               images_per_class=st.images_per_class)
    maps, _ = normalised_attribution(fits, runs, st.n_layers, st.n_heads)
    classes = {t.key: t.class_name for t in st.tasks}
    H = st.n_layers * st.n_heads
    res["split_half"] = {"top10%": split_half_overlap(maps, classes, n_top(0.1, H), n_splits, seed)}
    if spec_k:
        try:
            top = crossfit.top_heads(st, runs, seed=seed)
        except ValueError as e:  # the held-out faithfulness never reaches 0.8: no spec top set to cut
            res["spec_top"] = {"k": None, "reason": str(e)}
        else:
            res["spec_top"] = {"k": top["k"], "heldout_faithfulness": top["curve"],
                               **count_stats(maps, classes, top["k"], n_boot, seed)}
            res["split_half"]["k_at_0.8"] = split_half_overlap(maps, classes, top["k"], n_splits, seed)
    return res, st


def mid_to_late(r: dict) -> bool:
    """Chapter 5's rule: the first third of depth holds less of the positive attribution than a
    uniform placement would put there, by the upper end of its 95% bootstrap interval."""
    return bool(r["first_third_share_ci"][1] < r["first_third_uniform"])


def compare(results: dict, a: tuple, b: tuple, seed_pair: tuple | None, stat: str = "first_third_share") -> dict:
    """``a - b`` of ``stat`` (two keys of ``results``) with its 95% interval (:func:`contrast`), and
    the seed difference ``seed_pair`` (the default's two seeds) on the same statistic.  The
    difference *counts* when its interval excludes 0 and the interval's end nearest 0 lies
    farther from 0 than the seed difference."""
    d = contrast(results[a], results[b], stat)
    out = {"a": list(a), "b": list(b), **d}
    if seed_pair is not None:
        s = contrast(results[seed_pair[0]], results[seed_pair[1]], stat)
        near = min(abs(d["ci"][0]), abs(d["ci"][1]))
        out["seed_difference"] = s["difference"]
        out["seed_ci"] = s["ci"]
        out["clears_seed_difference"] = bool(d["excludes_zero"] and near > abs(s["difference"]))
        out["counts"] = out["clears_seed_difference"]  # until judge_comparisons adds the family's correction
    return out


def judge_comparisons(comparisons: dict) -> dict:
    """Holm over the family of comparisons between organisms (the seed rows, the noise floor, are
    not tests): each gets ``p_holm``; it *counts* where it clears the seed difference and its
    Holm-adjusted two-sided p is below ``ALPHA``."""
    family = {k: c["p"] for k, c in comparisons.items() if "clears_seed_difference" in c}
    adjusted = stats.holm(family)
    out = {}
    for k, c in comparisons.items():
        c = dict(c)
        if k in adjusted:
            c["p_holm"] = adjusted[k]
            c["counts"] = bool(c["clears_seed_difference"] and adjusted[k] < stats.ALPHA)
        out[k] = c
    return out


def depth_table(results: dict):
    """A DataFrame: per (model, image set, question) the images analysed, the first-third share
    [95% CI] against uniform, the mean relative depth [CI], the negative share and the top-10% per layer."""
    rows = []
    for (m, s, q), r in results.items():
        lo, hi = r["first_third_share_ci"]
        dlo, dhi = r["mean_relative_depth_ci"]
        top10 = r["by_cutoff"].get("0.1")
        rows.append({"model": m, "image set": s, "question": q,
                     "images (correct / asked)": f"{r['n_correct']} / {r['n_chosen']}",
                     "first third [95% CI]": f"{r['first_third_share']:.2f} [{lo:.2f}, {hi:.2f}]",
                     "uniform": f"{r['first_third_uniform']:.3f}", "mid-to-late": mid_to_late(r),
                     "mean relative depth [95% CI]": f"{r['mean_relative_depth']:.2f} [{dlo:.2f}, {dhi:.2f}]",
                     "negative share": f"{r['negative_share']:.2f}",
                     "top 10% per layer": "" if top10 is None else str([int(x) for x in top10["per_layer"]])})
    return pd.DataFrame(rows).set_index(["model", "image set", "question"])


# ------------------------------------------------------------------------------------ tables and results
def cutoff_table(results: dict):
    """A DataFrame: per model and cut-off, the share of the top heads in late layers and in layer 0,
    and their mean layer, each with its 95% interval."""

    rows = []
    for name, r in results.items():
        for c, d in r["by_cutoff"].items():
            fmt = lambda v, lohi, pct=True: (f"{v:.0%} [{lohi[0]:.0%}, {lohi[1]:.0%}]" if pct  # noqa: E731
                                             else f"{v:.2f} [{lohi[0]:.2f}, {lohi[1]:.2f}]")
            rows.append({"model": name, "top heads": f"{float(c):.0%} ({d['n_top']})",
                         f"in layers >= {r['late_from_layer']}": fmt(d["late_share"], d["late_share_ci"]),
                         "in layer 0": fmt(d["layer0_share"], d["layer0_share_ci"]),
                         "mean layer": fmt(d["mean_layer"], d["mean_layer_ci"], pct=False)})
    return pd.DataFrame(rows).set_index(["model", "top heads"])


def _one(r: dict) -> dict:
    top10 = r["by_cutoff"].get("0.1")
    m = np.asarray(r["class_mean_map"])
    order = np.argsort(-m.ravel(), kind="stable")
    out = {k: r[k] for k in ("n_images", "n_boot", "late_from_layer", "left_out_non_positive_effect", "share_per_layer",
                             "share_per_layer_ci", "by_cutoff", "per_class_share", "first_third_share",
                             "first_third_share_ci", "first_third_uniform", "first_third_layers", "mean_relative_depth",
                             "mean_relative_depth_ci", "negative_share", "n_chosen", "n_correct", "n_masks")}
    out["split_half_overlap"] = r.get("split_half", {})
    if "spec_top" in r:
        out["spec_top"] = r["spec_top"]
    out.update(class_mean_map=m, mid_to_late=mid_to_late(r),
               top10_layers=None if top10 is None else top10["per_layer"],
               top10_heads=[] if top10 is None else [[int(h // m.shape[1]), int(h % m.shape[1])]
                                                    for h in order[:top10["n_top"]]])
    out["first_third_share"] = {"value": r["first_third_share"], "ci": r["first_third_share_ci"],
                                "uniform": r["first_third_uniform"], "layers": r["first_third_layers"],
                                # one-sided bootstrap p of "below uniform" (for the secondary questions' Holm)
                                "p_below_uniform": stats.bootstrap_p(r["boot_draws"]["first_third_share"],
                                                                     r["first_third_uniform"], "less")}
    out["mean_relative_depth"] = {"value": r["mean_relative_depth"], "ci": r["mean_relative_depth_ci"]}
    if "probe_by_layer" in r:
        out["probe_by_layer"] = r["probe_by_layer"]
    return out


def results_json(results: dict, default: str, image_set: str, questions, seed_model: str, comparisons: dict,
                 proxies: dict) -> dict:
    """``book/results/where_heads.json``: ``by_organism.<model>.<question>`` on the common image set
    (and ``own_set.<model>.<question>`` for a model's other set), the default's object question at the
    top level, the comparisons and the attention-weight comparison."""
    by, own = {}, {}
    for (m, s, q), r in results.items():
        (by if s == image_set else own).setdefault(m, {})[q] = {**_one(r), "image_set": s}
    d = by[default][questions[0]]
    return {"model": default, "question": questions[0], "image_set": image_set, "questions": list(questions),
            "seed_model": seed_model, "share_per_layer": d["share_per_layer"], "top10_layers": d["top10_layers"],
            "top_heads": d["top10_heads"], "by_cutoff": d["by_cutoff"], "probe_by_layer": d.get("probe_by_layer"),
            "first_third_share": d["first_third_share"], "mean_relative_depth": d["mean_relative_depth"],
            "by_organism": by, "own_set": own, "comparisons": comparisons, "attention_proxies": proxies}


def probe_table(results: dict):
    """A DataFrame of the headline probe accuracies per model (single and mean image tokens at the
    language model's input, the final token after the first layer, chance)."""

    def row(p):
        single = p["single_image_token_input"]
        return {"single image token at input (mean over positions)": single["mean"],
                "single image token at input (best position)": single["max"],
                "mean image token at input": p["image_mean"][0], "final token after layer 1": p["final"][1],
                "chance": p["chance"]}

    return pd.DataFrame({m: row(r["probe_by_layer"]) for m, r in results.items()})


def stability_table(results: dict):
    """A DataFrame: per (model, image set, question) the split-half overlap of the top heads [95%
    interval over splits] beside chance (k / H), at 10% of the heads and at the spec's held-out k at
    0.8, and the spec top heads per layer."""
    rows = []
    for (m, s, q), r in results.items():
        row = {"model": m, "image set": s, "question": q}
        for label, d in r.get("split_half", {}).items():
            row[f"overlap at {label}"] = ("" if d is None else
                                          f"k={d['k']}: {d['overlap']:.2f} [{d['ci'][0]:.2f}, {d['ci'][1]:.2f}] "
                                          f"(chance {d['chance']:.2f})")
        spec = r.get("spec_top")
        if spec:
            row["spec top heads per layer"] = (spec.get("reason", "") if spec["k"] is None
                                               else str([int(x) for x in spec["per_layer"]]))
        rows.append(row)
    return pd.DataFrame(rows).set_index(["model", "image set", "question"]).fillna("")


def comparison_table(comparisons: dict):
    """A DataFrame of :func:`compare` results: the difference [95% CI], the seed difference, the
    Holm-adjusted p (:func:`judge_comparisons`) and whether it counts."""
    return pd.DataFrame({k: {"difference": f"{v['difference']:+.3f} [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}]",
                             "seed difference": f"{v['seed_difference']:+.3f}" if "seed_difference" in v else "",
                             "Holm p": f"{v['p_holm']:.3f}" if "p_holm" in v else "",
                             "counts": v.get("counts", "")} for k, v in comparisons.items()}).T
