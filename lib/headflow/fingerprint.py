"""Fingerprints: what a cached result depends on, reduced to short hashes.

A run store (:mod:`headflow.runstore`) is keyed by its parameters *and* by the fingerprint of
everything else that determines its contents: the model's weights and processor files, the
images it read (evaluation and reference images), the torch and transformers versions, and the
source of the modules that compute ``y`` (:data:`COMPUTE_MODULES`: editing a plot does not
invalidate a run; editing an intervention does).
"""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Iterable

from .outputs import sha256

# The modules whose code determines a stored y (masks, interventions, prompts, token groups,
# the baseline, model loading and the chosen images).
COMPUTE_MODULES = tuple(f"headflow.{m}" for m in ("attribution", "coco", "evaluate", "experiment", "families", "flow",
                                                    "interventions", "models", "prefix_reuse", "rankings", "study",
                                                    "task", "tokens"))

_FILE_CACHE: dict[tuple, str] = {}


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


def model_sha256(path: str) -> str:
    """The model's files: every file of a local folder (weights, config, processor, tokenizer); for
    a hub id, the commit of its cached snapshot (content-addressed by the hub)."""
    folder = Path(path)
    if folder.is_dir():
        return files_sha256(sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "training_log.json"))
    try:
        from huggingface_hub import snapshot_download

        return "hub:" + Path(snapshot_download(path, local_files_only=True)).name
    except Exception:  # noqa: BLE001 - not cached: loading would already have failed
        return "hub:" + path


def code_sha256(modules: Iterable[str] | None = None) -> str:
    """sha256 over the source files of the named modules (default :data:`COMPUTE_MODULES`), as they
    are on disk now."""
    h = hashlib.sha256()
    for name in (COMPUTE_MODULES if modules is None else modules):
        source = Path(importlib.util.find_spec(name).origin).read_bytes()
        h.update(name.encode() + b"\0" + hashlib.sha256(source).hexdigest().encode() + b"\n")
    return h.hexdigest()


def versions() -> dict:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def fingerprint(model_path: str, image_paths: Iterable[Path | str]) -> dict:
    """Everything besides the parameters that determines a run: short hashes and versions."""
    return {"model_sha256": model_sha256(model_path)[:16], "images_sha256": files_sha256(image_paths)[:16],
            "code_sha256": code_sha256()[:16], **versions()}
