"""Statistics helpers that several chapters share."""
from __future__ import annotations

import numpy as np


def class_equal_mean(maps: dict, classes: dict) -> np.ndarray:
    """Mean over classes of each class's mean map (``classes``: image key -> class name)."""
    by: dict[str, list] = {}
    for key, m in maps.items():
        by.setdefault(classes[key], []).append(m)
    if not by:
        raise ValueError("no images left to average (every image effect was non-positive?)")
    return np.mean([np.mean(v, axis=0) for v in by.values()], axis=0)
