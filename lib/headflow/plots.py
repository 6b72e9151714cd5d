"""Figures.  Each function returns a matplotlib figure; notebooks save it with
:func:`headflow.outputs.save_figure`, which also shows it inline."""
from __future__ import annotations

from typing import Sequence

import matplotlib

if not matplotlib.get_backend().lower().startswith(("module://matplotlib_inline", "module://ipykernel")):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

GROUP_COLORS = {"system": "#bbbbbb", "image": "#8fb3d9", "object": "#d9534f", "background": "#8fb3d9",
                "question": "#5cb85c", "role": "#f0ad4e", "final": "#9b59b6"}


def scene_grid(images: Sequence[np.ndarray], titles: Sequence[str], ncols: int = 8, scale: float = 1.3):
    """Images ``(H, W, 3) uint8`` in a grid with a title each."""
    n = len(images)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * scale, nrows * scale * 1.15), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, t in zip(axes.flat, images, titles):
        ax.imshow(img)
        ax.set_title(t, fontsize=7)
    fig.tight_layout()
    return fig


def training_curves(log: dict):
    """Stage 1 probe accuracy and stage 2 held-out accuracy per question type, over wall minutes."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    vis = log["vision_stage"]
    llv = log["llava_stage"]
    t_off = log.get("vision_minutes", vis[-1]["minutes"] if vis else 0)
    axes[0].plot([r["minutes"] for r in vis], [r["probe_object"] for r in vis], "o-", label="object (probe)")
    axes[0].plot([r["minutes"] for r in vis], [r["probe_color"] for r in vis], "s-", label="colour (probe)")
    axes[0].set(title="stage 1: vision tower, linear probes", xlabel="minutes", ylabel="held-out accuracy", ylim=(0, 1))
    axes[0].legend(fontsize=8)
    for q, m in (("object", "o-"), ("color", "s-"), ("position", "^-")):
        axes[1].plot([t_off + r["minutes"] for r in llv], [r[q] for r in llv], m, label=q)
    axes[1].set(title="stage 2: whole LLaVA, held-out answers", xlabel="minutes since start", ylim=(0, 1))
    axes[1].legend(fontsize=8)
    axes[2].plot([r["minutes"] for r in vis], [r["loss"] for r in vis], label="stage 1 (class + colour CE)")
    axes[2].plot([t_off + r["minutes"] for r in llv], [r["loss"] for r in llv], label="stage 2 (answer CE)")
    axes[2].set(title="training loss (at evaluation steps)", xlabel="minutes since start", yscale="log")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return fig


def accuracy_bars(acc: dict, per_class: dict | None = None, bars: dict | None = None):
    """Accuracy per question type (with the issue's bars as dashes), and per class."""
    ncol = 2 if per_class else 1
    fig, axes = plt.subplots(1, ncol, figsize=(5 * ncol + 2 * bool(per_class), 3.2), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 2] if per_class else [1]})
    ax = axes[0, 0]
    names = list(acc)
    ax.bar(names, [acc[n] for n in names], color=sns.color_palette("deep", len(names)))
    for i, n in enumerate(names):
        ax.text(i, acc[n] + 0.01, f"{acc[n]:.1%}", ha="center", fontsize=8)
        if bars and n in bars:
            ax.hlines(bars[n], i - 0.4, i + 0.4, colors="k", linestyles="--", linewidth=1)
    ax.set(ylim=(0, 1.08), ylabel="accuracy", title="per question type")
    if per_class:
        ax = axes[0, 1]
        ax.bar(list(per_class), list(per_class.values()), color="#4c72b0")
        ax.set(ylim=(0, 1.05), title="object question, per class")
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return fig


def confusion(matrix: np.ndarray, labels: Sequence[str], title: str = "confusion (rows: true, columns: predicted)"):
    """Row-normalised confusion matrix."""
    m = np.asarray(matrix, float)
    m = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    sns.heatmap(m, annot=True, fmt=".2f", cmap="Blues", xticklabels=labels, yticklabels=labels, ax=ax,
                cbar=False, annot_kws={"fontsize": 7})
    ax.set(title=title, xlabel="predicted", ylabel="true")
    fig.tight_layout()
    return fig


def token_strip(groups, max_image: int = 3):
    """The prompt's tokens coloured by group; the image run is shortened to ``max_image`` tokens."""
    labels = groups.label_of()
    shown, i = [], 0
    while i < len(labels):
        if labels[i] in ("image", "object", "background"):
            j = i
            while j < len(labels) and labels[j] in ("image", "object", "background"):
                j += 1
            shown.append((f"<image> x{j - i}\n[{i}..{j - 1}]", "image"))
            i = j
        else:
            shown.append((f"{groups.tokens[i]}\n[{i}]", labels[i]))
            i += 1
    fig, ax = plt.subplots(figsize=(min(1.0 * len(shown) + 1, 22), 1.6))
    for k, (text, lab) in enumerate(shown):
        ax.add_patch(plt.Rectangle((k, 0), 0.95, 1, color=GROUP_COLORS[lab]))
        ax.text(k + 0.47, 0.5, text, ha="center", va="center", fontsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=GROUP_COLORS[g]) for g in ("system", "image", "question", "role", "final")]
    ax.legend(handles, ["system", "image", "question", "role", "final (also role)"], ncol=5, fontsize=7,
              loc="upper center", bbox_to_anchor=(0.5, -0.05), frameon=False)
    ax.set(xlim=(0, len(shown)), ylim=(0, 1))
    ax.axis("off")
    fig.tight_layout()
    return fig


def patch_overlay(image: np.ndarray, groups, title: str = "image tokens: object (red) vs background"):
    """The image with its token grid; object tokens outlined in red, with the mask share."""
    rows, cols = groups.grid
    h, w = image.shape[:2]
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.6))
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=9)
    axes[1].imshow(image)
    frac = groups.object_fraction
    for r in range(rows):
        for c in range(cols):
            y0, x0 = r * h / rows, c * w / cols
            on = frac[r, c] > 0
            axes[1].add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), w / cols, h / rows, fill=on, alpha=0.35 if on else 1,
                                            facecolor="#d9534f", edgecolor="#d9534f" if on else "white",
                                            linewidth=0.6))
    axes[1].set_title(title, fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return fig


def logit_hist(y: np.ndarray, correct: np.ndarray, xlabel: str = "answer logit y (clean)"):
    """Histogram of the target logit, split by correct / wrong answers."""
    fig, ax = plt.subplots(figsize=(6, 3))
    bins = np.linspace(float(np.min(y)), float(np.max(y)), 30)
    ax.hist(y[correct], bins=bins, alpha=0.7, label=f"correct ({int(correct.sum())})")
    ax.hist(y[~correct], bins=bins, alpha=0.7, label=f"wrong ({int((~correct).sum())})")
    ax.set(xlabel=xlabel, ylabel="images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


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


def class_head_maps(maps: dict, ncols: int = 5, vlim: float | None = None):
    """One small layers x heads map per class, on a shared colour scale."""
    names = list(maps)
    nrows = int(np.ceil(len(names) / ncols))
    vlim = vlim or max(float(np.abs(m).max()) for m in maps.values())
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.3 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, n in zip(axes.flat, names):
        ax.axis("on")
        sns.heatmap(maps[n], ax=ax, cmap="RdBu_r", center=0, vmin=-vlim, vmax=vlim, cbar=False, xticklabels=False,
                    yticklabels=False)
        ax.set_title(n, fontsize=9)
    fig.tight_layout()
    return fig


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
    ax.legend(fontsize=7)
    return ax.figure


def fit_scatter(pred: np.ndarray, actual: np.ndarray, title: str):
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    ax.scatter(actual, pred, s=6, alpha=0.6)
    lo, hi = float(min(actual.min(), pred.min())), float(max(actual.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set(xlabel="actual y (held out)", ylabel="predicted y", title=title)
    fig.tight_layout()
    return fig
