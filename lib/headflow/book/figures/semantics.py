"""Chapter 6's figures: same- vs different-class similarity, the permutation null, probes, transfer.

Each function returns a matplotlib figure; notebooks save it with
:func:`headflow.book.outputs.save_figure`, which also shows it inline."""
from __future__ import annotations

import seaborn as sns

from headflow.book.figures.style import interval, plt


# ------------------------------------------------------------------------------------ chapter 6
def similarity_distributions(res: dict):
    """Per measure, the similarity of same-class pairs (different item and appearance) and of
    different-class pairs of one appearance; dashed: noise ceiling (cosine) or chance (top-k)."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4))
    titles = {"cosine": "cosine", "spearman": "Spearman rho", "topk": f"top-{res['k']} overlap"}
    for ax, (m, d) in zip(axes, res["pairs"].items()):
        for i, (kind, v) in enumerate(d.items()):
            ax.hist(v, bins=30, alpha=0.55, density=True, color=f"C{i}", label=f"{kind} ({len(v)} pairs)")
            ax.axvline(v.mean(), color=f"C{i}", lw=2)
        if m == "cosine":
            ax.axvline(res["ceiling"].mean(), color="k", ls="--", lw=1.5, label="noise ceiling")
        if m == "topk":
            ax.axvline(res["chance_topk"], color="0.4", ls=":", lw=1.5, label="chance")
        ax.set(xlabel=titles[m], ylabel="density", title=titles[m])
    axes[0].legend(loc="upper left", fontsize=10)
    axes[2].legend(loc="upper right", fontsize=10)
    fig.tight_layout()
    return fig


def permutation_null(perm: dict):
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.hist(perm["null"], bins=40, color="0.6", label=f"class labels permuted over items ({perm['n_perm']})")
    ax.axvline(perm["observed"], color="C3", lw=2, label=f"observed (p = {perm['p']:.3f})")
    ax.set(xlabel="mean cosine: same class - same appearance", ylabel="permutations")
    ax.legend(fontsize=10)
    fig.tight_layout()
    return fig


def probes_and_embedding(res: dict):
    """Left: probe accuracy (Wilson 95% CI) vs chance, for class and appearance.  Middle and right:
    2-D PCA of the attribution vectors coloured by class and by appearance."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), gridspec_kw={"width_ratios": [0.7, 1, 1]})
    for i, (name, p) in enumerate(res["probe"].items()):
        axes[0].bar(i, p["accuracy"], color=f"C{i}")
        interval(axes[0], i, p["ci"][0], p["ci"][1])
        axes[0].hlines(p["chance"], i - 0.4, i + 0.4, colors="k", linestyles="--",
                       label="chance (largest label share)" if i == 0 else None)
    axes[0].set_xticks([0, 1], ["class", "appearance"])
    axes[0].set(ylabel="probe accuracy (item-grouped CV)", ylim=(0, 1.05), title="linear probes")
    axes[0].legend(fontsize=10, loc="upper right")
    E = res["embedding"]
    for ax, labels, title in ((axes[1], res["classes"], "PCA, by class"),
                              (axes[2], res["appearances"], "PCA, by appearance")):
        names = sorted(set(labels))
        pal = sns.color_palette("tab10", len(names))
        for c, name in zip(pal, names):
            sel = labels == name
            ax.scatter(E[sel, 0], E[sel, 1], s=18, color=c, label=name)
        ax.set(xlabel="PC 1", ylabel="PC 2", title=title)
        ax.legend(fontsize=8, ncol=2, loc="best", markerscale=1.2)
    fig.tight_layout()
    return fig


def transfer_bars(tr: dict):
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (v, ci) in enumerate(((tr["same"], tr["same_ci"]), (tr["other"], tr["other_ci"]))):
        ax.bar(i, v, color=f"C{i}")
        interval(ax, i, ci[0], ci[1])
    ax.set_xticks([0, 1], ["own class's\nhead set", "other classes'\nhead sets"])
    ax.set(ylabel=f"faithfulness of the top-{tr['k']} heads\n(held-out items, 95% CI)", ylim=(0, None),
           title="class head sets on held-out items")
    fig.tight_layout()
    return fig
