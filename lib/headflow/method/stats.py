"""Statistics helpers that several chapters share."""
from __future__ import annotations

import numpy as np

ALPHA = 0.05  # the family-wise error rate of each chapter's family of tests (Holm; headflow.findings.verdicts)


def class_equal_mean(maps: dict, classes: dict) -> np.ndarray:
    """Mean over classes of each class's mean map (``classes``: image key -> class name)."""
    by: dict[str, list] = {}
    for key, m in maps.items():
        by.setdefault(classes[key], []).append(m)
    if not by:
        raise ValueError("no images left to average (every image effect was non-positive?)")
    return np.mean([np.mean(v, axis=0) for v in by.values()], axis=0)


def bootstrap_p(draws, null: float = 0.0, alternative: str = "two-sided") -> float:
    """A bootstrap p-value for the statistic whose draws are ``draws`` against ``null``: one-sided
    ``"greater"`` (share of draws at or below ``null``), ``"less"`` (at or above), or
    ``"two-sided"`` (twice the smaller of the two, at most 1).  Draws equal to ``null`` count
    against the alternative (conservative)."""
    d = np.asarray(draws, float)
    d = d[~np.isnan(d)]
    if not len(d):
        raise ValueError("no bootstrap draws to compute a p-value from")
    below, above = float(np.mean(d <= null)), float(np.mean(d >= null))
    if alternative == "greater":
        return below
    if alternative == "less":
        return above
    if alternative == "two-sided":
        return min(1.0, 2 * min(below, above))
    raise ValueError(f"unknown alternative {alternative!r}; choose 'greater', 'less' or 'two-sided'")


def holm(pvalues: dict) -> dict:
    """Holm's step-down adjustment of a family of p-values ``{name: p}``: the adjusted p of the
    i-th smallest (i = 0, 1, ...) is ``max_{j <= i} min(1, (m - j) p_(j))``.  Rejecting where the
    adjusted p is below alpha controls the family-wise error rate at alpha."""
    names = sorted(pvalues, key=lambda n: pvalues[n])
    m, out, running = len(names), {}, 0.0
    for j, n in enumerate(names):
        running = max(running, min(1.0, (m - j) * float(pvalues[n])))
        out[n] = running
    return out
