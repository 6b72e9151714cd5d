"""Token-level flow (chapter 7): which token group reaches which, in which layers.

An **attention knockout** (:class:`headflow.mechanism.interventions.Knockout`) blocks attention from a
query group to a key group in a *window* of ``size`` consecutive layers.  Sliding the window over
all layers and measuring what the answer loses says where a flow happens.  The flows:

    question -> role, question -> final, image -> role, image -> final, image -> question

each knocked out in every head, in the top heads only (:func:`headflow.method.crossfit.top_heads`), and
in size-matched random head sets (the control).  One batch per image holds every (flow, window,
head set) as a row: each row's knockout is confined to that row by its per-row query mask and
head mask, so a whole image is one batched forward.

Effect of a knockout on an image: ``y_clean - y_knockout`` (logit lost), aggregated over images
by the one rule (:func:`headflow.method.metrics.aggregate`: relative to the image effect
``y_clean - y_none``); plus whether the answer stays correct.

**Timing statistic**: the *effect-weighted mean layer* of a flow, ``sum_w c_w e_w+ / sum_w e_w+``
over windows (``c_w`` the window's centre layer, ``e_w+`` the aggregate effect clipped at 0).  It
is defined only if the flow's total clipped effect ``sum_w e_w+`` reaches ``min_mass`` (a flow
that does nothing has no timing); :func:`timing` decides "question before image" by a paired
bootstrap of the difference of mean layers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from headflow.mechanism import interventions as iv
from headflow.mechanism import tokens
from headflow.method import attribution, crossfit, metrics, study
from headflow.method.experiment import ImageTask, masks_y, repeat_inputs
from headflow.util.devices import to_device

FLOWS = {"question->role": ("question", "role"), "question->final": ("question", "final"),
         "image->role": ("image", "role"), "image->final": ("image", "final"),
         "image->question": ("image", "question")}


def windows(n_layers: int, size: int) -> list[list[int]]:
    """Every window of ``size`` consecutive layers, sliding by one."""
    if not 1 <= size <= n_layers:
        raise ValueError(f"knockout window size {size} must be between 1 and the number of layers ({n_layers})")
    return [list(range(s, s + size)) for s in range(n_layers - size + 1)]


def centres(wins: Sequence[Sequence[int]]) -> np.ndarray:
    return np.array([np.mean(w) for w in wins])


def group_masks(st, task: ImageTask) -> dict[str, torch.Tensor]:
    """``{group: (L,) bool}`` of the prompt's token groups (from the processor's output); ``image`` is
    the image span, separators included (:func:`headflow.models.families.image_span`)."""
    g = tokens.resolve(st.processor, st.model.config, st.question, task.inputs, n_forced=task.n_forced)
    L = task.inputs["input_ids"].shape[1]
    out = {"image": iv.image_mask(st.model, task.inputs["input_ids"])[0]}  # the whole image span
    for name in ("question", "role", "final"):
        m = torch.zeros(L, dtype=torch.bool, device="cpu")
        m[g.nonempty(name)] = True
        out[name] = m
    return out


@dataclass
class Plan:
    """The rows of one image's batch: ``rows[i] = (flow, window index, head set name)``."""

    flows: list[str]
    wins: list[list[int]]
    head_sets: dict  # name -> flat head indices, or None for every head

    @property
    def rows(self) -> list[tuple[str, int, str]]:
        return [(f, w, s) for f in self.flows for w in range(len(self.wins)) for s in self.head_sets]


def knockouts_for(plan: Plan, groups: dict[str, torch.Tensor], n_layers: int, n_heads: int) -> list[iv.Knockout]:
    """One knockout per layer whose per-row query, key and head masks realise every row of ``plan``."""
    rows = plan.rows
    B, L = len(rows), len(next(iter(groups.values())))
    out = []
    for layer in range(n_layers):
        q = torch.zeros(B, L, dtype=torch.bool, device="cpu")
        k = torch.zeros(B, L, dtype=torch.bool, device="cpu")
        hm = torch.zeros(B, n_heads, dtype=torch.bool, device="cpu")
        for r, (flow, w, s) in enumerate(rows):
            if layer not in plan.wins[w]:
                continue
            src, dst = FLOWS[flow]
            q[r], k[r] = groups[dst], groups[src]
            heads = plan.head_sets[s]
            if heads is None:
                hm[r] = True
            else:
                flat = torch.as_tensor(np.asarray(heads, dtype=np.int64), device="cpu")
                hm[r, flat[flat // n_heads == layer] % n_heads] = True
        if q.any():
            out.append(iv.Knockout(q, k, [layer], head_mask=hm))
    return out


@torch.inference_mode()
def run_image(st, task: ImageTask, plan: Plan, batch_size: int = 64) -> dict:
    """y and correctness of every row of ``plan`` on one image, with ``y_clean`` and ``y_none``."""
    groups = group_masks(st, task)
    kos = knockouts_for(plan, groups, st.n_layers, st.n_heads)
    B = len(plan.rows)
    ids = [task.target_id] + list(task.other_ids)
    ys, ok = [], []
    for s in range(0, B, batch_size):
        n = min(batch_size, B - s)
        dev = st.model.device
        part = [iv.Knockout(ko.queries[s:s + n].to(dev), ko.keys[s:s + n].to(dev), ko.layers,
                            head_mask=ko.head_mask[s:s + n].to(dev)) for ko in kos if ko.queries[s:s + n].any()]
        with iv.intervene(st.model, knockouts=part):
            inputs = to_device(repeat_inputs(task.inputs, n), dev)
            logits = st.model(**inputs, logits_to_keep=1, use_cache=False).logits[:, -1].float().cpu()
        ys.append(logits[:, task.target_id].double().numpy())
        ok.append((logits[:, ids].argmax(-1) == 0).numpy())
    ends = torch.stack([torch.ones(st.n_layers, st.n_heads, dtype=torch.bool, device="cpu"),
                        torch.zeros(st.n_layers, st.n_heads, dtype=torch.bool, device="cpu")])
    y_clean, y_none = masks_y(st.model, task, st.baseline, ends, "logit")
    return {"y": np.concatenate(ys), "correct": np.concatenate(ok), "y_clean": float(y_clean), "y_none": float(y_none)}


def run(st, tasks: Sequence[ImageTask], plan: Plan, store=None, batch_size: int = 64) -> dict:
    """Every image of ``tasks`` (resumable through ``store``): ``lost (n_images, F, W, S)`` logit lost,
    ``correct`` (same shape), ``effects`` ``(n_images,)``, ``classes``, ``keys``."""
    F, W, S = len(plan.flows), len(plan.wins), len(plan.head_sets)
    out = {"lost": [], "correct": [], "effects": [], "classes": [], "keys": []}
    for t in tqdm(tasks, desc="knockouts"):
        if store is not None and store.done(t.key):
            r = store.load(t.key)
        else:
            r = run_image(st, t, plan, batch_size)
            if store is not None:
                store.save(t.key, **{k: np.asarray(v) for k, v in r.items()})
        out["lost"].append((float(r["y_clean"]) - np.asarray(r["y"])).reshape(F, W, S))
        out["correct"].append(np.asarray(r["correct"]).reshape(F, W, S))
        out["effects"].append(float(r["y_clean"]) - float(r["y_none"]))
        out["classes"].append(t.class_name)
        out["keys"].append(t.key)
    return {k: np.array(v) if k in ("lost", "correct", "effects") else v for k, v in out.items()}


def random_head_sets(n_total: int, size: int, n_sets: int, seed: int, exclude: Sequence[int] = ()) -> list[np.ndarray]:
    """``n_sets`` random sets of ``size`` heads (flat indices), drawn outside ``exclude`` when possible."""
    rng = np.random.default_rng(seed)
    pool = np.array([h for h in range(n_total) if h not in set(int(x) for x in exclude)])
    if len(pool) < size:
        pool = np.arange(n_total)
    return [np.sort(rng.choice(pool, size, replace=False)) for _ in range(n_sets)]


# ------------------------------------------------------------------------------------ statistics
def mean_layer(curve: np.ndarray, c: np.ndarray, min_mass: float) -> float:
    """Effect-weighted mean layer of one flow's aggregate curve over windows (NaN below ``min_mass``)."""
    pos = np.clip(curve, 0, None)
    mass = pos.sum()
    return float((pos * c).sum() / mass) if mass >= min_mass else float("nan")


def summarise(res: dict, plan: Plan, n_boot: int, seed: int, min_mass: float = 0.05, min_images: int = 2) -> dict:
    """Aggregate curves ``(F, W, S)`` with per-class quartile bands and 95% bootstrap intervals,
    accuracy under each knockout, the peak window and effect-weighted mean layer of each flow (all
    heads), with bootstrap draws of the mean layers for :func:`timing`."""
    agg = metrics.aggregate(res["lost"], res["effects"], res["classes"], min_images)
    draws = metrics.bootstrap_aggregate(res["lost"], res["effects"], res["classes"], n_boot, seed, min_images)
    per_class = np.stack(list(agg["per_class"].values()))
    c = centres(plan.wins)
    sets = list(plan.head_sets)
    all_i = sets.index("all heads")
    peak, ml, ml_draws = {}, {}, {}
    for i, f in enumerate(plan.flows):
        curve = agg["value"][i, :, all_i]
        peak[f] = int(np.argmax(curve))
        ml[f] = mean_layer(curve, c, min_mass)
        ml_draws[f] = np.array([mean_layer(d[i, :, all_i], c, min_mass) for d in draws])
    return {"curve": agg["value"], "ci": np.quantile(draws, [0.025, 0.975], axis=0),
            "band": np.quantile(per_class, [0.25, 0.75], axis=0), "accuracy": res["correct"].mean(0),
            "peak_window": peak, "peak_layers": {f: plan.wins[w] for f, w in peak.items()},
            "mean_layer": ml, "mean_layer_draws": ml_draws, "n_images": agg["n_images_used"],
            "images_left_out": len(agg["images_left_out"]), "sets": sets, "flows": list(plan.flows),
            "centres": c.tolist()}


def timing(summ: dict, first: str, second: str) -> dict:
    """Does ``first`` (e.g. question->final) happen before ``second`` (image->final)?  The paired
    bootstrap difference of effect-weighted mean layers ``second - first``: "yes" if its 95%
    interval lies above 0, "no (later)" below 0, "undetermined" if it spans 0 or if more than 5% of
    the draws leave either flow without timing (too little effect)."""
    a, b = summ["mean_layer_draws"][first], summ["mean_layer_draws"][second]
    d = b - a
    defined = np.isfinite(d)
    point = summ["mean_layer"][second] - summ["mean_layer"][first]
    if defined.mean() < 0.95 or not np.isfinite(point):
        return {"difference": None if not np.isfinite(point) else float(point), "ci": [None, None],
                "defined_share": float(defined.mean()), "answer": "undetermined"}
    lo, hi = np.quantile(d[defined], [0.025, 0.975])
    answer = "yes" if lo > 0 else "no (later)" if hi < 0 else "undetermined"
    return {"difference": float(point), "ci": [float(lo), float(hi)], "defined_share": float(defined.mean()),
            "answer": answer}


# ------------------------------------------------------------------------------------ the chapter
def top_heads_for(model: str, image_set: str, question: str, n_fit: int, n_masks: int, rate: float, seed: int,
                  n_reference: int, baseline: str = "dataset-mean", n_folds: int = 5, masks_per_head: float = 0,
                  **setup_kw) -> tuple:
    """The fitting study of a question (the first ``n_fit`` images per class) and its top heads
    (:func:`headflow.method.crossfit.top_heads`), on at least ``n_masks`` masks per image and
    ``masks_per_head`` per head (:func:`headflow.method.attribution.mask_count`).  ``setup_kw``
    (``image_size``, ``device``, ``dtype``, ``answer_case``) go to :func:`headflow.method.study.setup`."""

    fit = study.setup(model, image_set, question, per_class=n_fit, n_reference=n_reference, baseline=baseline,
                      **setup_kw)
    n_masks = attribution.mask_count(fit.n_layers * fit.n_heads, n_masks, masks_per_head)
    runs = study.attribution_runs(fit, n_masks, rate, seed)
    return fit, crossfit.top_heads(fit, runs, n_folds, seed)


def analyse(model: str, image_set: str, questions: Sequence[str], n_fit: int, fit_masks: int, n_eval: int,
            window: int, n_random: int, n_boot: int, seed: int, n_reference: int, rate: float = 0.5,
            min_mass: float = 0.05, masks_per_head: float = 0, **setup_kw) -> dict:
    """Per question: top heads from the fitting images, knockouts of every flow and window on the
    next ``n_eval`` images per class (all heads, top heads, ``n_random`` size-matched random sets),
    the summary and the timing comparisons.  ``masks_per_head``, ``setup_kw``: as :func:`top_heads_for`."""

    out = {}
    for q in questions:
        fit, top = top_heads_for(model, image_set, q, n_fit, fit_masks, rate, seed, n_reference,
                                 masks_per_head=masks_per_head, **setup_kw)
        ev = study.setup(model, image_set, q, per_class=n_eval, n_reference=n_reference, offset=n_fit, **setup_kw)
        ev.baseline = fit.baseline  # the baseline the top heads were found under
        H = ev.n_layers * ev.n_heads
        sets = {"all heads": None, "top heads": top["heads"]}
        for i, r in enumerate(random_head_sets(H, top["k"], n_random, seed + len(out), exclude=top["heads"])):
            sets[f"random {i + 1}"] = r
        plan = Plan(list(FLOWS), windows(ev.n_layers, window), sets)
        key = json.dumps({s: (None if v is None else [int(x) for x in v]) for s, v in sets.items()})
        store = study.store_for(ev, "knockout", computed_by=__name__, window=window, head_sets=key,
                                baseline_from=fit.meta)
        res = run(ev, ev.tasks, plan, store)
        summ = summarise(res, plan, n_boot, seed, min_mass)
        out[q] = {"top": top, "plan": plan, "result": res, "summary": summ, "n_eval_images": len(ev.tasks),
                  "n_asked": ev.n_images,
                  "timing": {g: timing(summ, f"question->{g}", f"image->{g}") for g in ("role", "final")},
                  "top_vs_random": top_vs_random(res, plan, n_boot, seed)}
    return out


def top_vs_random(res: dict, plan: Plan, n_boot: int, seed: int, flow: str = "image->final") -> dict:
    """Knockout of ``flow`` in the top heads vs in size-matched random heads: the aggregate effect
    summed over windows, and the paired bootstrap interval of top minus the random sets' mean."""
    f = plan.flows.index(flow)
    sets = list(plan.head_sets)
    top = res["lost"][:, f, :, sets.index("top heads")].sum(-1)
    rnd = np.mean([res["lost"][:, f, :, i] for i, s in enumerate(sets) if s.startswith("random")], 0).sum(-1)
    num = np.stack([top, rnd], 1)
    agg = metrics.aggregate(num, res["effects"], res["classes"])
    draws = metrics.bootstrap_aggregate(num, res["effects"], res["classes"], n_boot, seed)
    return {"flow": flow, "top": float(agg["value"][0]), "random": float(agg["value"][1]),
            "difference": float(agg["value"][0] - agg["value"][1]),
            "difference_ci": metrics.interval(draws[:, 0] - draws[:, 1])}


def results_json(out: dict, model: str, params: dict) -> dict:
    """``book/results/knockout.json``: per question the peak layers, mean layers, timing and the
    top-vs-random comparison; ``question_before_image`` is filled in by the chapter's verdict."""
    res = {"model": model, **params, "peak_layer": {}, "mean_layer": {}, "timing": {}, "top_vs_random": {},
           "top_heads": {}, "n_images": {}}
    for q, d in out.items():
        s = d["summary"]
        res["peak_layer"][q] = {f: s["peak_layers"][f] for f in s["flows"]}
        res["mean_layer"][q] = {f: (None if not np.isfinite(v) else v) for f, v in s["mean_layer"].items()}
        res["timing"][q] = d["timing"]
        res["top_vs_random"][q] = d["top_vs_random"]
        res["top_heads"][q] = {"k": d["top"]["k"], "heads": [int(h) for h in d["top"]["heads"]]}
        res["n_images"][q] = {"used": s["n_images"], "asked": d["n_asked"], "left_out": s["images_left_out"]}
    return res
