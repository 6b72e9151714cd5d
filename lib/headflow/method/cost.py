"""Counting what a method costs, by instrumentation: every call of the language model is seen::

    with cost.count(model) as n:
        rankings.single_head(model, task, baseline)
    n.as_dict()  # {"full_passes": 1, "suffix_passes": 65, "gradient_passes": 0}

A *full pass* is one prompt row through the language model from its first position (a prefix
pass of the fast path counts as one, since it runs the image); a *suffix pass* is one row of the
fast path's suffix batches (only the text after the image, :mod:`headflow.mechanism.prefix_reuse`); a
*gradient pass* is a full pass run with gradients enabled (each is followed by one backward).
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch

from headflow.mechanism import interventions as iv


@dataclass
class PassCount:
    full_passes: int = 0
    suffix_passes: int = 0
    gradient_passes: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def _language_model(model):
    inner = getattr(model, "model", model)
    lm = getattr(inner, "language_model", None)
    if lm is None:
        raise ValueError(f"cannot find the language model of {type(model).__name__} to count its passes")
    return lm


@contextlib.contextmanager
def count(model):
    """Count the language model's passes inside the block (rows of each batch counted apart)."""
    n = PassCount()

    def hook(module, args, kwargs):
        x = kwargs.get("input_ids")
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is None and args:
            x = args[0]
        rows = int(x.shape[0]) if x is not None else 1
        active = iv._ACTIVE
        if active is not None and active.prefix is not None:
            n.suffix_passes += rows
        elif torch.is_grad_enabled():
            n.gradient_passes += rows
        else:
            n.full_passes += rows

    handle = _language_model(model).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield n
    finally:
        handle.remove()
