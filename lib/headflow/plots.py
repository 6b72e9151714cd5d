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

# Figures are shown at the book's text width (about 7.5 in); with widths of at most 11 in these
# sizes stay at or above ~9 pt on the page.
plt.rcParams.update({"font.size": 13, "axes.titlesize": 13, "axes.labelsize": 13, "xtick.labelsize": 12,
                     "ytick.labelsize": 12, "legend.fontsize": 11, "figure.titlesize": 14})

GROUP_COLORS = {"system": "#bbbbbb", "image": "#8fb3d9", "object": "#d9534f", "background": "#8fb3d9",
                "question": "#5cb85c", "role": "#f0ad4e", "final": "#9b59b6"}


def scene_grid(images: Sequence[np.ndarray], titles: Sequence[str], ncols: int = 8, scale: float = 1.7):
    """Images ``(H, W, 3) uint8`` in a grid with a title each."""
    n = len(images)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * scale, nrows * scale * 1.15), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, t in zip(axes.flat, images, titles):
        ax.imshow(img)
        ax.set_title(t, fontsize=9)
    fig.tight_layout()
    return fig


STAGE_METRICS = {"vision": {"probe_object": "object (probe)", "probe_color": "colour (probe)"},
                 "text": {"retrieval": "text retrieval"},
                 "align": {"object": "object", "color": "colour", "position": "position"},
                 "llava": {"object": "object", "color": "colour", "position": "position"}}
_METRIC_STYLE = {"object (probe)": ("C0", "o", ":"), "colour (probe)": ("C1", "s", ":"), "text retrieval": ("C3", "D", "-"),
                 "object": ("C0", "o", "-"), "colour": ("C1", "s", "-"), "position": ("C2", "^", "-")}


def training_curves(logs: dict):
    """One row per organism: monitored accuracy and training loss over wall minutes, stage by stage
    (``logs``: name -> training log; stages in ``log["recipe"]["stages"]``, an inherited vision
    stage drawn before time 0)."""
    fig, axes = plt.subplots(len(logs), 2, figsize=(11, 4.2 * len(logs)), squeeze=False)
    for row, (name, log) in enumerate(logs.items()):
        stages = list(log["recipe"].get("stages", ("vision", "llava")))
        inherited = "vision" not in stages and log.get("vision_stage")
        order = (["vision"] if inherited else []) + stages
        t = -(log.get("vision_minutes") or 0) if inherited else 0.0
        ax_acc, ax_loss = axes[row]
        labelled = set()
        for stage in order:
            rows = log.get(f"{stage}_stage") or []
            if not rows:
                continue
            mins = [t + r["minutes"] for r in rows]
            ax_acc.axvspan(t, mins[-1], color="0.93" if stage in ("vision", "align") else "white", zorder=0)
            ax_acc.text((t + mins[-1]) / 2, 1.02, stage + (" (inherited)" if stage == "vision" and inherited else ""),
                        ha="center", va="bottom", fontsize=9, transform=ax_acc.get_xaxis_transform())
            for key, label in STAGE_METRICS[stage].items():
                c, m, ls = _METRIC_STYLE[label]
                ax_acc.plot(mins, [r[key] for r in rows], color=c, marker=m, ls=ls, ms=4,
                            label=None if label in labelled else label)
                labelled.add(label)
            ax_loss.plot(mins, [r["loss"] for r in rows], "o-", ms=3, label=stage)
            t = t + (log.get(f"{stage}_minutes") or rows[-1]["minutes"])
        ax_acc.set(xlabel="wall minutes (0: own training starts)", ylabel="monitored accuracy", ylim=(0, 1.0))
        ax_acc.set_title(name, loc="left", fontsize=11, pad=16)
        ax_acc.legend(loc="lower right")
        ax_loss.set(xlabel="wall minutes", ylabel="training loss (CE)", yscale="log")
        ax_loss.legend()
    fig.tight_layout()
    return fig


def accuracy_comparison(runs: dict, bars: dict | None = None, classes: Sequence[str] | None = None):
    """Left: accuracy per question type with 95% intervals, one bar per organism and evaluation set
    (``runs``: organism -> set name -> :func:`headflow.evaluate.scene_accuracy` result), the bars as
    dashes.  Right: object accuracy per class on each organism's last set."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), gridspec_kw={"width_ratios": [1, 1.6]})
    ax = axes[0]
    series = [(f"{m}, {s}", r) for m, sets in runs.items() for s, r in sets.items()]
    qs = list(series[0][1]["accuracy"])
    width = 0.8 / len(series)
    for i, (label, r) in enumerate(series):
        x = np.arange(len(qs)) + (i - (len(series) - 1) / 2) * width
        acc = np.array([r["accuracy"][q] for q in qs])
        lo = np.clip(acc - np.array([r["ci"][q][0] for q in qs]), 0, None)  # float error at 0 or 100%
        hi = np.clip(np.array([r["ci"][q][1] for q in qs]) - acc, 0, None)
        ax.bar(x, acc, width, yerr=[lo, hi], capsize=2, label=label, color=sns.color_palette("deep", len(series))[i])
    for j, q in enumerate(qs):
        if bars and q in bars:
            ax.hlines(bars[q], j - 0.45, j + 0.45, colors="k", linestyles="--", lw=1)
    ax.set_xticks(range(len(qs)), qs)
    ax.set(ylabel="held-out accuracy (95% CI)", ylim=(0, 1.05), title="accuracy per question")
    ax.legend(loc="lower left")
    ax = axes[1]
    if classes is not None:
        width = 0.8 / len(runs)
        for i, (m, sets) in enumerate(runs.items()):
            r = list(sets.values())[-1]
            lab, ok = r["labels"]["object"], r["correct"]["object"]
            acc = [ok[lab == c].mean() if (lab == c).any() else np.nan for c in range(len(classes))]
            ax.bar(np.arange(len(classes)) + (i - (len(runs) - 1) / 2) * width, acc, width, label=m)
        ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
        ax.set(ylabel="object accuracy", ylim=(0, 1.05), title="object accuracy per class (fresh seed)")
        ax.legend()
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
    fig, ax = plt.subplots(figsize=(min(1.3 * len(shown) + 1, 26), 1.9))
    for k, (text, lab) in enumerate(shown):
        ax.add_patch(plt.Rectangle((k, 0), 0.95, 1, color=GROUP_COLORS[lab]))
        ax.text(k + 0.47, 0.5, text, ha="center", va="center", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=GROUP_COLORS[g]) for g in ("system", "image", "question", "role", "final")]
    ax.legend(handles, ["system", "image", "question", "role", "final (also role)"], ncol=5, fontsize=9,
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
    ax.legend()
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


def fit_scatter(pred: np.ndarray, actual: np.ndarray, title: str):
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    ax.scatter(actual, pred, s=6, alpha=0.6)
    lo, hi = float(min(actual.min(), pred.min())), float(max(actual.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set(xlabel="actual y (held out)", ylabel="predicted y", title=title)
    fig.tight_layout()
    return fig


def layer_shares(results: dict):
    """Share of the positive normalised attribution per layer, one bar group per model, 95% CIs
    (``results``: name -> :func:`headflow.layers.summarise` output)."""
    fig, ax = plt.subplots(figsize=(10, 4.2))
    width = 0.8 / len(results)
    for i, (name, r) in enumerate(results.items()):
        share = np.asarray(r["share_per_layer"])
        lo, hi = np.asarray(r["share_per_layer_ci"]).T
        x = np.arange(len(share)) + (i - (len(results) - 1) / 2) * width
        ax.bar(x, share, width, yerr=[share - lo, hi - share], capsize=2, label=f"{name} ({r['n_images']} images)")
    ax.set_xticks(range(len(share)))
    ax.set(xlabel="layer", ylabel="share of attribution (95% CI)",
           title="where the normalised attribution sits (class-equal mean, positive part)")
    ax.legend()
    fig.tight_layout()
    return fig


def top_layers_by_cutoff(results: dict):
    """For each model and cut-off (share of heads called "top"), the share of the top heads in each
    layer, as a heat map with the counts written in."""
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.6), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        cuts = list(r["by_cutoff"])
        counts = np.array([r["by_cutoff"][c]["per_layer"] for c in cuts], float)
        frac = counts / counts.sum(1, keepdims=True)
        sns.heatmap(frac, ax=ax, vmin=0, vmax=1, cmap="Blues", annot=counts.astype(int), fmt="d",
                    cbar_kws={"label": "share of the top heads"},
                    yticklabels=[f"top {float(c):.0%} ({int(counts[i].sum())})" for i, c in enumerate(cuts)])
        ax.set(xlabel="layer", ylabel="cut-off (heads)", title=name)
    fig.tight_layout()
    return fig


def probe_curves(results: dict):
    """Class-probe accuracy by layer (0 = language-model input) for the final token and the mean
    image token, per model, with 95% intervals and chance."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, where, title in ((axes[0], "final", "final token"), (axes[1], "image_mean", "mean of the image tokens")):
        for name, r in results.items():
            p = r["probe_by_layer"]
            acc = np.asarray(p[where])
            lo, hi = np.asarray(p[where + "_ci"]).T
            x = np.arange(len(acc))
            ax.plot(x, acc, "o-", label=name)
            ax.fill_between(x, lo, hi, alpha=0.2)
        ax.axhline(p["chance"], color="k", ls=":", lw=1, label="chance (largest class)")
        ax.set(xlabel="residual stream after layer (0 = input)", title=title, ylim=(0, 1))
        ax.set_xticks(x)
    axes[0].set_ylabel("class-probe accuracy (5-fold CV)")
    axes[0].legend()
    fig.tight_layout()
    return fig


def proxies_vs_attribution(proxies: dict, attribution_map: np.ndarray):
    """Per head: each proxy's class-equal mean (``proxies[name]["class_mean"]``) vs the class-equal
    mean normalised attribution, coloured by layer, with Spearman rho and its interval."""
    fig, axes = plt.subplots(1, len(proxies), figsize=(5.3 * len(proxies), 4.4), squeeze=False, sharey=True)
    layer = np.repeat(np.arange(attribution_map.shape[0]), attribution_map.shape[1])
    for ax, (name, pr) in zip(axes[0], proxies.items()):
        sc = ax.scatter(np.ravel(pr["class_mean"]), attribution_map.ravel(), c=layer, cmap="viridis", s=22)
        ax.set(xlabel=f"{name}\n(final token -> image)",
               title=f"rho = {pr['rho']:.2f} [{pr['ci'][0]:.2f}, {pr['ci'][1]:.2f}]")
    axes[0, 0].set_ylabel("normalised attribution")
    fig.colorbar(sc, ax=axes[0].tolist(), label="layer")
    return fig


METHOD_LABELS = {"attribution": "head attribution", "single_head": "single-head ablation",
                 "attention_weight": "attention weight (final token)", "attention_weight_text": "attention weight (text)",
                 "attribution_patching": "attribution patching", "random": "random",
                 "attention_weight_value": "attention weight x value norm"}


def heldout_curves(summary: dict, key: str = "heldout", title: str = "rankings fitted on other images"):
    """Faithfulness and completeness vs k (aggregated over images by the one rule); each method's
    per-class spread (25-75% over classes) as a band; random: mean and 95% band over draws."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), sharey=True)
    for ax, metric in zip(axes, ("faithfulness", "completeness")):
        res = summary[key][metric]
        for i, (m, r) in enumerate(res.items()):
            if m == "random":
                continue
            ks = summary["ks"]
            ax.plot(ks, r["curve"], color=f"C{i}", lw=1.8, label=METHOD_LABELS.get(m, m))
            if "per_class" in r and len(r["per_class"]) > 1:
                lo, hi = np.quantile(np.stack(list(r["per_class"].values())), [0.25, 0.75], axis=0)
                ax.fill_between(ks, lo, hi, color=f"C{i}", alpha=0.12, lw=0)
        if "random" in res:
            r = res["random"]
            ax.plot(summary["ks_random"], r["curve"], color="0.4", ls="--", label="random (mean; band: 95% of draws)")
            ax.fill_between(summary["ks_random"], r["band"][0], r["band"][1], color="0.6", alpha=0.25, lw=0)
        ax.axhline(summary["threshold"], color="k", ls=":", lw=1)
        ax.set(xlabel=f"k: top heads {'kept' if metric == 'faithfulness' else 'ablated'}", title=metric)
        ax.set_xlim(0, max(summary["ks"]))
    axes[0].set_ylabel("ratio of sums per class, mean over classes")
    axes[1].legend(loc="upper left", fontsize=10)
    fig.suptitle(title)
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
                axes[0].errorbar(x, r["precision"], yerr=[[r["precision"] - r["ci"][0]], [r["ci"][1] - r["precision"]]],
                                 fmt="o", color=f"C{j}", ms=5, capsize=2,
                                 label=METHOD_LABELS.get(method) if i == n == 0 else None)
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
        fig.colorbar(im, ax=ax, label="share of the joint effect")
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


def class_layer_shares(results: dict):
    """Per model, each class's share of its normalised attribution per layer (rows: classes)."""
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.8), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        shares = r["per_class_share"]
        mat = np.stack(list(shares.values()))
        sns.heatmap(mat, ax=ax, vmin=0, vmax=1, cmap="Blues", yticklabels=list(shares),
                    cbar_kws={"label": "share of the class's attribution"})
        ax.set(xlabel="layer", title=name)
    fig.tight_layout()
    return fig


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
        axes[0].bar(i, p["accuracy"], color=f"C{i}", yerr=[[p["accuracy"] - p["ci"][0]], [p["ci"][1] - p["accuracy"]]],
                    capsize=4)
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
        ax.bar(i, v, color=f"C{i}", yerr=[[v - ci[0]], [ci[1] - v]], capsize=5)
    ax.set_xticks([0, 1], ["own class's\nhead set", "other classes'\nhead sets"])
    ax.set(ylabel=f"faithfulness of the top-{tr['k']} heads\n(held-out items, 95% CI)", ylim=(0, None),
           title="class head sets on held-out items")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------ chapter 7
def knockout_curves(out: dict):
    """Rows: questions; columns: flows.  Logit lost relative to the image effect per window
    (centre layer on the x axis), in all heads, the top heads and random heads (mean of the random
    sets); bands: 95% bootstrap interval over images (all heads) and 25-75% over classes (top)."""
    qs = list(out)
    flows = out[qs[0]]["summary"]["flows"]
    fig, axes = plt.subplots(len(qs), len(flows), figsize=(3.2 * len(flows), 2.9 * len(qs)), sharex=True, squeeze=False)
    for i, q in enumerate(qs):
        s = out[q]["summary"]
        c = np.array(s["centres"])
        sets = s["sets"]
        for j, f in enumerate(flows):
            ax = axes[i, j]
            all_i, top_i = sets.index("all heads"), sets.index("top heads")
            rnd = [n for n, name in enumerate(sets) if name.startswith("random")]
            ax.plot(c, s["curve"][j, :, all_i], "o-", color="C0", label="all heads")
            ax.fill_between(c, s["ci"][0][j, :, all_i], s["ci"][1][j, :, all_i], color="C0", alpha=0.2)
            ax.plot(c, s["curve"][j, :, top_i], "s-", color="C3", label="top heads of the question")
            ax.fill_between(c, s["band"][0][j, :, top_i], s["band"][1][j, :, top_i], color="C3", alpha=0.15)
            if rnd:
                ax.plot(c, s["curve"][j][:, rnd].mean(-1), "^--", color="0.4", label="random heads (same size)")
            ax.axhline(0, color="k", lw=0.6)
            if i == 0:
                ax.set_title(f.replace("->", " -> "), fontsize=12)
            if j == 0:
                k = out[q]["top"]["k"]
                ax.set_ylabel(f"{q} question (top {k} head{'s' if k > 1 else ''})\nlogit lost / image effect", fontsize=10)
            if i == len(qs) - 1:
                ax.set_xlabel("window centre (layer)", fontsize=11)
    axes[0, 0].legend(fontsize=9, loc="upper right")
    fig.tight_layout()
    return fig


def knockout_accuracy(out: dict):
    """Share of images still answered correctly under each flow's knockout in all heads."""
    qs = list(out)
    fig, axes = plt.subplots(1, len(qs), figsize=(5 * len(qs), 3.8), sharey=True, squeeze=False)
    for ax, q in zip(axes[0], qs):
        s = out[q]["summary"]
        c = np.array(s["centres"])
        for j, f in enumerate(s["flows"]):
            ax.plot(c, s["accuracy"][j, :, s["sets"].index("all heads")], "o-", label=f)
        ax.set(title=f"{q} question", xlabel="window centre (layer)", ylim=(-0.02, 1.02))
    axes[0, 0].set_ylabel("accuracy under the knockout\n(all heads)")
    axes[0, -1].legend(fontsize=9, loc="lower right")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------ chapter 8
def group_effects_bars(res: dict):
    names = res["names"][:4]
    agg, draws = res["aggregate"], res["draws"]
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for i, n in enumerate(names):
        v = agg["value"][i]
        lo, hi = np.quantile(draws[:, i], [0.025, 0.975])
        ax.bar(i, v, color=["C3", "C0", "C4", "0.6"][i], yerr=[[v - lo], [hi - v]], capsize=5)
    per_class = np.stack(list(agg["per_class"].values()))[:, :4]
    for i in range(4):
        ax.scatter(np.full(len(per_class), i) + np.linspace(-0.2, 0.2, len(per_class)), per_class[:, i], s=10,
                   color="k", alpha=0.5, zorder=3, label="per class" if i == 0 else None)
    ax.set_xticks(range(4), ["object", "background", "object +\nbackground", "random\n(object's size)"])
    ax.set(ylabel=f"logit lost / image effect\n(top {res['k']} heads, 95% CI)",
           title="ablating image keys/values at some positions only")
    ax.legend(fontsize=10)
    fig.tight_layout()
    return fig


def token_maps(st, res: dict, n: int = 4):
    """For ``n`` images: the image, its object tokens, and the token attribution on the patch grid."""
    keys = list(res["attribution"])[:n]
    task_of = {t.key: t for t in st.tasks}
    fig, axes = plt.subplots(3, n, figsize=(3.2 * n, 9.2), squeeze=False)
    for j, k in enumerate(keys):
        g = res["grids"][k]
        rows, cols = g["grid"]
        a = res["attribution"][k].reshape(rows, cols)
        axes[0, j].imshow(np.asarray(task_of[k].example.load_image()))
        axes[0, j].set_title(task_of[k].class_name, fontsize=12)
        axes[1, j].imshow(g["fraction"], cmap="Reds", vmin=0, vmax=1)
        axes[1, j].set_title("object share per token", fontsize=11)
        vlim = max(float(np.abs(a).max()), 1e-9)
        im = axes[2, j].imshow(a, cmap="RdBu_r", vmin=-vlim, vmax=vlim)
        axes[2, j].contour(res["object"][k].reshape(rows, cols), levels=[0.5], colors="k", linewidths=1)
        axes[2, j].set_title(f"token attribution (r = {res['fits'][k]['r']:.2f})", fontsize=11)
        fig.colorbar(im, ax=axes[2, j], fraction=0.046, pad=0.04, label="logit lost")
        for ax in axes[:, j]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return fig


def share_vs_area(res: dict):
    """Per class: share of positive token attribution on object tokens vs the object's share of tokens."""
    s = res["share"]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for c in s["per_class"]:
        ax.scatter(s["area_per_class"][c], s["per_class"][c], s=40)
        ax.annotate(c, (s["area_per_class"][c], s["per_class"][c]), fontsize=9, xytext=(3, 3), textcoords="offset points")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="attribution proportional to area")
    ax.set(xlabel="object tokens / image tokens", ylabel="object share of positive attribution", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=10, loc="lower right")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------ chapter 9
def sensitivity_overlaps(rows: list[dict], k: int):
    rows = [r for r in rows if r["factor"] != "reference"]
    labels = [f"{r['factor']} = {r['value']}" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(rows) + 1.6), sharey=True)
    for ax, key, xlabel in ((axes[0], "topk_overlap", f"top-{k} overlap with the reference"),
                            (axes[1], "spearman", "Spearman rho of the global maps")):
        v = np.array([r[key] for r in rows])
        ci = np.array([r[f"{key}_ci"] for r in rows])
        ax.errorbar(v, range(len(rows)), xerr=[v - ci[:, 0], ci[:, 1] - v], fmt="o", capsize=3)
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
