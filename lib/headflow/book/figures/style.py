"""Shared figure style: fonts sized for the book's text width, group colours, method labels, the
layer x head map and the metric-vs-k curve that several chapters draw.

Each function returns a matplotlib figure; notebooks save it with
:func:`headflow.book.outputs.save_figure`, which also shows it inline."""
from __future__ import annotations

import matplotlib

if not matplotlib.get_backend().lower().startswith(("module://matplotlib_inline", "module://ipykernel")):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

# Figures are shown at the book's text width (about 7.5 in); with widths of at most 11 in these
# sizes stay at or above ~9 pt on the page.
plt.rcParams.update({"font.size": 13, "axes.titlesize": 13, "axes.labelsize": 13, "xtick.labelsize": 12,
                     "ytick.labelsize": 12, "legend.fontsize": 11, "figure.titlesize": 14})


GROUP_COLORS = {"system": "#bbbbbb", "image": "#8fb3d9", "object": "#d9534f", "background": "#8fb3d9",
                "question": "#5cb85c", "role": "#f0ad4e", "final": "#9b59b6"}


# ------------------------------------------------------------------------------------ heads
def head_map(matrix: np.ndarray, title: str, ax=None, cmap: str = "RdBu_r", center: float | None = 0.0,
             cbar_label: str = "logit lost when ablated"):
    """A layers x heads heat map."""
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(0.45 * matrix.shape[1] + 2.5, 0.35 * matrix.shape[0] + 1.5))
    sns.heatmap(matrix, ax=ax, cmap=cmap, center=center, cbar_kws={"label": cbar_label} if own else None,
                cbar=own, square=False, linewidths=0.3, linecolor="white")
    ax.set(title=title, xlabel="head", ylabel="layer")
    return ax.figure


def interval(ax, at, lo, hi, horizontal: bool = False, color="k", cap: float = 0.08, lw: float = 1.2):
    """Confidence intervals drawn from ``lo`` to ``hi`` at positions ``at`` (arrays or scalars), with
    caps.  Unlike an error bar around the estimate, it stays right when a percentile bootstrap
    interval does not contain the point estimate."""
    at, lo, hi = (np.atleast_1d(np.asarray(x, dtype=float)) for x in (at, lo, hi))
    line, caps = (ax.hlines, ax.vlines) if horizontal else (ax.vlines, ax.hlines)
    line(at, lo, hi, colors=color, lw=lw)
    for end in (lo, hi):
        caps(end, at - cap, at + cap, colors=color, lw=lw)


def metric_curves(ks, curves: dict, ylabel: str, band: tuple | None = None, threshold: float = 0.8, ax=None):
    """Mean curve per method over k; ``band`` = (low, high) of the random rankings."""
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, c in curves.items():
        ax.plot(ks, c, marker="o", ms=3, label=name)
    if band is not None:
        ax.fill_between(ks, band[0], band[1], color="grey", alpha=0.25, label="random 95% band")
    ax.axhline(threshold, color="k", ls="--", lw=0.8)
    ax.set_xscale("symlog", linthresh=1)
    ax.set(xlim=(0, max(ks)), xlabel="k (heads, symlog scale)", ylabel=ylabel)
    ax.legend()
    return ax.figure


METHOD_LABELS = {"attribution": "head attribution", "single_head": "single-head ablation",
                 "attention_weight": "attention weight (final token)", "attention_weight_text": "attention weight (text)",
                 "attribution_patching": "attribution patching", "random": "random",
                 "attention_weight_value": "attention weight x value norm"}
