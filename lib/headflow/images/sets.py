"""Image sets by name: ``"fashionscenes/eval"`` and other COCO-format folders
(:func:`headflow.images.coco.resolve_set`), or ``"mechanics:coco80"``, built on first use
(:mod:`headflow.images.mechanics`)."""
from __future__ import annotations

from pathlib import Path

from headflow.images import coco, mechanics


def resolve(name: str) -> Path:
    """The instances file of the image set ``name``."""
    if name.startswith(mechanics.PREFIX):
        return mechanics.resolve(name)
    return coco.resolve_set(name)
