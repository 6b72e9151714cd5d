"""Token-level flow (chapter 7): which token group reaches which, in which layers.

An **attention knockout** (:class:`headflow.mechanism.interventions.Knockout`) blocks attention from a
query group to a key group in a *window* of consecutive layers.  Sliding the window over all layers
and measuring what the answer loses says where a flow happens.  The flows:

    question -> role, question -> final, image -> role, image -> final, image -> question,
    question -> role-only, image -> role-only

where *role-only* is the role tokens without the final token (for the LLaVA template the final
token is the role's ":", so "role" contains "final" and only role-only tells the two apart).

The plan (:func:`chapter_plan`): every flow in every window of ``window`` layers (primary: 1) and
of ``sensitivity_window`` layers (3), in all heads; and the control flow (image -> final) in every
primary window within the top heads (:func:`headflow.method.crossfit.top_heads`) and within
size-matched random head sets.  One batch per image holds every row: each row's knockout is confined
to that row by its per-row query mask and head mask, so a whole image is one batched forward.

Effect of a knockout on an image: ``y_clean - y_knockout`` (logit lost), aggregated over images by
the one rule (:func:`headflow.method.metrics.aggregate`: relative to the image effect ``y_clean -
y_none``), for two targets from the same forwards: the answer's logit and the logit difference
(answer minus the best other answer), which tells disruption (every logit moves) from information;
plus whether the answer stays correct.

**Timing statistic**: a flow's *onset*, the first layer whose knockout loses more than
``share`` of the image effect by the lower end of its 95% bootstrap interval
(:data:`headflow.findings.verdicts.ONSET_SHARE`; in a bootstrap draw, the first layer whose drawn
value exceeds the share).  A flow with no such layer has no onset.  :func:`timing` compares two flows'
onsets by the paired bootstrap (images resampled within classes, both onsets from the same draw).
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from headflow.mechanism import interventions as iv
from headflow.mechanism import tokens
from headflow.method import attribution, crossfit, metrics, stats, study
from headflow.mechanism.prefix_reuse import PrefixReuse
from headflow.method.experiment import ImageTask, masks_y_raw, repeat_inputs
from headflow.models import families
from headflow.util.devices import to_device
from headflow.util import progress

#: The knocked-out flows: name -> (from group, to group).
FLOWS = {"question->role": ("question", "role"), "question->final": ("question", "final"),
         "image->role": ("image", "role"), "image->final": ("image", "final"),
         "image->question": ("image", "question"),
         "question->role-only": ("question", "role-only"), "image->role-only": ("image", "role-only")}
#: The token groups knockouts read.
GROUPS = ("role", "final", "role-only")  # the receiving groups whose timing the chapter tests
CONTROL_FLOW = "image->final"  # the flow knocked out in the top heads and in random head sets


def windows(n_layers: int, size: int) -> list[list[int]]:
    """Every window of ``size`` consecutive layers, sliding by one."""
    if not 1 <= size <= n_layers:
        raise ValueError(f"knockout window size {size} must be between 1 and the number of layers ({n_layers})")
    return [list(range(s, s + size)) for s in range(n_layers - size + 1)]


def centres(wins: Sequence[Sequence[int]]) -> np.ndarray:
    return np.array([np.mean(w) for w in wins])


def group_masks(st, task: ImageTask) -> dict[str, torch.Tensor]:
    """``{group: (L,) bool}`` of the prompt's token groups (from the processor's output); ``image`` is
    the image span, separators included (:func:`headflow.models.families.image_span`); ``role-only``
    the role tokens that are not the final token."""
    g = tokens.resolve(st.processor, st.model.config, st.question, task.inputs, n_forced=task.n_forced)
    L = task.inputs["input_ids"].shape[1]
    out = {"image": iv.image_mask(st.model, task.inputs["input_ids"])[0]}  # the whole image span
    for name in ("question", "role", "final"):
        m = torch.zeros(L, dtype=torch.bool, device="cpu")
        m[g.nonempty(name)] = True
        out[name] = m
    out["role-only"] = out["role"] & ~out["final"]
    return out


@dataclass
class Plan:
    """The rows of one image's batch: ``rows[i] = (flow, layers, head set name)``; ``head_sets``:
    name -> flat head indices, or None for every head."""

    rows: list[tuple[str, tuple[int, ...], str]]
    head_sets: dict

    def select(self, flow: str, size: int, head_set: str = "all heads") -> list[int]:
        """Indices of the rows of ``flow`` in ``head_set`` over the windows of ``size`` layers, in layer order."""
        return [i for i, (f, w, s) in enumerate(self.rows) if f == flow and len(w) == size and s == head_set]


def chapter_plan(n_layers: int, head_sets: dict, window: int = 1, sensitivity_window: int | None = 3,
                 control_flow: str = CONTROL_FLOW) -> Plan:
    """Every flow of :data:`FLOWS` in every window of ``window`` and of ``sensitivity_window`` layers
    in all heads; ``control_flow`` in every window of ``window`` layers in each other head set."""
    sizes = [window] + ([sensitivity_window] if sensitivity_window and sensitivity_window != window else [])
    rows = [(f, tuple(w), "all heads") for size in sizes for f in FLOWS for w in windows(n_layers, size)]
    rows += [(control_flow, tuple(w), s) for s in head_sets if s != "all heads" for w in windows(n_layers, window)]
    return Plan(rows, head_sets)


def knockouts_for(plan: Plan, groups: dict[str, torch.Tensor], n_layers: int, n_heads: int) -> list[iv.Knockout]:
    """One knockout per layer whose per-row query, key and head masks realise every row of ``plan``."""
    rows = plan.rows
    B, L = len(rows), len(next(iter(groups.values())))
    out = []
    for layer in range(n_layers):
        q = torch.zeros(B, L, dtype=torch.bool, device="cpu")
        k = torch.zeros(B, L, dtype=torch.bool, device="cpu")
        hm = torch.zeros(B, n_heads, dtype=torch.bool, device="cpu")
        for r, (flow, layers, s) in enumerate(rows):
            if layer not in layers:
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
    """Per row of ``plan`` on one image: the answer's logit ``y``, the logit difference ``y_diff``
    (answer minus the best other answer) and whether the answer is still chosen; with ``y_clean``,
    ``y_none`` and their logit differences ``y_clean_diff``, ``y_none_diff``."""
    groups = group_masks(st, task)
    kos = knockouts_for(plan, groups, st.n_layers, st.n_heads)
    ids = [task.target_id] + list(task.other_ids)
    reuse = suffix_path(st, task, kos, len(plan.rows))
    if reuse is not None:  # every knocked-out flow ends after the image: the prefix is computed once
        keep = torch.ones(len(plan.rows), st.n_layers, st.n_heads, dtype=torch.bool, device="cpu")
        answers = reuse.final_logits(keep, batch_size, reduce=lambda lg: lg[:, ids], knockouts=kos).double()
    else:
        answers = full_knockout_logits(st, task, kos, len(plan.rows), ids, batch_size)
    ends = torch.stack([torch.ones(st.n_layers, st.n_heads, dtype=torch.bool, device="cpu"),
                        torch.zeros(st.n_layers, st.n_heads, dtype=torch.bool, device="cpu")])
    # one pass per mask for both targets (the answer's logit and the logit difference)
    two = masks_y_raw(st.model, task, st.baseline, ends, ids, reuse=reuse).double()
    (y_clean, y_none), (d_clean, d_none) = two[:, 0], two[:, 0] - two[:, 1:].amax(-1)
    return {"y": answers[:, 0].numpy(), "y_diff": (answers[:, 0] - answers[:, 1:].amax(-1)).numpy(),
            "correct": (answers.argmax(-1) == 0).numpy(), "y_clean": float(y_clean), "y_none": float(y_none),
            "y_clean_diff": float(d_clean), "y_none_diff": float(d_none), "suffix_path": reuse is not None}


def suffix_path(st, task: ImageTask, kos: Sequence[iv.Knockout], n_rows: int):
    """The prefix-reusing fast path for these knockout rows (a
    :class:`headflow.mechanism.prefix_reuse.PrefixReuse`), or ``None`` where it does not apply: the
    family refuses prefix reuse (:func:`headflow.models.families.prefix_reuse_problem`), or a knocked-out
    flow's receiving group starts before the end of the image (the prefix would change)."""
    if families.prefix_reuse_problem(st.model, task.inputs["input_ids"].shape[1]):
        return None
    reuse = PrefixReuse(st.model, task.inputs, st.baseline)
    return None if reuse.knockouts_fit(kos, n_rows) else reuse


@torch.inference_mode()
def full_knockout_logits(st, task: ImageTask, kos: Sequence[iv.Knockout], n_rows: int, ids: Sequence[int],
                         batch_size: int) -> torch.Tensor:
    """The answers' logits ``(n_rows, len(ids))`` (float64, CPU) under each knockout row, by full forwards."""
    out = []
    for s in range(0, n_rows, batch_size):
        n = min(batch_size, n_rows - s)
        dev = st.model.device
        part = [iv.Knockout(ko.queries[s:s + n].to(dev), ko.keys[s:s + n].to(dev), ko.layers,
                            head_mask=ko.head_mask[s:s + n].to(dev)) for ko in kos if ko.queries[s:s + n].any()]
        with iv.intervene(st.model, knockouts=part):
            inputs = to_device(repeat_inputs(task.inputs, n), dev)
            logits = st.model(**inputs, logits_to_keep=1, use_cache=False).logits[:, -1].double().cpu()
        out.append(logits[:, list(ids)])
    return torch.cat(out)


#: The targets a knockout row is read under.
TARGETS = {"logit": ("y", "y_clean", "y_none"), "logit-diff": ("y_diff", "y_clean_diff", "y_none_diff")}


def run(st, tasks: Sequence[ImageTask], plan: Plan, store=None, batch_size: int = 64) -> dict:
    """Every image of ``tasks`` (resumable through ``store``): per target of :data:`TARGETS`,
    ``lost[target] (n_images, R)`` the loss of each row and ``effects[target] (n_images,)`` the image
    effect; ``correct (n_images, R)``; ``classes``; ``keys``."""
    out = {"lost": {t: [] for t in TARGETS}, "effects": {t: [] for t in TARGETS}, "correct": [], "classes": [],
           "keys": []}
    for t in progress.bar(tasks, desc="knockouts"):
        with (store.claim(t.key) if store is not None else contextlib.nullcontext()):
            if store is not None and store.done(t.key):
                r = store.load(t.key)
            else:
                r = run_image(st, t, plan, batch_size)
                if store is not None:
                    store.save(t.key, **{k: np.asarray(v) for k, v in r.items()})
        for target, (y, clean, none) in TARGETS.items():
            out["lost"][target].append(float(r[clean]) - np.asarray(r[y]))
            out["effects"][target].append(float(r[clean]) - float(r[none]))
        out["correct"].append(np.asarray(r["correct"]))
        out["classes"].append(t.class_name)
        out["keys"].append(t.key)
    return {"lost": {t: np.array(v) for t, v in out["lost"].items()},
            "effects": {t: np.array(v) for t, v in out["effects"].items()},
            "correct": np.array(out["correct"]), "classes": out["classes"], "keys": out["keys"]}


def random_head_sets(n_total: int, size: int, n_sets: int, seed: int, exclude: Sequence[int] = ()) -> list[np.ndarray]:
    """``n_sets`` random sets of ``size`` heads (flat indices), drawn outside ``exclude`` when possible."""
    rng = np.random.default_rng(seed)
    pool = np.array([h for h in range(n_total) if h not in set(int(x) for x in exclude)])
    if len(pool) < size:
        pool = np.arange(n_total)
    return [np.sort(rng.choice(pool, size, replace=False)) for _ in range(n_sets)]


# ------------------------------------------------------------------------------------ statistics
def onset(curve: np.ndarray, lower: np.ndarray | None, share: float) -> int | None:
    """The first window (index) whose ``lower`` interval end (or, without intervals, whose value in
    ``curve``) exceeds ``share``; None if none does."""
    above = np.asarray(curve if lower is None else lower, float) > share
    return int(np.argmax(above)) if above.any() else None


def onset_draws(draws: np.ndarray, share: float) -> np.ndarray:
    """The onset of each bootstrap draw ``(n_boot, W)``: its first window above ``share``; NaN if none."""
    above = np.asarray(draws, float) > share
    return np.where(above.any(-1), above.argmax(-1), np.nan).astype(float)


def summarise(res: dict, plan: Plan, n_boot: int, seed: int, min_images: int = 2) -> dict:
    """Per target: the aggregate of every row, its 95% bootstrap interval and 25-75% spread over
    classes, and the bootstrap draws (for onsets); accuracy under each row; the images and classes
    that enter (those with a positive image effect, classes with at least ``min_images``)."""
    out = {"plan": plan, "accuracy": res["correct"].mean(0), "targets": {}}
    for target in TARGETS:
        lost, eff = res["lost"][target], res["effects"][target]
        agg = metrics.aggregate(lost, eff, res["classes"], min_images)
        draws = metrics.bootstrap_aggregate(lost, eff, res["classes"], n_boot, seed, min_images)
        per_class = np.stack(list(agg["per_class"].values()))
        out["targets"][target] = {
            "value": agg["value"], "ci": np.quantile(draws, [0.025, 0.975], axis=0),
            "band": np.quantile(per_class, [0.25, 0.75], axis=0), "draws": draws,
            "n_images": agg["n_images_used"], "images_left_out": len(agg["images_left_out"]),
            "classes": {c: int(sum(1 for i, k in enumerate(res["classes"]) if k == c and eff[i] > 0))
                        for c in agg["per_class"]},
            "classes_left_out": agg["classes_left_out"]}
    return out


def curve(summ: dict, flow: str, size: int, head_set: str = "all heads", target: str = "logit",
          what: str = "value") -> np.ndarray:
    """One flow's aggregate over windows of ``size`` layers (``what``: value ``(W,)``, ci ``(2, W)``,
    band ``(2, W)`` or draws ``(n_boot, W)``)."""
    idx = summ["plan"].select(flow, size, head_set)
    if not idx:
        raise ValueError(f"the plan has no rows of {flow!r} over {size}-layer windows in {head_set!r}")
    x = summ["targets"][target][what]
    return x[idx] if what == "value" else x[..., idx]


def flow_onset(summ: dict, flow: str, size: int, share: float, target: str = "logit") -> dict:
    """The onset of one flow (:func:`onset` on its interval's lower end) and its bootstrap draws."""
    ci = curve(summ, flow, size, target=target, what="ci")
    return {"onset": onset(curve(summ, flow, size, target=target), ci[0], share),
            "draws": onset_draws(curve(summ, flow, size, target=target, what="draws"), share)}


def timing(question: dict, image: dict, max_undefined: float = 0.05) -> dict:
    """Does the question's flow (``question``: :func:`flow_onset`) start before the image's?  The
    paired bootstrap difference of onsets ``image - question`` (layers): its point value, 95%
    interval and a two-sided bootstrap p-value (:func:`headflow.method.stats.bootstrap_p`), which
    :func:`judge` corrects over the chapter's family.  No test ("undetermined", p = None) if either
    flow has no onset or more than ``max_undefined`` of the draws leave one without an onset."""
    d = image["draws"] - question["draws"]
    defined = float(np.isfinite(d).mean())
    if question["onset"] is None or image["onset"] is None or defined < 1 - max_undefined:
        point = None if question["onset"] is None or image["onset"] is None else image["onset"] - question["onset"]
        return {"difference": point, "ci": [None, None], "defined_share": defined, "p": None,
                "question_onset": question["onset"], "image_onset": image["onset"]}
    d = d[np.isfinite(d)]
    return {"difference": int(image["onset"] - question["onset"]), "ci": metrics.interval(d),
            "defined_share": defined, "p": stats.bootstrap_p(d, 0.0, "two-sided"),
            "question_onset": question["onset"], "image_onset": image["onset"]}


def judge(tests: dict, alpha: float = stats.ALPHA) -> dict:
    """Holm over a family ``{name: timing}`` (tests without a p are not in it): each gets ``p_holm``
    and ``answer``: "yes" (the question first: adjusted p below ``alpha`` and a positive difference),
    "no (later)" (significant and negative), else "undetermined"."""
    ps = stats.holm({n: t["p"] for n, t in tests.items() if t["p"] is not None})
    out = {}
    for n, t in tests.items():
        p = ps.get(n)
        sig = p is not None and p < alpha and t["difference"] not in (None, 0)
        answer = "undetermined" if not sig else "yes" if t["difference"] > 0 else "no (later)"
        out[n] = {**t, "p_holm": p, "answer": answer}
    return out


def timings(summ: dict, size: int, share: float, target: str = "logit") -> dict:
    """``{group: timing}`` of question -> group against image -> group for every group of :data:`GROUPS`,
    and the onsets of every flow ``{"onsets": {flow: layer or None}}``."""
    on = {f: flow_onset(summ, f, size, share, target) for f in FLOWS}
    return {"onsets": {f: o["onset"] for f, o in on.items()},
            "tests": {g: timing(on[f"question->{g}"], on[f"image->{g}"]) for g in GROUPS}}


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
            sensitivity_window: int | None = 3, masks_per_head: float = 0, **setup_kw) -> dict:
    """Per question: top heads from the fitting images, the knockouts of :func:`chapter_plan` on the
    first ``n_eval`` correctly answered images of each class after the fitting images (a class with fewer
    is left out and named: ``meta["short_classes"]`` of the set-up; all heads over windows of ``window``
    and ``sensitivity_window`` layers; the control flow in the top heads and ``n_random`` size-matched random sets), and the
    summary.  ``masks_per_head``, ``setup_kw``: as :func:`top_heads_for`."""

    out = {}
    for q in questions:
        fit, top = top_heads_for(model, image_set, q, n_fit, fit_masks, rate, seed, n_reference,
                                 masks_per_head=masks_per_head, **setup_kw)
        ev = study.setup(model, image_set, q, correct_per_class=n_eval, n_reference=n_reference, offset=n_fit,
                         **setup_kw)
        ev.baseline = fit.baseline  # the baseline the top heads were found under
        H = ev.n_layers * ev.n_heads
        sets = {"all heads": None, "top heads": top["heads"]}
        for i, r in enumerate(random_head_sets(H, top["k"], n_random, seed + len(out), exclude=top["heads"])):
            sets[f"random {i + 1}"] = r
        plan = chapter_plan(ev.n_layers, sets, window, sensitivity_window)
        key = json.dumps({"rows": plan.rows, "sets": {s: (None if v is None else [int(x) for x in v])
                                                      for s, v in sets.items()}})
        store = study.store_for(ev, "knockout", computed_by=__name__, plan=key, baseline_from=fit.meta)
        res = run(ev, ev.tasks, plan, store)
        out[q] = {"top": top, "plan": plan, "result": res, "summary": summarise(res, plan, n_boot, seed),
                  "n_eval_images": len(ev.tasks), "n_asked": ev.n_images, "window": window,
                  "sensitivity_window": sensitivity_window,
                  "top_vs_random": {t: top_vs_random(res, plan, window, n_boot, seed, target=t) for t in TARGETS}}
    return out


def top_vs_random(res: dict, plan: Plan, size: int, n_boot: int, seed: int, flow: str = CONTROL_FLOW,
                  target: str = "logit") -> dict:
    """Knockout of ``flow`` in the top heads vs in size-matched random heads: the aggregate effect
    summed over the windows of ``size`` layers, and the paired bootstrap interval of top minus the
    random sets' mean; with the number of images and classes that enter."""
    sets = [s for s in plan.head_sets if s.startswith("random")]
    lost = res["lost"][target]
    top = lost[:, plan.select(flow, size, "top heads")].sum(-1)
    rnd = np.mean([lost[:, plan.select(flow, size, s)].sum(-1) for s in sets], 0)
    num = np.stack([top, rnd], 1)
    agg = metrics.aggregate(num, res["effects"][target], res["classes"])
    draws = metrics.bootstrap_aggregate(num, res["effects"][target], res["classes"], n_boot, seed)
    return {"flow": flow, "target": target, "k": len(plan.head_sets["top heads"]), "n_random_sets": len(sets),
            "top": float(agg["value"][0]), "random": float(agg["value"][1]),
            "difference": float(agg["value"][0] - agg["value"][1]),
            "difference_ci": metrics.interval(draws[:, 0] - draws[:, 1]),
            "n_images": agg["n_images_used"], "n_classes": len(agg["per_class"])}


def verdict_inputs(out: dict, shares: Sequence[float], primary_share: float) -> dict:
    """The chapter's numbers for :func:`headflow.findings.verdicts.knockout`: per target, window size
    and onset share, the onsets of every flow and the timing tests of every question and group, Holm-
    corrected over each (target, window, share)'s family of ``questions x GROUPS`` tests."""
    res: dict = {}
    for target in TARGETS:
        for size in sorted({d["window"] for d in out.values()} | {d["sensitivity_window"] for d in out.values()
                                                                   if d["sensitivity_window"]}):
            for share in shares:
                got = {q: timings(d["summary"], size, share, target) for q, d in out.items()}
                tests = judge({f"{q}/{g}": t for q, v in got.items() for g, t in v["tests"].items()})
                res[f"{target}|{size}|{share:g}"] = {
                    "target": target, "window": size, "share": share,
                    "primary": target == "logit" and size == next(iter(out.values()))["window"] and share == primary_share,
                    "onset_layer": {q: v["onsets"] for q, v in got.items()},
                    "timing": {q: {g: tests[f"{q}/{g}"] for g in GROUPS} for q in got}}
    return res


def results_json(out: dict, model: str, params: dict, shares: Sequence[float], primary_share: float) -> dict:
    """``book/results/knockout.json``: the primary analysis (logit target, window ``window``, onset
    share ``primary_share``) at the top level: ``onset_layer`` per question and flow, ``timing`` (the
    paper's groups role and final, and ``role_without_final``), and beside it ``logit_diff`` (the
    same analysis on the logit difference), ``sensitivity`` (every window and share), the
    top-vs-random comparisons, the peak windows, and the images and classes that enter."""
    every = verdict_inputs(out, shares, primary_share)
    w = next(iter(out.values()))["window"]
    primary = every[f"logit|{w}|{primary_share:g}"]
    diff = every[f"logit-diff|{w}|{primary_share:g}"]
    res = {"model": model, **params, "onset_share": primary_share, "onset_shares": list(shares),
           "onset_layer": primary["onset_layer"],
           "timing": {q: {g: v[g] for g in ("role", "final")} for q, v in primary["timing"].items()},
           "role_without_final": {q: v["role-only"] for q, v in primary["timing"].items()},
           "logit_diff": {"onset_layer": diff["onset_layer"], "timing": diff["timing"]},
           "sensitivity": {k: {"target": v["target"], "window": v["window"], "share": v["share"],
                               "answers": {q: {g: t["answer"] for g, t in tv.items()} for q, tv in v["timing"].items()},
                               "onset_layer": v["onset_layer"]} for k, v in every.items()},
           "family": f"the {len(out) * len(GROUPS)} timing tests of one analysis (questions x receiving groups "
                     f"{list(GROUPS)}), Holm at {stats.ALPHA}",
           "flows": list(FLOWS), "peak_layer": {}, "top_vs_random": {}, "top_heads": {}, "n_images": {}}
    for q, d in out.items():
        s = d["summary"]["targets"]["logit"]
        res["peak_layer"][q] = {f: int(np.argmax(curve(d["summary"], f, w))) for f in FLOWS}
        res["top_vs_random"][q] = d["top_vs_random"]
        res["top_heads"][q] = {"k": d["top"]["k"], "heads": [int(h) for h in d["top"]["heads"]]}
        res["n_images"][q] = {"used": s["n_images"], "asked": d["n_asked"], "left_out": s["images_left_out"],
                              "per_class": s["classes"], "classes": len(s["classes"]),
                              "classes_left_out": s["classes_left_out"]}
    return res


def timing_table(result: dict):
    """One row per question and receiving group of ``knockout.json``: the onsets, their difference with
    its interval, the Holm-adjusted p, the answer, and the answer under the logit-difference target."""
    rows = []
    for q in result["timing"]:
        for g, d in {**result["timing"][q], "role-only": result["role_without_final"][q]}.items():
            rows.append({"question": q, "group": g, "question onset": d["question_onset"],
                         "image onset": d["image_onset"], "difference": d["difference"], "95% CI": d["ci"],
                         "p (Holm)": None if d["p_holm"] is None else round(d["p_holm"], 3), "answer": d["answer"],
                         "answer (logit difference)": result["logit_diff"]["timing"][q][g]["answer"]})
    return pd.DataFrame(rows)
