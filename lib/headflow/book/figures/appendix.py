"""Appendices' figures: planted-head precision (validation), the performance comparison.

Each function returns a matplotlib figure; notebooks save it with
:func:`headflow.book.outputs.save_figure`, which also shows it inline."""
from __future__ import annotations

import numpy as np

from headflow.book.figures.style import METHOD_LABELS, interval, plt


def planted_precision(rows: list[dict], n_total: int, mask_counts):
    """Left: precision at |S| per planted size and method (each planting a dot with its interval;
    dashes: random expectation).  Right: attribution's mean precision vs masks per image."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.5, 1]})
    sizes = sorted({r["size"] for r in rows})
    methods = [m for m in ("attribution", "single_head", "attribution_patching", "attention_weight_value")
               if any(r["method"] == m for r in rows)]
    width = 0.8 / len(methods)
    for j, method in enumerate(methods):
        for i, s in enumerate(sizes):
            sel = [r for r in rows if r["size"] == s and r["method"] == method]
            for n, r in enumerate(sel):
                x = i - 0.4 + (j + 0.5) * width + (n - (len(sel) - 1) / 2) * width / (len(sel) + 1)
                axes[0].plot(x, r["precision"], "o", color=f"C{j}", ms=5,
                             label=METHOD_LABELS.get(method) if i == n == 0 else None)
                interval(axes[0], x, r["ci"][0], r["ci"][1], color=f"C{j}", cap=0.02)
            axes[0].hlines(s / n_total, i - 0.4, i + 0.4, colors="0.4", linestyles="--",
                           label="random expectation" if i == j == 0 else None)
    axes[0].set_xticks(range(len(sizes)), [f"|S| = {s}" for s in sizes])
    axes[0].set(ylabel="precision at |S| (95% CI)", ylim=(-0.02, 1.05), title="planted flow: recovery")
    axes[0].legend(loc="lower left", fontsize=9, ncol=2)
    for i, s in enumerate(sizes):
        ys = [np.mean([r["precision"] for r in rows if r["size"] == s and r["method"] == f"attribution@{m}"])
              for m in mask_counts]
        axes[1].plot(mask_counts, ys, "o-", color=f"C{i + 2}", label=f"|S| = {s}")
    axes[1].axhline(0.9, color="k", ls=":", lw=1)
    axes[1].set(xscale="log", xlabel="masks per image", ylabel="mean precision at |S|", ylim=(-0.02, 1.05),
                title="attribution: masks needed")
    axes[1].set_xticks(list(mask_counts), [str(m) for m in mask_counts])
    axes[1].minorticks_off()
    axes[1].legend(loc="lower right")
    fig.tight_layout()
    return fig


def performance_bars(perf: dict, methods=("naive", "plain", "batched", "nnsight_same", "fast")):
    """Milliseconds per mask of each method on each model (log scale), min-max bars."""
    names = list(perf["details"])
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    w = 0.8 / len(methods)
    for i, m in enumerate(methods):
        rows = [perf["details"][n].get(m) for n in names]
        med = np.array([1e3 * r["median"] if r else np.nan for r in rows])
        lo = np.array([1e3 * r["min"] if r else np.nan for r in rows])
        hi = np.array([1e3 * r["max"] if r else np.nan for r in rows])
        ax.bar(np.arange(len(names)) + i * w, med, w, yerr=np.nan_to_num([med - lo, hi - med]),
               label=m.replace("_", " "))
    ax.set(xticks=np.arange(len(names)) + 0.4 - w / 2, xticklabels=names, yscale="log",
           ylabel="ms per mask (log; min-max bars)")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    return fig


def masks_needed(sim: dict):
    """Left: masks per image needed for precision at |S| >= the threshold against the number of
    heads, per regression (open markers at the top: not reached on the grid; grey: 1 and 4 masks
    per head).  Right: precision against masks per head at the largest head count."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    heads = sorted(int(h) for h in sim["heads"])
    top = max(max(d["masks"]) for d in sim["heads"].values()) * 1.6
    for j, m in enumerate(("ols", "ridge", "lasso")):
        need = [sim["heads"][str(h)][m]["masks_needed"] for h in heads]
        axes[0].plot([h for h, n in zip(heads, need) if n], [n for n in need if n], "o-", color=f"C{j}", label=m)
        miss = [h for h, n in zip(heads, need) if not n]
        axes[0].plot(miss, [top] * len(miss), "o", mfc="none", color=f"C{j}")
        d = sim["heads"][str(heads[-1])]
        axes[1].plot(np.array(d["masks"]) / heads[-1], d[m]["precision"], "o-", color=f"C{j}", label=m)
    for k, ls in ((1, ":"), (4, "--")):
        axes[0].plot(heads, [k * h for h in heads], ls, color="0.6", lw=1, label=f"{k} mask{'s' if k > 1 else ''} per head")
    axes[0].set(xscale="log", yscale="log", xlabel="heads (layers x heads)",
                ylabel=f"masks for precision at |S| >= {sim['threshold']}")
    axes[0].legend(title="regression", fontsize=8)
    axes[1].axhline(sim["threshold"], color="0.5", ls="--")
    axes[1].set(xscale="log", xlabel=f"masks per head ({heads[-1]} heads)", ylabel="precision at |S|", ylim=(0, 1.05))
    axes[1].set_xticks(sim["per_head"], [f"{f:g}" for f in sim["per_head"]])
    axes[1].minorticks_off()
    axes[1].legend(title="regression")
    fig.suptitle(f"{len(sim['weights'])} planted heads with the organism's effect sizes and noise (SD {sim['noise']:.3f} "
                 "of the image effect)\nOLS is refused below one training mask per parameter: its first point is "
                 "its first well-posed grid point")
    fig.tight_layout()
    return fig
