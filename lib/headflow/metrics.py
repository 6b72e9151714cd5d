"""Faithfulness and completeness of a set of heads S (STUDY.md section 2).

- ``faithfulness(S) = (y(only S kept) - y_none) / (y_clean - y_none)``
- ``completeness(S) = (y_clean - y(S ablated)) / (y_clean - y_none)``

where ``y_none`` ablates all heads.  Curves run over k = |S| for the top-k heads of a ranking;
the summary is the smallest k reaching 0.8.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def faithfulness(y_only_kept, y_clean, y_none):
    return (np.asarray(y_only_kept) - y_none) / (y_clean - y_none)


def completeness(y_ablated, y_clean, y_none):
    return (y_clean - np.asarray(y_ablated)) / (y_clean - y_none)


def k_grid(n_total: int, n_points: int = 16) -> list[int]:
    """Head counts from 0 to all, denser at small k."""
    ks = np.unique(np.round(np.geomspace(1, n_total, n_points - 1)).astype(int))
    return [0] + ks.tolist()


def topk_masks(order: np.ndarray, ks: Sequence[int], n_layers: int, n_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each k: ``only_kept`` keeps only the top-k heads of ``order``, ``ablated`` ablates them.
    Both ``(len(ks), n_layers, n_heads)`` bool keep-masks."""
    total = n_layers * n_heads
    only = torch.zeros(len(ks), total, dtype=torch.bool)
    abl = torch.ones(len(ks), total, dtype=torch.bool)
    for i, k in enumerate(ks):
        top = torch.as_tensor(np.asarray(order[:k], dtype=np.int64))
        only[i, top] = True
        abl[i, top] = False
    return only.view(-1, n_layers, n_heads), abl.view(-1, n_layers, n_heads)


def k_at(values: Sequence[float], ks: Sequence[int], threshold: float = 0.8) -> int | None:
    """Smallest k whose value reaches ``threshold`` (None if no k does)."""
    for k, v in zip(ks, values):
        if v >= threshold:
            return int(k)
    return None
