"""Chapters 7-8's figures: layer-window knockouts, token-group ablations, token maps.

Each function returns a matplotlib figure; notebooks save it with
:func:`headflow.book.outputs.save_figure`, which also shows it inline."""
from __future__ import annotations

import numpy as np

from headflow.book.figures.style import interval, plt
from headflow.findings import flow


# ------------------------------------------------------------------------------------ chapter 7
def knockout_curves(out: dict, share: float, target: str = "logit"):
    """Rows: questions; columns: flows.  Logit lost relative to the image effect (``target``) per
    layer, knocked out one layer at a time in all heads (band: 95% bootstrap interval over images),
    over 3-layer windows (dashed, at the window's centre), and for the control flow in the top heads
    and in random heads of the same size (mean of the random sets); the dotted line is the onset
    ``share`` and the vertical line the flow's onset (one-layer windows)."""
    qs = list(out)
    flows = list(flow.FLOWS)
    fig, axes = plt.subplots(len(qs), len(flows), figsize=(2.55 * len(flows), 2.6 * len(qs)), sharex=True,
                             squeeze=False)
    for i, q in enumerate(qs):
        d = out[q]
        s, w, w3 = d["summary"], d["window"], d["sensitivity_window"]
        sets = list(d["plan"].head_sets)
        for j, f in enumerate(flows):
            ax = axes[i, j]
            x = np.arange(len(flow.curve(s, f, w, target=target))) + (w - 1) / 2
            ci = flow.curve(s, f, w, target=target, what="ci")
            ax.plot(x, flow.curve(s, f, w, target=target), "o-", color="C0", ms=3.5, label=f"all heads, {w}-layer windows")
            ax.fill_between(x, ci[0], ci[1], color="C0", alpha=0.2)
            if w3:
                x3 = np.arange(len(flow.curve(s, f, w3, target=target))) + (w3 - 1) / 2
                ax.plot(x3, flow.curve(s, f, w3, target=target), "--", color="C2", label=f"all heads, {w3}-layer windows")
            if f == flow.CONTROL_FLOW:
                ax.plot(x, flow.curve(s, f, w, "top heads", target), "s-", color="C3", ms=3.5, label="top heads")
                rnd = [n for n in sets if n.startswith("random")]
                if rnd:
                    ax.plot(x, np.mean([flow.curve(s, f, w, n, target) for n in rnd], 0), "^:", color="0.4", ms=3.5,
                            label="random heads (same size)")
            on = flow.onset(flow.curve(s, f, w, target=target), ci[0], share)
            if on is not None:
                ax.axvline(x[on], color="C0", lw=0.8, alpha=0.7)
            ax.axhline(share, color="k", lw=0.6, ls=":")
            ax.axhline(0, color="k", lw=0.6)
            if i == 0:
                ax.set_title(f.replace("->", " -> "), fontsize=10)
            if j == 0:
                k = d["top"]["k"]
                ax.set_ylabel(f"{q} (top {k} head{'s' if k > 1 else ''})\nlost / image effect", fontsize=9)
            if i == len(qs) - 1:
                ax.set_xlabel("layer", fontsize=10)
    handles = {}
    for ax in axes.ravel():
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=len(handles), fontsize=9,
               bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def knockout_accuracy(out: dict):
    """Share of images still answered correctly under each flow's knockout in all heads, one layer at a time."""
    qs = list(out)
    fig, axes = plt.subplots(1, len(qs), figsize=(5 * len(qs), 3.8), sharey=True, squeeze=False)
    for ax, q in zip(axes[0], qs):
        d = out[q]
        for f in flow.FLOWS:
            idx = d["plan"].select(f, d["window"])
            ax.plot(np.arange(len(idx)), d["summary"]["accuracy"][idx], "o-", ms=3.5, label=f)
        ax.set(title=f"{q} question", xlabel="layer", ylim=(-0.02, 1.02))
    axes[0, 0].set_ylabel("accuracy under the knockout\n(all heads)")
    axes[0, -1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------ chapter 8
def group_effects_bars(res: dict):
    """Per head set (every head; the top heads): the loss when the image keys/values are replaced at
    each group's positions only (bars, 95% CI) beside its size-matched control (hatched), relative
    to the image effect; dots: classes."""
    sets = list(res["summary"])
    groups = ["main object", "other objects", "background"]
    fig, axes = plt.subplots(1, len(sets), figsize=(6.2 * len(sets), 4.2), sharey=True, squeeze=False)
    for ax, s in zip(axes[0], sets):
        summ = res["summary"][s]
        for i, g in enumerate(groups + ["all"]):
            for j, lab in enumerate([g] if g == "all" else [g, f"{g} control"]):
                x = i + (0.2 if j else -0.2) * (g != "all")
                d = summ["image"][lab]
                ax.bar(x, d["value"], width=0.38, color=f"C{i}", alpha=0.45 if j else 0.9, hatch="//" if j else None)
                interval(ax, x, d["ci"][0], d["ci"][1])
                pc = [v[lab] for v in summ["per_class"].values()]
                ax.scatter(np.full(len(pc), x), pc, s=8, color="k", alpha=0.4, zorder=3)
        ax.set_xticks(range(4), ["main object", "other objects", "background", "all positions"])
        k = f"top {res['k']} heads" if s == "top heads" else "every head"
        ax.set(title=f"{k}: group (solid) vs size-matched control (hatched)")
        ax.axhline(0.05, color="k", ls=":", lw=1)
    axes[0, 0].set_ylabel("logit lost / image effect (95% CI)")
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
