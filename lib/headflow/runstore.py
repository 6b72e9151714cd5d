"""A run store: long runs write each unit of work (one image) as it finishes, and resume.

A store is a folder holding ``params.json`` (what the run computes; reopening it with other
parameters is an error) and one ``<key>.npz`` per finished unit, written to a temporary file and
renamed into place, so a crash (even ``kill -9``) leaves either the whole unit or nothing.
Rerunning skips the finished units: no work is lost or duplicated.

When ``HEADFLOW_STORE_LOG`` names a file (the runner sets it), every store opened appends a line
``{"store", "units_found"}`` there, so a chapter's provenance says which stores it read.
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
        for tmp in self.root.glob(".*.tmp.npz"):  # left by a crash mid-write
            tmp.unlink()
        log = os.environ.get("HEADFLOW_STORE_LOG")
        if log:
            with open(log, "a") as f:
                f.write(json.dumps({"store": str(self.root), "units_found": len(self.keys())}) + "\n")

    def _path(self, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"bad run-store key {key!r}")
        return self.root / f"{key}.npz"

    def done(self, key: str) -> bool:
        return self._path(key).exists()

    def save(self, key: str, **arrays) -> None:
        """Write one finished unit atomically."""
        final = self._path(key)
        tmp = self.root / f".{key}.tmp.npz"
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)

    def load(self, key: str) -> dict:
        with np.load(self._path(key)) as z:
            return {k: z[k] for k in z.files}

    def keys(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.npz") if not p.name.startswith("."))
