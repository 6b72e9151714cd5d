"""Each chapter's verdict before the series of issues 28 and 30-33 and now, with the reason it moved.

*Before* is read from git: the results files of :data:`BEFORE_COMMIT` (the book as it stood before the
competent organism, the answer judge, the cheaper chapter 4 and the verdict gates).  *Now* is
``book/results/``.  :data:`REASONS` says, per chapter, what the series changed in its design (no
number: every number comes from the two results files).  The reproducibility appendix writes the
table to ``book/results/verdict_history.json`` and shows it.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from headflow.book.index import CHAPTERS, _status
from headflow.util.paths import REPO_ROOT

#: The commit whose verdicts the history compares with.
BEFORE_COMMIT = "3645b67756d39e877485e62bb5097f90c6d11caf"  # 2026-12-02, the last book before issue 28

ORGANISM = ("a competent organism: a per-patch vision tower and organisms trained on scenes where only size tells "
            "the main object (4-5 items, crowd and decoy scenes, size swaps in training; 8 classes) (issue 28)")
GATE = "its verdict gated on chapter 0's bars and on at least 10 correctly answered images per class in 8 classes (32)"
#: Why each verdict moved: chapter -> text.
REASONS = {
    "organism": f"{ORGANISM}; bars with intervals, the tower's per-patch accuracy and size-swap marking, the "
                "designs tried (28)",
    "task": f"{ORGANISM}; answers judged by the longest class a sentence names, plurals and synonyms both ways (30)",
    "single_head": f"{ORGANISM}; {GATE}; shares by the one aggregation rule with intervals (32)",
    "head_attribution": f"{ORGANISM}; {GATE}; the held-out r as a class-equal mean with its interval (32)",
    "attribution": f"{ORGANISM}; {GATE}; the primary contrast attribution vs single-head ablation, rankings refitted "
                   "on repeated fold splits, k judged adaptively with identical statistics (31, 32)",
    "where_heads": f"{ORGANISM}; {GATE}; one contrast (text pretraining) read against the seed twin, small classes "
                   "pooled in the bootstrap (32)",
    "semantics": f"{ORGANISM}; {GATE}; the wrong-answer check a stated test, an appearance probe below chance "
                 "cannot decide the probe comparison (32)",
    "knockout": f"{ORGANISM}; {GATE}; no onset is inconclusive, never partly; knockouts on the suffix path (31, 32)",
    "tokens": f"{ORGANISM}; {GATE}; both groups judged against their size-matched controls (32)",
    "sensitivity": f"{ORGANISM}; {GATE}; ten correct images per class, limits chosen by rule (32)",
    "performance": "the same code paths on the new organism; 3 timing repeats instead of 5 (the build budget, 33)",
    "validation": f"{ORGANISM}; 'partly' needs the planted flow recovered, not only the built-in pair (32)",
}


def statuses_at(commit: str, root: Path = REPO_ROOT) -> dict | None:
    """``{results name: status}`` of every chapter in ``book/results`` at ``commit`` (None without git
    or without that commit, e.g. in a source archive)."""
    try:
        known = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=root, capture_output=True)
    except FileNotFoundError:  # no git
        return None
    if known.returncode != 0:
        return None
    out = {}
    for name, _, _ in CHAPTERS:
        r = subprocess.run(["git", "show", f"{commit}:book/results/{name}.json"], cwd=root, capture_output=True,
                           text=True)
        if r.returncode == 0:  # else that chapter had no results file then
            out[name] = json.loads(r.stdout).get("status")
    return out


def rows(book: Path, commit: str = BEFORE_COMMIT, root: Path = REPO_ROOT) -> dict:
    """The table: per chapter, the verdict and finding before (at ``commit``) and now, whether the
    verdict changed, and the reason from :data:`REASONS`."""
    before = statuses_at(commit, root)
    table = []
    for name, doc, title in CHAPTERS:
        now = _status(book / "results", name)
        then = None if before is None else before.get(name)
        table.append({"chapter": title, "before": then["verdict"] if then else None,
                      "now": now["verdict"] if now else None,
                      "changed": bool(then and now and then["verdict"] != now["verdict"]),
                      "reason": REASONS.get(name, ""), "finding_before": then["finding"] if then else None,
                      "finding_now": now["finding"] if now else None})
    return {"before_commit": commit, "git_history": before is not None, "rows": table}
