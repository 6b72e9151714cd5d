"""Sensitivity and limits (chapter 9): how much the top heads depend on our choices, and what a
linear model of head ablations misses.

**One factor at a time.**  From a reference setting (dataset-mean baseline, scope text, target
logit, ablation rate 0.5, OLS, ``n_masks`` masks, mask seed 0), each factor is changed alone
(:data:`FACTORS`) and head attribution is rerun on the same images.  For each setting the global
ranking (class-equal mean of attribution divided by the image effect *under that setting*) is
compared with the reference ranking: top-k overlap (``|top_k(ref) & top_k(setting)|`` / k) at each k
asked and Spearman correlation of the two global maps, each with a 95% bootstrap interval (images
resampled within classes, every map recomputed on the same draw).  The **mask-seed** setting
changes nothing but the random masks, so its overlap is the noise floor: each other setting's
overlap is compared with it by the paired bootstrap (the same draws), Holm-corrected over the
settings (:func:`against_noise`).

**Interactions.**  Among the top m heads (from a ranking fitted on *other* images): for every pair,
the logit lost when both are ablated against two additive predictions, the sum of the two
attributions (fitted at each ablation rate) and the sum of the two single-head losses, as R^2 over
pairs and images with bootstrap intervals; and a second-order fit (an indicator product for every
pair of those m heads added to the linear model) at ablation rates 0.1 (near the clean model), 0.5
and 0.9, whose improvement on the held-out fifth of each image's masks is stated as the share of
the linear fit's unexplained variance it removes (:func:`share_removed`: a ratio of sums over
images, never a per-image ratio).
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
from headflow.method import attribution, experiment, metrics, stats
from headflow.method.study import Study, store_for
from headflow.util import progress

REFERENCE = {"baseline": "dataset-mean", "scope": "text", "target": "logit", "rate": 0.5, "regression": "auto",
             "masks": None, "seed": 0}
#: The settings varied one at a time.
FACTORS = {"baseline": ["image-mean", "zero"], "scope": ["all"], "target": ["logit-diff"], "rate": [0.1, 0.25, 0.75, 0.9],
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


def _passes_key(setting: dict, n_masks: int) -> tuple:
    """What a setting's forward passes depend on (everything but the target and the regression)."""
    m = n_masks // 2 if setting["masks"] == "half" else n_masks
    return setting["baseline"], setting["scope"], setting["rate"], m, setting["seed"]


def run_settings(st: Study, sets: Sequence[dict], n_masks: int, batch_size: int = 128,
                 show: bool = True) -> dict[tuple, dict]:
    """Attribution runs and fits of every setting of ``sets``: ``{(factor, value): {"maps": {key: (H,)
    normalised}, "r": [...], "left_out": n, "alpha", "n_masks"}}``, as one run per setting gives them,
    with no pass made twice:

    - settings whose passes are the same (``_passes_key``: all but the target and the regression)
      share them: their targets are read from one pass per mask, each into the store a run for that
      target alone would write (:func:`headflow.method.experiment.run_attribution` with several
      stores), and a regression setting reads its store;
    - a setting with fewer masks (``masks="half"``) reads the first masks of the run with more masks
      and the same baseline, scope, rate, seed and target: the masks of an image are one seeded draw
      (:func:`headflow.method.experiment.unit_masks`), so the first ``m`` of ``n`` are the ``m`` a
      run of ``m`` draws (checked), and a mask's y is the same whichever masks share its batch (up
      to float rounding)."""
    groups: dict[tuple, list[dict]] = {}
    for s in sets:
        groups.setdefault(_passes_key(s, n_masks), []).append(s)
    runs_of: dict[tuple, dict] = {}  # (baseline, scope, rate, m, seed, target) -> {key: run}
    done = {}
    for key in progress.bar(sorted(groups, key=lambda g: -g[3]), desc="sensitivity settings", show=show):
        baseline, scope, rate, m, seed = key
        members = groups[key]
        studies = {s["target"]: _study_with(st, baseline, s["target"]) for s in members}
        longer = {tg: next((g for g in runs_of if g[:3] == key[:3] and g[4:] == (seed, tg) and g[3] > m), None)
                  for tg in studies}
        todo = [tg for tg, g in longer.items() if g is None]
        if todo:
            stores = {tg: store_for(studies[tg], "attribution", n_masks=m, ablation_rate=rate, seed=seed,
                                    **({"scope": "all"} if scope == "all" else {})) for tg in todo}
            base = studies[todo[0]]
            got = experiment.run_attribution(base.model, base.tasks, base.baseline, stores, m, rate, seed,
                                             base.target, batch_size, progress=False, scope=scope)
            runs_of.update({(*key, tg): got[tg] for tg in todo})
        for tg, g in longer.items():
            if g is not None:
                runs_of[(*key, tg)] = _first_masks(runs_of[g], m, rate, seed, st)
        for s in members:
            done[(s["factor"], s["value"])] = _fit_setting(studies[s["target"]], runs_of[(*key, s["target"])],
                                                           s["regression"], m)
    return done


def _first_masks(runs: dict, m: int, rate: float, seed: int, st: Study) -> dict:
    """The runs of the first ``m`` masks of longer runs (the same image ends), after checking that they
    are the masks a run of ``m`` draws would judge."""
    out = {}
    for t in st.tasks:
        r = runs[t.key]
        own = experiment.unit_masks(st.n_layers, st.n_heads, m, rate, seed, t.example.image_id)[:-2].numpy()
        if not np.array_equal(r["keep"][:m], own):
            raise RuntimeError(f"the first {m} masks of image {t.key}'s longer run are not its own {m}-mask draw")
        out[t.key] = {**r, "keep": r["keep"][:m], "y": r["y"][:m]}
    return out


def run_setting(st: Study, setting: dict, n_masks: int, batch_size: int = 128) -> dict:
    """Attribution runs and fits of one setting: ``{"maps": {key: (H,) normalised}, "r": [...], "left_out": n}``."""
    return run_settings(st, [setting], n_masks, batch_size, show=False)[(setting["factor"], setting["value"])]


def _fit_setting(s: Study, runs: dict, reg: str, m: int) -> dict:
    """Per image: the fit under regression ``reg`` and its map divided by the image effect (images
    whose effect is not positive are left out, counted)."""
    maps, rs, left, alphas = {}, [], 0, []
    for t in s.tasks:
        r = runs[t.key]
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


NOISE_FLOOR = ("seed", "1")  # the setting that changes only the random masks


def compare(ref: dict, other: dict, classes: dict, ks: Sequence[int], n_boot: int, seed: int) -> dict:
    """Top-k overlap at every k of ``ks`` and Spearman rho of the two global maps (images both
    settings keep), with 95% bootstrap intervals from the same resampled images (and the overlap
    draws, for :func:`against_noise`)."""
    keys = sorted(set(ref["maps"]) & set(other["maps"]))
    A = {key: ref["maps"][key] for key in keys}
    B = {key: other["maps"][key] for key in keys}
    ga, gb = stats.class_equal_mean(A, classes), stats.class_equal_mean(B, classes)
    da = layers.bootstrap_maps(A, classes, n_boot, seed)
    db = layers.bootstrap_maps(B, classes, n_boot, seed)  # same seed and key order: the same draws
    ov = {int(k): np.array([overlap(x, y, k) for x, y in zip(da, db)]) for k in ks}
    rho = np.array([spearmanr(x, y)[0] for x, y in zip(da, db)])
    return {"topk_overlap": {str(k): overlap(ga, gb, k) for k in ov},
            "topk_overlap_ci": {str(k): np.quantile(d, [0.025, 0.975]).tolist() for k, d in ov.items()},
            "overlap_draws": ov, "spearman": float(spearmanr(ga, gb)[0]),
            "spearman_ci": np.quantile(rho, [0.025, 0.975]).tolist(), "n_images": len(keys)}


def against_noise(rows: list[dict], draws: dict, ks: Sequence[int]) -> None:
    """For every setting besides the reference and the noise floor, and every k: the paired bootstrap
    difference (noise-floor overlap minus the setting's overlap), a one-sided p that the setting moves
    the top heads more than new masks do, Holm over the settings at that k; ``moves`` if the adjusted
    p is below ALPHA.  Written into each row's ``against_noise``."""
    floor = next(r for r in rows if (r["factor"], r["value"]) == NOISE_FLOOR)
    floor_draws = draws[NOISE_FLOOR]
    for k in map(int, ks):
        tests = {}
        for r in rows:
            if r["factor"] == "reference" or (r["factor"], r["value"]) == NOISE_FLOOR:
                continue
            d = floor_draws[k] - draws[(r["factor"], r["value"])][k]
            tests[(r["factor"], r["value"])] = {
                "difference": floor["topk_overlap"][str(k)] - r["topk_overlap"][str(k)],
                "ci": metrics.interval(d), "p": stats.bootstrap_p(d, 0.0, "greater")}
        adjusted = stats.holm({f"{f}={v}": t["p"] for (f, v), t in tests.items()})
        for r in rows:
            t = tests.get((r["factor"], r["value"]))
            if t is not None:
                p = adjusted[f"{r['factor']}={r['value']}"]
                r.setdefault("against_noise", {})[str(k)] = {**t, "p_holm": p, "moves": p < stats.ALPHA}


def run(st: Study, n_masks: int, ks: Sequence[int], n_boot: int, seed: int, factors: dict | None = None) -> dict:
    """Every setting of :func:`settings`: its comparison with the reference at every k of ``ks``, with
    the noise floor (:func:`against_noise`), and its fit quality; ``runs`` keeps the attribution runs
    of every ablation rate tried (for :func:`interactions`)."""
    classes = {t.key: t.class_name for t in st.tasks}
    sets = settings(factors)
    done = run_settings(st, sets, n_masks)
    ref = done[("reference", "")]
    rows, draws = [], {}
    for s in sets:
        got = done[(s["factor"], s["value"])]
        c = compare(ref, got, classes, ks, n_boot, seed)
        draws[(s["factor"], s["value"])] = c.pop("overlap_draws")
        rows.append({"factor": s["factor"], "value": s["value"], **c, "median_r": float(np.nanmedian(got["r"])),
                     "images_left_out": got["left_out"], "alpha": got["alpha"], "n_masks": got["n_masks"]})
    if any((r["factor"], r["value"]) == NOISE_FLOOR for r in rows):
        against_noise(rows, draws, ks)
    return {"rows": rows, "ks": [int(k) for k in ks], "k": int(ks[0]), "reference": REFERENCE, "n_masks": n_masks}


def table(rows: list[dict]):
    """The settings as a table (one row each): overlap at each k with its interval and, beside the
    noise floor, the Holm-adjusted p that the setting moves the top heads more than new masks do."""

    out = []
    for r in rows:
        row = {"factor": r["factor"], "value": r["value"]}
        for k, v in r["topk_overlap"].items():
            lo, hi = r["topk_overlap_ci"][k]
            row[f"top-{k} overlap"] = f"{v:.2f} [{lo:.2f}, {hi:.2f}]"
            t = r.get("against_noise", {}).get(k)
            row[f"moves (k={k}): p Holm"] = "" if t is None else f"{t['p_holm']:.3f}" + (" *" if t["moves"] else "")
        row["spearman"] = f"{r['spearman']:.2f} [{r['spearman_ci'][0]:.2f}, {r['spearman_ci'][1]:.2f}]"
        row["median r"] = round(r["median_r"], 3)
        row["images"] = r["n_images"]
        out.append(row)
    return pd.DataFrame(out).set_index(["factor", "value"])


# ------------------------------------------------------------------------------------ interactions
INTERACTION_RATES = (0.1, 0.5, 0.9)  # near the clean model, the reference, near the model without the image


def pair_effects(st: Study, runs: dict, heads: Sequence[int], batch_size: int = 128) -> dict:
    """For every pair of ``heads`` on every image: the logit lost with both ablated (``actual``), the
    sum of the two single-head losses (``additive``) and, per ablation rate of ``runs`` (``{rate:
    runs}``), the sum of the two attributions fitted at that rate (``linear[rate]``), all divided by
    the image effect (of the rate-0.5 runs); images with a non-positive effect are left out."""
    H = st.n_layers * st.n_heads
    pairs = list(combinations([int(h) for h in heads], 2))
    singles = sorted({h for p in pairs for h in p})
    ref = runs[REFERENCE["rate"]]
    out = {"actual": [], "additive": [], "linear": {r: [] for r in runs}, "pairs": pairs, "keys": [], "classes": []}
    for t in progress.bar(st.tasks, desc="pair ablations"):
        effect = float(ref[t.key]["y_clean"]) - float(ref[t.key]["y_none"])
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
        out["actual"].append((y_clean - y[:len(pairs)]) / effect)
        out["additive"].append(np.array([single[a] + single[b] for a, b in pairs]) / effect)
        for rate, rr in runs.items():
            attr = attribution.fit(rr[t.key]["keep"], rr[t.key]["y"]).attribution
            out["linear"][rate].append(np.array([attr[a] + attr[b] for a, b in pairs]) / effect)
        out["keys"].append(t.key)
        out["classes"].append(t.class_name)
    return {**out, "actual": np.array(out["actual"]), "additive": np.array(out["additive"]),
            "linear": {r: np.array(v) for r, v in out["linear"].items()}}


def pairwise_features(keep: np.ndarray, heads: Sequence[int]) -> np.ndarray:
    """Ablation indicators ``(S, H)`` plus one product column per pair of ``heads``."""
    A = (~np.asarray(keep, bool)).reshape(len(keep), -1).astype(np.float64)
    prods = [A[:, a] * A[:, b] for a, b in combinations([int(h) for h in heads], 2)]
    return np.column_stack([A] + prods) if prods else A


def heldout_sse(runs: dict, keys: Sequence[str], heads: Sequence[int], seed: int = 0) -> np.ndarray:
    """Per image ``(n, 2)``: the held-out sum of squared errors of the linear fit and of the
    second-order fit (same split), each divided by the held-out sum of squares about the mean, i.e.
    ``1 - R^2`` of each fit."""
    out = []
    for key in keys:
        r = runs[key]
        y = np.asarray(r["y"], float)
        tr, te = attribution.split(len(y), seed)
        tss = ((y[te] - y[te].mean()) ** 2).sum()
        row = []
        for X in ((~np.asarray(r["keep"], bool)).reshape(len(y), -1).astype(float), pairwise_features(r["keep"], heads)):
            pred = LinearRegression().fit(X[tr], y[tr]).predict(X[te])
            row.append(((y[te] - pred) ** 2).sum() / tss if tss > 0 else np.nan)
        out.append(row)
    return np.array(out, float)


def second_order_gain(runs: dict, keys: Sequence[str], heads: Sequence[int], seed: int = 0) -> np.ndarray:
    """Per image, held-out R^2 of the second-order fit minus that of the linear fit (same split)."""
    sse = heldout_sse(runs, keys, heads, seed)
    return sse[:, 0] - sse[:, 1]


def _within_class_draws(classes: Sequence[str], n_boot: int, seed: int):
    """``n_boot`` index arrays, each resampling the images within their classes."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(np.asarray(classes) == c) for c in sorted(set(classes))]
    for _ in range(n_boot):
        yield np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])


def share_removed(sse: np.ndarray, classes: Sequence[str], n_boot: int, seed: int) -> dict:
    """The share of the linear fit's unexplained held-out variance that the second-order fit removes:
    ``sum_i (u_lin_i - u_2nd_i) / sum_i u_lin_i`` over images (``u = 1 - R^2``), a ratio of sums whose
    denominator is a sum of non-negative terms; if it is below 1e-9 (the linear fit explains
    everything) the share is 0 by rule.  95% interval: images resampled within classes."""
    ok = np.isfinite(sse).all(1)
    sse, cls = sse[ok], [c for c, k in zip(classes, ok) if k]

    def stat(x):
        den = x[:, 0].sum()
        return 0.0 if den < 1e-9 else float((x[:, 0] - x[:, 1]).sum() / den)
    draws = np.array([stat(sse[i]) for i in _within_class_draws(cls, n_boot, seed)])
    return {"share": stat(sse), "ci": np.quantile(draws, [0.025, 0.975]).tolist(), "n_images": int(len(sse)),
            "linear_unexplained_median": float(np.median(sse[:, 0])), "rule": "ratio of sums over images"}


def r2(actual: np.ndarray, predicted: np.ndarray) -> float:
    a, p = np.ravel(actual), np.ravel(predicted)
    return float(1 - ((a - p) ** 2).sum() / ((a - a.mean()) ** 2).sum())


def r2_with_ci(actual: np.ndarray, predicted: np.ndarray, classes: Sequence[str], n_boot: int, seed: int) -> dict:
    """R^2 of ``predicted`` for ``actual`` (``(n_images, n_pairs)``, pooled) with a 95% interval (images
    resampled within classes, both arrays on the same draw)."""
    draws = [r2(actual[i], predicted[i]) for i in _within_class_draws(classes, n_boot, seed)]
    return {"value": r2(actual, predicted), "ci": np.quantile(draws, [0.025, 0.975]).tolist(),
            "n_images": int(len(actual)), "n_pairs": int(actual.shape[1]) if actual.ndim == 2 else 0}


def r2_gap(actual, better, worse, classes, n_boot: int, seed: int) -> dict:
    """``R^2(better) - R^2(worse)`` with its paired 95% interval (the same resampled images)."""
    draws = [r2(actual[i], better[i]) - r2(actual[i], worse[i]) for i in _within_class_draws(classes, n_boot, seed)]
    return {"value": r2(actual, better) - r2(actual, worse), "ci": np.quantile(draws, [0.025, 0.975]).tolist()}


def interactions(st: Study, top: dict, n_masks: int, m: int, n_boot: int, seed: int,
                 rates: Sequence[float] = INTERACTION_RATES) -> dict:
    """Pair ablations among the top ``m`` heads of ``top`` (a ranking fitted on other images), their
    prediction by single-head losses and by attributions fitted at each of ``rates``, and the
    second-order fit's share of the unexplained variance at each rate, on the study's images."""
    runs = {}
    for rate in rates:
        store = store_for(st, "attribution", n_masks=n_masks, ablation_rate=rate, seed=REFERENCE["seed"])
        runs[rate] = experiment.run_attribution(st.model, st.tasks, st.baseline, store, n_masks, rate,
                                                REFERENCE["seed"], st.target, progress=False)
    heads = [int(h) for h in top["order"][:m]]
    pe = pair_effects(st, runs, heads)
    cls = pe["classes"]
    sse = {rate: heldout_sse(rr, pe["keys"], heads, seed) for rate, rr in runs.items()}
    ref = REFERENCE["rate"]
    return {"heads": heads, "pairs": pe, "gains": sse[ref][:, 0] - sse[ref][:, 1], "rates": list(rates),
            "second_order_share": {rate: share_removed(x, cls, n_boot, seed) for rate, x in sse.items()},
            "pair_r2_single": r2_with_ci(pe["actual"], pe["additive"], cls, n_boot, seed),
            "pair_r2_attribution": {rate: r2_with_ci(pe["actual"], pe["linear"][rate], cls, n_boot, seed)
                                    for rate in rates},
            "pair_r2_gap": r2_gap(pe["actual"], pe["additive"], pe["linear"][ref], cls, n_boot, seed),
            "linear_r2": r2(pe["actual"], pe["linear"][ref]), "additive_r2": r2(pe["actual"], pe["additive"]),
            "mean_abs_departure": float(np.mean(np.abs(pe["actual"] - pe["linear"][ref])))}


def results_json(res: dict, inter: dict, model: str, params: dict, per_class: dict, short_classes=()) -> dict:
    """``book/results/sensitivity.json``; ``per_class``: the images of each class that enter;
    ``short_classes``: the classes left out for too few correct answers."""
    rows = [dict(r) for r in res["rows"]]
    ref = str(REFERENCE["rate"])
    return {"model": model, **params, "k": res["k"], "ks": res["ks"], "reference": res["reference"], "rows": rows,
            "noise_floor": "=".join(NOISE_FLOOR), "images_per_class": per_class,
            "images_per_class_min": min(per_class.values()) if per_class else 0,
            "classes_left_out": list(short_classes),
            "topk_overlap": {f"{r['factor']}={r['value']}" if r["factor"] != "reference" else "reference":
                             {"value": r["topk_overlap"][str(res["k"])], "ci": r["topk_overlap_ci"][str(res["k"])],
                              "by_k": {k: {"value": r["topk_overlap"][k], "ci": r["topk_overlap_ci"][k]}
                                       for k in r["topk_overlap"]},
                              "against_noise": r.get("against_noise")} for r in rows},
            "interactions": {"heads": inter["heads"], "n_pairs": len(inter["pairs"]["pairs"]),
                             "n_images": len(inter["pairs"]["keys"]),
                             "rule_relative_to_unexplained": {str(rate): v for rate, v in
                                                              inter["second_order_share"].items()},
                             "pair_r2_single": inter["pair_r2_single"],
                             "pair_r2_attribution": {**inter["pair_r2_attribution"][REFERENCE["rate"]],
                                                     "by_rate": {str(r): v for r, v in
                                                                 inter["pair_r2_attribution"].items()}},
                             "pair_r2_gap": inter["pair_r2_gap"], "reference_rate": ref,
                             "mean_abs_departure": inter["mean_abs_departure"]}}


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
                          "class_agnostic": None if not sem.get("class_agnostic") else {
                              k: sem["class_agnostic"][k] for k in ("same_class_similarity", "same_appearance_similarity",
                                                                    "difference_ci", "permutation_p", "cohens_d_items")},
                          "item_cluster_ci": sem["item_cluster_ci"], "counts": sem["counts"],
                          "verdict": sem["status"]["verdict"]},
            "knockout": {"peak_layer": ko["peak_layer"], "onset_layer": ko["onset_layer"], "timing": ko["timing"],
                         "role_without_final": ko["role_without_final"], "logit_diff": ko["logit_diff"],
                         "question_before_image": ko["question_before_image"], "verdict": ko["status"]["verdict"]},
            "tokens": {k: tok[k] for k in ("object_effect", "background_effect", "other_objects_effect",
                                           "object_random_effect", "background_random_effect", "object_minus_random",
                                           "object_attribution_share", "object_area_share")}
            | {"all_heads": {k: tok["all_heads"][k] for k in ("object_effect", "background_effect", "other_objects_effect",
                                                             "object_random_effect", "background_random_effect")},
               "top_heads": {k: tok["top_heads"][k] for k in ("object_effect", "background_effect",
                                                             "other_objects_effect")},
               "verdict": tok["status"]["verdict"]},
            "sensitivity": {"topk_overlap": sen["topk_overlap"], "k": sen["k"], "ks": sen["ks"],
                            "images_per_class_min": sen["images_per_class_min"], "verdict": sen["status"]["verdict"]},
            "interactions": {k: sen["interactions"][k] for k in
                             ("rule_relative_to_unexplained", "pair_r2_attribution", "pair_r2_single", "pair_r2_gap")}}


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
        n = r["organism"].get("n_eval", {}).get(r["organism"]["model"])
        out.append(f"What the organism reads: it answers the object question correctly for {acc['object']:.0%} of the "
                   + (f"{n:,} " if n else "") + "held-out training-distribution scenes (chapter 0); every chapter "
                   "analyses correctly answered images of the evaluation set only, so what it says is about images "
                   "the model can read.")
    cmp = r.get("where_heads", {}).get("comparisons", {})
    if cmp:  # every comparison that counts under chapter 5's rule (clears the seed difference), largest first
        counted = sorted(((k, c) for k, c in cmp.items() if c.get("counts")), key=lambda kc: -abs(kc[1]["difference"]))
        if counted:
            said = "; ".join(f"{c['difference']:+.2f} [{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}] for {k}" for k, c in counted)
            out.append(f"Where the heads sit is inherited from training: the first-third share of attribution differs by "
                       f"{said} (chapter 5: the comparisons that clear the seed difference), so layer positions found "
                       "here do not transfer to real models; only the methods do.")
        else:
            out.append(f"Where the heads sit: none of chapter 5's {len(cmp)} comparisons between organisms clears the "
                       "difference between two seeds of one recipe, so this study cannot say how training moves them.")
    if "sensitivity" in r:
        s = r["sensitivity"]
        moved = sorted({k for k, v in s["topk_overlap"].items() if k != "reference"
                        and any(t["moves"] for t in (v.get("against_noise") or {}).values())})
        out.append("Open choices: the top heads " + ("move more than new random masks move them under " + ", ".join(moved)
                                                     if moved else "move no more than new random masks do under every "
                                                     "factor tried")
                   + f" (top-k overlap at k = {', '.join(map(str, s['ks']))}, against the mask-seed row, Holm).")
        i = s["interactions"]
        shares = ", ".join(f"{v['share']:.0%} [{v['ci'][0]:.0%}, {v['ci'][1]:.0%}] at rate {rate}"
                           for rate, v in i["rule_relative_to_unexplained"].items())
        out.append(f"Linearity: pairwise terms among the top heads remove {shares} of the linear fit's unexplained "
                   f"held-out variance; pair ablations are predicted with R^2 {i['pair_r2_single']['value']:.2f} by "
                   f"single-head losses and {i['pair_r2_attribution']['value']:.2f} by attributions fitted at rate "
                   f"{i['reference_rate']}; interactions of more than two heads are not tested.")
    if "semantics" in r:
        s = r["semantics"]
        by = {a: n for a, n in sorted((s.get("wrong_by_appearance") or {}).items(), key=lambda an: -an[1]) if n}
        out.append(f"Appearance: {s['n_wrong']} of {s['n_images'] + s['n_wrong']} renditions are answered wrongly ("
                   + ", ".join(f"{a} {n}" for a, n in by.items()) + "), so the semantic analysis rests on the "
                   "renditions the organism can read; real LVLMs read far more varied images.")
    if "knockout" in r:
        out.append("Token flow: the organism's prompt is short and fixed (one question, one template); with long "
                   "system prompts or multi-turn chats the flows may be spread over more layers.")
    return out
