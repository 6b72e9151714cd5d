"""A run store: long runs write each unit of work (one image) as it finishes, and resume.

A store is a folder holding ``params.json`` (what the run computes; reopening it with other
parameters is an error) and one ``<key>.npz`` per finished unit, written to a temporary file and
renamed into place, so a crash (even ``kill -9``) leaves either the whole unit or nothing.
Rerunning skips the finished units: no work is lost or duplicated.  A long unit can write
*parts* as it goes (``parts/<key>/<index>.npz``, atomic too) and resume at its first missing part;
the unit is merged from its parts once they are all there, and the parts are dropped.

Two processes may share a store (chapters executed side by side, :mod:`headflow.book.runner`'s
``--jobs``): :meth:`RunStore.claim` locks one unit across processes, so the second waits and then
finds the unit done, and temporary files carry their writer's process id, so opening a store
removes only those a dead process left.

When ``HEADFLOW_STORE_LOG`` names a file (the runner sets it), every store opened appends a line
``{"store", "units_found"}`` there and every unit saved a line ``{"store", "computed"}``, so a
chapter's provenance says which stores it read and which units it computed.
"""
from __future__ import annotations

import fcntl
import json
import os
from contextlib import ExitStack, contextmanager
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
            if not _writer_alive(tmp):
                tmp.unlink(missing_ok=True)
        _log({"store": str(self.root), "units_found": len(self.keys())})

    def _path(self, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"bad run-store key {key!r}")
        return self.root / f"{key}.npz"

    @contextmanager
    def claim(self, key: str):
        """Hold unit ``key`` exclusively across processes (an ``fcntl`` lock on ``locks/<key>``) while
        it is checked, computed and saved: another process claiming it waits, then finds it done."""
        self._path(key)  # validates the key
        lock = self.root / "locks" / key
        lock.parent.mkdir(exist_ok=True)
        with open(lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

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


@contextmanager
def claimed(stores, key: str):
    """:meth:`RunStore.claim` of ``key`` in every store of ``stores``, taken in one order (no deadlock)."""
    with ExitStack() as stack:
        for s in sorted(stores, key=lambda s: str(s.root)):
            stack.enter_context(s.claim(key))
        yield


def _writer_alive(tmp: Path) -> bool:
    """Whether the process that writes temporary file ``tmp`` (``.<stem>.<pid>.tmp.npz``) still runs."""
    try:
        pid = int(tmp.name.split(".")[-3])
    except (ValueError, IndexError):
        return False
    if pid == os.getpid():
        return False  # this process opens the store now: it writes nothing yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _log(record: dict) -> None:
    log = os.environ.get("HEADFLOW_STORE_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")


def _write_atomic(final: Path, arrays: dict) -> None:
    """Write ``arrays`` as ``final`` (.npz) through a temporary file and a rename."""
    tmp = final.parent / f".{final.stem}.{os.getpid()}.tmp.npz"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
