"""Chapter 1's figures: the token groups of a prompt, image patches over a scene, clean logits.

Each function returns a matplotlib figure; notebooks save it with
:func:`headflow.book.outputs.save_figure`, which also shows it inline."""
from __future__ import annotations

import numpy as np

from headflow.book.figures.style import GROUP_COLORS, plt


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
