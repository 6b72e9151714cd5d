"""A chapter's thread budget, changed from outside while it runs.

The book's runner (:mod:`headflow.book.runner`, ``--jobs``) runs chapters side by side, one thread
each, and gives a chapter every core once it runs alone.  It writes the number of threads into the
file ``HEADFLOW_THREADS_FILE`` names; :func:`follow` (called at every step of a progress bar,
:mod:`headflow.util.progress`) reads it when it changed and sets torch's thread count.  Without the
variable nothing happens.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

ENV = "HEADFLOW_THREADS_FILE"
_seen: dict = {"key": None}


def follow() -> int | None:
    """Set torch's threads to the budget in ``$HEADFLOW_THREADS_FILE`` if the file changed since the
    last call; the budget read, or None (no file, unchanged, or not a positive integer)."""
    path = os.environ.get(ENV)
    if not path:
        return None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    key = (path, st.st_ino, st.st_mtime_ns, st.st_size)  # write() replaces the file: a new inode each time
    if key == _seen["key"]:
        return None
    _seen["key"] = key
    try:
        n = int(Path(path).read_text().strip())
    except ValueError:
        return None
    if n < 1:
        return None
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n


def write(path: Path, n: int) -> None:
    """Give the chapter that follows ``path`` a budget of ``n`` threads (atomically)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{int(n)}\n")
    os.replace(tmp, path)
