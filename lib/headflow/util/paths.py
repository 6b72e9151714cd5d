"""Where things are: the repository root, the data (organisms, image sets, checkpoint tables) and the cache.

From a clone everything lives in the clone (``data/``, ``.cache/``).  From an installed wheel the
data are under ``<prefix>/share/headflow`` (the wheel's data files: the default organism, its tower,
the evaluation set, the checkpoint table and chat templates) and the cache in the user's cache
directory.  ``HEADFLOW_DATA`` and ``HEADFLOW_CACHE`` override both.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

# lib/headflow/util/paths.py -> the repository root
REPO_ROOT = Path(__file__).resolve().parents[3]


def _in_clone() -> bool:
    return (REPO_ROOT / "pyproject.toml").exists() and (REPO_ROOT / "lib" / "headflow").is_dir()


def data_dir() -> Path:
    """``$HEADFLOW_DATA``; else the clone's ``data/``; else the installed wheel's ``<prefix>/share/headflow``."""
    if os.environ.get("HEADFLOW_DATA"):
        return Path(os.environ["HEADFLOW_DATA"])
    if _in_clone() and (REPO_ROOT / "data").is_dir():
        return REPO_ROOT / "data"
    return Path(sys.prefix) / "share" / "headflow"


def cache_dir() -> Path:
    """Where computed things are cached: ``$HEADFLOW_CACHE`` if set; the clone's ``.cache`` when the
    package runs from a clone; else the user's cache directory (``$XDG_CACHE_HOME/headflow`` or
    ``~/.cache/headflow``)."""
    if os.environ.get("HEADFLOW_CACHE"):
        return Path(os.environ["HEADFLOW_CACHE"])
    if _in_clone():
        return REPO_ROOT / ".cache"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "headflow"


DATA_DIR = data_dir()  # where the organisms, image sets and checkpoint table are (decided at import)
CACHE_DIR = cache_dir()  # where computed things are cached (decided at import)
