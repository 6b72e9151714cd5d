"""Checks of an executed book: what a published chapter must not carry.

- :func:`kept_noise`: warnings and stderr output (progress bars, library warnings) in cell outputs;
- :func:`stale_code`: code cells that differ from the source notebook (the injected parameters aside);
- :func:`provenance_split`: chapters executed at different commits or library hashes, or from a
  modified tree;
- :func:`repeated_units`: run-store units computed more than once in one build, also under two
  store keys that hold the same computation.

Each returns a list of problems (empty when the book passes), one readable line each.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from headflow.method.study import SELECTION

WARNING = re.compile(r"\b\w*Warning\b:|\bWARNING\b")
WIDGET = "application/vnd.jupyter.widget-view+json"  # a notebook progress bar (tqdm with ipywidgets)


def _cells(path: Path) -> list[dict]:
    return json.loads(Path(path).read_text())["cells"]


def _text(output: dict) -> str:
    if "text" in output:
        return "".join(output["text"])
    return "".join(output.get("data", {}).get("text/plain", ""))


def kept_noise(notebook: Path) -> list[str]:
    """Cell outputs of an executed notebook that are stderr streams, widgets (progress bars) or carry a warning."""
    problems = []
    for i, cell in enumerate(_cells(notebook)):
        for out in cell.get("outputs", []):
            text = _text(out)
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                problems.append(f"{Path(notebook).name} cell {i}: stderr output {text[:120]!r}")
            elif WIDGET in out.get("data", {}):
                problems.append(f"{Path(notebook).name} cell {i}: a widget output (a progress bar?) {text[:80]!r}")
            elif WARNING.search(text):
                problems.append(f"{Path(notebook).name} cell {i}: a warning in the output {text[:120]!r}")
    return problems


def _code(cells: list[dict]) -> list[str]:
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"
            and "injected-parameters" not in c.get("metadata", {}).get("tags", [])]


def stale_code(executed: Path, source: Path) -> list[str]:
    """Code cells of ``executed`` that differ from ``source`` (papermill's injected-parameters cell
    aside), in order; a different number of code cells is one problem."""
    got, want = _code(_cells(executed)), _code(_cells(source))
    name = Path(executed).name
    if len(got) != len(want):
        return [f"{name}: {len(got)} code cells executed, the source notebook has {len(want)}"]
    return [f"{name}: code cell {i + 1} differs from the source notebook" for i, (a, b) in enumerate(zip(got, want))
            if a != b]


def provenance_split(records: list[dict], require_clean: bool = True) -> list[str]:
    """Problems with a set of provenance records (:mod:`headflow.book.runner`) that should come from
    one build: more than one commit or ``lib/`` hash, or (``require_clean``) a modified tree."""
    problems = []
    for field, get in (("commits", lambda r: r["git"]["commit"]), ("lib/ hashes", lambda r: r["lib_sha256"])):
        seen = Counter(get(r) for r in records)
        if len(seen) > 1:
            by = {str(v)[:12]: sorted(r["notebook"] for r in records if get(r) == v) for v in seen}
            problems.append(f"the chapters ran at {len(seen)} {field}: {by}")
    if require_clean:
        dirty = sorted(r["notebook"] for r in records if r["git"]["lib_or_notebooks_modified"])
        if dirty:
            problems.append(f"executed with lib/ or notebooks/ modified: {dirty}")
    return problems


def content_key(keyed_by: dict) -> str:
    """What one unit of a run store holds: its parameters without those that only choose the images
    (:data:`headflow.method.study.SELECTION`) and the hash of the image files (a store keyed before
    that rule hashed the chosen images only)."""
    params = {k: v for k, v in keyed_by.items() if k not in SELECTION}
    if isinstance(params.get("fingerprint"), dict):
        params["fingerprint"] = {k: v for k, v in params["fingerprint"].items() if k != "images_sha256"}
    return json.dumps(params, sort_keys=True, default=str)


def repeated_units(records: list[dict]) -> list[str]:
    """Run-store units computed more than once across ``records`` (the chapters of one build): the same
    unit of the same store, or of two stores whose parameters differ only in the images they choose."""
    count: Counter = Counter()
    where: dict = {}
    for r in records:
        for s in r.get("run_stores", []):
            for unit in s.get("computed", []):
                key = (s["keyed_by"].get("kind", s["key"].split("-")[0]), content_key(s["keyed_by"]), unit)
                count[key] += 1
                where.setdefault(key, []).append(f"{r['notebook']}:{s['key']}")
    return [f"unit {k[2]!r} of a {k[0]} run computed {n} times: {where[k]}" for k, n in sorted(count.items()) if n > 1]
