"""Where the repository is: the root every data, model and cache path is relative to."""
from __future__ import annotations

from pathlib import Path

# lib/headflow/util/paths.py -> the repository root
REPO_ROOT = Path(__file__).resolve().parents[3]
