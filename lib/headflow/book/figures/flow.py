"""Chapters 7-8's figures: layer-window knockouts, token-group ablations, token maps.

Each function returns a matplotlib figure; notebooks save it with
:func:`headflow.book.outputs.save_figure`, which also shows it inline."""
from __future__ import annotations

import numpy as np

from headflow.book.figures.style import interval, plt


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
        ax.bar(i, v, color=["C3", "C0", "C4", "0.6"][i])
        interval(ax, i, lo, hi)
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
