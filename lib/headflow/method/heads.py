"""One call for the common job: which attention heads move the image's information to the answer?
::

    import headflow
    ranking = headflow.rank_heads("organism", ["a.png", "b.png", ...], "What is the main object?",
                                  answers=["dress", "bag", ...], labels=headflow.CLASSES)
    ranking.table.head()              # layer, head, attribution, ci_low, ci_high, rank
    ranking.top(8)                    # [(layer, head), ...]
    ranking.save("out/"); headflow.HeadRanking.load("out/") == ranking

:func:`rank_heads` takes any model the loader takes (an organism's name, a local folder, a hub id,
``tiny:<family>``, ``shadow:<hub id>``), images as paths, PIL images or ``(H, W, 3) uint8`` arrays,
any question text, the correct answer of each image and the label set the answer is chosen from.
It runs the study's method (:mod:`headflow.method.attribution`: random head-ablation masks, one
regression per image) through the run store, so an interrupted call resumes where it stopped.

**The baseline's reference images** (``baseline="dataset-mean"``: each ablated head reads the
mean image keys/values of other images) are explicit: ``reference=`` images, or, by the study's
rule (:mod:`headflow.method.reference`), the last quarter (at most 10) of each answer's images,
which are then never analysed; both are reported in :attr:`HeadRanking.images`.  Where the rule
leaves no reference (no answer has two or more images) ``dataset-mean`` is refused with the fix.

**Over images**: a head's ``attribution`` is the mean over the analysed images of the logit lost
when it is ablated (the regression's coefficient, sign flipped), its interval a 95% percentile
bootstrap over images (``n_boot`` draws, seeded).  ``per_image`` keeps every image's values.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from PIL import Image

from headflow.mechanism import evaluate, tokens
from headflow.mechanism import interventions as iv
from headflow.method import attribution, experiment, metrics, reference
from headflow.models import loading as models
from headflow.models.families import blocking_problem
from headflow.store.fingerprint import fingerprint
from headflow.store.runstore import RunStore
from headflow.util.devices import to_device
from headflow.util.paths import cache_dir
from headflow.util.progress import bar

FORMAT = "headflow.HeadRanking/1"


@dataclass
class UserImage:
    """One user image, stored once as PNG under the cache (named by its content), with its answer."""

    image_id: int
    path: Path
    class_name: str  # the correct answer
    source: str  # what the user passed (a path, or "PIL image #i" / "array #i")

    def load_image(self) -> Image.Image:
        return Image.open(self.path).convert("RGB")


def as_images(images: Sequence, answers: Sequence[str], folder: Path) -> list[UserImage]:
    """Paths, PIL images or ``(H, W, 3) uint8`` arrays -> :class:`UserImage` (a clear error for anything else)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (img, answer) in enumerate(zip(images, answers)):
        if isinstance(img, (str, Path)):
            p = Path(img)
            if not p.is_file():
                raise FileNotFoundError(f"image #{i}: no file {p}")
            pil, source = Image.open(p).convert("RGB"), str(p)
        elif isinstance(img, Image.Image):
            pil, source = img.convert("RGB"), f"PIL image #{i}"
        elif isinstance(img, np.ndarray):
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(f"image #{i}: an array must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
            pil, source = Image.fromarray(img), f"array #{i}"
        else:
            raise TypeError(f"image #{i} is a {type(img).__name__}: give a path, a PIL image or an (H, W, 3) uint8 array")
        buf = io.BytesIO()
        pil.save(buf, format="PNG")
        digest = hashlib.sha256(buf.getvalue()).hexdigest()
        path = folder / f"{digest[:16]}.png"
        if not path.exists():
            path.write_bytes(buf.getvalue())
        out.append(UserImage(image_id=int(digest[:7], 16), path=path, class_name=str(answer), source=source))
    ids = [u.image_id for u in out]
    if len(set(ids)) != len(ids):
        raise ValueError("the same image is given twice; give each image once")
    return out


@dataclass
class HeadRanking:
    """The heads of one model ranked by image attribution, with everything that made them.

    ``table``: one row per head (``layer``, ``head``, ``attribution``, ``ci_low``, ``ci_high``,
    ``rank``, 1 = most), sorted by rank; ``per_image``: ``(n_images, n_layers * n_heads)`` attribution
    of every analysed image (rows in ``images`` order, flat head index ``layer * n_heads + head``);
    ``images``: one row per image given (``source``, ``answer``, ``role``: analysed / reference /
    answered wrongly, ``correct``, ``said``, and for analysed images ``heldout_r``, ``heldout_r2``,
    ``regression``, ``y_clean``, ``y_none``); ``params``: the call's parameters; ``fingerprint``:
    model files, images, code and versions (:mod:`headflow.store.fingerprint`)."""

    table: pd.DataFrame
    per_image: np.ndarray
    images: pd.DataFrame
    params: dict
    fingerprint: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self.params["n_layers"])

    @property
    def n_heads(self) -> int:
        return int(self.params["n_heads"])

    def top(self, k: int) -> list[tuple[int, int]]:
        """The ``k`` heads with the largest attribution, as ``(layer, head)``."""
        return [(int(r.layer), int(r.head)) for r in self.table.head(k).itertuples()]

    def order(self) -> np.ndarray:
        """Flat head indices (``layer * n_heads + head``) from the largest attribution down."""
        return np.array(self.table["layer"] * self.n_heads + self.table["head"], dtype=np.int64)

    def save(self, folder: str | Path) -> Path:
        """Write ``heads.csv``, ``images.csv``, ``per_image.npy`` and ``ranking.json`` (format,
        parameters, fingerprint) into ``folder``; ``HeadRanking.load`` reads them back."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.table.to_csv(folder / "heads.csv", index=False)
        self.images.to_csv(folder / "images.csv", index=False)
        np.save(folder / "per_image.npy", self.per_image)
        (folder / "ranking.json").write_text(json.dumps({"format": FORMAT, "params": self.params,
                                                         "fingerprint": self.fingerprint}, indent=1, default=str))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "HeadRanking":
        folder = Path(folder)
        meta = json.loads((folder / "ranking.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{folder} holds {meta.get('format')!r}, not a {FORMAT} ranking")
        return cls(pd.read_csv(folder / "heads.csv"), np.load(folder / "per_image.npy"),
                   pd.read_csv(folder / "images.csv"), meta["params"], meta["fingerprint"])

    def __eq__(self, other) -> bool:
        if not isinstance(other, HeadRanking):
            return NotImplemented
        return (np.allclose(self.per_image, other.per_image, equal_nan=True)
                and np.allclose(self.table[["attribution", "ci_low", "ci_high"]].to_numpy(),
                                other.table[["attribution", "ci_low", "ci_high"]].to_numpy())
                and self.table[["layer", "head", "rank"]].equals(other.table[["layer", "head", "rank"]])
                and json.loads(json.dumps(self.params, default=str)) == json.loads(json.dumps(other.params, default=str)))


def _bootstrap_mean(values: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """95% percentile interval of the mean over rows (images) of ``values (N, H)``."""
    rng = np.random.default_rng(seed)
    n = len(values)
    if n < 2:
        return np.full(values.shape[1], np.nan), np.full(values.shape[1], np.nan)
    draws = np.stack([values[rng.integers(0, n, n)].mean(0) for _ in range(n_boot)])
    return np.quantile(draws, 0.025, axis=0), np.quantile(draws, 0.975, axis=0)


@dataclass
class Prepared:
    """A model, its answer targets and the user's images, ready for interventions (:func:`prepare`)."""

    model: object
    processor: object
    question: str
    labels: list[str]
    given: list[UserImage]  # every image given, in order
    reference: list[UserImage]  # the dataset-mean baseline's reference images (never analysed)
    reference_rule: str | None
    tasks: list  # experiment.ImageTask of the analysed images
    clean: dict  # evaluate.evaluate's result over the analysable images
    analysable: list[UserImage]
    baseline: iv.Baseline
    baseline_kind: str
    root: Path

    @property
    def n_layers_heads(self) -> tuple[int, int]:
        return iv.text_layers_and_heads(self.model)

    def image_rows(self, extra: dict | None = None) -> pd.DataFrame:
        """One row per image given (and per outside reference image): source, answer, role, what it said."""
        extra = extra or {}
        said = dict(zip([u.image_id for u in self.analysable], self.clean["said"]))
        ok = dict(zip([u.image_id for u in self.analysable], self.clean["correct"]))
        analysed = {t.example.image_id for t in self.tasks}
        ref_ids = {u.image_id for u in self.reference}
        rows = []
        for u in self.given:
            role = ("reference" if u.image_id in ref_ids else "analysed" if u.image_id in analysed
                    else "answered wrongly (not analysed)")
            rows.append({"image_id": u.image_id, "source": u.source, "answer": u.class_name, "role": role,
                         "correct": ok.get(u.image_id), "said": said.get(u.image_id), **extra.get(u.image_id, {})})
        given_ids = {g.image_id for g in self.given}
        rows += [{"image_id": u.image_id, "source": u.source, "answer": None, "role": "reference"}
                 for u in self.reference if u.image_id not in given_ids]
        return pd.DataFrame(rows)


def prepare(model, images: Sequence, question: str, answers: Sequence[str], labels: Sequence[str] | None = None, *,
            baseline: str = "dataset-mean", target: str = "logit", reference_images: Sequence | None = None,
            n_reference: int = 50, keep: str = "correct", device: str | None = None, dtype: str | None = None,
            batch_size: int = 64, progress: bool = True, store_dir: str | Path | None = None) -> Prepared:
    """Check the arguments, load the model, set the reference apart (module docstring), ask the
    question about every other image and keep the correctly answered ones (``keep="all"``: every one)."""
    images, answers = list(images), [str(a) for a in answers]
    if not images:
        raise ValueError("no images given")
    if len(answers) != len(images):
        raise ValueError(f"{len(images)} images but {len(answers)} answers: give the correct answer of every image")
    labels = list(labels) if labels is not None else sorted(set(answers))
    if len(labels) < 2:
        raise ValueError(f"the label set {labels} has fewer than two answers: pass labels= with every answer the model "
                         "chooses among")
    unknown = sorted(set(answers) - set(labels))
    if unknown:
        raise ValueError(f"answers {unknown} are not in the label set {labels}")
    if keep not in ("correct", "all"):
        raise ValueError(f"keep must be 'correct' or 'all', not {keep!r}")
    if baseline not in iv.BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose one of {iv.BASELINES}")
    if target not in experiment.TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {experiment.TARGETS}")
    root = Path(store_dir) if store_dir is not None else cache_dir() / "rank_heads"
    given = as_images(images, answers, root / "images")
    if isinstance(model, tuple):  # (model, processor) already loaded
        net, processor = model
    else:
        net, processor = models.load(model, device=device, dtype=dtype)
    iv.install(net, "sdpa")
    problem = blocking_problem(net)
    if problem:
        raise ValueError(f"{problem}: head ablation cannot block all image-to-text flow here; headflow refuses to run")
    if reference_images is not None:
        ref_examples = as_images(reference_images, [labels[0]] * len(reference_images), root / "images")
        analysable, rule = given, "given (reference_images=)"
    elif baseline == "dataset-mean":
        analysable, pools = reference.split(given)
        if not any(pools.values()):
            raise ValueError("baseline='dataset-mean' needs reference images, and the rule sets none apart here (no "
                             "answer has two or more images): pass reference_images=[...] (other images of the same "
                             "kind) or use baseline='image-mean'")
        ref = reference.choose(pools, n_reference)
        ref_examples, rule = ref.examples, ref.record()["rule"]
    else:
        analysable, ref_examples, rule = given, [], None
    clean = evaluate.evaluate(net, processor, [u.load_image() for u in analysable], labels,
                              [labels.index(u.class_name) for u in analysable], question, batch_size=batch_size,
                              progress=progress)
    kept = [u for u, ok in zip(analysable, clean["correct"]) if ok or keep == "all"]
    if not kept:
        raise ValueError(f"the model answered none of the {len(analysable)} analysable images correctly (it said "
                         f"{sorted(set(clean['said']))[:5]}); to analyse them anyway pass keep='all'")
    tasks = experiment.prepare(processor, kept, labels, question, [u.class_name for u in kept])
    ref_tasks = experiment.prepare(processor, ref_examples, labels, question, [u.class_name for u in ref_examples])
    bl = experiment.reference_baseline(net, ref_tasks, baseline)
    return Prepared(net, processor, question, labels, given, list(ref_examples), rule, tasks, clean, analysable, bl,
                    baseline, root)


def rank_heads(model, images: Sequence, question: str, answers: Sequence[str], labels: Sequence[str] | None = None,
               *, n_masks: int = 0, masks_per_head: float = 4.0, ablation_rate: float = 0.5, regression: str = "auto",
               target: str = "logit", baseline: str = "dataset-mean", reference_images: Sequence | None = None,
               n_reference: int = 50, seed: int = 0, device: str | None = None, dtype: str | None = None,
               batch_size: int = 64, keep: str = "correct", n_boot: int = 1000, progress: bool = True,
               store_dir: str | Path | None = None) -> HeadRanking:
    """Rank every attention head of ``model`` by the answer logit lost when it is ablated (module docstring).

    ``answers``: the correct answer of each image, each one of ``labels`` (default: the distinct
    answers, at least two); masks per image: at least ``n_masks`` and ``masks_per_head`` per head
    (4 per head: OLS well posed at any head count); ``target``: ``logit``, ``logit-diff`` or
    ``answer-kl``; ``baseline``: ``dataset-mean`` (with ``reference_images`` or the rule's),
    ``image-mean`` or ``zero``; ``keep="all"`` analyses wrongly answered images too (a
    random-weight model answers none correctly).  ``model`` may also be a loaded ``(model, processor)``."""
    prep = prepare(model, images, question, answers, labels, baseline=baseline, target=target,
                   reference_images=reference_images, n_reference=n_reference, keep=keep, device=device, dtype=dtype,
                   batch_size=batch_size, progress=progress, store_dir=store_dir)
    net, tasks = prep.model, prep.tasks
    n_layers, n_heads = prep.n_layers_heads
    masks = attribution.mask_count(n_layers * n_heads, n_masks, masks_per_head)
    name = model if isinstance(model, str) else getattr(net.config, "_name_or_path", "") or "a loaded model"
    params = {"model": str(name), "question": question, "labels": prep.labels, "n_masks": masks,
              "ablation_rate": ablation_rate, "regression": regression, "target": target, "baseline": baseline,
              "reference_rule": prep.reference_rule, "seed": seed, "device": str(net.device),
              "dtype": str(net.dtype).removeprefix("torch."), "keep": keep, "n_boot": n_boot,
              "n_layers": n_layers, "n_heads": n_heads}
    model_path = models.resolve_path(name) if isinstance(model, str) else str(name)
    fp = fingerprint(model_path, sorted(str(u.path) for u in prep.given + prep.reference))
    key = {k: v for k, v in params.items() if k not in ("regression", "n_boot", "keep")}
    digest = hashlib.sha256(json.dumps({**key, "fingerprint": fp}, sort_keys=True, default=str).encode()).hexdigest()
    store = RunStore(prep.root / "runs" / digest[:12], {**key, "fingerprint": fp})
    runs = experiment.run_attribution(net, tasks, prep.baseline, store, masks, ablation_rate, seed, target, batch_size,
                                      progress=progress)
    per_image, fit_rows = [], {}
    for t in bar(tasks, desc="fits", show=progress):
        r = runs[t.key]
        f = attribution.fit(r["keep"], r["y"], regression, seed=seed)
        per_image.append(f.attribution)
        fit_rows[t.example.image_id] = {"heldout_r": f.heldout_r, "heldout_r2": f.heldout_r2, "regression": f.method,
                                        "y_clean": float(r["y_clean"]), "y_none": float(r["y_none"])}
    per_image = np.stack(per_image)
    lo, hi = _bootstrap_mean(per_image, n_boot, seed)
    flat = np.arange(n_layers * n_heads)
    table = pd.DataFrame({"layer": flat // n_heads, "head": flat % n_heads, "attribution": per_image.mean(0),
                          "ci_low": lo, "ci_high": hi})
    table = table.sort_values("attribution", ascending=False, kind="stable").reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    return HeadRanking(table, per_image, prep.image_rows(fit_rows), params, fp)


# ------------------------------------------------------------------------------------ its siblings
def _heads_mask(heads: Sequence[tuple[int, int]], n_layers: int, n_heads: int) -> np.ndarray:
    keep = np.ones((n_layers, n_heads), bool)
    for layer, head in heads:
        if not (0 <= int(layer) < n_layers and 0 <= int(head) < n_heads):
            raise ValueError(f"head ({layer}, {head}) does not exist: this model has {n_layers} layers x {n_heads} heads")
        keep[int(layer), int(head)] = False
    return keep


def ablate_heads(model, images: Sequence, question: str, answers: Sequence[str], heads: Sequence[tuple[int, int]],
                 labels: Sequence[str] | None = None, *, target: str = "logit", baseline: str = "dataset-mean",
                 **kw) -> pd.DataFrame:
    """Ablate the head set ``heads`` (``[(layer, head), ...]``) on every analysed image: per image
    ``y_clean``, ``y_ablated``, ``y_none`` (every head ablated) and ``share_lost`` =
    ``(y_clean - y_ablated) / (y_clean - y_none)``, undefined (NaN) where the image effect is below
    :data:`headflow.method.metrics.MIN_IMAGE_EFFECT`."""
    prep = prepare(model, images, question, answers, labels, baseline=baseline, target=target, **kw)
    n_layers, n_heads = prep.n_layers_heads
    keep = torch.from_numpy(np.stack([np.ones((n_layers, n_heads), bool), _heads_mask(heads, n_layers, n_heads),
                                      np.zeros((n_layers, n_heads), bool)]))
    rows = []
    for t in prep.tasks:
        y = experiment.masks_y(prep.model, t, prep.baseline, keep, target)
        share = metrics.completeness(y[1], y[0], y[2])
        rows.append({"image_id": t.example.image_id, "answer": t.class_name, "y_clean": y[0], "y_ablated": y[1],
                     "y_none": y[2], "share_lost": np.nan if share is None else share})
    return pd.DataFrame(rows)


def faithfulness_curves(ranking: HeadRanking, model, images: Sequence, question: str, answers: Sequence[str],
                        labels: Sequence[str] | None = None, *, ks: Sequence[int] | None = None, n_boot: int = 1000,
                        seed: int = 0, min_images: int = 1, **kw) -> pd.DataFrame:
    """Faithfulness (only the top-k heads of ``ranking`` kept) and completeness (they are ablated)
    per k on *held-out* images (any image the ranking analysed is refused), aggregated by the study's
    rule (:func:`headflow.method.metrics.aggregate`: within each answer the ratio of sums, then the
    mean over answers) with 95% bootstrap intervals (images resampled within answers)."""
    opts = {"baseline": ranking.params.get("baseline", "dataset-mean"), "target": ranking.params.get("target", "logit"),
            **kw}
    prep = prepare(model, images, question, answers, labels or ranking.params.get("labels"), **opts)
    seen = set(ranking.images.loc[ranking.images["role"] == "analysed", "image_id"].astype(int))
    overlap = [t.example.source for t in prep.tasks if t.example.image_id in seen]
    if overlap:
        raise ValueError(f"{len(overlap)} of these images were analysed to make the ranking ({overlap[:3]}): evaluate a "
                         "ranking on images it was not found on")
    n_layers, n_heads = prep.n_layers_heads
    ks = list(ks) if ks is not None else metrics.k_grid(n_layers * n_heads)
    only, abl = metrics.topk_masks(ranking.order(), ks, n_layers, n_heads)
    ends = torch.stack([torch.ones(n_layers, n_heads, dtype=torch.bool), torch.zeros(n_layers, n_heads, dtype=torch.bool)])
    keep = torch.cat([ends, only, abl])
    ys = np.stack([experiment.masks_y(prep.model, t, prep.baseline, keep, opts["target"]) for t in prep.tasks])
    y_clean, y_none = ys[:, 0], ys[:, 1]
    effect = y_clean - y_none
    classes = [t.class_name for t in prep.tasks]
    out = {"k": ks}
    for name, num in (("faithfulness", ys[:, 2:2 + len(ks)] - y_none[:, None]),
                      ("completeness", y_clean[:, None] - ys[:, 2 + len(ks):])):
        agg = metrics.aggregate(num, effect, classes, min_images)
        draws = metrics.bootstrap_aggregate(num, effect, classes, n_boot, seed, min_images)
        out[name], out[f"{name}_ci_low"] = agg["value"], np.quantile(draws, 0.025, axis=0)
        out[f"{name}_ci_high"] = np.quantile(draws, 0.975, axis=0)
    return pd.DataFrame(out)


def knockout(model, images: Sequence, question: str, answers: Sequence[str], source: str = "image",
             receiver: str = "final", layers: Sequence[int] | None = None, labels: Sequence[str] | None = None, *,
             target: str = "logit", **kw) -> pd.DataFrame:
    """Block attention from the token group ``receiver`` to the group ``source``
    (:data:`headflow.mechanism.tokens.GROUPS`: image, question, role, final, ...) in ``layers``
    (default: every layer), in every head; per analysed image ``y_clean``, ``y_knocked`` and
    ``share_lost`` = ``(y_clean - y_knocked) / (y_clean - y_none)`` (``y_none``: every head ablated;
    NaN below :data:`headflow.method.metrics.MIN_IMAGE_EFFECT`)."""
    prep = prepare(model, images, question, answers, labels, target=target, **kw)
    n_layers, n_heads = prep.n_layers_heads
    layers = list(range(n_layers)) if layers is None else [int(x) for x in layers]
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad:
        raise ValueError(f"layers {bad} do not exist: this model has {n_layers}")
    ends = torch.stack([torch.ones(n_layers, n_heads, dtype=torch.bool), torch.zeros(n_layers, n_heads, dtype=torch.bool)])
    rows = []
    for t in prep.tasks:
        groups = tokens.resolve(prep.processor, prep.model, question, t.inputs, n_forced=t.n_forced)
        y_clean, y_none = experiment.masks_y(prep.model, t, prep.baseline, ends, target)
        L = t.inputs["input_ids"].shape[1]
        q, k = torch.zeros(L, dtype=torch.bool), torch.zeros(L, dtype=torch.bool)
        q[groups.nonempty(receiver)], k[groups.nonempty(source)] = True, True
        ko = iv.Knockout(queries=q, keys=k, layers=layers)
        with torch.inference_mode(), iv.intervene(prep.model, knockouts=[ko]):
            logits = prep.model(**to_device(t.inputs, prep.model.device), logits_to_keep=1).logits[:, -1].float()
        y = float(experiment.target_values(logits, t, target)[0])
        share = metrics.completeness(y, y_clean, y_none)
        rows.append({"image_id": t.example.image_id, "answer": t.class_name, "y_clean": y_clean, "y_knocked": y,
                     "y_none": y_none, "share_lost": np.nan if share is None else share})
    return pd.DataFrame(rows)


def head_map(ranking: HeadRanking, path: str | Path) -> Path:
    """A ``layer x head`` heat map of the attribution, written as PNG."""
    grid = np.full((ranking.n_layers, ranking.n_heads), np.nan)
    grid[ranking.table["layer"], ranking.table["head"]] = ranking.table["attribution"]
    fig = Figure(figsize=(max(4, ranking.n_heads * 0.35), max(3, ranking.n_layers * 0.3)))
    ax = fig.subplots()
    lim = np.nanmax(np.abs(grid)) or 1.0
    im = ax.imshow(grid, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set(xlabel="head", ylabel="layer", title="image attribution (logit lost when ablated)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return Path(path)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def images_in(folder: Path, answers_csv: Path | None = None) -> tuple[list[Path], list[str]]:
    """The images of ``folder`` and their answers: from ``answers_csv`` (rows ``file,answer``), else
    from the sub-folder each image sits in (``folder/<answer>/<image>``, the ImageFolder layout)."""
    if answers_csv is not None:
        rows = pd.read_csv(answers_csv, header=None, names=["file", "answer"], dtype=str)
        return [folder / f for f in rows["file"]], list(rows["answer"])
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    flat = [p for p in paths if p.parent == folder]
    if flat:
        raise ValueError(f"{len(flat)} images sit directly in {folder}, so their answers are unknown: put each in a "
                         "sub-folder named by its answer (folder/<answer>/image.png) or pass --answers-csv")
    return paths, [p.parent.name for p in paths]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m headflow.rank", description="Rank a model's attention heads by "
                                 "how much of the image's information each moves to the answer (headflow.rank_heads).")
    ap.add_argument("--model", default="organism", help="an organism's name, a local folder or a hub id")
    ap.add_argument("--images", type=Path, required=True, help="folder/<answer>/<image> (or with --answers-csv)")
    ap.add_argument("--answers-csv", type=Path, default=None, help="rows 'file,answer' (file relative to --images)")
    ap.add_argument("--question", required=True)
    ap.add_argument("--answers", default=None, help="the label set, comma-separated (default: the answers found)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--masks-per-head", type=float, default=4.0)
    ap.add_argument("--n-masks", type=int, default=0)
    ap.add_argument("--ablation-rate", type=float, default=0.5)
    ap.add_argument("--target", default="logit", choices=experiment.TARGETS)
    ap.add_argument("--baseline", default="dataset-mean", choices=iv.BASELINES)
    ap.add_argument("--keep", default="correct", choices=("correct", "all"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    a = ap.parse_args(argv)
    paths, answers = images_in(a.images, a.answers_csv)
    labels = [w.strip() for w in a.answers.split(",")] if a.answers else None
    t0 = time.time()
    r = rank_heads(a.model, paths, a.question, answers, labels, n_masks=a.n_masks, masks_per_head=a.masks_per_head,
                   ablation_rate=a.ablation_rate, target=a.target, baseline=a.baseline, keep=a.keep, seed=a.seed,
                   device=a.device, dtype=a.dtype)
    r.save(a.out)
    head_map(r, a.out / "heads.png")
    (a.out / "provenance.json").write_text(json.dumps({"argv": argv, "params": r.params, "fingerprint": r.fingerprint,
                                                       "wall_seconds": round(time.time() - t0, 1),
                                                       "python": platform.python_version()}, indent=1, default=str))
    print(r.table.head(10).to_string(index=False))
    print(f"wrote {a.out}/heads.csv, images.csv, per_image.npy, ranking.json, heads.png, provenance.json")
