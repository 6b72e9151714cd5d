"""Each chapter's verdict before the series of issues 15-20 and now, with the reason it moved.

*Before* is read from git: the results files of :data:`BEFORE_COMMIT` (the book as it stood before the
package layout, the real checkpoints, the main-object organism and the two rigour issues).  *Now* is
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
BEFORE_COMMIT = "243d9a9a2bb47f8b0c3a8ba1066cb7210395c000"  # 2026-11-29, the last book before issue 15

ORGANISM = "the main-object organism (multi-object scenes, bound text task; issue 18)"
BASELINE = "a class-stratified, held-out reference set under the dataset-mean baseline (issue 19)"
#: Why each verdict moved: chapter -> text.
REASONS = {
    "organism": f"{ORGANISM}, with its bars, tower probes, the size-swap counterfactual and a second seed",
    "task": f"{ORGANISM}; {BASELINE}; accuracy on the same number of images per class (19); answers scored "
            "in the checkpoint's own vocabulary (issue 16)",
    "single_head": f"{ORGANISM}; {BASELINE}; its rule stated before its numbers (19)",
    "head_attribution": f"{ORGANISM}; {BASELINE}; its rule stated before its numbers (19)",
    "attribution": f"{ORGANISM}; {BASELINE}; random rankings judged at every k and the paired differences "
                   "Holm-corrected (19)",
    "where_heads": f"{ORGANISM} against a seed twin and two single-object organisms; {BASELINE}; relative depth "
                   "against a uniform placement, split-half stability, the spec's top heads, Holm (18, 19)",
    "semantics": f"{ORGANISM}; {BASELINE}; a class-agnostic target (answer KL) beside the class word's logit, "
                 "intervals by a cluster bootstrap over items (issue 20)",
    "knockout": f"{ORGANISM}; {BASELINE}; the onset of each flow one layer at a time instead of an "
                "effect-weighted centre over 3-layer windows, role without the final token, the logit "
                "difference beside the logit, Holm over the timing tests (issue 20)",
    "tokens": f"{ORGANISM}; {BASELINE}; group ablations in every head (primary) and the top heads, "
              "size-matched controls for the main object, the other objects and the background (20)",
    "sensitivity": f"{ORGANISM}; {BASELINE}; five correct images per class, every setting read against the "
                   "mask-seed noise floor, linearity judged relative to the unexplained variance at rates "
                   "0.1/0.5/0.9 and on pair ablations (20)",
    "performance": "3 repeats and one batch size at real width (20); the same code paths",
    "validation": f"{ORGANISM}; redundancy planted inside the network (two heads behind a saturating unit in "
                  "the weights) and flow split over redundant pairs, each measured redundant before it is "
                  "scored; planted sets from heads outside the top 10% that carry flow on their own (20)",
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
