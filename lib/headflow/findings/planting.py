"""Redundancy planted *inside* the network: pairs of heads behind a saturating MLP unit, wired in the weights.

The validation appendix's question: does head attribution find two heads that are each
sufficient for the answer, where single-head ablation (the paper's Fig. 1A argument) sees neither?
An algebraic stand-in (``y = y_none + J min(1, keep_A + keep_B)``) answers it by construction;
this module builds the redundancy into a copy of the organism and measures it before anything is
ranked.

The construction (layer 0 of a Llama-style text model; every weight edit is in
:func:`plant`), for each pair ``p = (A_p, B_p)`` of layer-0 heads:

- **the heads read the image and nothing else.**  Their queries are zeroed (uniform attention over
  the prefix) and their values keep one channel, ``m . x_hat``: ``m`` is the mean normalised
  image-token input, projected off the span of every vocabulary embedding (so text tokens give
  exactly 0).  Their outputs write that channel along a residual direction ``r_p``, orthogonal to
  what the text positions hold without the image.  A kept head adds ``s_h r_p`` (``s_h > 0``) at
  every text position after the image; an ablated one (zero baseline: image values 0) adds 0.
- **a saturating unit reads the pair.**  One MLP neuron of layer 0 per pair reads the normalised
  residual ``x_hat`` (what the layer's MLP sees): its gate is ``k (1 - 2 (r_p . x_hat) / s_min)``
  (the 1 a bias made from what those positions always hold), so it is ``k`` when neither head is
  kept and strongly negative when either is (``r_p . x_hat >= s_min``); SiLU turns that into on /
  off.  The neuron writes ``push |x_j| d`` at position ``j`` (``d``: lowering every answer word's
  logit) only when *neither* head is kept:
  ``y`` falls by the unit's push when both are ablated and hardly moves when one is.
- **the rest of layer 0 carries nothing.**  Its other heads are always ablated, so the unit's input
  holds only the planted channels; layers 1 and up are the organism's own and carry its own flow.

The zero baseline is required: under a mean baseline an ablated head still reads the mean image,
so a linear read of its values keeps its mean and nothing is removed.  The model is a stock
``transformers`` model with edited weights; interventions act on it through the one registered
attention function, as everywhere.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from headflow.mechanism import interventions as iv
from headflow.method import attribution, metrics, stats
from headflow.method.experiment import full_logits, masks_y
from headflow.findings.validation import precision_with_interval, single_head_scores

BASELINE = "zero"


@dataclass
class RedundantPairs:
    """A planted copy of the organism (:func:`plant`).  ``pairs``: flat head indices ``(A, B)``;
    ``always_ablated``: flat indices of the layer-0 heads outside the pairs; ``construction``: the
    measured quantities the weights were set from."""

    model: object
    n_layers: int
    n_heads: int
    pairs: list[tuple[int, int]]
    always_ablated: list[int]
    target: str = "logit"
    construction: dict = field(default_factory=dict)
    baseline: iv.Baseline = field(default_factory=lambda: iv.Baseline(BASELINE))

    @property
    def heads(self) -> list[int]:
        return sorted(h for p in self.pairs for h in p)

    def keep_mask(self, keep: torch.Tensor) -> torch.Tensor:
        """``keep (M, n_layers, n_heads)`` with the layer-0 heads outside the pairs ablated."""
        keep = torch.as_tensor(keep, dtype=torch.bool).clone()
        flat = keep.view(len(keep), -1)
        flat[:, self.always_ablated] = False
        return keep

    def y(self, task, keep: torch.Tensor, batch_size: int = 128) -> np.ndarray:
        """``keep (M, n_layers, n_heads)`` -> y ``(M,)`` of the planted model."""
        return masks_y(self.model, task, self.baseline, self.keep_mask(keep), self.target, batch_size)


# ------------------------------------------------------------------------------------ construction
def _text_model(model):
    cfg = model.config.get_text_config()
    if cfg.model_type != "llama" or getattr(cfg, "mlp_bias", False) or getattr(cfg, "attention_bias", False):
        raise ValueError(f"planting needs a Llama text model without biases (the organism); this one is "
                         f"{cfg.model_type!r}")
    lm = model.model.language_model
    return lm, cfg


def _suffix(model, task) -> torch.Tensor:
    """``(L,)`` bool: the text positions after the image's last position."""
    img = iv.image_mask(model, task.inputs["input_ids"])[0]
    after = torch.zeros_like(img)
    after[int(img.nonzero().max()) + 1:] = True
    return after


@torch.inference_mode()
def _capture(model, task, keep: torch.Tensor, module, pre: bool) -> torch.Tensor:
    """The input (``pre``) or output of ``module`` in one full forward per keep-mask, ``(M, L, D)``
    (zero baseline; for building the planting, not an intervention)."""
    got = []
    hook = (module.register_forward_pre_hook(lambda m, a: got.append(a[0].float().clone())) if pre
            else module.register_forward_hook(lambda m, a, o: got.append(o.float().clone())))
    try:
        full_logits(model, task, iv.Baseline(BASELINE), keep, "text", batch_size=len(keep))
    finally:
        hook.remove()
    return torch.cat(got)


def _orthonormal_complement(span: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` orthonormal vectors ``(n, D)`` orthogonal to the rows of ``span`` (seeded)."""
    D = span.shape[1]
    q, _ = torch.linalg.qr(span.T.double())
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        v = torch.randn(D, generator=g, dtype=torch.float64)
        for basis in [q] + ([torch.stack(out).T] if out else []):
            v = v - basis @ (basis.T @ v)
        out.append(v / v.norm())
    return torch.stack(out).float()


def plant(model, tasks: Sequence, pairs: Sequence[tuple[int, int]], target: str = "logit", push: float = 1.0,
          sharpness: float = 12.0, signal: float = 0.25, seed: int = 0) -> RedundantPairs:
    """A copy of ``model`` with ``pairs`` (flat indices of layer-0 heads) planted as redundant pairs
    (see the module docstring).  ``signal``: the smallest planted channel ``s_min`` as a share of
    the norm of the text positions' residual; ``sharpness``: the unit's gate when neither head is
    kept; ``push``: the unit's output norm over each position's residual norm.  ``tasks``
    set the image direction and ``s_min`` (the smallest channel over them)."""
    lm, cfg = _text_model(model)
    L, Hn, hd = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim
    heads = [int(h) for p in pairs for h in p]
    if len(set(heads)) != len(heads) or any(not 0 <= h < Hn for h in heads):
        raise ValueError(f"pairs {list(pairs)} must be distinct heads of layer 0 (flat indices 0..{Hn - 1})")
    planted = copy.deepcopy(model)
    lm = planted.model.language_model
    layer = lm.layers[0]
    attn, mlp = layer.self_attn, layer.mlp
    W = {n: getattr(attn, n).weight for n in ("q_proj", "v_proj", "o_proj")}
    others = [h for h in range(Hn) if h not in heads]
    none = torch.zeros(1, L, Hn, dtype=torch.bool)

    # 1. the image direction m, off the span of every vocabulary embedding (normalised as layer 0 reads it)
    with torch.no_grad():
        text_span = layer.input_layernorm(lm.embed_tokens.weight).float()
    img = torch.cat([_capture(planted, t, none, layer.input_layernorm, pre=False)[0][
        iv.image_mask(planted, t.inputs["input_ids"])[0]] for t in tasks])
    q, _ = torch.linalg.qr(text_span.T.double())
    m = img.double().mean(0)
    m = (m - q @ (q.T @ m)).float()
    if not float((img @ m).mean()) > 0:
        raise ValueError("the image tokens have no mean direction outside the text embeddings' span")

    # 2. planted heads: uniform attention, one value channel (m), output off for now
    with torch.no_grad():
        for h in heads:
            rows = slice(h * hd, (h + 1) * hd)
            W["q_proj"][rows] = 0
            W["v_proj"][rows] = 0
            W["v_proj"][h * hd] = m
            W["o_proj"][:, rows] = 0

    # 3. what the text positions after the image hold with nothing planted kept (the same for every image)
    keep_none = none.clone()
    suffix = _suffix(planted, tasks[0])
    X0 = _capture(planted, tasks[0], keep_none, layer.post_attention_layernorm, pre=True)[0][suffix]  # (J, D)
    X0b = _capture(planted, tasks[-1], keep_none, layer.post_attention_layernorm, pre=True)[0][_suffix(planted, tasks[-1])]
    if X0b.shape != X0.shape or float((X0b - X0).abs().max()) > 1e-3 * float(X0.abs().max()):
        raise ValueError("the text positions' layer-0 residual depends on the image with every head's image "
                         "reads removed: the planted unit cannot be given a fixed bias")
    R = _orthonormal_complement(X0, len(pairs), seed)  # (P, D), one direction per pair

    # 4. the planted channel: s per head, image and position, scaled so the smallest is `signal` x |X0|
    with torch.no_grad():
        for p, (a, b) in enumerate(pairs):
            for h in (a, b):
                W["o_proj"][:, h * hd] = R[p]
    s = []
    for t in tasks:
        keep = none.repeat(len(heads), 1, 1)
        for i, h in enumerate(heads):
            keep[i, 0, h] = True
        x = _capture(planted, t, keep, layer.post_attention_layernorm, pre=True)[:, _suffix(planted, t)]
        s.append(torch.stack([(x[i] - X0) @ R[[p for p, pr in enumerate(pairs) if h in pr][0]]
                              for i, h in enumerate(heads)]))
    s = torch.stack(s)  # (images, heads, J)
    if not float(s.min()) > 0:
        raise ValueError("a planted head's channel is not positive on every image and position")
    X0_norm = X0.norm(dim=1)
    scale = float(signal * X0_norm.min() / s.min())
    with torch.no_grad():
        for h in heads:
            W["v_proj"][h * hd] *= scale
    s_min = float(s.min()) * scale

    # 5. the units read the *normalised* residual (post_attention_layernorm's x / rms(x)): a bias made
    # from what the positions always hold (Y . x_hat_j = 1 for every j), the planted channel in the same
    # units (x_kept = X0 + s r, r orthogonal to X0, so r . x_hat = s / rms(X0 + s r)), a gate that
    # flips at half the smallest normalised channel, an up projection that reads each position's own
    # residual norm |X0_j| (V . x_hat_j = |X0_j|), and a push along d lowering every answer word's
    # logit: the unit writes push x |X0_j| at position j.  Built on the normalised input, the gate is
    # the same at every position (a raw-unit build scales it by rms_max / rms_j, which swamps
    # low-norm positions) and the push is the same share of every position's residual.
    D = X0.shape[1]
    eps = float(getattr(layer.post_attention_layernorm, "variance_epsilon", 0.0))
    ms = (X0.double() ** 2).mean(1)  # (J,)
    X0n = X0.double() / torch.sqrt(ms + eps)[:, None]
    pinv = torch.linalg.pinv(X0n)  # (D, J)
    Y = (pinv @ torch.ones(len(X0), dtype=torch.float64)).float()  # (D,)
    V = (pinv @ X0.double().norm(dim=1)).float()  # (D,)
    s_scaled = s.double() * scale  # (images, heads, J)
    s_norm_min = float((s_scaled / torch.sqrt(ms + s_scaled ** 2 / D + eps)).min())
    k = sharpness
    w_in = layer.post_attention_layernorm.weight.float()
    unit_size = mlp.gate_proj.weight.norm(dim=1) * mlp.up_proj.weight.norm(dim=1) * mlp.down_proj.weight.norm(dim=0)
    units = torch.argsort(unit_size)[:len(pairs)].tolist()
    words = sorted({t.target_id for t in tasks} | {i for t in tasks for i in t.other_ids})
    U = planted.lm_head.weight.float()
    w_out = lm.norm.weight.float()
    d = -(w_out * (U[words].mean(0) - U.mean(0)))
    d = d - R.T @ (R @ d)
    d = d / d.norm()
    alpha = float(push / (sharpness * torch.sigmoid(torch.tensor(sharpness))))
    with torch.no_grad():
        for p, n in enumerate(units):
            G = k * (Y - (2.0 / s_norm_min) * R[p])
            mlp.gate_proj.weight[n] = G / w_in
            mlp.up_proj.weight[n] = V / w_in
            mlp.down_proj.weight[:, n] = alpha * d
    construction = {"layer": 0, "units": units, "signal": signal, "sharpness": sharpness, "push": push,
                    "s_min": s_min, "s_min_normalised": s_norm_min, "text_positions": int(suffix.sum()),
                    "baseline": BASELINE,
                    "image_direction_mean_read": float((img @ m).mean()), "residual_norm_min": float(X0_norm.min())}
    return RedundantPairs(planted, L, Hn, [tuple(int(h) for h in p) for p in pairs], [h for h in others], target,
                          construction)


# ------------------------------------------------------------------------------------ measurement
def measure(red: RedundantPairs, tasks, n_masks: int, rate: float, seed: int, min_images: int = 2) -> dict:
    """Measured redundancy of every planted pair, then the pipeline on the planted model: per image
    the joint effect of each pair (``y(clean) - y(pair ablated)``) and each head's single-head effect
    (``y(clean) - y(head ablated)``), aggregated over images by the rule of chapter 4 (per-class
    sums over the image effect); attribution (``n_masks`` random masks at ``rate``, OLS or the
    library's automatic choice) and single-head scores of every head, normalised by each image's
    effect (class-equal mean); each planted head's rank under both."""
    L, Hn = red.n_layers, red.n_heads
    H = L * Hn
    classes = {t.key: t.class_name for t in tasks}
    rows, attr, single = [], {}, {}
    for i, t in enumerate(tasks):
        keep = torch.ones(2 + len(red.pairs), H, dtype=torch.bool)
        keep[1] = False
        for p, (a, b) in enumerate(red.pairs):
            keep[2 + p, [a, b]] = False
        y = red.y(t, keep.view(-1, L, Hn))
        s = single_head_scores(red.y, t, L, Hn)
        row = {"key": t.key, "class": t.class_name, "effect": float(y[0] - y[1])}
        for p, (a, b) in enumerate(red.pairs):
            row[f"joint_{p}"] = float(y[0] - y[2 + p])
            row[f"single_{a}"], row[f"single_{b}"] = float(s[a]), float(s[b])
        rows.append(row)
        masks = attribution.sample_masks(n_masks, L, Hn, rate, seed * 1_000_003 + i)
        scale = row["effect"] if row["effect"] > 0 else np.nan
        attr[t.key] = (attribution.fit(masks.numpy(), red.y(t, masks)).attribution / scale).reshape(L, Hn)
        single[t.key] = (s / scale).reshape(L, Hn)
    cls = [r["class"] for r in rows]
    eff = np.array([r["effect"] for r in rows])
    agg = lambda col, by=eff: float(metrics.aggregate(np.array([r[col] for r in rows]), by, cls, min_images)["value"])  # noqa: E731
    ok = {k: v for k, v in attr.items() if np.all(np.isfinite(v))}
    a_map = stats.class_equal_mean(ok, classes).ravel()
    s_map = stats.class_equal_mean({k: single[k] for k in ok}, classes).ravel()
    rank = lambda mp, h: int(np.where(attribution.ranking(mp) == h)[0][0]) + 1  # noqa: E731
    pair_rows = []
    for p, (a, b) in enumerate(red.pairs):
        joint = np.array([r[f"joint_{p}"] for r in rows])
        so = {"A": agg(f"single_{a}", joint), "B": agg(f"single_{b}", joint)}
        pair_rows.append({
            "pair": [[a // Hn, a % Hn], [b // Hn, b % Hn]],
            "joint_effect": float(np.mean(joint)), "joint_over_image_effect": agg(f"joint_{p}"),
            "single_effect": {"A": float(np.mean([r[f"single_{a}"] for r in rows])),
                              "B": float(np.mean([r[f"single_{b}"] for r in rows]))},
            "single_over_joint": so, "redundant_by_rule": bool(max(so.values()) <= 0.1),
            "attribution_ranks": {"A": rank(a_map, a), "B": rank(a_map, b)},
            "single_head_ranks": {"A": rank(s_map, a), "B": rank(s_map, b)},
            "attribution_scores": {"A": float(a_map[a]), "B": float(a_map[b])},
            "single_head_scores": {"A": float(s_map[a]), "B": float(s_map[b])}})
    others = np.delete(np.arange(H), red.heads)
    return {"pairs": pair_rows, "n_images": len(ok), "n_masks": n_masks, "rate": rate,
            "image_effect": float(np.mean(eff)), "construction": red.construction,
            "always_ablated": [[h // Hn, h % Hn] for h in red.always_ablated],
            "largest_other": {"attribution": float(a_map[others].max()), "single_head": float(s_map[others].max())},
            "attribution_map": a_map.reshape(L, Hn), "single_head_map": s_map.reshape(L, Hn),
            "attribution_per_image": ok, "single_head_per_image": {k: single[k] for k in ok}}


# ------------------------------------------------------------------------------------ plantings and results
def free_layer0_heads(n_heads: int, exclude: Sequence[int], needed: int) -> tuple[list[int], str]:
    """Layer-0 heads (flat indices ``0..n_heads-1``) to plant in: those outside ``exclude`` (the
    organism's own top heads) if there are at least ``needed``, else every layer-0 head (a planted
    head's own weights are overwritten, so it keeps none of its function); and which rule applied."""
    ex = {int(h) for h in exclude}
    free = [h for h in range(n_heads) if h not in ex]
    if len(free) >= needed:
        return free, "layer-0 heads outside the organism's top heads"
    return list(range(n_heads)), (f"every layer-0 head (only {len(free)} lie outside the organism's top heads, "
                                  f"{needed} needed)")


def draw_pairs(free: Sequence[int], n_pairs: int, seed: int) -> list[tuple[int, int]]:
    """``n_pairs`` disjoint pairs drawn (seeded) from ``free``; a clear error if there are too few."""
    if 2 * n_pairs > len(free):
        raise ValueError(f"cannot plant {n_pairs} pairs: layer 0 has only {len(free)} heads outside the "
                         "organism's top heads")
    pick = np.random.default_rng(seed).choice(np.asarray(free), 2 * n_pairs, replace=False)
    return [tuple(sorted((int(pick[2 * i]), int(pick[2 * i + 1])))) for i in range(n_pairs)]


def in_network_record(report: dict) -> dict:
    """``validation.json``'s ``redundancy_in_network``: the first pair's measured single-head and joint
    effects, its ranks, and the construction (without the per-image maps)."""
    keep = ("n_images", "n_masks", "rate", "image_effect", "construction", "always_ablated", "largest_other")
    return {**report["pairs"][0], **{k: report[k] for k in keep}}


def precision_rows(report: dict, red: RedundantPairs, classes: dict, n_boot: int, seed: int, planting: int) -> list[dict]:
    """Precision at ``|S|`` (S: every planted head) of attribution and single-head ablation on one planted
    model (:func:`headflow.findings.validation.precision_with_interval`), as rows of the plantings table."""
    rows = []
    for method, per_image in (("attribution", report["attribution_per_image"]),
                              ("single_head", report["single_head_per_image"])):
        p = precision_with_interval({k: v.ravel() for k, v in per_image.items()}, classes, red.heads, n_boot, seed)
        rows.append({"size": len(red.heads), "planting": planting, "method": method, **p})
    return rows


def pair_planting_record(report: dict, pairs, planting: int) -> dict:
    """One pair-split planting's measured redundancy: it is *scored* only if every pair is redundant
    by the rule (each single-head effect at most 0.1 of its pair's joint effect)."""
    worst = max(max(v for v in p["single_over_joint"].values()) for p in report["pairs"])
    return {"size": 2 * len(pairs), "planting": planting, "pairs": [p["pair"] for p in report["pairs"]],
            "joint_effects": [p["joint_effect"] for p in report["pairs"]], "largest_single_over_joint": float(worst),
            "scored": bool(all(p["redundant_by_rule"] for p in report["pairs"]))}
