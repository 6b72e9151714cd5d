"""Does head attribution find what is really there?  Models with planted ground truth.

No real model says which heads truly carry the flow; a model built so that its answer is known
does.  Both constructions below start from a trained organism and act only through the one
intervention mechanism (head ablation of image keys/values, :mod:`headflow.mechanism.interventions`):

**Planted flow** (:class:`PlantedFlow`): every head outside a planted set S is *always* ablated, so
the image reaches the answer only through S; the other heads' image keys/values carry nothing
(the dataset-mean baseline).  The model's y under a mask ``keep`` is the organism's y under
``keep & S``.  A method recovers the truth if its top ``|S|`` heads are S (precision at ``|S|``).

**Planted redundancy** lives in the network itself: :mod:`headflow.findings.planting` wires pairs
of heads behind a saturating MLP unit in the weights of a copy of the organism.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import Lasso

from headflow.findings import layers
from headflow.method import attribution, rankings, stats
from headflow.method.experiment import masks_y


@dataclass
class PlantedFlow:
    """The organism with image flow confined to ``heads`` (flat indices)."""

    model: object
    baseline: object
    n_layers: int
    n_heads: int
    heads: np.ndarray
    target: str = "logit"

    @property
    def keep_planted(self) -> torch.Tensor:
        k = torch.zeros(self.n_layers * self.n_heads, dtype=torch.bool)
        k[torch.as_tensor(self.heads, dtype=torch.long)] = True
        return k.view(self.n_layers, self.n_heads)

    def y(self, task, keep: torch.Tensor, batch_size: int = 128) -> np.ndarray:
        """``keep (M, n_layers, n_heads)`` -> y ``(M,)`` of the planted model."""
        return masks_y(self.model, task, self.baseline, keep & self.keep_planted, self.target, batch_size)

    def attention_weight(self, task) -> np.ndarray:
        """Value-weighted final-token attention to the image, ``(n_layers * n_heads,)``, read with the
        heads outside S ablated (what the planted model's heads really read)."""
        return rankings.attention_weight(self.model, task, "final", "value-norm", self.keep_planted,
                                         self.baseline).ravel()

    def attribution_patching(self, task) -> np.ndarray:
        """Attribution patching of the planted model (heads outside S held at the baseline),
        ``(n_layers * n_heads,)``."""
        return rankings.attribution_patching(self.model, task, self.baseline, self.target, self.keep_planted).ravel()


def lone_effects(model, baseline, tasks, n_layers: int, n_heads: int, target: str = "logit") -> np.ndarray:
    """Each head's image flow on its own, ``(n_layers * n_heads,)``: the mean over images of
    ``y(only h kept) - y(none kept)`` (the planted model with S = {h}) over the mean image effect
    ``y(all kept) - y(none kept)``."""
    H = n_layers * n_heads
    keep = torch.zeros(H + 2, H, dtype=torch.bool)
    keep[torch.arange(H), torch.arange(H)] = True
    keep[H + 1] = True
    lone, effect = [], []
    for t in tasks:
        y = masks_y(model, t, baseline, keep.view(-1, n_layers, n_heads), target)
        lone.append(y[:H] - y[H])
        effect.append(y[H + 1] - y[H])
    return np.mean(lone, 0) / np.mean(effect)


def flow_pool(lone: np.ndarray, exclude: Sequence[int], floor: float) -> np.ndarray:
    """Heads a planted set is drawn from: outside ``exclude`` (the organism's own top heads) and with
    a lone effect (:func:`lone_effects`) of at least ``floor`` (a head that carries nothing on its own
    cannot be the truth a method is asked to find)."""
    ex = {int(x) for x in exclude}
    return np.array([h for h in range(len(lone)) if h not in ex and lone[h] >= floor], dtype=int)


def draw_planted_sets(sizes: Sequence[int], n_plantings: int, pool: Sequence[int], seed: int) -> list[dict]:
    """``n_plantings`` random sets of each size, drawn from ``pool``."""
    rng = np.random.default_rng(seed)
    pool = np.asarray(pool, dtype=int)
    out = []
    for s in sizes:
        if s > len(pool):
            raise ValueError(f"cannot plant {s} heads: the pool holds only {len(pool)} heads")
        for r in range(n_plantings):
            out.append({"size": int(s), "planting": r, "heads": np.sort(rng.choice(pool, s, replace=False))})
    return out


def precision_at(order: np.ndarray, truth: Sequence[int]) -> float:
    """Share of the true heads among the top ``|truth|`` of ``order``."""
    truth = set(int(t) for t in truth)
    return len(truth & set(int(h) for h in order[:len(truth)])) / len(truth)


def single_head_scores(fn, task, n_layers: int, n_heads: int) -> np.ndarray:
    """``y(clean) - y(only h ablated)`` of a planted model's ``fn(task, keep)``, ``(n_layers * n_heads,)``."""
    H = n_layers * n_heads
    keep = torch.ones(H + 1, H, dtype=torch.bool)
    keep[torch.arange(H), torch.arange(H)] = False
    y = fn(task, keep.view(-1, n_layers, n_heads))
    return y[-1] - y[:-1]


def recover(fn, tasks, n_layers: int, n_heads: int, n_masks: int, rate: float, seed: int,
            mask_counts: Sequence[int] = (), rankers: dict | None = None) -> dict:
    """Attribution (OLS on ``n_masks`` random masks, and on the first m of them for each of
    ``mask_counts``), single-head scores and each of ``rankers`` (``{name: f(task) -> scores (H,)}``,
    e.g. :meth:`PlantedFlow.attention_weight`) of a planted model on every task, normalised by the
    planted model's image effect: ``{"attribution": {key: scores}, "attribution@m": ..., "single_head": ...,
    name: ..., "effects": {key: float}}``."""
    rankers = rankers or {}
    ends = torch.stack([torch.ones(n_layers, n_heads, dtype=torch.bool), torch.zeros(n_layers, n_heads, dtype=torch.bool)])
    out = {"attribution": {}, "single_head": {}, "effects": {}, **{f"attribution@{m}": {} for m in mask_counts},
           **{name: {} for name in rankers}}
    for i, t in enumerate(tasks):
        keep = attribution.sample_masks(n_masks, n_layers, n_heads, rate, seed * 1_000_003 + i)
        y = fn(t, torch.cat([keep, ends]))
        effect = float(y[-2] - y[-1])
        out["effects"][t.key] = effect
        scale = effect if effect > 0 else np.nan
        out["attribution"][t.key] = attribution.fit(keep.numpy(), y[:-2]).attribution / scale
        for m in mask_counts:  # "auto": cross-validated ridge where the training masks are too few for OLS
            out[f"attribution@{m}"][t.key] = attribution.fit(keep[:m].numpy(), y[:m]).attribution / scale
        out["single_head"][t.key] = single_head_scores(fn, t, n_layers, n_heads) / scale
        for name, rank in rankers.items():
            out[name][t.key] = np.asarray(rank(t), dtype=float) / scale
    return out


def precision_with_interval(scores: dict, classes: dict, truth: Sequence[int], n_boot: int, seed: int) -> dict:
    """Precision at ``|S|`` of the class-equal mean ranking, with a 95% bootstrap interval (images
    resampled within classes; images with a non-positive effect are left out)."""
    maps = {k: v for k, v in scores.items() if np.all(np.isfinite(v))}
    m = stats.class_equal_mean(maps, classes)
    point = precision_at(attribution.ranking(m.ravel()), truth)
    boots = layers.bootstrap_maps({k: v[None] for k, v in maps.items()}, classes, n_boot, seed)[:, 0]
    draws = np.array([precision_at(attribution.ranking(b.ravel()), truth) for b in boots])
    lo, hi = layers.ci(draws)
    return {"precision": point, "ci": [float(lo), float(hi)], "n_images": len(maps), "draws": draws}


# ------------------------------------------------------------------------------------ tables and results
# ------------------------------------------------------------------------------------ masks needed vs heads
SIM_METHODS = ("ols", "ridge", "lasso")


def measured_noise(fits: dict, runs: dict, size: int) -> tuple[np.ndarray, float]:
    """From the organism's real attribution runs: the planted weights (the mean over images of the
    ``size`` largest effect-normalised attributions, descending) and the noise (the median over
    images of the held-out residual SD, ``sd(y) sqrt(1 - R^2)``, over the image effect)."""
    tops, noise = [], []
    for k, f in fits.items():
        effect = float(runs[k]["y_clean"]) - float(runs[k]["y_none"])
        if not effect > 0 or not np.isfinite(f.heldout_r2):
            continue
        tops.append(np.sort(f.attribution / effect)[::-1][:size])
        noise.append(float(np.std(runs[k]["y"])) * np.sqrt(max(1.0 - f.heldout_r2, 0.0)) / effect)
    if not tops:
        raise ValueError("no image with a positive image effect and a finite fit to measure the noise on")
    return np.mean(tops, axis=0), float(np.median(noise))


def _sim_coefs(A: np.ndarray, y: np.ndarray, noise: float) -> dict:
    """OLS (None where under-determined), ridge (penalty by generalised cross-validation over
    :data:`headflow.method.attribution.RIDGE_GRID`) and lasso (the universal penalty
    ``noise sd(a) sqrt(2 log p / n)``, no cross-validation) coefficients, from one eigendecomposition
    of the centred Gram matrix (sklearn's solvers take ~30 s per fit at 1,600 heads)."""
    n, p = A.shape
    X, yc = A - A.mean(0), y - y.mean()
    # float32 eigendecomposition (30x faster here than float64; the design is well conditioned)
    Xf = torch.as_tensor(X, dtype=torch.float32, device="cpu")
    lam, V = (t.double().numpy() for t in torch.linalg.eigh(Xf.T @ Xf))
    lam = np.clip(lam, 0, None)
    z = V.T @ (X.T @ yc)
    out = {"ols": V @ (z / lam) if n >= p + 1 and lam.min() > 1e-9 * lam.max() else None}
    yy, gcv = float(yc @ yc), []
    for a in attribution.RIDGE_GRID:  # residual and degrees of freedom in the eigenbasis
        rss = yy - float(np.sum(z ** 2 * (2 / (lam + a) - lam / (lam + a) ** 2)))
        gcv.append(rss / max(n - float(np.sum(lam / (lam + a))), 1e-9) ** 2)
    out["ridge"] = V @ (z / (lam + attribution.RIDGE_GRID[int(np.argmin(gcv))]))
    # the universal penalty for this design: columns of SD sd(a) (0.5 at rate 0.5), not standardised
    alpha = noise * float(np.mean(A.std(0))) * np.sqrt(2 * np.log(p) / n)
    out["lasso"] = Lasso(alpha=alpha, max_iter=5000, tol=1e-3).fit(A, y).coef_
    return out


def _precision(coef, truth: np.ndarray) -> float:
    if coef is None:
        return float("nan")  # refused: under-determined
    top = np.argsort(coef, kind="stable")[:len(truth)]  # most negative: the largest logit lost
    return len(set(top.tolist()) & set(truth.tolist())) / len(truth)


def masks_needed_vs_heads(weights: np.ndarray, noise: float, head_counts=(64, 256, 1024, 1600),
                          per_head=(0.5, 1, 2, 4), rate: float = 0.5, n_rep: int = 2, seed: int = 0,
                          threshold: float = 0.9) -> dict:
    """By simulation: for each head count H, planted heads with ``weights`` (logit lost when
    ablated, in image-effect units) among H, y = b0 - sum w_h a_h + N(0, noise), masks at
    ``per_head x H`` (a fifth held out, as the study does); per method the mean precision at ``|S|``
    over ``n_rep`` draws and the fewest masks reaching ``threshold`` (None: none of the grid)."""
    rng = np.random.default_rng(seed)
    S = len(weights)
    out = {"weights": [float(w) for w in weights], "noise": noise, "rate": rate, "threshold": threshold,
           "n_rep": n_rep, "per_head": list(per_head), "heads": {}}
    for H in head_counts:
        rows = {m: [] for m in SIM_METHODS}
        grid = [max(20, int(round(f * H))) for f in per_head]
        for M in grid:
            prec = {m: [] for m in SIM_METHODS}
            for _ in range(n_rep):
                truth = rng.choice(H, S, replace=False)
                w = np.zeros(H)
                w[truth] = weights
                A = (rng.random((M, H)) < rate).astype(np.float64)
                y = 1.0 - A @ w + rng.normal(0, noise, M)
                tr = attribution.n_train_of(M)
                coefs = _sim_coefs(A[:tr], y[:tr], noise)
                for m in SIM_METHODS:
                    prec[m].append(_precision(coefs[m], truth))
            for m in SIM_METHODS:
                rows[m].append(float(np.mean(prec[m])))
        out["heads"][str(H)] = {"masks": grid, **{m: {"precision": rows[m],
                                "masks_needed": next((M for M, p in zip(grid, rows[m]) if p >= threshold), None)}
                                for m in SIM_METHODS}}
    return out


def precision_table(rows: list[dict], n_total: int):
    """Per planted size and method: mean precision at ``|S|`` over plantings, the smallest lower and
    largest upper end of the plantings' intervals, and the random expectation ``|S|`` / H."""

    df = pd.DataFrame([{k: v for k, v in r.items() if k != "draws"} for r in rows])
    df["ci_low"] = df.ci.map(lambda c: c[0])
    df["ci_high"] = df.ci.map(lambda c: c[1])
    out = df.groupby(["size", "method"]).agg(precision=("precision", "mean"), lowest_ci_low=("ci_low", "min"),
                                             highest_ci_high=("ci_high", "max"), plantings=("planting", "count"))
    out["random_expectation"] = [s / n_total for s, _ in out.index]
    return out


def _pooled(rows):
    draws = np.mean([r["draws"] for r in rows], axis=0)
    lo, hi = layers.ci(draws)
    return [float(lo), float(hi)]


def summarise_plantings(rows: list[dict], n_total: int) -> dict:
    """Per planted size and method: the mean precision at ``|S|`` over plantings with a pooled 95%
    interval (the mean over plantings of each bootstrap draw) and each planting's own."""
    planted: dict = {}
    for size in sorted({r["size"] for r in rows}):
        planted[str(size)] = {"random_expectation": size / n_total}
        for method in sorted({r["method"] for r in rows if r["size"] == size}):
            sel = [r for r in rows if r["size"] == size and r["method"] == method]
            planted[str(size)][method] = {
                "precision": float(np.mean([r["precision"] for r in sel])), "ci": _pooled(sel),
                "per_planting": [{"planting": r["planting"], "precision": r["precision"], "ci": r["ci"]} for r in sel]}
    return planted


def results_json(rows: list[dict], in_network: dict, pair_rows: list[dict], n_total: int, params: dict,
                 pool: dict | None = None, pair_plantings: list[dict] | None = None) -> dict:
    """``book/results/validation.json``: the planted flow (:func:`summarise_plantings`), the masks
    attribution needs to reach a mean precision of 0.9, the redundancy planted in the network
    (``redundancy_in_network``: its measured single-head and joint effects, then the ranks) and the
    flow split over redundant pairs (``planted_pairs``, by number of planted heads, scored plantings
    only; ``pair_plantings``: every pair planting's measured redundancy and whether it was scored);
    ``pool``: what the planted flow's sets were drawn from."""
    planted = summarise_plantings(rows, n_total)
    needed = {}
    for size, d in planted.items():
        ms = sorted(int(k.split("@")[1]) for k in d if k.startswith("attribution@"))
        reach = [m for m in ms if d[f"attribution@{m}"]["precision"] >= 0.9]
        needed[size] = reach[0] if reach else None
    return {**params, "planted_flow": planted, "masks_to_precision_0.9": needed,
            "redundancy_in_network": in_network, "planted_pairs": summarise_plantings(pair_rows, n_total),
            "pair_plantings": pair_plantings or [], "flow_pool": pool or {}}
