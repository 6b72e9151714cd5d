"""Fingerprints: what a cached result depends on, reduced to short hashes.

A run store (:mod:`headflow.store.runstore`) is keyed by its parameters *and* by the fingerprint
of everything else that determines its contents: the model's weights and processor files, the
images it read (evaluation and reference images), the torch and transformers versions, and the
source of every module of the layers that compute ``y`` (:data:`COMPUTE_LAYERS`: editing a figure
or a verdict does not invalidate a run; editing an intervention, a prompt or the model loader
does).  The module list is derived from the package on disk, never kept by hand.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import torch
import transformers
from huggingface_hub import snapshot_download

from headflow.util.hashing import files_sha256

PACKAGE_DIR = Path(__file__).resolve().parents[1]
# The subpackages whose code determines a stored y: utilities, run store and fingerprint, image
# sets, the task, model loading and the family table, the intervention mechanism and the method
# (masks, regression, the per-image experiment, the study set-up).  A finding that stores what it
# computes adds its own module (``headflow.method.study.store_for(computed_by=...)``).
#: The subpackages whose code determines a computed unit (its cache key).
COMPUTE_LAYERS = ("util", "store", "images", "task", "models", "mechanism", "method")


def module_name(path: Path) -> str:
    """``lib/headflow/mechanism/interventions.py`` -> ``headflow.mechanism.interventions``."""
    rel = Path(path).resolve().relative_to(PACKAGE_DIR.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def module_path(name: str) -> Path:
    """``headflow.mechanism.interventions`` -> its source file (a module or a package's ``__init__``)."""
    parts = name.split(".")
    if parts[0] != PACKAGE_DIR.name:
        raise ValueError(f"{name!r} is not a module of {PACKAGE_DIR.name}")
    base = PACKAGE_DIR.parent.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    raise ValueError(f"no module {name!r} under {PACKAGE_DIR}")


def compute_modules() -> tuple[str, ...]:
    """Every module of :data:`COMPUTE_LAYERS`, sorted by name."""
    files = [p for layer in COMPUTE_LAYERS for p in (PACKAGE_DIR / layer).rglob("*.py")]
    return tuple(sorted(module_name(p) for p in files))


def model_sha256(path: str) -> str:
    """The model's files: every file of a local folder (weights, config, processor, tokenizer); for
    a hub id, the commit of its cached snapshot (content-addressed by the hub)."""
    folder = Path(path)
    if folder.is_dir():
        return files_sha256(sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "training_log.json"))
    try:
        return "hub:" + Path(snapshot_download(path, local_files_only=True)).name
    except Exception:  # noqa: BLE001 - not cached: loading would already have failed
        return "hub:" + path


def code_sha256(modules: Iterable[str] | None = None) -> str:
    """sha256 over the source files of the named modules (default :func:`compute_modules`), as they
    are on disk now."""
    h = hashlib.sha256()
    for name in (compute_modules() if modules is None else modules):
        source = module_path(name).read_bytes()
        h.update(name.encode() + b"\0" + hashlib.sha256(source).hexdigest().encode() + b"\n")
    return h.hexdigest()


def versions() -> dict:
    return {"torch": torch.__version__, "transformers": transformers.__version__}


def fingerprint(model_path: str, image_paths: Iterable[Path | str]) -> dict:
    """Everything besides the parameters that determines a run: short hashes and versions."""
    return {"model_sha256": model_sha256(model_path)[:16], "images_sha256": files_sha256(image_paths)[:16],
            "code_sha256": code_sha256()[:16], **versions()}
