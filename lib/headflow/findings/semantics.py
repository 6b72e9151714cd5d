"""Semantics, not appearance (chapter 6): are the heads chosen by an image's class?

Units are **items**: one evaluation scene and its five appearance variants
(``fashionscenes/variants``: colour, polarity, sketch, background, scale), i.e. the *same*
Fashion-MNIST item rendered six ways.  Item identity could pass for class, so

- same-class pairs always come from *different items* (and different appearances);
- cross-validation (probes, transfer) is grouped by item.

Each image's head-attribution vector is divided by its image effect (images with a
non-positive effect are left out and counted).  The comparisons:

- :func:`pair_similarities`: cosine, Spearman and top-k overlap for pairs of *same class, different
  item and appearance* ("same class") vs *different class, same appearance* ("same appearance");
- :func:`permutation_test`: the difference of mean cosine between the two pair kinds against
  class labels permuted over items (which keeps items and appearances intact);
- :func:`probe`: logistic regression from attribution vectors to class and to appearance,
  item-grouped cross-validation, with chance levels;
- :func:`transfer`: a class's top-k heads, found on some items, kept alone on held-out items of
  the same class vs of other classes (faithfulness numerators, aggregated by the one rule).

Every interval is a **cluster bootstrap over items** (items resampled within classes, each with all
its renditions: :func:`item_draws`): the renditions of one item are not independent images.  The
analysis runs for two targets (:data:`TARGETS`): the correct class word's logit, whose unembedding
direction same-class pairs always share, and the class-agnostic ``answer-kl`` (minus the KL divergence
of the answer distribution from the clean one: the same function for every image), so a class
signal that only the read-out puts there is told from one in the routing.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from headflow.images import coco, sets
from headflow.mechanism import evaluate
from headflow.method import attribution, experiment, metrics, stats
from headflow.method.study import pick_per_class, store_for
from headflow.util.hashing import files_sha256
from headflow.util import progress

APPEARANCES = ("original", "color", "polarity", "sketch", "background", "scale")
#: The targets every comparison is repeated under.
TARGETS = {"logit": "the correct class word's logit (class-specific read-out)",
           "answer-kl": "-KL(answer distribution || clean) (class-agnostic)"}


@dataclass
class Image:
    """One image of an item: its task, item id (the original's image id), class and appearance."""

    task: experiment.ImageTask
    item: int
    class_name: str
    appearance: str
    correct: bool = True

    @property
    def key(self) -> str:
        return self.task.key


def items(st, per_class: int, offset: int = 0, variants: str = "fashionscenes/variants") -> list[Image]:
    """The originals (from the study's image set) and their variants of ``per_class`` items of each
    class (those after the first ``offset`` items that have variants), asked the study's question;
    ``correct`` says whether the model answers each image correctly."""
    var_file = coco.resolve_set(variants)
    var_examples = coco.load_set(var_file)
    by_item: dict[int, list] = {}
    for ex in var_examples:
        by_item.setdefault(int(ex.attributes["variant_of"]), []).append(ex)
    originals = [e for e in coco.load_set(sets.resolve(st.meta["image_set"])) if e.image_id in by_item]

    chosen = pick_per_class(originals, per_class, offset)
    out: list[Image] = []
    for orig in chosen:
        exs = [orig] + sorted(by_item[orig.image_id], key=lambda e: APPEARANCES.index(e.attributes["variant_kind"]))
        tasks = experiment.prepare(st.processor, exs, st.words, st.question)
        for i, (ex, t) in enumerate(zip(exs, tasks)):
            kind = "original" if i == 0 else ex.attributes["variant_kind"]
            if i > 0:
                t.key = f"var{ex.image_id:06d}"  # variant ids restart at 1: keep keys and mask seeds apart
            out.append(Image(t, orig.image_id, orig.class_name, kind))
    res = evaluate.evaluate(st.model, st.processor, [im.task.example.load_image() for im in out], st.words,
                            [st.words.index(im.class_name) for im in out], st.question)
    for im, ok in zip(out, res["correct"]):
        im.correct = bool(ok)
    return out


def dropped_variants(images: Sequence[Image], variants: str = "fashionscenes/variants") -> dict:
    """The variants of the chosen items that the set's ``min_area_share`` rule drops (their main object
    covers too little of the image), per kind: a selection against the hardest renditions."""
    items_used = {im.item for im in images}
    every = coco.load_set(coco.resolve_set(variants), min_area_share=0.0)
    kept = {im.task.example.image_id for im in images if im.appearance != "original"}
    out: dict[str, int] = {}
    for ex in every:
        if int(ex.attributes["variant_of"]) in items_used and ex.image_id not in kept:
            kind = ex.attributes["variant_kind"]
            out[kind] = out.get(kind, 0) + 1
    return out


def image_paths(images: Sequence[Image]) -> list:
    return [im.task.example.path for im in images]


def vectors(runs: dict, images: Sequence[Image]) -> tuple[dict, list[str]]:
    """Effect-normalised attribution vectors ``{key: (H,)}`` and the keys left out (effect <= 0)."""
    out, left = {}, []
    for im in images:
        r = runs[im.key]
        effect = float(r["y_clean"]) - float(r["y_none"])
        if effect <= 0:
            left.append(im.key)
            continue
        out[im.key] = attribution.fit(r["keep"], r["y"]).attribution / effect
    return out, left


# ------------------------------------------------------------------------------------ similarity
def _ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x, axis=1), axis=1).astype(float)


def similarity_matrices(V: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """``V (N, H)`` -> ``{cosine, spearman, topk}`` each ``(N, N)``; top-k overlap = ``|top_k(i) & top_k(j)|`` / k."""
    U = V / np.linalg.norm(V, axis=1, keepdims=True)
    R = _ranks(V)
    R = (R - R.mean(1, keepdims=True)) / R.std(1, keepdims=True)
    top = np.zeros_like(V, dtype=float)
    np.put_along_axis(top, np.argsort(-V, axis=1)[:, :k], 1.0, axis=1)
    return {"cosine": U @ U.T, "spearman": R @ R.T / V.shape[1], "topk": top @ top.T / k}


def pair_kinds(cls: np.ndarray, item: np.ndarray, app: np.ndarray) -> dict[str, np.ndarray]:
    """Upper-triangle boolean ``(N, N)`` matrices of the two pair kinds compared."""
    upper = np.triu(np.ones((len(cls), len(cls)), bool), 1)
    same_c = cls[:, None] == cls[None]
    same_i = item[:, None] == item[None]
    same_a = app[:, None] == app[None]
    return {"same class": upper & same_c & ~same_i & ~same_a, "same appearance": upper & ~same_c & same_a}


def pair_similarities(V: np.ndarray, cls, item, app, k: int) -> dict:
    """Per similarity measure and pair kind, the similarities of every pair of that kind."""
    S = similarity_matrices(V, k)
    kinds = pair_kinds(np.asarray(cls), np.asarray(item), np.asarray(app))
    return {m: {name: S[m][sel] for name, sel in kinds.items()} for m in S}


def item_draws(item, cls, n_boot: int, seed: int):
    """``n_boot`` draws of image indices: items resampled within their classes, each drawn item with
    all of its images (the cluster bootstrap every interval of this chapter uses).  Each draw also
    gives a new item label per drawn copy, so a copy is never paired with itself."""
    item, cls = np.asarray(item), np.asarray(cls)
    rng = np.random.default_rng(seed)
    by_class: dict = {}
    for i in np.unique(item):
        by_class.setdefault(cls[item == i][0], []).append(i)
    rows_of = {i: np.nonzero(item == i)[0] for i in np.unique(item)}
    for _ in range(n_boot):
        idx, new_item = [], []
        for c, its in sorted(by_class.items()):
            for j, pick in enumerate(rng.choice(its, len(its))):
                idx.extend(rows_of[pick])
                new_item.extend([f"{c}/{j}"] * len(rows_of[pick]))
        yield np.array(idx), np.array(new_item)


def cohens_d_items(V: np.ndarray, cls, item, app, measure: str = "cosine", k: int = 8) -> dict:
    """Cohen's d over items (not over overlapping pairs): per item, the mean similarity of its
    same-class pairs minus that of its same-appearance pairs (pairs that involve one of its images);
    d = mean / standard deviation of those item differences."""
    S = similarity_matrices(V, k)[measure]
    cls, item, app = np.asarray(cls), np.asarray(item), np.asarray(app)
    kinds = pair_kinds(cls, item, app)
    both = {n: m | m.T for n, m in kinds.items()}
    diffs = []
    for i in np.unique(item):
        rows = item == i
        a, b = S[rows][both["same class"][rows]], S[rows][both["same appearance"][rows]]
        if len(a) and len(b):
            diffs.append(a.mean() - b.mean())
    diffs = np.array(diffs)
    sd = diffs.std(ddof=1) if len(diffs) > 1 else float("nan")
    return {"d": float(diffs.mean() / sd) if sd > 0 else float("nan"), "n_items": int(len(diffs)),
            "mean_difference": float(diffs.mean()) if len(diffs) else float("nan")}


def permutation_test(V: np.ndarray, cls, item, app, n_perm: int, seed: int, measure: str = "cosine",
                     k: int = 8) -> dict:
    """Observed ``mean(same class) - mean(same appearance)`` of ``measure``; its null from class labels
    permuted over items (each item keeps its images and appearances); one-sided p-value
    ``(1 + #null >= observed) / (1 + n_perm)``; effect sizes: Cohen's d over items
    (:func:`cohens_d_items`) and the observed difference in null standard deviations."""
    S = similarity_matrices(V, k)[measure]
    cls, item, app = np.asarray(cls), np.asarray(item), np.asarray(app)

    def stat(c):
        kinds = pair_kinds(c, item, app)
        return S[kinds["same class"]].mean() - S[kinds["same appearance"]].mean()

    obs = stat(cls)
    items_u = np.unique(item)
    cls_of_item = np.array([cls[item == i][0] for i in items_u])
    rng = np.random.default_rng(seed)
    null = np.empty(n_perm)
    where = np.searchsorted(items_u, item)
    for b in range(n_perm):
        null[b] = stat(rng.permutation(cls_of_item)[where])
    d = cohens_d_items(V, cls, item, app, measure, k)
    return {"observed": float(obs), "p": float((1 + (null >= obs).sum()) / (1 + n_perm)), "n_perm": n_perm,
            "cohens_d": d["d"], "cohens_d_items": d["n_items"], "z_vs_null": float((obs - null.mean()) / null.std()),
            "null": null}


def bootstrap_difference(V: np.ndarray, cls, item, app, n_boot: int, seed: int, measure: str = "cosine",
                         k: int = 8) -> np.ndarray:
    """Draws of ``mean(same class) - mean(same appearance)`` under the item cluster bootstrap
    (:func:`item_draws`; pairs of a drawn item with its own copy are not used)."""
    S = similarity_matrices(V, k)[measure]
    cls, item, app = np.asarray(cls), np.asarray(item), np.asarray(app)
    out = []
    for idx, new_item in item_draws(item, cls, n_boot, seed):
        kinds = pair_kinds(cls[idx], new_item, app[idx])
        Sb = S[np.ix_(idx, idx)]
        same_src = item[idx][:, None] == item[idx][None]
        out.append(Sb[kinds["same class"] & ~same_src].mean() - Sb[kinds["same appearance"]].mean())
    return np.array(out)


def noise_ceiling(runs_a: dict, runs_b: dict, keys: Sequence[str]) -> np.ndarray:
    """Cosine similarity of two independent mask sets' effect-normalised attribution on one image."""
    out = []
    for k in keys:
        a = attribution.fit(runs_a[k]["keep"], runs_a[k]["y"]).attribution
        b = attribution.fit(runs_b[k]["keep"], runs_b[k]["y"]).attribution
        out.append(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
    return np.array(out)


# ------------------------------------------------------------------------------------ probes
def probe(V: np.ndarray, labels, groups, n_splits: int = 5, seed: int = 0, strata=None, n_boot: int = 0) -> dict:
    """Item-grouped cross-validated accuracy of a logistic-regression probe, with its chance level (share
    of the most frequent label); its 95% interval by the item cluster bootstrap over the fixed
    cross-validated predictions (items resampled within ``strata``, their classes) when ``n_boot``,
    else the Wilson interval (images taken as independent)."""

    labels, groups = np.asarray(labels), np.asarray(groups)
    n_splits = min(n_splits, len(np.unique(groups)))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, C=0.1, random_state=seed))
    pred = cross_val_predict(clf, V, labels, groups=groups, cv=GroupKFold(n_splits=n_splits))
    hit = pred == labels
    correct = int(hit.sum())
    _, counts = np.unique(labels, return_counts=True)
    if n_boot:
        draws = [hit[idx].mean() for idx, _ in item_draws(groups, labels if strata is None else strata, n_boot, seed)]
        ci, how = np.quantile(draws, [0.025, 0.975]).tolist(), "item cluster bootstrap"
    else:
        ci, how = list(evaluate.wilson_interval(correct, len(labels))), "Wilson (images independent)"
    return {"accuracy": correct / len(labels), "ci": ci, "interval": how,
            "chance": float(counts.max() / len(labels)), "n": len(labels), "n_items": int(len(np.unique(groups))),
            "n_splits": n_splits}


def embedding(V: np.ndarray) -> np.ndarray:
    """2-D PCA of the attribution vectors, ``(N, 2)``."""

    return PCA(n_components=2, random_state=0).fit_transform(V)


# ------------------------------------------------------------------------------------ transfer
def item_folds(images: Sequence[Image], n_folds: int, seed: int) -> list[set]:
    """Items dealt into ``n_folds`` folds, stratified by class."""
    rng = np.random.default_rng(seed)
    by: dict[str, list] = {}
    for im in images:
        if im.item not in by.setdefault(im.class_name, []):
            by[im.class_name].append(im.item)
    out: list[set] = [set() for _ in range(n_folds)]
    start = 0
    for c in sorted(by):
        for j, it in enumerate(rng.permutation(by[c])):
            out[(start + j) % n_folds].add(int(it))
        start += len(by[c])
    return out


def transfer(st, images: Sequence[Image], V: dict, runs: dict, k: int, n_folds: int, seed: int,
             n_boot: int, batch_size: int = 64) -> dict:
    """Faithfulness of class head sets on held-out items: for each fold, each class's top-k heads
    (class mean of the normalised vectors of the *other* folds' images of that class) are kept
    alone on the fold's images.  ``same``: aggregate faithfulness of an image's own class set;
    ``other``: of the other classes' sets (mean numerator over them); ``difference`` with a 95%
    interval (the item cluster bootstrap, paired)."""
    H = st.n_layers * st.n_heads
    used = [im for im in images if im.key in V]
    classes = sorted({im.class_name for im in used})
    num_same, num_other, eff, cls, its = [], [], [], [], []
    for fold in progress.bar(item_folds(used, n_folds, seed), desc="class head sets: transfer"):
        fit = [im for im in used if im.item not in fold]
        sets = {}
        for c in classes:
            members = [V[im.key] for im in fit if im.class_name == c]
            if members:
                sets[c] = attribution.ranking(np.mean(members, axis=0))[:k]
        for im in [im for im in used if im.item in fold]:
            names = list(sets)
            keep = torch.zeros(len(names), H, dtype=torch.bool)
            for i, c in enumerate(names):
                keep[i, torch.as_tensor(sets[c])] = True
            y = experiment.masks_y(st.model, im.task, st.baseline, keep.view(-1, st.n_layers, st.n_heads), st.target,
                                   batch_size)
            y_none = float(runs[im.key]["y_none"])
            own = names.index(im.class_name) if im.class_name in names else None
            if own is None:
                continue
            num_same.append(y[own] - y_none)
            num_other.append(np.mean(np.delete(y, own)) - y_none)
            eff.append(float(runs[im.key]["y_clean"]) - y_none)
            cls.append(im.class_name)
            its.append(im.item)
    num, eff, cls = np.stack([num_same, num_other], 1), np.array(eff), np.array(cls)
    agg = metrics.aggregate(num, eff, cls)
    draws = np.array([metrics.aggregate(num[idx], eff[idx], cls[idx])["value"]
                      for idx, _ in item_draws(its, cls, n_boot, seed)])
    diff = draws[:, 0] - draws[:, 1]
    return {"same": float(agg["value"][0]), "other": float(agg["value"][1]),
            "same_ci": metrics.interval(draws[:, 0]), "other_ci": metrics.interval(draws[:, 1]),
            "difference": float(agg["value"][0] - agg["value"][1]), "difference_ci": metrics.interval(diff),
            "k": k, "n_images": agg["n_images_used"], "n_folds": n_folds,
            "per_class": {c: v.tolist() for c, v in agg["per_class"].items()}}


def class_centroid_check(V: dict, images: Sequence[Image], wrong: Sequence[Image]) -> dict:
    """For wrongly answered images: cosine of each vector to its own class's centroid (correct
    images, other items) vs the mean cosine to the other classes' centroids."""
    own, other = [], []
    for w in wrong:
        if w.key not in V:
            continue
        cents = {}
        for im in images:
            if im.key in V and im.item != w.item:
                cents.setdefault(im.class_name, []).append(V[im.key])
        cents = {c: np.mean(v, axis=0) for c, v in cents.items()}
        if w.class_name not in cents:
            continue
        cos = {c: float(V[w.key] @ m / np.linalg.norm(V[w.key]) / np.linalg.norm(m)) for c, m in cents.items()}
        own.append(cos[w.class_name])
        other.append(np.mean([v for c, v in cos.items() if c != w.class_name]))
    return {"n": len(own), "own_class_cosine": float(np.mean(own)) if own else None,
            "other_class_cosine": float(np.mean(other)) if other else None}


def summary_layers(V: dict, images: Sequence[Image], n_layers: int, n_heads: int) -> dict:
    """Class-equal mean map per appearance (for a figure)."""
    out = {}
    for a in APPEARANCES:
        maps = {im.key: V[im.key].reshape(n_layers, n_heads) for im in images if im.appearance == a and im.key in V}
        if maps:
            out[a] = stats.class_equal_mean(maps, {im.key: im.class_name for im in images})
    return out


# ------------------------------------------------------------------------------------ the chapter
def for_target(st, target: str):
    """The study ``st`` read under another target (its run stores keyed by that target)."""
    return st if target == st.target else dataclasses.replace(st, target=target, meta={**st.meta, "target": target})


def attribution_runs(st, images: Sequence[Image], n_masks: int, rate: float, seed: int,
                     targets: Sequence[str] | None = None) -> dict:
    """Random-mask runs of every image, originals and variants in separate run stores (mask seeds
    apart, since variant image ids restart at 1), keyed by the images' files too.  With ``targets``
    every target comes from the same passes (one store per target, each as a run for it alone would
    fill): ``{target: runs}``; without, the study's own target's runs."""
    names = [st.target] if targets is None else list(targets)
    runs = {t: {} for t in names}
    for part, offset in (("original", 0), ("variant", 1)):
        sel = [im for im in images if (im.appearance == "original") == (part == "original")]
        if not sel:
            continue
        items = files_sha256(image_paths(sel))[:16]
        stores = {t: store_for(for_target(st, t), f"semantics-{part}", n_masks=n_masks, ablation_rate=rate,
                               seed=seed + offset, items_sha256=items) for t in names}
        got = experiment.run_attribution(st.model, [im.task for im in sel], st.baseline, stores, n_masks, rate,
                                         seed + offset)
        for t in names:
            runs[t].update(got[t])
    return runs if targets is not None else runs[st.target]


def analyse_target(st, images: Sequence[Image], runs: dict, seed: int, k: int, n_perm: int, n_boot: int,
                   transfer_k: int, n_folds: int) -> dict:
    """Every comparison of chapter 6 for one target's runs (correct images analysed, wrong ones apart)."""
    correct = [im for im in images if im.correct]
    wrong = [im for im in images if not im.correct]
    V, left = vectors(runs, correct)
    used = [im for im in correct if im.key in V]
    M = np.stack([V[im.key] for im in used])
    cls, item, app = (np.array([getattr(im, a) for im in used]) for a in ("class_name", "item", "appearance"))
    V_wrong, _ = vectors(runs, wrong)
    return {"images": used, "wrong": wrong, "left_out": left, "vectors": V, "matrix": M, "classes": cls, "items": item,
            "appearances": app, "pairs": pair_similarities(M, cls, item, app, k),
            "permutation": permutation_test(M, cls, item, app, n_perm, seed, "cosine", k),
            "difference_draws": bootstrap_difference(M, cls, item, app, n_boot, seed, "cosine", k),
            "probe": {"class": probe(M, cls, item, seed=seed, strata=cls, n_boot=n_boot),
                      "appearance": probe(M, app, item, seed=seed, strata=cls, n_boot=n_boot)},
            "embedding": embedding(M), "k": k, "chance_topk": k / M.shape[1],
            "transfer": transfer(st, used, V, runs, transfer_k, n_folds, seed, n_boot),
            "wrong_check": class_centroid_check({**V, **V_wrong}, used, wrong),
            "maps_by_appearance": summary_layers(V, used, st.n_layers, st.n_heads)}


def analyse(st, images: Sequence[Image], n_masks: int, rate: float, seed: int, k: int, n_perm: int, n_boot: int,
            transfer_k: int, n_folds: int, targets: Sequence[str] = tuple(TARGETS)) -> dict:
    """Everything chapter 6 reports, for each target of ``targets`` (the study's own first: the primary
    analysis, whose numbers are also at the top level), with the noise ceiling of the primary target
    and the counts of items, renditions and wrong answers."""
    by_target = {}
    order = [st.target] + [t for t in targets if t != st.target]
    all_runs = attribution_runs(st, images, n_masks, rate, seed, order)  # every target from one set of passes
    for target in order:
        s = for_target(st, target)
        runs = all_runs[target]
        by_target[target] = analyse_target(s, images, runs, seed, k, n_perm, n_boot, transfer_k, n_folds)
        if target == st.target:
            # noise ceiling: a second, independent mask set on every correctly answered original
            origs = [im for im in by_target[target]["images"] if im.appearance == "original"]
            repeat = attribution_runs(st, origs, n_masks, rate, seed + 2)
            ceiling = noise_ceiling(runs, repeat, [im.key for im in origs])
    primary = by_target[st.target]
    wrong = primary["wrong"]
    counts = {"n_items": len({im.item for im in images}), "n_items_analysed": len({im.item for im in primary["images"]}),
              "n_renditions": len(images), "n_renditions_analysed": len(primary["images"]),
              "renditions_by_appearance": {a: sum(im.appearance == a for im in images) for a in APPEARANCES},
              "dropped_by_min_area_share": dropped_variants(images),
              "n_wrong": len(wrong), "wrong_originals": sum(im.appearance == "original" for im in wrong),
              "wrong_left_out_of_own_class_check": len(wrong) - primary["wrong_check"]["n"]}
    return {**primary, "ceiling": ceiling, "targets": by_target, "primary_target": st.target, "counts": counts,
            "wrong_by_appearance": {a: sum(im.appearance == a for im in wrong) for a in APPEARANCES}}


def pairs_table(res: dict):
    """Mean similarity per measure and pair kind, with the chance level of top-k overlap and the
    noise ceiling (cosine)."""

    rows = []
    for m, d in res["pairs"].items():
        rows.append({"measure": m, **{f"{kind} (mean)": float(v.mean()) for kind, v in d.items()},
                     **{f"{kind} (pairs)": len(v) for kind, v in d.items()},
                     "chance": res["chance_topk"] if m == "topk" else None,
                     "noise ceiling": float(res["ceiling"].mean()) if m == "cosine" else None})
    return pd.DataFrame(rows).set_index("measure")


def _comparisons(r: dict) -> dict:
    """The numbers of one target's analysis for ``semantics.json``."""
    sim = r["pairs"]["cosine"]
    return {"same_class_similarity": float(sim["same class"].mean()),
            "same_appearance_similarity": float(sim["same appearance"].mean()),
            "difference": float(sim["same class"].mean() - sim["same appearance"].mean()),
            "difference_ci": metrics.interval(r["difference_draws"]), "permutation_p": r["permutation"]["p"],
            "cohens_d_items": r["permutation"]["cohens_d"], "n_items_d": r["permutation"]["cohens_d_items"],
            "probe": r["probe"], "transfer": r["transfer"], "n_images": len(r["images"]),
            "n_left_out_non_positive_effect": len(r["left_out"])}


def results_json(res: dict, model: str, params: dict) -> dict:
    """``book/results/semantics.json``: the primary target (the class word's logit) at the top level,
    ``class_agnostic`` the same comparisons under ``answer-kl``, ``item_cluster_ci`` the primary's
    intervals (all by the item cluster bootstrap), and the counts."""
    sim = res["pairs"]["cosine"]
    agnostic = res["targets"].get("answer-kl")
    tr = res["transfer"]
    return {"model": model, **params, "primary_target": res["primary_target"], "targets": TARGETS,
            "n_images": len(res["images"]), "n_wrong": len(res["wrong"]),
            "n_left_out_non_positive_effect": len(res["left_out"]), "counts": res["counts"],
            "wrong_by_appearance": res["wrong_by_appearance"], "wrong_check": res["wrong_check"],
            "similarity": {"same_class": float(sim["same class"].mean()),
                           "same_appearance": float(sim["same appearance"].mean()),
                           "difference": float(sim["same class"].mean() - sim["same appearance"].mean()),
                           "difference_ci": metrics.interval(res["difference_draws"]),
                           "permutation_p": res["permutation"]["p"], "n_perm": res["permutation"]["n_perm"],
                           "cohens_d": res["permutation"]["cohens_d"], "z_vs_null": res["permutation"]["z_vs_null"],
                           "noise_ceiling": float(res["ceiling"].mean()),
                           "by_measure": {m: {kind: float(v.mean()) for kind, v in d.items()}
                                          for m, d in res["pairs"].items()},
                           "topk_chance": res["chance_topk"], "k": res["k"]},
            "probe": res["probe"], "transfer": tr,
            "item_cluster_ci": {"similarity_difference": metrics.interval(res["difference_draws"]),
                                "probe_class": res["probe"]["class"]["ci"],
                                "probe_appearance": res["probe"]["appearance"]["ci"],
                                "transfer_difference": tr["difference_ci"],
                                # the clusters resampled: items with a correctly answered, analysed rendition
                                "n_items": res["counts"]["n_items_analysed"]},
            "class_agnostic": _comparisons(agnostic) if agnostic else None}
