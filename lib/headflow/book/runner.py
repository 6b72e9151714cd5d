"""Execute the book's notebooks with papermill and record their provenance.

    python -m headflow.run --profile {ci,default,full,families} [--only NAME] [--out book] [-p NAME:KEY=VALUE]

Each ``notebooks/NN-name.ipynb`` runs with its own ``parameters`` cell overridden by the
profile (``notebooks/profiles.yml``) and by ``-p`` options; every given parameter must exist in
that cell and have its type (a misspelled name is an error, not a warning).  The executed copy
goes to ``<out>/NN-name.ipynb``, and ``<out>/_provenance/NN-name.json`` records the parameters,
git commit, a hash of ``lib/``, package versions, seeds and the sha256 of every figure and
results file the notebook wrote.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pandas as pd
import papermill as pm
import yaml

from headflow.book import index, realpath
from headflow.book.outputs import book_dir
from headflow.models import loading, shadow
from headflow.util import threads as thread_budget
from headflow.util.hashing import sha256
from headflow.util.paths import REPO_ROOT

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
PROFILE_FILE = NOTEBOOK_DIR / "profiles.yml"
PROFILES = ("ci", "default", "full", "families", "shadows")
MECHANICS = ("families", "shadows")  # random-weight models: never into book/
# set for every executed chapter (the kernel inherits them): no progress bars or advisory logging in the
# book's outputs (headflow.util.progress, transformers and huggingface_hub honour these); the terminal shows one
# progress line per chapter (papermill's, over cells) instead
QUIET_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
VERSIONED = ("headflow", "torch", "transformers", "numpy", "scikit-learn", "papermill", "nbformat",
             "matplotlib", "seaborn", "pycocotools", "jupyter-book")


class ParameterError(ValueError):
    """A parameter that the notebook does not declare, or of the wrong type."""


# ------------------------------------------------------------------------------------ notebooks
def notebooks(only: str | None = None) -> list[Path]:
    """Source notebooks in chapter order; ``only`` selects by name (with or without ``.ipynb``)."""
    paths = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]-*.ipynb"))
    if only is None:
        return paths
    names = [p.stem for p in paths]
    chosen = [p for p in paths if p.stem == only.removesuffix(".ipynb") or p.stem.split("-", 1)[1] == only]
    if not chosen:
        hint = difflib.get_close_matches(only, names, n=1)
        raise SystemExit(f"no notebook named {only!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
                         + f" Notebooks: {', '.join(names)}")
    return chosen


def declared_parameters(path: Path) -> dict:
    """``{name: default}`` from the cell tagged ``parameters`` (literal assignments only)."""
    nb = json.loads(path.read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ParameterError(f"{path.name} must have exactly one cell tagged 'parameters', found {len(cells)}")
    src = "".join(cells[0]["source"])
    out = {}
    for node in ast.parse(src).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ParameterError(f"{path.name}: the parameters cell may only hold `name = literal` lines")
        out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def _type_ok(default, value) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if default is None:
        return True
    return isinstance(value, type(default))


def _at_least(lo):
    return lambda v: None if v >= lo else f"must be at least {lo}"


def _rate(v):
    return None if 0.0 < v < 1.0 else "must lie strictly between 0 and 1"


def _one_of(options):
    return lambda v: None if v in options else f"must be one of {list(options)}"


def _model_rule(v):
    try:
        loading.check_model(v, require_cached=False)  # a hub id's local copy is checked before running
    except (ValueError, FileNotFoundError) as e:
        return str(e)
    return None


def _optional_model_rule(v):
    return None if v in ("", None) else _model_rule(v)  # "" = none (e.g. no seed organism on a real checkpoint)


def _models_rule(vs):
    return next((m for m in (_model_rule(v) for v in vs) if m), None)


# Value rules of the parameters the chapters share (checked by :func:`validate` before anything runs,
# beside the name and type): a value outside its range is an error, never a silent "all" or a crash later.
#: Value rules of shared parameters: name -> check returning why a value is refused, or None.
VALUE_RULES = {
    "model": _model_rule, "seed_model": _optional_model_rule, "single_model": _optional_model_rule,
    "contrast_models": _models_rule, "single_object_models": _models_rule,
    "ablation_rate": _rate, "token_rate": _rate,
    "rates": lambda vs: next((f"each rate {m}" for m in (_rate(v) for v in vs) if m), None),
    "per_class": _at_least(1), "correct_per_class": _at_least(1), "items_per_class": _at_least(1),
    "others_per_class": _at_least(1), "swapped_per_class": _at_least(1), "n_probe_per_class": _at_least(1),
    "n_masks": _at_least(10), "fit_masks": _at_least(10), "organism_n_masks": _at_least(10),
    "others_n_masks": _at_least(10), "token_masks": _at_least(10), "text_masks": _at_least(10),
    "masks_per_head": _at_least(0), "n_reference": _at_least(1), "n_eval": _at_least(1), "n_boot": _at_least(10),
    "n_folds": _at_least(2), "min_images": _at_least(1), "batch_size": _at_least(1), "k": _at_least(1),
    "workers": _at_least(1), "repeats": _at_least(1), "n_images": _at_least(0), "n_perm": _at_least(10),
    "baseline": _one_of(("dataset-mean", "image-mean", "zero")),
    "regression": _one_of(("auto", "ols", "ridge", "lasso")),
    "target": _one_of(("logit", "logit-diff", "answer-kl")),
    "question": _one_of(("object", "color", "position")),
    "questions": lambda vs: next((f"each question {m}" for m in (_one_of(("object", "color", "position"))(v)
                                                                 for v in vs) if m), None),
    "keep_images": _one_of(("correct", "all")),
    "device": lambda v: None if v is None or str(v).split(":")[0] in ("cpu", "cuda", "mps") else
    "must be None, 'cpu', 'cuda' or 'cuda:N'",
    "dtype": _one_of((None, "float32", "bfloat16", "float16")),
}


def check_value(name: str, value) -> str | None:
    """Why ``value`` is not allowed for parameter ``name`` (:data:`VALUE_RULES`), or None."""
    rule = VALUE_RULES.get(name)
    return rule(value) if rule is not None else None


def validate(path: Path, params: dict) -> dict:
    """Check ``params`` against the notebook's parameters cell (names, types) and :data:`VALUE_RULES`
    (ranges, choices, models that exist); return the effective parameters."""
    declared = declared_parameters(path)
    for name, value in params.items():
        if name not in declared:
            hint = difflib.get_close_matches(name, declared, n=1)
            raise ParameterError(f"{path.name} has no parameter {name!r}"
                                 + (f"; did you mean {hint[0]!r}?" if hint else "")
                                 + f" Its parameters: {', '.join(declared)}")
        if not _type_ok(declared[name], value):
            raise ParameterError(f"{path.name}: parameter {name!r} must be {type(declared[name]).__name__} "
                                 f"(default {declared[name]!r}), got {type(value).__name__} {value!r}")
        why = check_value(name, value)
        if why:
            raise ParameterError(f"{path.name}: parameter {name!r} = {value!r} {why}")
    return {**declared, **params}


def profile_parameters(profile: str, name: str, profile_file: Path = PROFILE_FILE) -> dict:
    if profile not in PROFILES:
        raise SystemExit(f"unknown profile {profile!r}; choose one of {PROFILES}")
    profiles = yaml.safe_load(profile_file.read_text()) or {}
    return dict((profiles.get(profile) or {}).get(name) or {})


def sweep_of(profile: str, profile_file: Path = PROFILE_FILE) -> dict | None:
    """The ``_sweep`` section of a profile (a list of models, each run into its own folder), or None."""

    profiles = yaml.safe_load(profile_file.read_text()) or {}
    return (profiles.get(profile) or {}).get("_sweep")


def profile_notebooks(profile: str, profile_file: Path = PROFILE_FILE) -> list[str]:
    profiles = yaml.safe_load(profile_file.read_text()) or {}
    return [k for k in (profiles.get(profile) or {}) if not k.startswith("_")]


def model_folder(model: str) -> str:
    """The output folder name of one model of a sweep (``org/name`` -> ``org__name``,
    ``tiny:family`` -> ``tiny_family``)."""
    return model.replace("/", "__").replace(":", "_")


def parse_override(text: str) -> tuple[str, str, object]:
    """``NOTEBOOK:KEY=VALUE`` -> (notebook, key, literal value); strings need no quotes."""
    if "=" not in text or ":" not in text.split("=", 1)[0]:
        raise SystemExit(f"-p takes NOTEBOOK:KEY=VALUE (e.g. 03-head-attribution:n_masks=500), got {text!r}")
    target, value = text.split("=", 1)
    nb, key = target.split(":", 1)
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return nb, key, parsed


# ------------------------------------------------------------------------------------ provenance
def lib_hash() -> str:
    """sha256 over the package's source files (names and contents)."""
    h = hashlib.sha256()
    for p in sorted((REPO_ROOT / "lib" / "headflow").rglob("*.py")):
        h.update(p.relative_to(REPO_ROOT).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def git_commit() -> dict:
    def git(*args):
        r = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None
    status = git("status", "--porcelain", "--", "lib", "notebooks")
    return {"commit": git("rev-parse", "HEAD"), "lib_or_notebooks_modified": bool(status)}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _outputs_read(log: Path) -> list[str]:
    """The files (relative to the book) a notebook wrote through :mod:`headflow.book.outputs`, from
    its ``HEADFLOW_OUTPUT_LOG``; the log is then removed."""
    if not log.exists():
        return []
    written = sorted(set(log.read_text().split()))
    log.unlink()
    return written


def _stores_read(log: Path) -> list[dict]:
    """The run stores a notebook opened: key (folder name), the parameters and fingerprint it is keyed
    by, units found at opening (hits) and the units computed during the run (their keys)."""
    opened: dict[str, dict] = {}
    computed: dict[str, list[str]] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            if "computed" in rec:
                computed.setdefault(rec["store"], []).append(rec["computed"])
            else:
                opened.setdefault(rec["store"], rec)
        log.unlink()
    out = []
    for root, rec in opened.items():
        root = Path(root)
        params = json.loads((root / "params.json").read_text()) if (root / "params.json").exists() else {}
        units = computed.get(str(root), [])
        out.append({"key": root.name, "keyed_by": params, "units_hit": rec["units_found"],
                    "units_computed": len(units), "computed": units})
    return out


def images_used(out: Path, written: list[str]) -> dict:
    """``{image_set: {"analysed": [...], "reference": [...]}}``: the image ids that the results files
    among ``written`` record (:func:`headflow.method.study.images_record`), merged per image set."""
    merged: dict[str, dict[str, set]] = {}
    for rel in written:
        if not (rel.startswith("results/") and rel.endswith(".json")):
            continue
        for name, ids in json.loads((out / rel).read_text()).get("images", {}).items():
            got = merged.setdefault(name, {"analysed": set(), "reference": set()})
            for kind in got:
                got[kind].update(ids.get(kind, []))
    return {name: {k: sorted(v) for k, v in ids.items()} for name, ids in merged.items()}


def collapse_code(executed: Path) -> None:
    """Tag every code cell of an executed notebook ``hide-input`` (the injected parameters too), so
    the rendered chapter reads like a paper: narrative, figures and tables in view, code one click away."""
    nb = json.loads(executed.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            tags = cell.setdefault("metadata", {}).setdefault("tags", [])
            if "hide-input" not in tags:
                tags.append("hide-input")
    executed.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------------ running
def execute(path: Path, params: dict, out: Path, profile: str, timeout: int | None = None,
            execution: dict | None = None) -> dict:
    """Run one notebook with papermill into ``out`` and write its provenance record (``execution``:
    how it ran, e.g. ``{"jobs": 2, "threads": 1}`` beside other chapters, recorded as given)."""

    effective = validate(path, params)
    out = Path(out).resolve()  # the kernel runs in notebooks/: a relative --out (make book's) would point there
    out.mkdir(parents=True, exist_ok=True)
    os.environ["HEADFLOW_BOOK_DIR"] = str(out.resolve())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.update(QUIET_ENV)
    store_log = out / "_provenance" / f".{path.stem}.stores.jsonl"
    store_log.parent.mkdir(parents=True, exist_ok=True)
    store_log.unlink(missing_ok=True)
    os.environ["HEADFLOW_STORE_LOG"] = str(store_log)
    output_log = out / "_provenance" / f".{path.stem}.outputs.txt"
    output_log.unlink(missing_ok=True)
    os.environ["HEADFLOW_OUTPUT_LOG"] = str(output_log)
    t0 = time.time()
    pm.execute_notebook(str(path), str(out / path.name), parameters=params, kernel_name="python3",
                        cwd=str(NOTEBOOK_DIR), execution_timeout=timeout,
                        progress_bar={"desc": path.stem, "unit": "cell", "disable": False, "mininterval": 5})
    wall = time.time() - t0
    collapse_code(out / path.name)
    os.environ.pop("HEADFLOW_STORE_LOG", None)
    os.environ.pop("HEADFLOW_OUTPUT_LOG", None)
    stores = _stores_read(store_log)
    written = _outputs_read(output_log)
    record = {"notebook": path.name, "profile": profile, "parameters": effective, "overrides": params,
              "seeds": {k: v for k, v in effective.items() if "seed" in k},
              "wall_seconds": round(wall, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "git": git_commit(), "lib_sha256": lib_hash(), "versions": versions(),
              "run_stores": stores, "outputs": {k: sha256(out / k) for k in written},
              "images": images_used(out, written), **({"execution": execution} if execution else {})}
    prov = out / "_provenance" / f"{path.stem}.json"
    prov.parent.mkdir(parents=True, exist_ok=True)
    prov.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def sweep_provenance(book: Path, result: Path, parameters: dict, wall: float, commit: dict | None = None,
                     lib_sha256: str | None = None) -> Path:
    """``<book>/_provenance/<result stem>.json`` for a results file the runner itself writes after a sweep
    (``realpath.json``): the same fields as a notebook's record."""
    record = {"notebook": f"(runner) {result.name}", "profile": parameters.get("profile"), "parameters": parameters,
              "overrides": {}, "seeds": {}, "wall_seconds": round(wall, 1),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "git": commit or git_commit(),
              "lib_sha256": lib_sha256 or lib_hash(), "versions": versions(), "run_stores": [],
              "outputs": {result.relative_to(book).as_posix(): sha256(result)}}
    path = book / "_provenance" / f"{result.stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return path


def provenance_records(include_self: bool = False) -> list[dict]:
    """The provenance records of ``book/_provenance``, in chapter order (without this appendix's own
    unless ``include_self``)."""

    return [json.loads(p.read_text()) for p in sorted((book_dir() / "_provenance").glob("*.json"))
            if include_self or not p.stem.startswith("99-")]


def provenance_table(records: list[dict]):
    """One row per executed chapter: profile, wall seconds, commit, whether ``lib/`` or the notebooks
    were modified, the ``lib/`` hash and the number of outputs."""

    return pd.DataFrame([{"chapter": r["notebook"], "profile": r["profile"], "wall s": r["wall_seconds"],
                          "finished": r["finished"], "commit": (r["git"]["commit"] or "")[:10],
                          "modified": r["git"]["lib_or_notebooks_modified"], "lib sha256": r["lib_sha256"][:12],
                          "outputs": len(r["outputs"])} for r in records])


def plan_runs(profile: str, paths: list[Path], out: Path, overrides: dict, profile_file: Path = PROFILE_FILE,
              models: list[str] | None = None) -> list:
    """Every ``(notebook, parameters, out folder)`` the profile asks for, validated before anything
    runs: one folder per model of a ``_sweep`` (only the notebooks the profile names), every sweep key
    declared by every notebook it reaches (never dropped silently), every parameter declared and
    of its type."""
    sweep = sweep_of(profile, profile_file)
    only: dict = {}
    if sweep:  # one run per model, each into its own folder, only the notebooks the profile names
        listed = set(profile_notebooks(profile, profile_file))
        paths = [p for p in paths if p.stem in listed]
        shared = {k: v for k, v in sweep.items() if k not in ("model", "workload", "only")}  # image_set, image_size ...
        only = sweep.get("only", {})  # {notebook: [models]}: a notebook that runs for some models of the sweep
        unknown = sorted(set(models or ()) - set(sweep["model"]))
        if unknown:
            raise ParameterError(f"the {profile} profile's sweep has no model {unknown}; it has {sweep['model']}")
        runs = [(out / model_folder(m), {"model": m, **shared}) for m in sweep["model"] if not models or m in models]
    else:
        runs = [(out, {})]
    plans = []
    for folder, common in runs:
        for p in paths:
            if p.stem in only and common["model"] not in only[p.stem]:
                continue
            declared = declared_parameters(p)
            missing = sorted(set(common) - set(declared))
            if missing:
                raise ParameterError(f"the {profile} profile's _sweep sets {missing}, which {p.name} does not declare "
                                     "in its parameters cell: add the parameter there or drop it from _sweep (a sweep "
                                     "key is never dropped silently)")
            params = {**common, **profile_parameters(profile, p.stem, profile_file), **overrides.get(p.stem, {})}
            validate(p, params)
            plans.append((p, params, folder))
    return plans


# ------------------------------------------------------------------------------------ side by side
#: Chapters that run with nothing beside them: chapter 0 first (every chapter's opening and competence
#: gate read its results), chapter 90 (its timings) and chapter 99 (it reads every chapter's record) last.
ALONE_FIRST = ("00-organism",)
ALONE_LAST = ("90-performance", "99-reproducibility")
#: Results a chapter reads that other chapters of the same run write: it starts after them.  Run stores
#: need no order: a unit is claimed while it is computed (headflow.store.runstore), so chapters that share
#: one never compute a unit twice.
AFTER = {"09-sensitivity": ("05-where-the-heads-are", "06-semantics", "07-token-flow", "08-object-background")}


def critical_path(stems: list[str], seconds: dict[str, float]) -> dict[str, float]:
    """Per chapter: its own seconds plus the longest chain of chapters that wait for it (:data:`AFTER`),
    the priority of list scheduling (a chapter others wait on starts early)."""
    waiting = {s: [d for d, before in AFTER.items() if s in before and d in stems] for s in stems}
    memo: dict[str, float] = {}

    def cp(s):
        if s not in memo:
            memo[s] = seconds.get(s, 0.0) + max([cp(d) for d in waiting[s]], default=0.0)
        return memo[s]
    return {s: cp(s) for s in stems}


def phases(stems: list[str], seconds: dict[str, float]) -> tuple[list[str], list[str], list[str]]:
    """``(first, side_by_side, last)``: the chapters run alone before, those run side by side in the
    order they start, those run alone after.  Side by side, the chapters another one waits for
    (:data:`AFTER`) start first, so the one waiting can start early, then the rest; each group by
    its critical path (``seconds``: a warm run's records underrate a chapter whose run stores were
    full, which is why waiting comes before the estimate), then notebook order."""
    first = [s for s in stems if s in ALONE_FIRST]
    last = [s for s in stems if s in ALONE_LAST]
    middle = [s for s in stems if s not in first and s not in last]
    cp = critical_path(middle, seconds)
    waited_on = {b for d, before in AFTER.items() if d in middle for b in before}
    return first, sorted(middle, key=lambda s: (s not in waited_on, -cp[s], stems.index(s))), last


def previous_seconds(out: Path) -> dict[str, float]:
    """Each chapter's wall seconds in the records already in ``out`` (the committed book's, for make
    book): the scheduler's estimate of how long it takes; 0 where there is none."""
    got = {}
    for p in (Path(out) / "_provenance").glob("*.json"):
        try:
            got[p.stem] = float(json.loads(p.read_text()).get("wall_seconds") or 0.0)
        except (ValueError, AttributeError):
            continue
    return got


def run_side_by_side(plans: list, profile: str, timeout: int | None, jobs: int) -> list[dict]:
    """Execute one book's chapters ``jobs`` at a time (chapter 0 first and 90, 99 last, alone, with every
    core; :data:`AFTER` respected), each in its own process.  Each running chapter's thread budget is
    ``cores // chapters running``, rewritten whenever one starts or ends and followed by the chapter at
    its next progress step (``headflow.util.threads``), so a chapter left alone gets every core.
    A failing chapter stops the run (the others are stopped too)."""
    stems = [p.stem for p, _, _ in plans]
    if len(set(stems)) != len(stems) or len({str(o) for _, _, o in plans}) != 1:
        raise SystemExit("error: --jobs runs one book's chapters side by side; a sweep (several models) runs one "
                         "chapter at a time: drop --jobs")
    by_stem = {p.stem: (p, params, out) for p, params, out in plans}
    cores = os.cpu_count() or 1
    first, middle, last = phases(stems, previous_seconds(plans[0][2]))
    records, running, done = [], {}, set()
    budget_file = {s: plans[0][2] / "_provenance" / f".threads-{s}" for s in stems}

    def rebalance():
        for stem in running:
            thread_budget.write(budget_file[stem], max(1, cores // len(running)))

    def start(stem, beside):
        p, params, out = by_stem[stem]
        threads = max(1, cores // jobs) if beside else cores
        execution = {"jobs": jobs, "threads_at_start": threads, "started_beside": sorted(beside)}
        budget_file[stem].parent.mkdir(parents=True, exist_ok=True)
        thread_budget.write(budget_file[stem], threads)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               thread_budget.ENV: str(budget_file[stem])}
        spec = json.dumps({"path": str(p), "params": params, "out": str(out), "profile": profile,
                           "timeout": timeout, "execution": execution})
        print(f"[headflow.run] {p.name} ({profile}) started, {threads} thread(s)"
              + (f", beside {', '.join(sorted(beside))}" if beside else ""), flush=True)
        return subprocess.Popen([sys.executable, "-m", "headflow.run", "--execute-one", spec], env=env,
                                start_new_session=True)

    def finish(stem, proc):
        if proc.returncode != 0:
            for other in running.values():
                try:
                    os.killpg(other.pid, 15)
                except ProcessLookupError:
                    pass
            raise SystemExit(f"[headflow.run] {stem} failed (exit code {proc.returncode}); the chapters beside it "
                             "were stopped. Rerun: finished run-store units are kept.")
        rec = json.loads((by_stem[stem][2] / "_provenance" / f"{stem}.json").read_text())
        records.append(rec)
        done.add(stem)
        budget_file[stem].unlink(missing_ok=True)
        print(f"[headflow.run] {stem}.ipynb done in {rec['wall_seconds']} s; wrote {len(rec['outputs'])} files",
              flush=True)

    for stem in first:
        proc = start(stem, [])
        proc.wait()
        finish(stem, proc)
    pending = list(middle)
    while pending or running:
        ready = [s for s in pending if all(d in done or d not in stems for d in AFTER.get(s, ()))]
        while ready and len(running) < jobs:
            stem = ready.pop(0)
            pending.remove(stem)
            beside = list(running) + (ready[:1] if len(running) + 1 < jobs else [])
            running[stem] = start(stem, beside)
            rebalance()
        time.sleep(1)
        for stem, proc in list(running.items()):
            if proc.poll() is not None:
                del running[stem]
                finish(stem, proc)
                rebalance()
    for stem in last:
        proc = start(stem, [])
        proc.wait()
        finish(stem, proc)
    return records


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Execute the book's notebooks with papermill.")
    ap.add_argument("--profile", choices=PROFILES, default="default")
    ap.add_argument("--only", help="run only this notebook (e.g. 01-task-and-models)")
    ap.add_argument("--out", type=Path, default=None,
                    help="where executed notebooks go: book/ only for the whole default profile with no -p "
                         "(make book); anything else goes to a new runs/<time>/ unless given, so a rerun with "
                         "other parameters never overwrites the committed book")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="NOTEBOOK:KEY=VALUE",
                    help="override one parameter of one notebook (repeatable)")
    ap.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    ap.add_argument("--dry-run", action="store_true", help="validate every run and list them, run nothing")
    ap.add_argument("--jobs", type=int, default=1,
                    help="chapters run side by side (make book: 2, one thread each; chapter 0 first and 90, 99 "
                         "last run alone); 1: one at a time")
    ap.add_argument("--execute-one", help=argparse.SUPPRESS)  # one chapter, for --jobs (JSON)
    ap.add_argument("--sweep-model", action="append", default=[], metavar="MODEL",
                    help="of a sweep, run only this model (repeatable)")
    ap.add_argument("--results", type=Path, default=REPO_ROOT / "book" / "results",
                    help="where a shadows sweep writes realpath.json (default book/results)")
    a = ap.parse_args(argv)
    if a.execute_one:
        spec = json.loads(a.execute_one)
        execute(Path(spec["path"]), spec["params"], Path(spec["out"]), spec["profile"], spec["timeout"],
                spec["execution"])
        return
    if a.jobs < 1:
        raise SystemExit(f"error: --jobs must be at least 1, got {a.jobs}")
    if a.out is None:
        whole_book = a.profile == "default" and not a.only and not a.param and not a.sweep_model
        a.out = REPO_ROOT / "book" if whole_book else REPO_ROOT / "runs" / time.strftime("%Y%m%d-%H%M%S")
        if not whole_book:
            print(f"[headflow.run] writing to {a.out} (give --out to choose; book/ is written only by make book)",
                  flush=True)
    paths = notebooks(a.only)
    overrides: dict[str, dict] = {}
    for text in a.param:
        nb, key, value = parse_override(text)
        notebooks(nb)  # the notebook must exist
        overrides.setdefault(nb.removesuffix(".ipynb"), {})[key] = value
    if a.profile in MECHANICS and (REPO_ROOT / "book").resolve() in [a.out.resolve(), *a.out.resolve().parents]:
        raise SystemExit(f"the {a.profile} profile runs mechanics checks on random-weight models, never into book/: "
                         f"give --out a folder outside it (e.g. --out /tmp/{a.profile})")
    try:
        plans = plan_runs(a.profile, paths, a.out, overrides, models=a.sweep_model or None)
    except ParameterError as e:
        raise SystemExit(f"error: {e}") from None
    if a.dry_run:
        for p, params, out in plans:
            print(f"[headflow.run] would run {p.name} ({a.profile}) into {out}: {params}")
        print(f"[headflow.run] dry run: {len(plans)} runs validated")
        sweep = sweep_of(a.profile) or {}
        known = shadow.checkpoints()
        for m in [m for m in sweep.get("model", []) if m.removeprefix(shadow.PREFIX) in known]:
            r = realpath.resolve(m.removeprefix(shadow.PREFIX))  # offline, through the checkpoint's shadow
            print(f"[headflow.run] {r['model']}: {r['tokenizer']['vocabulary']} vocabulary, template {r['template']}, "
                  f"{r['classes_scored']} classes scored ({r['classes_decided_after_the_first_token']} after the first "
                  f"token), role tokens {r['role_tokens']}, {r['image_tokens']} image tokens at 640x480")
        return
    for p, params, _ in plans:  # every model there before any kernel starts (offline: in the local cache)
        for key in ("model", "seed_model", "single_model"):
            if params.get(key):
                try:
                    loading.check_model(params[key])
                except (ValueError, FileNotFoundError) as e:
                    raise SystemExit(f"error: {p.name}: {key} = {params[key]!r}: {e}") from None
    failed, t_start = [], time.time()
    if a.jobs > 1:
        run_side_by_side(plans, a.profile, a.timeout, a.jobs)
        print(f"[headflow.run] {len(plans)} chapters in {time.time() - t_start:.0f} s, {a.jobs} side by side",
              flush=True)
        plans = []  # run above
    for p, params, out in plans:
        print(f"[headflow.run] {p.name} ({a.profile}) {params}", flush=True)
        try:
            rec = execute(p, params, out, a.profile, a.timeout)
        except pm.PapermillExecutionError as e:
            if a.profile not in MECHANICS:
                raise
            # a mechanics sweep goes on: the failure is reported (no provenance record) and counted
            failed.append(f"{out.name}/{p.name}")
            print(f"[headflow.run] {p.name} FAILED for {params.get('model')}: {e.ename}: {e.evalue}", flush=True)
            continue
        print(f"[headflow.run] {p.name} done in {rec['wall_seconds']} s; wrote {len(rec['outputs'])} files",
              flush=True)
    if a.profile == "shadows":
        folders = {m.removeprefix(shadow.PREFIX): a.out / model_folder(m) for m in sweep_of(a.profile)["model"]
                   if not a.sweep_model or m in a.sweep_model}
        path = realpath.write(a.results, folders, lib_hash())
        sweep_provenance(a.results.parent, path, {"profile": a.profile, "models": list(folders), "out": str(a.out)},
                         time.time() - t_start)
        print(f"[headflow.run] {path} written from the shadows' runs in {a.out}", flush=True)
    if failed:
        raise SystemExit(f"[headflow.run] {len(failed)} of {len(plans)} runs failed: {failed}")
    if (a.out / "index.md").exists():
        index.write(a.out)
        print(f"[headflow.run] status table of {a.out / 'index.md'} regenerated from {a.out / 'results'}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
