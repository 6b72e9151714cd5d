"""Where the repository is: the root every data, model and cache path is relative to."""
from __future__ import annotations

import os
from pathlib import Path

# lib/headflow/util/paths.py -> the repository root
REPO_ROOT = Path(__file__).resolve().parents[3]


def cache_dir() -> Path:
    """Where computed things are cached: ``$HEADFLOW_CACHE`` if set; the clone's ``.cache`` when the
    package runs from a clone; else the user's cache directory (``$XDG_CACHE_HOME/headflow`` or
    ``~/.cache/headflow``)."""
    if os.environ.get("HEADFLOW_CACHE"):
        return Path(os.environ["HEADFLOW_CACHE"])
    if (REPO_ROOT / "pyproject.toml").exists() and (REPO_ROOT / "lib" / "headflow").is_dir():
        return REPO_ROOT / ".cache"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "headflow"
