"""Chapter 5's figures: where the heads are (layer shares, top heads, probes, proxies).

Each function returns a matplotlib figure; notebooks save it with
:func:`headflow.book.outputs.save_figure`, which also shows it inline."""
from __future__ import annotations

import numpy as np
import seaborn as sns

from headflow.book.figures.style import interval, plt


def layer_shares(results: dict):
    """Share of the positive normalised attribution per layer, one bar group per model, 95% CIs
    (``results``: name -> :func:`headflow.findings.layers.summarise` output)."""
    fig, ax = plt.subplots(figsize=(10, 4.2))
    width = 0.8 / len(results)
    for i, (name, r) in enumerate(results.items()):
        share = np.asarray(r["share_per_layer"])
        lo, hi = np.asarray(r["share_per_layer_ci"]).T
        x = np.arange(len(share)) + (i - (len(results) - 1) / 2) * width
        ax.bar(x, share, width, label=f"{name} ({r['n_images']} images)")
        interval(ax, x, lo, hi, cap=width / 4)
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


def depth_by_organism(results: dict, questions, uniform: float):
    """Per question, each (model, image set)'s first-third share of the positive attribution with its
    95% interval against the uniform placement (dashed), and its mean relative depth with interval
    (``results``: ``(model, image set, question) -> summarise output``)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.9 + 0.42 * len(results)), sharey=True)
    labels = [f"{m} / {q}" + ("" if s == "fashionscenes/eval" else f" ({s})") for (m, s, q) in results]
    y = np.arange(len(results))[::-1]
    colours = {q: f"C{i}" for i, q in enumerate(questions)}
    for ax, stat, title in ((axes[0], "first_third_share", "share of attribution in the first third of depth"),
                            (axes[1], "mean_relative_depth", "mean relative depth (l + 0.5) / L")):
        for yi, ((m, s, q), r) in zip(y, results.items()):
            lo, hi = r[stat + "_ci"]
            ax.plot([lo, hi], [yi, yi], color=colours.get(q, "k"), lw=2)
            ax.plot(r[stat], yi, "o", color=colours.get(q, "k"))
        ax.axvline(uniform if stat == "first_third_share" else 0.5, color="k", ls="--", lw=1,
                   label="uniform placement")
        ax.set(title=title, xlim=(0, 1))
        ax.legend(loc="lower right")
    axes[0].set_yticks(y)
    axes[0].set_yticklabels(labels)
    fig.tight_layout()
    return fig
