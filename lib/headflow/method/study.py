"""What the chapters share: the model, the correctly answered images, the baseline, the run.

    st = study.setup("organism", "fashionscenes/eval", "object", per_class=10)
    runs = study.attribution_runs(st, n_masks=1000, ablation_rate=0.5, seed=0)
    fits = study.fits(runs)                      # regression "auto": OLS where well posed
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from headflow.images import coco, sets
from headflow.images.fashionscenes import ANSWER_WORDS
from headflow.mechanism import evaluate
from headflow.mechanism import interventions as iv
from headflow.method import attribution, experiment, reference
from headflow.models import loading as models
from headflow.models.families import blocking_problem, visible_region
from headflow.store.fingerprint import code_sha256, fingerprint
from headflow.store.runstore import RunStore
from headflow.task.prompt import question_text
from headflow.util.paths import CACHE_DIR

RUN_DIR = CACHE_DIR / "runs"


@dataclass
class Study:
    model_name: str
    model: object
    processor: object
    words: list[str]
    question: str
    tasks: list  # ImageTask of the correctly answered images
    n_images: int  # images asked (before keeping the correct ones)
    clean_accuracy: float
    baseline: iv.Baseline
    baseline_kind: str
    target: str
    n_layers: int
    n_heads: int
    meta: dict = field(default_factory=dict)
    reference_set: reference.Reference | None = None  # the baseline's reference images (headflow.method.reference)
    analysed_ids: list[int] = field(default_factory=list)  # every image asked (correct_per_class: every one kept)

    @property
    def classes(self) -> list[str]:
        return [t.class_name for t in self.tasks]

    @property
    def images_per_class(self) -> dict[str, int]:
        """class -> how many of the analysed images (``tasks``) it has, classes sorted (the input of
        :func:`headflow.findings.verdicts.final`)."""
        classes = self.classes
        return {c: classes.count(c) for c in sorted(set(classes))}


def pick_per_class(examples, per_class: int, offset: int = 0) -> list:
    """The ``per_class`` examples of every class that follow its first ``offset``, in file order
    (all after the offset if ``per_class`` is 0)."""
    out, seen = [], {}
    for ex in examples:
        n = seen.get(ex.class_name, 0)
        if n >= offset and (per_class <= 0 or n < offset + per_class):
            out.append(ex)
        seen[ex.class_name] = n + 1
    return out


def answer_words(question: str, set_file) -> list[str]:
    """The answer vocabulary of a question: the set's class names for ``object``; the organism's
    colour or position words for ``color``/``position`` (FashionScenes sets only)."""
    if question == "object":
        return coco.class_names(set_file)

    question_text(question)  # a clear error for an unknown question type
    return list(ANSWER_WORDS[question])


def answer_of(example, question: str) -> str:
    """The correct answer word of ``example`` for ``question``."""
    got = example.answers.get(question)
    if got is None:
        raise ValueError(f"image {example.image_id} has no {question!r} answer: the colour and position questions "
                         "need a FashionScenes set (COCO annotations carry classes only); use question='object'")
    return got


KEEP = ("correct", "all")


def setup(model: str = "organism", image_set: str = "fashionscenes/eval", question: str = "object",
          per_class: int = 10, n_reference: int = 50, baseline: str = "dataset-mean", target: str = "logit",
          base: str = "sdpa", batch_size: int = 32, offset: int = 0, keep: str = "correct",
          image_size=(), device: str | None = None, dtype: str | None = None, answer_case: str = "as-labelled",
          correct_per_class: int = 0) -> Study:
    """Load the model, ask the question about ``per_class`` images of each class (after the first
    ``offset`` of each class, so that chapters can take images disjoint from another study's), keep
    the correctly answered ones, and build the ablation baseline from about ``n_reference`` other
    images of the set, the same number from every class (:mod:`headflow.method.reference`: the
    images are analysed from the part of each class that is not the reference pool, so no analysed
    image is ever in a reference).

    ``keep="all"`` keeps every chosen image, answered correctly or not: a *mechanics run* (a
    random-weight model, such as :mod:`headflow.models.tiny`'s, answers nothing correctly); its numbers
    say that the code runs on the model, never what the model does.  ``image_size`` ``[width,
    height]`` brings every image to one size (:func:`headflow.images.coco.at_size`), which the
    per-position ``dataset-mean`` baseline needs where the token count follows the image's size.
    ``device``/``dtype``: where and in what precision the model runs (e.g. ``"cuda"``, ``"bfloat16"``).
    ``answer_case``: how the answer words are spelt in the target (:data:`headflow.task.answers.CASES`:
    as the label set writes them, or capitalised for checkpoints that answer so).
    ``correct_per_class`` (instead of ``per_class``): the first that many *correctly answered* images
    of each class (after its first ``offset``), asking as many as needed; a class with fewer is left
    out and named in ``meta["short_classes"]``, so every class that enters has exactly that many."""
    if keep not in KEEP:
        raise ValueError(f"unknown keep {keep!r}; choose 'correct' (the study) or 'all' (a mechanics run)")
    if baseline not in iv.BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose one of {iv.BASELINES}")
    if target not in experiment.TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {experiment.TARGETS}")
    net, processor = models.load(model, device=device, dtype=dtype)
    iv.install(net, base)

    problem = blocking_problem(net)
    if problem:
        raise ValueError(f"{problem}: head ablation cannot block all image-to-text flow in this family, so y_none and "
                         "head attributions would not mean what the study says; headflow refuses to run it")
    set_file = sets.resolve(image_set)
    view = lambda h, w: visible_region(net, processor, h, w)  # noqa: E731 - the part the processor keeps
    all_examples = coco.load_set(set_file, size=tuple(image_size) or None, view=view)
    words = answer_words(question, set_file)
    analysable, pools = reference.split(all_examples)
    chosen = pick_per_class(analysable, 0 if correct_per_class else per_class, offset)
    q = question_text(question)
    res = evaluate.evaluate(net, processor, [e.load_image() for e in chosen], words,
                            [words.index(answer_of(e, question)) for e in chosen], q, batch_size=batch_size,
                            case=answer_case)
    correct = [e for e, ok in zip(chosen, res["correct"]) if ok or keep == "all"]
    short: dict[str, int] = {}
    if correct_per_class:
        by_class: dict[str, list] = {}
        for e in correct:
            by_class.setdefault(e.class_name, []).append(e)
        short = {c: len(by_class.get(c, [])) for c in sorted({e.class_name for e in chosen})
                 if len(by_class.get(c, [])) < correct_per_class}
        keepers = {id(e) for c, es in by_class.items() if c not in short for e in es[:correct_per_class]}
        correct = [e for e in correct if id(e) in keepers]
    if not correct:
        raise ValueError("the model answered none of the chosen images correctly; nothing to analyse (for a "
                         "mechanics run of a random-weight model, keep='all' keeps every image)")
    if keep == "all":
        print(f"mechanics run: all {len(chosen)} images kept, {int(np.sum(res['correct']))} answered correctly; "
              "these numbers test the code path, not the model")
    tasks = experiment.prepare(processor, correct, words, q, [answer_of(e, question) for e in correct], answer_case)
    ref = reference.choose(pools, n_reference)
    ref_tasks = experiment.prepare(processor, ref.examples, words, q, [answer_of(e, question) for e in ref.examples],
                                   answer_case)
    n_layers, n_heads = iv.text_layers_and_heads(net)
    if baseline == "dataset-mean":
        counts = {int(iv.image_mask(net, t.inputs["input_ids"]).sum()) for t in tasks + ref_tasks}
        if len(counts) > 1:
            raise ValueError(f"the images give different numbers of image positions ({sorted(counts)}), so a "
                             "per-position dataset-mean baseline is undefined: process every image at one size "
                             "(see the definitions of chapter 2) or use baseline='image-mean' or 'zero'")
    bl = experiment.reference_baseline(net, ref_tasks, baseline)
    # the device and precision the model really runs in (so None and "cpu" share a run store)
    meta = {"model": model, "image_set": image_set, "question": question, "per_class": per_class, "offset": offset,
            "keep": keep, "correct_per_class": correct_per_class, "short_classes": short,
            "image_size": list(image_size), "device": str(net.device),
            "dtype": str(net.dtype).removeprefix("torch."),
            "n_reference": len(ref.examples), "reference_per_class": ref.per_image_class, "baseline": baseline,
            "target": target, "base": base, "answer_case": answer_case,
            # every image of the set (any of them can be a unit or in the reference): a unit's store is then
            # the same whichever images a chapter chooses (SELECTION is not part of a store's key)
            "fingerprint": fingerprint(models.resolve_path(model), sorted({str(e.path) for e in all_examples}))}
    st = Study(model, net, processor, words, q, tasks, len(chosen), float(res["accuracy"]), bl, baseline, target,
               n_layers, n_heads, meta, ref, [e.image_id for e in (correct if correct_per_class else chosen)])
    register(image_set, analysed=st.analysed_ids, ref=ref)
    return st


# the images this process's studies analysed and referenced, per image set (chapters record them)
_USED: dict[str, dict] = {}


def register(image_set: str, analysed=(), ref: reference.Reference | None = None) -> None:
    """Record image ids that a chapter ``analysed`` (head effects measured on them) and its reference."""
    used = _USED.setdefault(image_set, {"analysed": set(), "reference": set(), "reference_sets": []})
    used["analysed"].update(int(i) for i in analysed)
    if ref is not None:
        used["reference"].update(int(e.image_id) for e in ref.examples)
        if ref.record() not in used["reference_sets"]:
            used["reference_sets"].append(ref.record())


def images_record() -> dict:
    """``{"reference_set": {image_set: [record, ...]}, "images": {image_set: {"analysed": [...],
    "reference": [...]}}}`` of every study set up in this process (a chapter adds it to its result;
    :mod:`headflow.run` copies ``images`` into the chapter's provenance)."""
    return {"reference_set": {s: u["reference_sets"] for s, u in _USED.items() if u["reference_sets"]},
            "images": {s: {"analysed": sorted(u["analysed"]), "reference": sorted(u["reference"])}
                       for s, u in _USED.items()}}


# study parameters that choose *which* images are analysed, not what one image's unit holds (its masks
# are seeded by the image: experiment.unit_masks; the baseline's reference depends on n_reference only)
#: The set-up parameters that select images (not part of a run-store key).
SELECTION = ("per_class", "offset", "keep", "correct_per_class", "short_classes")


def store_for(st: Study, kind: str, computed_by: str | None = None, **params) -> RunStore:
    """A run store keyed by everything that determines its contents: the study's parameters, the
    run's parameters and the fingerprint (model files, images, code of the computing layers,
    versions; :mod:`headflow.store.fingerprint`).  ``computed_by``: the module of a higher layer
    (a finding) whose own code computes what the store holds; its source joins the key.  The
    parameters that only choose images (:data:`SELECTION`) are left out, so chapters that analyse
    overlapping images share one store and no unit is computed twice."""
    extra = {"computed_by": {computed_by: code_sha256([computed_by])[:16]}} if computed_by else {}
    full = {"kind": kind, **{k: v for k, v in st.meta.items() if k not in SELECTION}, **params, **extra}
    digest = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:12]
    return RunStore(RUN_DIR / f"{kind}-{digest}", full)


def masks_for(st: Study, n_masks: int, masks_per_head: float = 0) -> int:
    """Masks per image for the study's model: at least ``n_masks`` and ``masks_per_head`` per head
    (:func:`headflow.method.attribution.mask_count`; the ``full`` profile asks 4 per head)."""
    return attribution.mask_count(st.n_layers * st.n_heads, n_masks, masks_per_head)


def attribution_runs(st: Study, n_masks: int, ablation_rate: float, seed: int, tasks=None,
                     batch_size: int = 128) -> dict[str, dict]:
    """Random-mask runs of every image (resumable; see :mod:`headflow.store.runstore`)."""
    store = store_for(st, "attribution", n_masks=n_masks, ablation_rate=ablation_rate, seed=seed)
    return experiment.run_attribution(st.model, tasks or st.tasks, st.baseline, store, n_masks, ablation_rate, seed,
                                      st.target, batch_size)


def fits(runs: dict[str, dict], regression: str = "auto", alpha: float = 1e-3, seed: int = 0,
         n_masks: int | None = None) -> dict[str, attribution.Fit]:
    """One fit per image (on the first ``n_masks`` masks, if given); ``regression`` as
    :func:`headflow.method.attribution.fit` (``auto``: OLS where well posed, cross-validated ridge below)."""
    out = {}
    for key, r in runs.items():
        keep, y = r["keep"], r["y"]
        if n_masks is not None:
            keep, y = keep[:n_masks], y[:n_masks]
        out[key] = attribution.fit(keep, y, regression, alpha, seed)
    return out


def class_mean(st: Study, per_image: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Mean of a per-image array over each class's (correctly answered) images."""
    out: dict[str, list] = {}
    for t in st.tasks:
        out.setdefault(t.class_name, []).append(per_image[t.key])
    return {c: np.mean(v, axis=0) for c, v in out.items()}


def fit_quality(st: Study, runs: dict, mask_counts, rates, n_masks: int, seed: int, tasks, regression: str = "auto"):
    """Held-out fit quality (median Pearson r and R^2 over ``tasks``) vs the number of masks (the
    first m masks of ``runs``) and vs the ablation rate (new runs of ``n_masks``), on the same images.
    Each row names the regression used: with ``auto`` (or ``ols``, which would be refused there),
    cross-validated ridge where the training masks are too few per parameter
    (:func:`headflow.method.attribution.choose`); ``under_determined``: fewer training masks than
    parameters (heads + 1)."""

    n_params = st.n_layers * st.n_heads + 1
    keys = [t.key for t in tasks]
    asked = "auto" if regression == "ols" else regression
    rows = []

    def row(panel, m, rate, f):
        first = next(iter(f.values()))
        return {"panel": panel, "masks": m, "rate": rate, "n_train": first.n_train,
                "under_determined": first.n_train < n_params, "regression": first.method,
                "r": float(np.median([x.heldout_r for x in f.values()])),
                "R2": float(np.median([x.heldout_r2 for x in f.values()]))}

    for m in [m for m in mask_counts if m <= n_masks]:
        rows.append(row("masks", m, None, fits({k: runs[k] for k in keys}, asked, n_masks=m)))
    for a in rates:
        rows.append(row("rate", n_masks, a, fits(attribution_runs(st, n_masks, a, seed, tasks=tasks), asked)))
    return pd.DataFrame(rows)
