"""Where the language model does its text-only retrieval: head attribution on the text task.

The analogue of image attribution (STUDY.md section 3) with the *context* words in place of the
image: for one text-task example, each mask ablates a random half of the heads; an ablated head's
queries after the context (the question and the final position) read every context position's
keys and values replaced by their mean over the context (the ``image-mean`` baseline, so the
head keeps its attention budget but loses *which* word is where).  y is the target word's logit at
the final position; a linear fit per example gives each head's attribution (logits lost).

Layer shares are ratios of sums of positive attribution over examples (never a per-example
division): ``share[l] = sum over examples and heads of layer l of max(a, 0) / the same over all
layers``.  Intervals: percentile bootstrap over examples.
"""
from __future__ import annotations

import numpy as np
import torch

from headflow.mechanism import interventions as iv
from headflow.method import attribution
from headflow.util.devices import to_numpy
from headflow.util import progress


@torch.inference_mode()
def example_y(model, ids: np.ndarray, span: tuple[int, int], target: int, keep: torch.Tensor,
              batch_size: int = 128) -> np.ndarray:
    """y ``(M,)``: the target's logit at the final position under each keep-mask ``(M, n_layers, n_heads)``."""
    L = len(ids)
    out = []
    for s in range(0, len(keep), batch_size):
        k = keep[s:s + batch_size]
        B = len(k)
        input_ids = torch.as_tensor(ids, device="cpu")[None].expand(B, -1)
        context = torch.zeros(B, L, dtype=torch.bool, device="cpu")
        context[:, span[0]:span[1]] = True
        ablation = iv.HeadAblation(k.to(model.device), context.to(model.device), iv.Baseline("image-mean"))
        with iv.intervene(model, ablation=ablation):
            logits = model(input_ids=input_ids.to(model.device), logits_to_keep=1).logits[:, -1, target]
        out.append(to_numpy(logits.float()))
    return np.concatenate(out)


def attribute(model, task, n_examples: int = 60, n_masks: int = 300, ablation_rate: float = 0.5, seed: int = 0,
              n_items: int | None = 3, batch_size: int = 128) -> dict:
    """Head attribution of ``n_examples`` text-task examples (``task`` from
    :mod:`headflow.organism.texttasks`; ``n_items`` fixes the bound task's item count).

    Returns ``attribution`` ``(N, n_layers, n_heads)`` (logits), ``question`` ``(N,)`` type
    indices, ``heldout_r`` ``(N,)``, ``correct`` ``(N,)`` (clean argmax is the target)."""
    n_layers, n_heads = iv.text_layers_and_heads(model)
    keep = attribution.sample_masks(n_masks, n_layers, n_heads, ablation_rate, seed)
    full = torch.ones(1, n_layers, n_heads, dtype=torch.bool, device="cpu")
    rows = {"attribution": [], "question": [], "heldout_r": [], "correct": []}
    for _ in progress.bar(range(n_examples), desc="text-retrieval attribution", mininterval=5):
        ids, target, q, _, span = task.sample(n_items) if n_items and hasattr(task, "min_items") else task.sample()
        y = example_y(model, ids, span, target, torch.cat([full, keep]), batch_size)
        f = attribution.fit(keep.numpy(), y[1:], method="auto", seed=seed)
        with torch.inference_mode():
            clean = model(input_ids=torch.as_tensor(ids, device="cpu")[None].to(model.device),
                          logits_to_keep=1).logits[0, -1]
        rows["attribution"].append(f.attribution.reshape(n_layers, n_heads))
        rows["question"].append(q)
        rows["heldout_r"].append(f.heldout_r)
        rows["correct"].append(int(clean.argmax()) == target)
    return {k: np.asarray(v) for k, v in rows.items()}


def layer_shares(attr: np.ndarray) -> np.ndarray:
    """Share of the positive attribution mass per layer ``(n_layers,)`` of ``attr`` ``(N, L, H)``."""
    pos = np.clip(attr, 0, None).sum(axis=(0, 2))
    return pos / pos.sum() if pos.sum() > 0 else np.full(attr.shape[1], np.nan)


def summary(result: dict, question_types, n_boot: int = 1000, seed: int = 0) -> dict:
    """Per question type and for all: layer shares, the layer-0 share with a 95% bootstrap interval
    over examples, the median held-out r and the number of examples (and correct ones)."""
    rng = np.random.default_rng(seed)
    out = {}
    groups = {"all": np.ones(len(result["question"]), bool)}
    groups.update({name: result["question"] == i for i, name in enumerate(question_types)})
    for name, sel in groups.items():
        a = result["attribution"][sel]
        if not len(a):
            continue
        boots = np.array([layer_shares(a[rng.integers(0, len(a), len(a))])[0] for _ in range(n_boot)])
        shares = layer_shares(a)
        out[name] = {"layer_shares": shares.tolist(), "layer0_share": float(shares[0]),
                     "layer0_ci": [float(np.nanpercentile(boots, 2.5)), float(np.nanpercentile(boots, 97.5))],
                     "median_heldout_r": float(np.nanmedian(result["heldout_r"][sel])),
                     "n_examples": int(sel.sum()), "n_correct": int(result["correct"][sel].sum())}
    return out
