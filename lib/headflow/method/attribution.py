"""Head attribution: regress the answer logit on random head-ablation masks (after COAR).

Draw S masks, each head ablated independently with probability ``ablation_rate``; run the model
under each (:class:`headflow.mechanism.prefix_reuse.PrefixReuse`); fit
``y_s = b0 + sum_h b_h a_{s,h}`` (``a`` = 1 where head h is ablated) by least squares, ridge or
lasso; the attribution of head h is ``-b_h``, the logit lost when h is ablated.  A fifth of the
masks is held out to report Pearson r and R^2 of predicted vs actual y.

**Which regression** (``method="auto"``, the chapters' default): ordinary least squares where the
training masks are at least :data:`MIN_ROWS_PER_PARAMETER` per parameter (heads + intercept),
ridge with its penalty chosen by leave-one-out cross-validation on the training masks otherwise.
Asked for explicitly, OLS refuses a fit with fewer training masks than parameters (it would
interpolate the noise).  :func:`mask_count` sizes a run from the head count so that OLS is
well posed.
"""
from __future__ import annotations

from dataclasses import dataclass

import math

import numpy as np
import torch
from scipy.stats import pearsonr
from sklearn.linear_model import Lasso, LassoCV, LinearRegression, Ridge, RidgeCV

from headflow.util import checks

REGRESSIONS = ("auto", "ols", "ridge", "lasso")
#: "auto" fits OLS from this many training masks per parameter, ridge below.
MIN_ROWS_PER_PARAMETER = 2.0  # "auto" uses OLS from this many training masks per parameter, ridge below
RIDGE_GRID = np.logspace(-3, 3, 13)
HELDOUT = 0.2


def n_train_of(n_masks: int) -> int:
    """Training masks of a run of ``n_masks`` (the rest, a fifth, is held out by :func:`split`)."""
    return n_masks - max(2, int(round(n_masks * HELDOUT)))


def choose(n_train: int, n_heads_total: int) -> str:
    """The regression ``auto`` uses for ``n_train`` training masks and ``n_heads_total`` heads."""
    return "ols" if n_train >= MIN_ROWS_PER_PARAMETER * (n_heads_total + 1) else "ridge"


def mask_count(n_heads_total: int, minimum: int = 0, per_head: float = 0.0) -> int:
    """Masks per image: at least ``minimum`` and at least ``per_head`` per head (the ``full``
    profile uses 4 per head: 3.2 training masks per head, so OLS is well posed at any head count)."""
    return max(int(minimum), int(math.ceil(per_head * n_heads_total)))


def sample_masks(n_masks: int, n_layers: int, n_heads: int, ablation_rate: float, seed: int) -> torch.Tensor:
    """``(n_masks, n_layers, n_heads)`` bool keep-masks: each head ablated (False) with
    probability ``ablation_rate``, independently."""
    if not 0.0 < ablation_rate < 1.0:
        raise ValueError(f"ablation_rate must be in (0, 1), got {ablation_rate}")
    if n_masks < 10:
        raise ValueError(f"n_masks must be at least 10 (a fifth is held out), got {n_masks}")
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n_masks, n_layers, n_heads, generator=g, device="cpu") >= ablation_rate


@dataclass
class Fit:
    """A fitted linear model of y on the ablation pattern; arrays are over heads, ``(n_layers * n_heads,)``."""

    coef: np.ndarray
    intercept: float
    heldout_r: float
    heldout_r2: float
    n_train: int
    n_heldout: int
    method: str  # the regression used (``auto`` resolved to ``ols`` or ``ridge``)
    alpha: float | None = None  # the penalty (ridge, lasso)

    @property
    def attribution(self) -> np.ndarray:
        """Logit lost when each head is ablated (``-coef``)."""
        return -self.coef


def _model(method: str, alpha: float):
    if method == "ridge_cv":
        return RidgeCV(alphas=RIDGE_GRID)
    if method == "ols":
        return LinearRegression()
    if method == "ridge":
        return Ridge(alpha=alpha)
    if method == "lasso":
        return Lasso(alpha=alpha, max_iter=20000)
    raise ValueError(f"unknown regression {method!r}; choose one of {REGRESSIONS}")


def split(n: int, seed: int, heldout: float = HELDOUT) -> tuple[np.ndarray, np.ndarray]:
    """Train and held-out indices (a random fifth held out)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_out = max(2, int(round(n * heldout)))
    return np.sort(perm[n_out:]), np.sort(perm[:n_out])


def fit(keep: np.ndarray, y: np.ndarray, method: str = "auto", alpha: float = 1e-3, seed: int = 0) -> Fit:
    """Fit y on the ablation indicators.  ``keep``: ``(S, n_layers, n_heads)`` bool; ``y``: ``(S,)``.

    ``method``: ``auto`` (OLS or cross-validated ridge by :func:`choose`; ``Fit.method`` says
    which), ``ols`` (refused where under-determined), ``ridge``/``lasso`` with penalty ``alpha``."""

    keep = checks.keep_masks(keep)
    y = checks.targets(y, len(keep))
    A = (~keep).reshape(len(y), -1).astype(np.float64)
    tr, te = split(len(y), seed)
    n_params = A.shape[1] + 1
    if method == "auto":
        method = choose(len(tr), A.shape[1])
        if method == "ridge":
            alpha = float(_model("ridge_cv", alpha).fit(A[tr], y[tr]).alpha_)
    elif method == "ols" and len(tr) < n_params:
        raise ValueError(f"ordinary least squares is under-determined here: {len(tr)} training masks for {n_params} "
                         f"parameters ({A.shape[1]} heads + intercept) would interpolate the noise; use at least "
                         f"{math.ceil(n_params / (1 - HELDOUT)) + 1} masks (headflow.method.attribution.mask_count), "
                         "or regression='auto' or 'ridge'")
    reg = _model(method, alpha).fit(A[tr], y[tr])
    pred = reg.predict(A[te])
    ss_res = float(((y[te] - pred) ** 2).sum())
    ss_tot = float(((y[te] - y[te].mean()) ** 2).sum())
    r = float(pearsonr(pred, y[te])[0]) if np.std(pred) > 0 and np.std(y[te]) > 0 else float("nan")
    return Fit(coef=reg.coef_.copy(), intercept=float(reg.intercept_), heldout_r=r,
               heldout_r2=1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"), n_train=len(tr),
               n_heldout=len(te), method=method, alpha=alpha if method != "ols" else None)


def cv_alpha(keep: np.ndarray, y: np.ndarray, method: str, seed: int = 0, alphas=None) -> float:
    """The ridge or lasso penalty chosen by 5-fold cross-validation on the *training* masks of
    :func:`split` (the held-out fifth stays unseen), from a log grid."""

    keep = checks.keep_masks(keep)
    y = checks.targets(y, len(keep))
    A = (~keep).reshape(len(y), -1).astype(np.float64)
    tr, _ = split(len(y), seed)
    if method == "ridge":
        grid = np.logspace(-3, 3, 13) if alphas is None else alphas
        return float(RidgeCV(alphas=grid, cv=5).fit(A[tr], np.asarray(y)[tr]).alpha_)
    if method == "lasso":
        grid = np.logspace(-5, 0, 11) if alphas is None else alphas
        return float(LassoCV(alphas=grid, cv=5, max_iter=20000, random_state=seed).fit(A[tr], np.asarray(y)[tr]).alpha_)
    raise ValueError(f"cross-validated alpha is for ridge or lasso, not {method!r}")


def bootstrap(keep: np.ndarray, y: np.ndarray, n_boot: int = 200, method: str = "ols", alpha: float = 1e-3,
              seed: int = 0, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile confidence intervals ``(low, high)``, each ``(n_heads_total,)``, of the attribution,
    from refits on masks resampled with replacement."""
    keep = checks.keep_masks(keep)
    y = checks.targets(y, len(keep))
    A = (~keep).reshape(len(y), -1).astype(np.float64)
    if method == "auto":  # the regression (and ridge penalty) the fit of all masks uses
        method = choose(len(y), A.shape[1])
        if method == "ridge":
            alpha = float(_model("ridge_cv", alpha).fit(A, y).alpha_)
    rng = np.random.default_rng(seed)
    draws = np.empty((n_boot, A.shape[1]))
    for b in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        draws[b] = -_model(method, alpha).fit(A[idx], y[idx]).coef_
    q = (1 - level) / 2
    return np.quantile(draws, q, axis=0), np.quantile(draws, 1 - q, axis=0)


def ranking(scores: np.ndarray) -> np.ndarray:
    """Head indices (flattened layer * n_heads + head) from the highest score down (ties by index)."""
    return np.argsort(-np.asarray(scores), kind="stable")
