"""Chapters 2-3's figures: head maps per class, fit quality, redundancy.

Each function returns a matplotlib figure; notebooks save it with
:func:`headflow.book.outputs.save_figure`, which also shows it inline."""
from __future__ import annotations

import numpy as np

from headflow.book.figures.style import plt


def class_head_maps(maps: dict, ncols: int = 5, vlim: float | None = None, counts: dict | None = None,
                    cbar_label: str = "logit lost when ablated"):
    """One layers x heads map per class on one shared colour scale (one colour bar), with layer and
    head ticks and, if ``counts`` is given, the number of images behind each map."""
    names = list(maps)
    nrows = int(np.ceil(len(names) / ncols))
    vlim = vlim or max(float(np.abs(m).max()) for m in maps.values())
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.9 * ncols + 1.2, 2.7 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    im = None
    for i, (ax, n) in enumerate(zip(axes.flat, names)):
        ax.axis("on")
        m = np.asarray(maps[n])
        im = ax.imshow(m, cmap="RdBu_r", vmin=-vlim, vmax=vlim, aspect="auto")
        ax.set_xticks(range(0, m.shape[1], max(1, m.shape[1] // 4)))
        ax.set_yticks(range(0, m.shape[0], max(1, m.shape[0] // 4)))
        ax.tick_params(labelsize=8)
        ax.set_title(n + (f" ({counts[n]} images)" if counts and n in counts else ""), fontsize=9)
        if i % ncols == 0:
            ax.set_ylabel("layer", fontsize=9)
        if i // ncols == nrows - 1 or i + ncols >= len(names):
            ax.set_xlabel("head", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.92, 1))
    cax = fig.add_axes((0.93, 0.15, 0.012, 0.7))
    fig.colorbar(im, cax=cax, label=cbar_label)
    return fig


def fit_scatter(pred: np.ndarray, actual: np.ndarray, title: str):
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    ax.scatter(actual, pred, s=6, alpha=0.6)
    lo, hi = float(min(actual.min(), pred.min())), float(max(actual.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set(xlabel="actual y (held out)", ylabel="predicted y", title=title)
    fig.tight_layout()
    return fig


def fit_quality(df, n_images: int):
    """Median held-out r and R^2 vs masks per image (under-determined fits marked) and vs rate."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    m = df[df.panel == "masks"]
    for col, mk in (("r", "o-"), ("R2", "s--")):
        axes[0].plot(m.masks, m[col], mk, label=f"median held-out {col.replace('R2', 'R²')}")
    under = m[m.under_determined]
    if len(under):
        axes[0].axvspan(m.masks.min() * 0.9, under.masks.max() * 1.05, color="0.9", zorder=0,
                        label="fewer training masks than parameters (ridge)")
    axes[0].set(xscale="log", xlabel="masks per image (first m of the same runs)", ylabel="held-out fit quality",
                title=f"vs masks ({n_images} images)")
    axes[0].legend(loc="lower right")
    r = df[df.panel == "rate"]
    for col, mk in (("r", "o-"), ("R2", "s--")):
        axes[1].plot(r.rate, r[col], mk, label=f"median held-out {col.replace('R2', 'R²')}")
    axes[1].set(xlabel="ablation rate (probability each head is ablated)",
                title=f"vs ablation rate (same {n_images} images)")
    axes[1].legend(loc="lower right")
    fig.tight_layout()
    return fig


def redundancy_maps(report: dict):
    """Attribution and single-head scores (normalised, class-equal mean) on the planted redundant
    pair's model, with the pair circled."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, key, title in ((axes[0], "attribution_map", "head attribution"),
                           (axes[1], "single_head_map", "single-head ablation")):
        m = np.asarray(report[key])
        vlim = max(float(np.abs(m).max()), 1e-9)
        im = ax.imshow(m, cmap="RdBu_r", vmin=-vlim, vmax=vlim, aspect="auto")
        for layer, head in report["pair"]:
            ax.scatter([head], [layer], s=260, facecolors="none", edgecolors="k", linewidths=1.8)
        ax.set(xlabel="head", ylabel="layer", title=f"{title} (pair circled)")
        fig.colorbar(im, ax=ax, label="share of the image effect")
    fig.tight_layout()
    return fig


def single_vs_all(single: dict, joint: dict):
    """Left: every head's single effect over its image's all-heads effect; right: per image, the
    largest single head and the sum over single heads against the all-heads effect."""
    keys = [k for k, j in joint.items() if j > 0]
    S = np.stack([single[k].ravel() for k in keys])
    J = np.array([joint[k] for k in keys])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    axes[0].hist((S / J[:, None]).ravel(), bins=40)
    axes[0].set(xlabel="single-head effect / all-heads effect", ylabel="heads x images", yscale="log",
                title="one head ablated, relative to all")
    axes[1].scatter(J, S.max(1), s=14, label="largest single head")
    axes[1].scatter(J, S.sum(1), s=14, label="sum over single heads")
    lim = [0, float(max(J.max(), S.sum(1).max())) * 1.05]
    axes[1].plot(lim, lim, "k--", lw=0.8)
    axes[1].set(xlabel="logit lost, all heads ablated", ylabel="logit lost", title="per image")
    axes[1].legend()
    fig.tight_layout()
    return fig


def redundancy_curve(red):
    """Median over images of the logit lost by k random heads ablated together vs the sum of their
    single effects (both over the all-heads effect)."""
    by_k = red.groupby("k")[["sum_of_singles", "joint"]].median()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(by_k.index, by_k["joint"], "o-", label="ablated together")
    ax.plot(by_k.index, by_k["sum_of_singles"], "s-", label="sum of single-head effects")
    ax.set(xscale="log", xlabel="k random heads ablated", ylabel="logit lost / all-heads effect")
    ax.legend()
    fig.tight_layout()
    return fig
