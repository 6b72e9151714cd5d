"""Attention of a suffix over a kept prefix, merged exactly (flash-decoding style).

The prefix-reusing fast path (:mod:`headflow.mechanism.prefix_reuse`) runs the image prefix
once and each head-ablation mask only over the text after the image; during such a suffix pass
the registered attention function (:mod:`headflow.mechanism.interventions`) calls
:func:`prefix_attention`, which combines a softmax over the kept prefix keys (clean or ablated
per row and head) with the causal softmax over the suffix.  :func:`expand_heads` (grouped-query
keys/values to query heads) is shared with the interventions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def expand_heads(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``(B, H_kv, K, D)`` -> ``(B, H_kv * groups, K, D)`` (query head h reads kv head h // groups)."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


@dataclass
class PrefixState:
    """Per layer: prefix keys/values ``(H_kv, P, D)``, clean and with the image slots replaced by
    the baseline; ``keep``: ``(B, n_layers, n_heads)`` bool for the rows of the current batch."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    keys_ablated: list[torch.Tensor]
    values_ablated: list[torch.Tensor]
    keep: torch.Tensor | None = None
    slots: torch.Tensor | None = None  # (B, P) bool: the prefix slots an ablated head sees replaced


def _exp_shifted(s: torch.Tensor, blocked: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row max ``m`` of the scores ``s (n, P)`` (``-inf`` where a knockout blocks every key of a row)
    and ``exp(s - m)`` in place (0 at blocked keys and in fully blocked rows)."""
    if blocked is not None:
        s.masked_fill_(blocked, float("-inf"))
    m = s.amax(-1)
    s.sub_(torch.where(torch.isinf(m), torch.zeros_like(m), m)[:, None]).exp_()
    return m, s


def _partial_softmax(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                     blocked: torch.Tensor | None = None):
    """Softmax pieces of ``q (n, D)`` over ``k, v (P, D)``: row max ``(n,)``, sum ``(n,)``,
    unnormalised output ``(n, D)``; keys where ``blocked (n, P)`` is True are left out (knockouts)."""
    s = torch.mm(q, k.t())
    s.mul_(scale)
    m, s = _exp_shifted(s, blocked)
    return m, s.sum(-1), torch.mm(s, v)


def _partial_softmax_mixed(q, k, v, k_abl, v_abl, replaced: torch.Tensor, scale: float,
                           blocked: torch.Tensor | None = None):
    """:func:`_partial_softmax` where each row sees its own mix of keys/values: the ablated ones at
    the slots where ``replaced (n, P)`` is True, the clean ones elsewhere (two GEMMs per side)."""
    s = torch.where(replaced, torch.mm(q, k_abl.t()), torch.mm(q, k.t()))
    s.mul_(scale)
    m, s = _exp_shifted(s, blocked)
    return m, s.sum(-1), torch.mm(s * replaced, v_abl) + torch.mm(s * ~replaced, v)


def prefix_attention(module, query, key, value, state: PrefixState, scaling: float,
                     block: torch.Tensor | None = None):
    """Attention of the suffix queries over [prefix | suffix].  ``block`` ``(B, H, S, P + S)`` bool:
    query-key pairs a knockout blocks (:class:`headflow.mechanism.interventions.Knockout`).

    ``query``: ``(B, H, S, D)``; ``key``/``value``: ``(B, H_kv, S, D)`` (the suffix's own);
    returns ``(B, S, H, D)`` in ``query``'s dtype.  For each kv head, the rows (batch, group,
    position) whose query head is kept attend to the clean prefix, the others to the ablated prefix.
    The softmax pieces and their merge accumulate in float32 (or the inputs' dtype if wider), so a
    bf16 model's fast path is as precise as its stock sdpa attention.
    """
    layer = module.layer_idx
    out_dtype = query.dtype
    acc = torch.promote_types(query.dtype, torch.float32)
    query, key, value = query.to(acc), key.to(acc), value.to(acc)
    B, H, S, D = query.shape
    Hkv = key.shape[1]
    G = H // Hkv
    keep = state.keep[:, layer].to(query.device)  # (B, H)
    # prefix part, per kv head, rows folded into one GEMM dimension M = B * G * S
    q_rows = query.view(B, Hkv, G, S, D).permute(1, 0, 2, 3, 4).reshape(Hkv, B * G * S, D)
    keep_rows = keep.view(B, Hkv, G).permute(1, 0, 2)[..., None].expand(Hkv, B, G, S).reshape(Hkv, -1)
    P = state.keys[layer].shape[1]
    blk_rows = None if block is None else \
        block[..., :P].reshape(B, Hkv, G, S, P).permute(1, 0, 2, 3, 4).reshape(Hkv, B * G * S, P)
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
            k = (state.keys_ablated if ablated else state.keys)[layer][j].to(acc)
            v = (state.values_ablated if ablated else state.values)[layer][j].to(acc)
            if ablated and state.slots is not None:  # position-level ablation
                batch_row = torch.arange(B * G * S, device=query.device)[rows] // (G * S)
                m, l, o = _partial_softmax_mixed(q_rows[j][rows], state.keys[layer][j].to(acc),
                                                 state.values[layer][j].to(acc), k, v, state.slots[batch_row], scaling,
                                                 None if blk_rows is None else blk_rows[j][rows])
            else:
                m, l, o = _partial_softmax(q_rows[j][rows], k, v, scaling, None if blk_rows is None else blk_rows[j][rows])
            m_pre[j, rows], l_pre[j, rows], o_pre[j, rows] = m, l, o
    unfold = lambda x: x.view(Hkv, B, G, S, *x.shape[2:]).transpose(0, 1).reshape(B, H, S, *x.shape[2:])  # noqa: E731
    m_pre, l_pre, o_pre = unfold(m_pre), unfold(l_pre), unfold(o_pre)
    # suffix part: causal softmax over the suffix's own keys
    k_suf = expand_heads(key, G)
    v_suf = expand_heads(value, G)
    s = torch.matmul(query, k_suf.transpose(-1, -2)) * scaling  # (B, H, S, S)
    causal = torch.ones(S, S, dtype=torch.bool, device=query.device).triu(1)
    s.masked_fill_(causal, float("-inf"))
    if block is not None:
        s.masked_fill_(block[..., P:], float("-inf"))
    m_suf = s.amax(-1)
    m = torch.maximum(m_pre, m_suf)
    if block is not None and torch.isinf(m).any():
        raise ValueError("a knockout blocks every key of some query (its whole row would be -inf); "
                         "keep at least the query's own position or the tokens before the image")
    e = (s - m[..., None]).exp_()
    w_pre = (m_pre - m).exp_()
    out = o_pre * w_pre[..., None] + torch.matmul(e, v_suf)
    out /= (l_pre * w_pre + e.sum(-1))[..., None]
    return out.transpose(1, 2).to(out_dtype)
