"""Chapter 4's figures: held-out faithfulness and completeness curves per ranking.

Each function returns a matplotlib figure; notebooks save it with
:func:`headflow.book.outputs.save_figure`, which also shows it inline."""
from __future__ import annotations

import numpy as np

from headflow.book.figures.style import METHOD_LABELS, plt


def _judged(ks, curve):
    """The points of ``curve`` that were judged (an adaptive design leaves the others nan)."""
    c = np.asarray(curve, float)
    ok = np.isfinite(c)
    return np.asarray(ks)[ok], c[ok]


def heldout_curves(summary: dict, key: str = "heldout", title: str = "rankings fitted on other images"):
    """Faithfulness and completeness vs k (aggregated over images by the one rule); each method's
    per-class spread (25-75% over classes) as a band; random: mean and 95% band over draws."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), sharey=True)
    for ax, metric in zip(axes, ("faithfulness", "completeness")):
        res = summary[key][metric]
        for i, (m, r) in enumerate(res.items()):
            if m == "random":
                continue
            ks, curve = _judged(summary["ks"], r["curve"])  # adaptive design: through the judged k
            ax.plot(ks, curve, color=f"C{i}", lw=1.8, label=METHOD_LABELS.get(m, m))
            if "per_class" in r and len(r["per_class"]) > 1:
                lo, hi = np.quantile(np.stack(list(r["per_class"].values())), [0.25, 0.75], axis=0)
                ok = np.isfinite(np.asarray(r["curve"], float))
                ax.fill_between(ks, lo[ok], hi[ok], color=f"C{i}", alpha=0.12, lw=0)
        if "random" in res:
            r = res["random"]
            ks, curve = _judged(summary["ks_random"], r["curve"])
            ok = np.isfinite(np.asarray(r["curve"], float))
            ax.plot(ks, curve, color="0.4", ls="--", label="random (mean; band: 95% of draws)")
            ax.fill_between(ks, np.asarray(r["band"][0])[ok], np.asarray(r["band"][1])[ok], color="0.6", alpha=0.25, lw=0)
        ax.axhline(summary["threshold"], color="k", ls=":", lw=1)
        ax.set(xlabel=f"k: top heads {'kept' if metric == 'faithfulness' else 'ablated'}", title=metric)
        ax.set_xlim(0, max(summary["ks"]))
    axes[0].set_ylabel("ratio of sums per class, mean over classes")
    axes[1].legend(loc="upper left", fontsize=10)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
