"""Where notebooks write their figures and results.

The runner sets ``HEADFLOW_BOOK_DIR`` to the folder the executed notebooks go to (``book/`` by
default); a notebook opened by hand writes to ``book/`` of this repository.  Figures go to
``<book>/figures/``, results to ``<book>/results/``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

from headflow.findings import verdicts
from headflow.util.paths import REPO_ROOT


def book_dir() -> Path:
    return Path(os.environ.get("HEADFLOW_BOOK_DIR", REPO_ROOT / "book"))


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def as_json(obj):
    """``obj`` with numpy values converted to plain Python and non-finite floats to None (what
    :func:`save_json` writes)."""
    return _jsonable(obj)


def _written(path: Path) -> None:
    """Note ``path`` in ``HEADFLOW_OUTPUT_LOG`` (the runner sets it per chapter): a chapter's record
    lists what *it* wrote, even while another chapter writes into the same book beside it."""
    log = os.environ.get("HEADFLOW_OUTPUT_LOG")
    if log:
        with open(log, "a") as f:
            f.write(Path(path).relative_to(book_dir()).as_posix() + "\n")


def save_json(name: str, obj) -> Path:
    """Write ``<book>/results/<name>.json`` (numpy values converted) and return its path."""
    path = book_dir() / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(obj), indent=1, sort_keys=True))
    _written(path)
    return path


def figure_link(path: Path) -> str:
    """Where the saved figure ``path`` is, as seen from the notebook showing it: relative to the
    book folder for an executed chapter (the runner sets ``HEADFLOW_BOOK_DIR``; the executed notebook
    lives there), else relative to the working directory (a notebook opened by hand)."""
    start = book_dir() if "HEADFLOW_BOOK_DIR" in os.environ else Path.cwd()
    return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()


def save_figure(fig, name: str, show: bool = True) -> Path:
    """Save ``fig`` as ``<book>/figures/<name>.png`` and show it inline: as a Markdown image that
    links the saved file (:func:`figure_link`), so the executed notebook does not hold a second copy
    of every figure (the book's HTML build copies the file once)."""

    path = book_dir() / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    _written(path)
    if show:
        display(Markdown(f"![{name}]({figure_link(path)})"))
    return path


def organism_checks(model: str, book: Path | None = None) -> dict | None:
    """Chapter 0's bars (``status.checks`` of ``results/organism.json``) for ``model``, for the competence
    gate (:func:`headflow.findings.verdicts.final`): from this book's results, else the committed book's;
    ``None`` where chapter 0 measured another model (a real checkpoint, another organism): its competence
    is not measured, and the gate says so."""
    for folder in ((book or book_dir()) / "results", REPO_ROOT / "book" / "results"):
        path = folder / "organism.json"
        if path.exists():
            res = json.loads(path.read_text())
            return res["status"]["checks"] if res.get("model") == model and "checks" in res.get("status", {}) else None
    return None


def opening(chapter: str, model: str) -> None:
    """A chapter's opening, after its question: its verdict rule as :mod:`headflow.findings.verdicts` applies
    it (:func:`~headflow.findings.verdicts.rule_text`), then what ``model``'s competence allows
    (:func:`~headflow.findings.verdicts.competence_text`, from chapter 0's bars: :func:`organism_checks`)."""
    display(Markdown(f"**The rule** (`headflow.findings.verdicts.{verdicts.RULES[chapter].__name__}`): "
                     f"{verdicts.rule_text(chapter)}\n\n**What the organism allows.** "
                     f"{verdicts.competence_text(chapter, organism_checks(model))}"))
