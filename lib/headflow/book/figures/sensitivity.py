"""Chapter 9's figures: overlaps of top heads across settings, interactions.

Each function returns a matplotlib figure; notebooks save it with
:func:`headflow.book.outputs.save_figure`, which also shows it inline."""
from __future__ import annotations

import numpy as np

from headflow.book.figures.style import interval, plt


# ------------------------------------------------------------------------------------ chapter 9
def sensitivity_overlaps(rows: list[dict], k: int):
    rows = [r for r in rows if r["factor"] != "reference"]
    labels = [f"{r['factor']} = {r['value']}" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(rows) + 1.6), sharey=True)
    for ax, key, xlabel in ((axes[0], "topk_overlap", f"top-{k} overlap with the reference"),
                            (axes[1], "spearman", "Spearman rho of the global maps")):
        v = np.array([r[key] for r in rows])
        ci = np.array([r[f"{key}_ci"] for r in rows])
        ax.plot(v, range(len(rows)), "o", color="C0")
        interval(ax, np.arange(len(rows)), ci[:, 0], ci[:, 1], horizontal=True, color="C0")
        ax.set(xlabel=xlabel, xlim=(-0.05, 1.05))
        ax.axvline(0.5, color="0.5", ls=":", lw=1)
    axes[0].set_yticks(range(len(rows)), labels)
    axes[0].invert_yaxis()
    fig.tight_layout()
    return fig


def interaction_plots(inter: dict):
    pe = inter["pairs"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    a, lin, add = pe["actual"].ravel(), pe["linear"].ravel(), pe["additive"].ravel()
    axes[0].scatter(lin, a, s=8, alpha=0.5, label=f"linear model (R^2 = {inter['linear_r2']:.2f})")
    axes[0].scatter(add, a, s=8, alpha=0.5, label=f"sum of single ablations (R^2 = {inter['additive_r2']:.2f})")
    lim = [min(a.min(), lin.min(), add.min()), max(a.max(), lin.max(), add.max())]
    axes[0].plot(lim, lim, "k--", lw=1)
    axes[0].set(xlabel="predicted loss of the pair / image effect", ylabel="actual loss / image effect",
                title=f"pairs of the top {len(inter['heads'])} heads")
    axes[0].legend(fontsize=9)
    axes[1].hist(inter["gains"], bins=20, color="C2")
    axes[1].axvline(np.median(inter["gains"]), color="k", lw=2, label="median")
    axes[1].set(xlabel="held-out R^2: second-order minus linear", ylabel="images", title="pairwise terms")
    axes[1].legend(fontsize=10)
    fig.tight_layout()
    return fig
