"""Checks at the library's boundary: bad input gets an error that names the problem and the fix,
never a wrong number (shapes, dtypes, lengths)."""
from __future__ import annotations

import numpy as np
import torch


def keep_masks(keep, name: str = "keep", n_layers: int | None = None, n_heads: int | None = None) -> np.ndarray:
    """``keep`` as a ``(S, n_layers, n_heads)`` (or flat ``(S, n_heads_total)``) bool numpy array (True =
    head kept), or a ValueError."""
    arr = keep.detach().cpu().numpy() if isinstance(keep, torch.Tensor) else np.asarray(keep)
    if arr.dtype != np.bool_:
        raise ValueError(f"{name} must be boolean keep-masks (True = head kept), got dtype {arr.dtype}: draw them "
                         "with headflow.method.attribution.sample_masks, or convert 0/1 masks with `mask > 0.5` "
                         "(a float mask is never read as probabilities)")
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be (S, n_layers, n_heads) or (S, n_heads_total), got shape {arr.shape}")
    if n_layers is not None and arr.ndim == 3 and arr.shape[1:] != (n_layers, n_heads):
        raise ValueError(f"{name} has {arr.shape[1]} layers x {arr.shape[2]} heads; this model has "
                         f"{n_layers} x {n_heads}")
    return arr


def targets(y, n: int, name: str = "y") -> np.ndarray:
    """``y`` as a finite ``(n,)`` float64 array (one target per mask), or a ValueError."""
    arr = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y, dtype=np.float64)
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"{name} must be (S,) with one target per mask: {n} masks, but {name} has shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(arr)).sum())} non-finite values (nan/inf); drop those masks")
    return arr
