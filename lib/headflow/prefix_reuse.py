"""Many head-ablation masks on one image, with the image prefix computed once.

With scope ``text``, a head ablation changes nothing before the end of the image: every
position up to the last image token computes exactly what the clean model computes.  So the
prefix (system tokens and image) runs once per image, its keys and values are kept, and each
mask reruns only the text after the image, as one row of a batch, with only the final
position's logits computed.  The suffix pass goes through the same registered attention
function (:mod:`headflow.interventions`); its prefix branch, :func:`prefix_attention`, merges
a softmax over the kept prefix keys (clean or ablated per row and head) with the causal softmax
over the suffix, exactly (flash-decoding style).

    reuse = PrefixReuse(model, inputs, baseline)       # one prefix pass
    logits = reuse.final_logits(keep)                   # keep: (M, n_layers, n_heads) bool
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import families, interventions as iv


@dataclass
class _PrefixState:
    """Per layer: prefix keys/values ``(H_kv, P, D)``, clean and with the image slots replaced by
    the baseline; ``keep``: ``(B, n_layers, n_heads)`` bool for the rows of the current batch."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    keys_ablated: list[torch.Tensor]
    values_ablated: list[torch.Tensor]
    keep: torch.Tensor | None = None
    slots: torch.Tensor | None = None  # (B, P) bool: the prefix slots an ablated head sees replaced


def _partial_softmax(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    """Softmax pieces of ``q (n, D)`` over ``k, v (P, D)``: row max ``(n,)``, sum ``(n,)``,
    unnormalised output ``(n, D)``."""
    s = torch.mm(q, k.t())
    s.mul_(scale)
    m = s.amax(-1)
    s.sub_(m[:, None]).exp_()
    return m, s.sum(-1), torch.mm(s, v)


def _partial_softmax_mixed(q, k, v, k_abl, v_abl, replaced: torch.Tensor, scale: float):
    """:func:`_partial_softmax` where each row sees its own mix of keys/values: the ablated ones at
    the slots where ``replaced (n, P)`` is True, the clean ones elsewhere (two GEMMs per side)."""
    s = torch.where(replaced, torch.mm(q, k_abl.t()), torch.mm(q, k.t()))
    s.mul_(scale)
    m = s.amax(-1)
    s.sub_(m[:, None]).exp_()
    return m, s.sum(-1), torch.mm(s * replaced, v_abl) + torch.mm(s * ~replaced, v)


def prefix_attention(module, query, key, value, state: _PrefixState, scaling: float):
    """Attention of the suffix queries over [prefix | suffix].

    ``query``: ``(B, H, S, D)``; ``key``/``value``: ``(B, H_kv, S, D)`` (the suffix's own);
    returns ``(B, S, H, D)``.  For each kv head, the rows (batch, group, position) whose query
    head is kept attend to the clean prefix, the others to the ablated prefix.
    """
    layer = module.layer_idx
    B, H, S, D = query.shape
    Hkv = key.shape[1]
    G = H // Hkv
    keep = state.keep[:, layer].to(query.device)  # (B, H)
    # prefix part, per kv head, rows folded into one GEMM dimension M = B * G * S
    q_rows = query.view(B, Hkv, G, S, D).permute(1, 0, 2, 3, 4).reshape(Hkv, B * G * S, D)
    keep_rows = keep.view(B, Hkv, G).permute(1, 0, 2)[..., None].expand(Hkv, B, G, S).reshape(Hkv, -1)
    m_pre = query.new_empty(Hkv, B * G * S)
    l_pre = query.new_empty(Hkv, B * G * S)
    o_pre = query.new_empty(Hkv, B * G * S, D)
    for j in range(Hkv):
        kept = keep_rows[j]
        n_kept = int(kept.sum())
        parts = []
        if n_kept == kept.numel():
            parts.append((slice(None), False))
        elif n_kept == 0:
            parts.append((slice(None), True))
        else:
            parts.append((kept.nonzero()[:, 0], False))
            parts.append(((~kept).nonzero()[:, 0], True))
        for rows, ablated in parts:
            k = (state.keys_ablated if ablated else state.keys)[layer][j]
            v = (state.values_ablated if ablated else state.values)[layer][j]
            if ablated and state.slots is not None:  # position-level ablation
                batch_row = torch.arange(B * G * S, device=query.device)[rows] // (G * S)
                m, l, o = _partial_softmax_mixed(q_rows[j][rows], state.keys[layer][j], state.values[layer][j], k, v,
                                                 state.slots[batch_row], scaling)
            else:
                m, l, o = _partial_softmax(q_rows[j][rows], k, v, scaling)
            m_pre[j, rows], l_pre[j, rows], o_pre[j, rows] = m, l, o
    unfold = lambda x: x.view(Hkv, B, G, S, *x.shape[2:]).transpose(0, 1).reshape(B, H, S, *x.shape[2:])  # noqa: E731
    m_pre, l_pre, o_pre = unfold(m_pre), unfold(l_pre), unfold(o_pre)
    # suffix part: causal softmax over the suffix's own keys
    k_suf = iv._expand_heads(key, G)
    v_suf = iv._expand_heads(value, G)
    s = torch.matmul(query, k_suf.transpose(-1, -2)) * scaling  # (B, H, S, S)
    causal = torch.ones(S, S, dtype=torch.bool, device=query.device).triu(1)
    s.masked_fill_(causal, float("-inf"))
    m_suf = s.amax(-1)
    m = torch.maximum(m_pre, m_suf)
    e = (s - m[..., None]).exp_()
    w_pre = (m_pre - m).exp_()
    out = o_pre * w_pre[..., None] + torch.matmul(e, v_suf)
    out /= (l_pre * w_pre + e.sum(-1))[..., None]
    return out.transpose(1, 2)


def position_ids(model, inputs) -> torch.Tensor:
    """Position ids of the full prompt: ``(1, L)``, or ``(3, 1, L)`` for M-RoPE models."""
    ids = inputs["input_ids"]
    inner = getattr(model, "model", model)
    if hasattr(inner, "get_rope_index"):
        kw = {k: inputs[k] for k in ("image_grid_thw", "mm_token_type_ids", "attention_mask") if k in inputs}
        pos, _ = inner.get_rope_index(ids, **kw)
        return pos
    return torch.arange(ids.shape[1], device=ids.device)[None]


class PrefixReuse:
    """One image and prompt (batch of 1, unpadded); many ablation masks of its heads."""

    def __init__(self, model, inputs, baseline: iv.Baseline, base: str | None = None):
        iv.install(model, base)
        self.model = model
        inputs = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        self.n_layers, self.n_heads = iv.text_layers_and_heads(model)
        ids = inputs["input_ids"]
        if ids.shape[0] != 1:
            raise ValueError("PrefixReuse takes one prompt (batch of 1); build one per image")
        problem = families.prefix_reuse_problem(model, ids.shape[1])
        if problem:
            raise ValueError(f"the prefix-reusing fast path is not valid here: {problem}; use batched full forwards "
                             "(headflow.experiment.masks_y falls back to them by itself)")
        img = iv.image_mask(model, ids)[0]
        if not img.any():
            raise ValueError("the prompt has no image tokens")
        self.P = int(img.nonzero().max()) + 1  # the prefix ends with the last image token
        if self.P >= ids.shape[1]:
            raise ValueError("the prompt has no text after the image")
        self.suffix_ids = ids[:, self.P:]
        pos = position_ids(model, inputs)
        self.suffix_pos = pos[..., self.P:]
        # the prefix pass: capture the keys/values of every prefix slot in every layer
        per_position = families.forward_inputs(model, inputs, self.P)  # e.g. Gemma 3's token_type_ids
        prefix_inputs = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", *per_position)}
        prefix_inputs.update(per_position, input_ids=ids[:, :self.P])
        everything = torch.ones(1, self.P, dtype=torch.bool, device=ids.device)
        cap = iv.Capture(image=everything, kv=True)
        with torch.inference_mode(), iv.intervene(model, capture=cap):
            model(**prefix_inputs, position_ids=pos[..., :self.P], logits_to_keep=1, use_cache=False)
        img_slots = img[:self.P]
        keys, values, keys_abl, values_abl = [], [], [], []
        for l in range(self.n_layers):
            k, v = cap.keys[l], cap.values[l]  # (1, H_kv, P, D)
            bk, bv = baseline.image_kv(l, k, v, img_slots[None])
            keys.append(k[0].contiguous())
            values.append(v[0].contiguous())
            keys_abl.append(iv._scatter_slots(k, img_slots[None], bk)[0].contiguous())
            values_abl.append(iv._scatter_slots(v, img_slots[None], bv)[0].contiguous())
        self.state = _PrefixState(keys, values, keys_abl, values_abl)
        self.image_slots = img_slots  # (P,) bool
        self.n_image = int(img_slots.sum())

    @torch.inference_mode()
    def final_logits(self, keep: torch.Tensor, batch_size: int = 64, slots: torch.Tensor | None = None) -> torch.Tensor:
        """Final-position logits ``(M, vocab)`` under each mask of ``keep (M, n_layers, n_heads)``;
        with ``slots (M, n_image)`` bool only those image positions are replaced in the ablated heads
        (position-level ablation, as :class:`headflow.interventions.HeadAblation` ``slots``)."""
        keep = torch.as_tensor(keep, dtype=torch.bool)
        if keep.dim() != 3 or tuple(keep.shape[1:]) != (self.n_layers, self.n_heads):
            raise ValueError(f"masks have shape {tuple(keep.shape)}; this model needs "
                             f"(n_masks, {self.n_layers}, {self.n_heads})")
        prefix_slots = None
        if slots is not None:
            slots = torch.as_tensor(slots, dtype=torch.bool)
            if tuple(slots.shape) != (keep.shape[0], self.n_image):
                raise ValueError(f"slots have shape {tuple(slots.shape)}; these masks need ({keep.shape[0]}, "
                                 f"{self.n_image}): one bool per image position")
            prefix_slots = torch.zeros(keep.shape[0], self.P, dtype=torch.bool)
            prefix_slots[:, self.image_slots] = slots
        out = []
        for s in range(0, keep.shape[0], batch_size):
            chunk = keep[s:s + batch_size]
            B = chunk.shape[0]
            self.state.keep = chunk
            self.state.slots = None if prefix_slots is None else prefix_slots[s:s + batch_size].to(self.suffix_ids.device)
            ctx = iv._Context(self.n_layers, self.n_heads, None, [], None, prefix=self.state)
            pos = self.suffix_pos.expand(*self.suffix_pos.shape[:-2], B, -1)
            with iv._activate(ctx):
                logits = self.model(input_ids=self.suffix_ids.expand(B, -1), position_ids=pos, use_cache=False,
                                    logits_to_keep=1).logits[:, -1]
            out.append(logits.float())
        self.state.keep = self.state.slots = None
        return torch.cat(out)
