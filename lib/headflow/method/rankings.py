"""Baseline head rankings to compare head attribution with (STUDY.md section 2).

Every function returns scores ``(n_layers, n_heads)`` for one image; higher = more important.

- :func:`single_head`: ``y_clean - y(only h ablated)``;
- :func:`attention_weight`: attention mass from the final token (or all text tokens after the
  image) to the image tokens;
- :func:`random_scores`: a random ranking (draw many for a mean and a band);
- :func:`attribution_patching`: gradient of y with respect to the image keys/values times
  (baseline - clean), summed per head: one forward and one backward.
"""
from __future__ import annotations

import numpy as np
import torch

from headflow.mechanism import interventions as iv
from headflow.mechanism.prefix_attention import expand_heads
from headflow.method.experiment import ImageTask, masks_y
from headflow.util.devices import to_device, to_numpy


def single_head(model, task: ImageTask, baseline: iv.Baseline, target: str = "logit", batch_size: int = 128) -> np.ndarray:
    """The logit lost when each head alone is ablated."""
    n_layers, n_heads = iv.text_layers_and_heads(model)
    total = n_layers * n_heads
    keep = torch.ones(total + 1, total, dtype=torch.bool, device="cpu")
    diag = torch.arange(total, device="cpu")
    keep[diag, diag] = False  # row i ablates head i; the last row is clean
    y = masks_y(model, task, baseline, keep.view(-1, n_layers, n_heads), target, batch_size)
    return (y[-1] - y[:-1]).reshape(n_layers, n_heads)


@torch.inference_mode()
def attention_weight(model, task: ImageTask, queries: str = "final", weighting: str = "none",
                     keep: torch.Tensor | None = None, baseline: iv.Baseline | None = None) -> np.ndarray:
    """Attention mass to the image tokens, per head: from the final token (``queries="final"``)
    or averaged over every text token after the image (``"text"``).  ``weighting="value-norm"``
    weighs each image key's attention by the norm of its value vector (``sum_k p_k ||v_k||``).
    With ``keep (n_layers, n_heads)`` the heads not kept are ablated to ``baseline`` while the
    weights are read, so the scores describe that modified model (the planted models of
    :mod:`headflow.findings.validation`)."""
    if weighting not in ("none", "value-norm"):
        raise ValueError(f"unknown attention weighting {weighting!r}; choose 'none' or 'value-norm'")
    inputs = to_device(task.inputs, model.device)
    img = iv.image_mask(model, inputs["input_ids"])
    if queries == "final":
        q = torch.zeros_like(img)
        q[:, -1] = True
    elif queries == "text":
        last = int(img[0].nonzero().max())
        q = torch.zeros_like(img)
        q[:, last + 1:] = True
    else:
        raise ValueError(f"unknown query group {queries!r} for attention weights; choose 'final' or 'text'")
    cap = iv.Capture(queries=q, image=img)
    ablation = None if keep is None else iv.HeadAblation(torch.as_tensor(keep, device=model.device), img, baseline)
    with iv.intervene(model, ablation=ablation, capture=cap):
        model(**inputs, logits_to_keep=1)
    n_layers, _ = iv.text_layers_and_heads(model)
    got = cap.mass if weighting == "none" else cap.value_mass
    return to_numpy(torch.stack([got[l][0].mean(-1) for l in range(n_layers)]))


def random_scores(n_layers: int, n_heads: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n_layers, n_heads))


def attribution_patching(model, task: ImageTask, baseline: iv.Baseline, target: str = "logit",
                         keep: torch.Tensor | None = None) -> np.ndarray:
    """Linear estimate of the logit lost when each head is ablated:
    ``-sum (dy/dK * (K_base - K) + dy/dV * (V_base - V))`` over the head's image keys/values
    (as seen by the text queries after the image), from one forward and one backward.  With
    ``keep (n_layers, n_heads)`` the heads not kept are held at the baseline (a planted model), so
    their keys/values are already the baseline and they score 0."""
    n_layers, n_heads = iv.text_layers_and_heads(model)
    inputs = to_device(task.inputs, model.device)
    img = iv.image_mask(model, inputs["input_ids"])
    groups = n_heads // model.config.get_text_config().num_key_value_heads
    cap = iv.Capture(image=img, kv=True)
    with torch.inference_mode(), iv.intervene(model, capture=cap):
        model(**inputs, logits_to_keep=1)
    clean_k = [expand_heads(cap.keys[l], groups).clone() for l in range(n_layers)]  # (1, H, n_img, D)
    clean_v = [expand_heads(cap.values[l], groups).clone() for l in range(n_layers)]
    leaf_k = [k.clone().requires_grad_(True) for k in clean_k]
    leaf_v = [v.clone().requires_grad_(True) for v in clean_v]
    # cap.keys hold the image slots only
    all_image = torch.ones(1, cap.keys[0].shape[2], dtype=torch.bool, device=model.device)
    base_kv = [[expand_heads(x, groups) for x in baseline.image_kv(l, cap.keys[l], cap.values[l], all_image)]
               for l in range(n_layers)]
    held = (torch.zeros(n_layers, n_heads, dtype=torch.bool, device=model.device) if keep is None
            else ~torch.as_tensor(keep, dtype=torch.bool, device=model.device))
    # every head "ablated" to its own clean keys/values (or, if not kept, to the baseline): the
    # model's own output, with gradients to the leaves of the kept heads
    def mix(i, leaves):
        return [torch.where(held[l][None, :, None, None], base_kv[l][i], leaves[l]) for l in range(n_layers)]

    through = iv.Baseline("dataset-mean", keys=mix(0, leaf_k), values=mix(1, leaf_v))
    everything = torch.zeros(1, n_layers, n_heads, dtype=torch.bool, device=model.device)
    with torch.enable_grad(), iv.intervene(model, ablation=iv.HeadAblation(everything, img, through)):
        logits = model(**inputs, logits_to_keep=1).logits[:, -1]
        y = logits[0, task.target_id]
        if target == "logit-diff":
            y = y - logits[0, task.other_ids].max()
        grads = torch.autograd.grad(y, leaf_k + leaf_v)
    scores = np.zeros((n_layers, n_heads))
    for l in range(n_layers):
        dk = base_kv[l][0] - clean_k[l]
        dv = base_kv[l][1] - clean_v[l]
        delta = (grads[l] * dk).sum((0, 2, 3)) + (grads[n_layers + l] * dv).sum((0, 2, 3))
        scores[l] = to_numpy(-delta)
    return scores
