"""Chapter 9's figures: overlaps of top heads across settings, interactions.

Each function returns a matplotlib figure; notebooks save it with
:func:`headflow.book.outputs.save_figure`, which also shows it inline."""
from __future__ import annotations

import numpy as np

from headflow.book.figures.style import interval, plt


# ------------------------------------------------------------------------------------ chapter 9
def sensitivity_overlaps(rows: list[dict], ks):
    """Per setting: the top-k overlap with the reference at each k (the mask-seed row, the noise
    floor, drawn as a band) and the Spearman rho of the global maps, with 95% intervals; a filled
    marker where the setting moves the top heads beyond the noise floor (Holm)."""
    rows = [r for r in rows if r["factor"] != "reference"]
    labels = [f"{r['factor']} = {r['value']}" for r in rows]
    ks = [str(k) for k in ks]
    fig, axes = plt.subplots(1, len(ks) + 1, figsize=(4.6 * (len(ks) + 1), 0.42 * len(rows) + 1.6), sharey=True)
    y = np.arange(len(rows))
    for ax, k in zip(axes, ks):
        v = np.array([r["topk_overlap"][k] for r in rows])
        ci = np.array([r["topk_overlap_ci"][k] for r in rows])
        moves = np.array([bool((r.get("against_noise") or {}).get(k, {}).get("moves")) for r in rows])
        floor = next((r for r in rows if r["factor"] == "seed"), None)
        if floor is not None:
            ax.axvspan(*floor["topk_overlap_ci"][k], color="0.85", zorder=0, label="mask seed (noise floor)")
        ax.plot(v[~moves], y[~moves], "o", mfc="white", color="C0", label="within the noise floor")
        ax.plot(v[moves], y[moves], "o", color="C3", label="moves the top heads (Holm)")
        interval(ax, y, ci[:, 0], ci[:, 1], horizontal=True, color="C0")
        ax.set(xlabel=f"top-{k} overlap with the reference", xlim=(-0.05, 1.05))
    axes[0].legend(fontsize=8, loc="lower left")
    v = np.array([r["spearman"] for r in rows])
    ci = np.array([r["spearman_ci"] for r in rows])
    axes[-1].plot(v, y, "o", color="C0")
    interval(axes[-1], y, ci[:, 0], ci[:, 1], horizontal=True, color="C0")
    axes[-1].set(xlabel="Spearman rho of the global maps", xlim=(-0.05, 1.05))
    axes[0].set_yticks(y, labels)
    axes[0].invert_yaxis()
    fig.tight_layout()
    return fig


def interaction_plots(inter: dict):
    """Left: pair ablations of the top heads against the sum of single-head losses and of the
    attributions (reference rate); right: the share of the linear fit's unexplained variance that
    pairwise terms remove, per ablation rate, with 95% intervals."""
    pe = inter["pairs"]
    ref = 0.5 if 0.5 in pe["linear"] else next(iter(pe["linear"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    a, lin, add = pe["actual"].ravel(), pe["linear"][ref].ravel(), pe["additive"].ravel()
    axes[0].scatter(lin, a, s=8, alpha=0.5, label=f"attributions at rate {ref} (R^2 = {inter['linear_r2']:.2f})")
    axes[0].scatter(add, a, s=8, alpha=0.5, label=f"sum of single ablations (R^2 = {inter['additive_r2']:.2f})")
    lim = [min(a.min(), lin.min(), add.min()), max(a.max(), lin.max(), add.max())]
    axes[0].plot(lim, lim, "k--", lw=1)
    axes[0].set(xlabel="predicted loss of the pair / image effect", ylabel="actual loss / image effect",
                title=f"pairs of the top {len(inter['heads'])} heads")
    axes[0].legend(fontsize=9)
    rates = list(inter["second_order_share"])
    v = np.array([inter["second_order_share"][r]["share"] for r in rates])
    ci = np.array([inter["second_order_share"][r]["ci"] for r in rates])
    x = np.arange(len(rates))
    axes[1].bar(x, v, color="C2")
    interval(axes[1], x, ci[:, 0], ci[:, 1])
    axes[1].axhline(0.25, color="k", ls=":", lw=1, label="rule: below 1/4")
    axes[1].set_xticks(x, [f"rate {r}" for r in rates])
    axes[1].set(ylabel="share of 1 - R^2 removed", title="pairwise terms, held-out")
    axes[1].legend(fontsize=9)
    fig.tight_layout()
    return fig
