"""Where notebooks write their figures and results.

The runner sets ``HEADFLOW_BOOK_DIR`` to the folder the executed notebooks go to (``book/`` by
default); a notebook opened by hand writes to ``book/`` of this repository.  Figures go to
``<book>/figures/``, results to ``<book>/results/``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from headflow.util.paths import REPO_ROOT


def book_dir() -> Path:
    return Path(os.environ.get("HEADFLOW_BOOK_DIR", REPO_ROOT / "book"))


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def as_json(obj):
    """``obj`` with numpy values converted to plain Python and non-finite floats to None (what
    :func:`save_json` writes)."""
    return _jsonable(obj)


def save_json(name: str, obj) -> Path:
    """Write ``<book>/results/<name>.json`` (numpy values converted) and return its path."""
    path = book_dir() / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(obj), indent=1, sort_keys=True))
    return path


def save_figure(fig, name: str, show: bool = True) -> Path:
    """Save ``fig`` as ``<book>/figures/<name>.png`` and show it inline."""

    path = book_dir() / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    if show:
        plt.show()
    else:
        plt.close(fig)
    return path
