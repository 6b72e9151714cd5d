"""A run store: long runs write each unit of work (one image) as it finishes, and resume.

A store is a folder holding ``params.json`` (what the run computes; reopening it with other
parameters is an error) and one ``<key>.npz`` per finished unit, written to a temporary file and
renamed into place, so a crash (even ``kill -9``) leaves either the whole unit or nothing.
Rerunning skips the finished units: no work is lost or duplicated.  A long unit can write
*parts* as it goes (``parts/<key>/<index>.npz``, atomic too) and resume at its first missing part;
the unit is merged from its parts once they are all there, and the parts are dropped.

When ``HEADFLOW_STORE_LOG`` names a file (the runner sets it), every store opened appends a line
``{"store", "units_found"}`` there and every unit saved a line ``{"store", "computed"}``, so a
chapter's provenance says which stores it read and which units it computed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


class RunStore:
    def __init__(self, root: Path | str, params: dict):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        meta = self.root / "params.json"
        text = json.dumps(params, indent=1, sort_keys=True, default=str)
        if meta.exists():
            old = json.loads(meta.read_text())
            if old != json.loads(text):
                diff = {k: (old.get(k), params.get(k)) for k in set(old) | set(params) if old.get(k) != params.get(k)}
                raise ValueError(f"the run store {self.root} holds a run with other parameters {diff}; "
                                 "use another folder or delete this one to start over")
        else:
            meta.write_text(text)
        for tmp in [*self.root.glob(".*.tmp.npz"), *self.root.glob("parts/*/.*.tmp.npz")]:  # left by a crash
            tmp.unlink(missing_ok=True)
        _log({"store": str(self.root), "units_found": len(self.keys())})

    def _path(self, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"bad run-store key {key!r}")
        return self.root / f"{key}.npz"

    def done(self, key: str) -> bool:
        return self._path(key).exists()

    def save(self, key: str, **arrays) -> None:
        """Write one finished unit atomically."""
        _write_atomic(self._path(key), arrays)
        _log({"store": str(self.root), "computed": key})

    def _part_path(self, key: str, index: int) -> Path:
        self._path(key)  # validates the key
        return self.root / "parts" / key / f"{int(index):05d}.npz"

    def part_done(self, key: str, index: int) -> bool:
        return self._part_path(key, index).exists()

    def save_part(self, key: str, index: int, **arrays) -> None:
        """Write part ``index`` of unit ``key`` atomically."""
        path = self._part_path(key, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, arrays)

    def load_part(self, key: str, index: int) -> dict:
        with np.load(self._part_path(key, index)) as z:
            return {k: z[k] for k in z.files}

    def drop_parts(self, key: str) -> None:
        """Delete the parts of a unit (after it is merged)."""
        folder = self.root / "parts" / key
        for p in folder.glob("*.npz"):
            p.unlink(missing_ok=True)
        try:
            folder.rmdir()
        except OSError:  # gone already, or another writer's temporary file is there
            pass

    def load(self, key: str) -> dict:
        with np.load(self._path(key)) as z:
            return {k: z[k] for k in z.files}

    def keys(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.npz") if not p.name.startswith("."))


def _log(record: dict) -> None:
    log = os.environ.get("HEADFLOW_STORE_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")


def _write_atomic(final: Path, arrays: dict) -> None:
    """Write ``arrays`` as ``final`` (.npz) through a temporary file and a rename."""
    tmp = final.parent / f".{final.stem}.tmp.npz"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
