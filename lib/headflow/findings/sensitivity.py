"""Sensitivity and limits (chapter 9): how much the top heads depend on our choices, and what a
linear model of head ablations misses.

**One factor at a time.**  From a reference setting (dataset-mean baseline, scope text, target
logit, ablation rate 0.5, OLS, ``n_masks`` masks, mask seed 0), each factor is changed alone
(:data:`FACTORS`) and head attribution is rerun on the same images.  For each setting, the global
ranking (class-equal mean of attribution divided by the image effect *under that setting*) is
compared with the reference ranking: top-k overlap (|top_k(ref) & top_k(setting)| / k) and
Spearman correlation of the two global maps, each with a 95% bootstrap interval (images resampled
within classes, both maps recomputed on the same draw), and the median held-out r of the fits.

**Interactions.**  Among the top m heads (from a ranking fitted on *other* images): for every pair,
the logit lost when both are ablated vs the linear model's prediction (the sum of the two
attributions); and a second-order fit (indicator products for every pair of those m heads added to
the linear model) whose gain in held-out R^2 over the linear fit is measured on the held-out
fifth of each image's masks.
"""
from __future__ import annotations

import dataclasses
import json
from itertools import combinations
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from sklearn.linear_model import LinearRegression

from headflow.findings import layers
from headflow.method import attribution, experiment, stats
from headflow.method.study import Study, store_for
from headflow.util import progress

REFERENCE = {"baseline": "dataset-mean", "scope": "text", "target": "logit", "rate": 0.5, "regression": "auto",
             "masks": None, "seed": 0}
FACTORS = {"baseline": ["image-mean", "zero"], "scope": ["all"], "target": ["logit-diff"], "rate": [0.25, 0.75],
           "regression": ["ridge", "lasso"], "masks": ["half"], "seed": [1]}


def settings(factors: dict | None = None) -> list[dict]:
    """The reference and one setting per changed factor value: ``{"factor", "value", **full setting}``."""
    factors = FACTORS if factors is None else factors
    unknown = set(factors) - set(REFERENCE)
    if unknown:
        raise ValueError(f"unknown sensitivity factors {sorted(unknown)}; choose from {sorted(REFERENCE)}")
    out = [{"factor": "reference", "value": "", **REFERENCE}]
    for f, values in factors.items():
        for v in values:
            out.append({"factor": f, "value": str(v), **{**REFERENCE, f: v}})
    return out


def _study_with(st: Study, baseline: str, target: str) -> Study:
    """The study with another baseline and/or target (the reference baseline is the study's own)."""
    if baseline == st.baseline_kind and target == st.target:
        return st
    if baseline == st.baseline_kind:
        bl = st.baseline
    elif baseline == "dataset-mean":
        raise ValueError("the sensitivity reference must be the study's own baseline; set up the study with "
                         "baseline='dataset-mean' to compare against it")
    else:
        bl = experiment.reference_baseline(st.model, [], baseline)
    return dataclasses.replace(st, baseline=bl, baseline_kind=baseline, target=target,
                               meta={**st.meta, "baseline": baseline, "target": target})


def run_setting(st: Study, setting: dict, n_masks: int, batch_size: int = 128) -> dict:
    """Attribution runs and fits of one setting: ``{"maps": {key: (H,) normalised}, "r": [...], "left_out": n}``."""
    s = _study_with(st, setting["baseline"], setting["target"])
    m = n_masks // 2 if setting["masks"] == "half" else n_masks
    store = store_for(s, "attribution", n_masks=m, ablation_rate=setting["rate"], seed=setting["seed"],
                      **({"scope": "all"} if setting["scope"] == "all" else {}))
    runs = experiment.run_attribution(s.model, s.tasks, s.baseline, store, m, setting["rate"], setting["seed"],
                                      s.target, batch_size, progress=False, scope=setting["scope"])
    maps, rs, left, alphas = {}, [], 0, []
    for t in s.tasks:
        r = runs[t.key]
        reg = setting["regression"]
        alpha = attribution.cv_alpha(r["keep"], r["y"], reg) if reg in ("ridge", "lasso") else 1e-3
        alphas.append(alpha)
        f = attribution.fit(r["keep"], r["y"], reg, alpha)
        rs.append(f.heldout_r)
        effect = float(r["y_clean"]) - float(r["y_none"])
        if effect > 0:
            maps[t.key] = f.attribution / effect
        else:
            left += 1
    return {"maps": maps, "r": rs, "left_out": left, "alpha": float(np.median(alphas)), "n_masks": m}


def overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    return len(set(attribution.ranking(a)[:k].tolist()) & set(attribution.ranking(b)[:k].tolist())) / k


def compare(ref: dict, other: dict, classes: dict, k: int, n_boot: int, seed: int) -> dict:
    """Top-k overlap and Spearman rho of the two global maps (images both settings keep), with
    95% bootstrap intervals from the same resampled images."""
    keys = sorted(set(ref["maps"]) & set(other["maps"]))
    A = {key: ref["maps"][key] for key in keys}
    B = {key: other["maps"][key] for key in keys}
    ga, gb = stats.class_equal_mean(A, classes), stats.class_equal_mean(B, classes)
    da = layers.bootstrap_maps(A, classes, n_boot, seed)
    db = layers.bootstrap_maps(B, classes, n_boot, seed)  # same seed and key order: the same draws
    ov = np.array([overlap(x, y, k) for x, y in zip(da, db)])
    rho = np.array([spearmanr(x, y)[0] for x, y in zip(da, db)])
    return {"topk_overlap": overlap(ga, gb, k), "topk_overlap_ci": np.quantile(ov, [0.025, 0.975]).tolist(),
            "spearman": float(spearmanr(ga, gb)[0]), "spearman_ci": np.quantile(rho, [0.025, 0.975]).tolist(),
            "n_images": len(keys)}


def run(st: Study, n_masks: int, k: int, n_boot: int, seed: int, factors: dict | None = None) -> dict:
    """Every setting of :func:`settings`: its comparison with the reference and its fit quality."""
    classes = {t.key: t.class_name for t in st.tasks}
    sets = settings(factors)
    done = {}
    for s in progress.bar(sets, desc="sensitivity settings"):
        done[(s["factor"], s["value"])] = run_setting(st, s, n_masks)
    ref = done[("reference", "")]
    rows = []
    for s in sets:
        got = done[(s["factor"], s["value"])]
        c = compare(ref, got, classes, k, n_boot, seed)
        rows.append({"factor": s["factor"], "value": s["value"], **c, "median_r": float(np.nanmedian(got["r"])),
                     "images_left_out": got["left_out"], "alpha": got["alpha"], "n_masks": got["n_masks"]})
    return {"rows": rows, "k": k, "reference": REFERENCE, "n_masks": n_masks}


def table(rows: list[dict]):
    """The settings as a table (one row each)."""

    df = pd.DataFrame(rows)
    for c in ("topk_overlap_ci", "spearman_ci"):
        df[c] = df[c].map(lambda v: f"[{v[0]:.2f}, {v[1]:.2f}]")
    return df.set_index(["factor", "value"]).round(3)


# ------------------------------------------------------------------------------------ interactions
def pair_effects(st: Study, runs: dict, heads: Sequence[int], batch_size: int = 128) -> dict:
    """For every pair of ``heads`` on every image: the logit lost with both ablated (``actual``),
    the linear model's prediction (``linear``: sum of the two attributions) and the sum of the two
    single-head losses (``additive``), all divided by the image effect; images with a non-positive
    effect are left out."""
    H = st.n_layers * st.n_heads
    pairs = list(combinations([int(h) for h in heads], 2))
    singles = sorted({h for p in pairs for h in p})
    out = {"actual": [], "linear": [], "additive": [], "pairs": pairs, "keys": []}
    for t in progress.bar(st.tasks, desc="pair ablations"):
        r = runs[t.key]
        effect = float(r["y_clean"]) - float(r["y_none"])
        if effect <= 0:
            continue
        keep = torch.ones(len(pairs) + len(singles) + 1, H, dtype=torch.bool)
        for i, (a, b) in enumerate(pairs):
            keep[i, [a, b]] = False
        for j, h in enumerate(singles):
            keep[len(pairs) + j, h] = False
        y = experiment.masks_y(st.model, t, st.baseline, keep.view(-1, st.n_layers, st.n_heads), st.target, batch_size)
        y_clean = y[-1]
        single = {h: y_clean - y[len(pairs) + j] for j, h in enumerate(singles)}
        attr = attribution.fit(r["keep"], r["y"]).attribution
        out["actual"].append((y_clean - y[:len(pairs)]) / effect)
        out["linear"].append(np.array([attr[a] + attr[b] for a, b in pairs]) / effect)
        out["additive"].append(np.array([single[a] + single[b] for a, b in pairs]) / effect)
        out["keys"].append(t.key)
    return {k: np.array(v) if k in ("actual", "linear", "additive") else v for k, v in out.items()}


def pairwise_features(keep: np.ndarray, heads: Sequence[int]) -> np.ndarray:
    """Ablation indicators ``(S, H)`` plus one product column per pair of ``heads``."""
    A = (~np.asarray(keep, bool)).reshape(len(keep), -1).astype(np.float64)
    prods = [A[:, a] * A[:, b] for a, b in combinations([int(h) for h in heads], 2)]
    return np.column_stack([A] + prods) if prods else A


def second_order_gain(runs: dict, keys: Sequence[str], heads: Sequence[int], seed: int = 0) -> np.ndarray:
    """Per image, held-out R^2 of the second-order fit minus that of the linear fit (same split)."""

    gains = []
    for key in keys:
        r = runs[key]
        y = np.asarray(r["y"], float)
        tr, te = attribution.split(len(y), seed)
        r2 = []
        for X in ((~np.asarray(r["keep"], bool)).reshape(len(y), -1).astype(float), pairwise_features(r["keep"], heads)):
            pred = LinearRegression().fit(X[tr], y[tr]).predict(X[te])
            r2.append(1 - ((y[te] - pred) ** 2).sum() / ((y[te] - y[te].mean()) ** 2).sum())
        gains.append(r2[1] - r2[0])
    return np.array(gains)


def median_with_ci(x: np.ndarray, n_boot: int, seed: int) -> dict:
    """Median and a 95% bootstrap interval of the median (resampling the values)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, float)
    draws = np.array([np.median(x[rng.integers(0, len(x), len(x))]) for _ in range(n_boot)])
    return {"median": float(np.median(x)), "ci": np.quantile(draws, [0.025, 0.975]).tolist(), "n": len(x)}


def r2(actual: np.ndarray, predicted: np.ndarray) -> float:
    a, p = np.ravel(actual), np.ravel(predicted)
    return float(1 - ((a - p) ** 2).sum() / ((a - a.mean()) ** 2).sum())


def interactions(st: Study, top: dict, n_masks: int, m: int, n_boot: int, seed: int) -> dict:
    """Pair ablations among the top ``m`` heads of ``top`` (a ranking fitted on other images) and the
    second-order fit's held-out gain, on the study's images (reference setting runs)."""
    store = store_for(st, "attribution", n_masks=n_masks, ablation_rate=REFERENCE["rate"], seed=REFERENCE["seed"])
    runs = experiment.run_attribution(st.model, st.tasks, st.baseline, store, n_masks, REFERENCE["rate"],
                                      REFERENCE["seed"], st.target, progress=False)
    heads = [int(h) for h in top["order"][:m]]
    pe = pair_effects(st, runs, heads)
    gains = second_order_gain(runs, pe["keys"], heads, seed)
    return {"heads": heads, "pairs": pe, "gains": gains,
            "linear_r2": r2(pe["actual"], pe["linear"]), "additive_r2": r2(pe["actual"], pe["additive"]),
            "mean_abs_departure": float(np.mean(np.abs(pe["actual"] - pe["linear"]))),
            "pairwise_r2_gain": median_with_ci(gains, n_boot, seed)}


def results_json(res: dict, inter: dict, model: str, params: dict) -> dict:
    """``book/results/sensitivity.json``."""
    rows = [{k: v for k, v in r.items()} for r in res["rows"]]
    return {"model": model, **params, "k": res["k"], "reference": res["reference"], "rows": rows,
            "topk_overlap": {f"{r['factor']}={r['value']}" if r["factor"] != "reference" else "reference":
                             {"value": r["topk_overlap"], "ci": r["topk_overlap_ci"]} for r in rows},
            "interactions": {"heads": inter["heads"], "n_pairs": len(inter["pairs"]["pairs"]),
                             "n_images": len(inter["pairs"]["keys"]), "linear_r2_on_pairs": inter["linear_r2"],
                             "additive_r2_on_pairs": inter["additive_r2"],
                             "mean_abs_departure": inter["mean_abs_departure"],
                             "pairwise_r2_gain": inter["pairwise_r2_gain"]}}


def flow_json(results_dir, model: str) -> dict:
    """``book/results/flow.json``: the numbers behind the verdicts of chapters 6-9 in one file, read
    from their own results files (which must exist: run chapters 6-8 first)."""

    d = Path(results_dir)
    need = {n: d / f"{n}.json" for n in ("semantics", "knockout", "tokens", "sensitivity")}
    missing = [str(p) for p in need.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"flow.json gathers chapters 6-9; missing {missing}: run those chapters first "
                                "(python -m headflow.run --only 06 ... )")
    r = {n: json.loads(p.read_text()) for n, p in need.items()}
    sem, ko, tok, sen = r["semantics"], r["knockout"], r["tokens"], r["sensitivity"]
    return {"model": model,
            "semantics": {"same_class_similarity": sem["similarity"]["same_class"],
                          "same_appearance_similarity": sem["similarity"]["same_appearance"],
                          "difference_ci": sem["similarity"]["difference_ci"],
                          "permutation_p": sem["similarity"]["permutation_p"],
                          "noise_ceiling": sem["similarity"]["noise_ceiling"],
                          "probe_class_accuracy": sem["probe"]["class"]["accuracy"],
                          "probe_class_ci": sem["probe"]["class"]["ci"],
                          "probe_appearance_accuracy": sem["probe"]["appearance"]["accuracy"],
                          "probe_appearance_ci": sem["probe"]["appearance"]["ci"],
                          "class_head_set_transfer": {k: sem["transfer"][k] for k in
                                                      ("same", "other", "difference", "difference_ci", "k")},
                          "verdict": sem["status"]["verdict"]},
            "knockout": {"peak_layer": ko["peak_layer"], "onset_layer": ko["onset_layer"], "timing": ko["timing"],
                         "role_without_final": ko["role_without_final"], "logit_diff": ko["logit_diff"],
                         "question_before_image": ko["question_before_image"], "verdict": ko["status"]["verdict"]},
            "tokens": {k: tok[k] for k in ("object_effect", "background_effect", "both_effect", "random_effect",
                                           "object_minus_random", "object_attribution_share", "object_area_share")}
            | {"verdict": tok["status"]["verdict"]},
            "sensitivity": {"topk_overlap": sen["topk_overlap"], "k": sen["k"], "verdict": sen["status"]["verdict"]},
            "interactions": {"pairwise_r2_gain": sen["interactions"]["pairwise_r2_gain"],
                             "linear_r2_on_pairs": sen["interactions"]["linear_r2_on_pairs"]}}


def limits(results_dir) -> list[str]:
    """What the organism cannot tell about real LVLMs, each line formatted from the book's results
    files (a line is skipped if its file is missing)."""

    d = Path(results_dir)
    r = {p.stem: json.loads(p.read_text()) for p in d.glob("*.json")}
    out = []
    if "attribution" in r and "task" in r:
        out.append(f"Scale: the organism has {r['attribution']['n_heads_total']} heads and "
                   f"{r['task']['group_sizes']['image']} image tokens (LLaVA-1.5-7B: 1,024 heads, 576 image tokens). "
                   "Redundancy, and how many heads a faithful set needs, may grow with both.")
    if "organism" in r:
        acc = r["organism"]["accuracy"][r["organism"]["model"]]
        out.append(f"A weak reader: the organism answers the object question correctly for {acc['object']:.0%} of "
                   "held-out scenes; every chapter analyses correctly answered images only, so what it says is about "
                   "images the model can read.")
    cmp = r.get("where_heads", {}).get("comparisons", {})
    if cmp:
        label, c = next(iter(cmp.items()))
        out.append(f"Where the heads sit is inherited from training: the first-third share of attribution differs by "
                   f"{c['difference']:+.2f} for {label} (chapter 5), so layer positions found here do not transfer to "
                   "real models; only the methods do.")
    if "sensitivity" in r:
        s = r["sensitivity"]
        low = [f"{k} ({v['value']:.2f})" for k, v in s["topk_overlap"].items() if k != "reference" and v["ci"][0] < 0.5]
        out.append("Open choices: the top heads " + ("move under " + ", ".join(low) if low else
                                                     "stay put under every factor tried")
                   + f" (top-{s['k']} overlap with the reference, lower interval end below 0.5).")
        g = s["interactions"]["pairwise_r2_gain"]
        out.append(f"Linearity: pairwise terms among the top heads change held-out R^2 by {g['median']:+.3f} "
                   f"(median, 95% CI [{g['ci'][0]:+.3f}, {g['ci'][1]:+.3f}]); interactions of more than two heads "
                   "are not tested.")
    if "semantics" in r:
        s = r["semantics"]
        out.append(f"Appearance: {s['n_wrong']} of {s['n_images'] + s['n_wrong']} variant images are answered "
                   "wrongly (most of them sketches and inverted items), so the semantic analysis rests on the "
                   "renditions the organism can read; real LVLMs read far more varied images.")
    if "knockout" in r:
        out.append("Token flow: the organism's prompt is short and fixed (one question, one template); with long "
                   "system prompts or multi-turn chats the flows may be spread over more layers.")
    return out
