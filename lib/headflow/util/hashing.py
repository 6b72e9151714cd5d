"""File hashes: sha256 of one file, memoised per file, and one hash over many files."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

_FILE_CACHE: dict[tuple, str] = {}


def sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: Path | str) -> str:
    """sha256 of a file's bytes (memoised on path, size and modification time)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_CACHE:
        _FILE_CACHE[key] = sha256(path)
    return _FILE_CACHE[key]


def files_sha256(paths: Iterable[Path | str]) -> str:
    """One sha256 over the files' names (as given, in order) and contents."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode() + b"\0" + file_sha256(p).encode() + b"\n")
    return h.hexdigest()
