"""Chapter 0's figures: scenes, training curves, accuracy and confusion.

Each function returns a matplotlib figure; notebooks save it with
:func:`headflow.book.outputs.save_figure`, which also shows it inline."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import seaborn as sns

from headflow.book.figures.style import plt


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
    (``runs``: organism -> set name -> :func:`headflow.mechanism.evaluate.scene_accuracy` result), the bars as
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


def text_retrieval_layers(summaries: dict):
    """Per organism, the share of its text-retrieval attribution per layer (all questions), with
    the layer-0 share's 95% interval (``summaries``: name -> :func:`headflow.findings.text_retrieval.summary`)."""
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / max(len(summaries), 1)
    for i, (name, s) in enumerate(summaries.items()):
        share = np.asarray(s["all"]["layer_shares"])
        x = np.arange(len(share)) + (i - (len(summaries) - 1) / 2) * width
        ax.bar(x, share, width, label=f"{name} ({s['all']['n_examples']} examples)")
        lo, hi = s["all"]["layer0_ci"]
        ax.plot([x[0], x[0]], [lo, hi], color="k", lw=1.5)
    ax.set_xticks(range(len(share)))
    ax.set(xlabel="layer", ylabel="share of positive attribution", ylim=(0, 1),
           title="text-only retrieval: where the context is read (layer 0: 95% CI)")
    ax.legend()
    fig.tight_layout()
    return fig
