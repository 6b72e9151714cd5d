"""Verdict rules, in one place.

Each chapter states its rule in prose before its numbers, then calls the function here that
applies it to the chapter's result (the same dict it saves to ``book/results/``).  Each function
returns a *status*: ``{"chapter", "paper", "model", "finding", "verdict"}`` where ``finding`` is
text whose every number is formatted from the result.  The chapter saves the status inside its
result file, and :mod:`headflow.book.index` builds the book's status table from those files, so no
number in the index is typed by hand.
"""
from __future__ import annotations

import inspect
import re

from headflow.method.stats import ALPHA, holm

REPRODUCED, PARTLY, NOT = "reproduced", "partly", "not reproduced"
INCONCLUSIVE = "inconclusive"  # the data cannot decide the rule (no test determined, too few images)


def status(chapter: str, paper: str, model: str, finding: str, verdict: str) -> dict:
    return {"chapter": chapter, "paper": paper, "model": model, "finding": finding, "verdict": verdict}


def _pct(ci) -> str:
    return f"[{ci[0]:.1%}, {ci[1]:.1%}]"


# Multiple comparisons.  Each chapter's verdict reads a family of tests; the family is named in the
# chapter's rule and controlled by Holm's step-down method at ALPHA (headflow.method.stats.holm).
FAMILY_RULE = {
    "2-single-head-ablation": "two interval rules (95% bootstrap intervals of the aggregated shares; no test): "
                              "nothing to correct",
    "3-head-attribution": "one interval rule on the class-equal mean held-out r (no test): nothing to correct",
    "4-faithfulness-completeness": "every paired difference k(method) - k(attribution), methods x metrics "
                                   f"(one-sided paired bootstrap), Holm at {ALPHA}: the primary contrast (single-head "
                                   "ablation, both metrics) is corrected within that whole family",
    "5-where-the-heads-are": "the verdict's one primary test (the default's object question, 95% interval); the "
                             "secondary questions (colour, position) and the comparisons between organisms each a "
                             f"family, Holm at {ALPHA} (one-sided bootstrap p-values)",
    "6-semantics": "three interval rules per target (similarity, probe, transfer; no test is corrected: the "
                   "verdict needs all of them)",
    "7-token-flow": "every timing test of the primary analysis (questions x receiving groups role, final, role-only; "
                    f"two-sided paired bootstrap of the onset difference), Holm at {ALPHA}; the sensitivity analyses "
                    "(other windows, onset shares, the logit-difference target) are corrected the same way and reported "
                    "beside it, not read by the verdict",
    "8-object-background": "two interval rules per group, each against its size-matched control (no test): "
                           "nothing to correct",
    "9-sensitivity": "per k, every setting's overlap against the mask-seed noise floor (one-sided paired bootstrap), "
                     f"Holm at {ALPHA}; the linearity rule reads intervals (no test)",
}

# ------------------------------------------------------------------------------------ chapters
#: Chapter 0's accuracy bars on the default organism (held-out, point estimate), issue 28.
ORGANISM_BARS = {"object": 0.80, "color": 0.95, "position": 0.90}
PER_CLASS_BAR = 0.60  # every object class at least this (so that every chapter gets images of every class)
FOLLOWS_MAIN_MIN = 0.80  # size-swapped scenes: lower end of the interval of answers naming the new main object
FOLLOWS_OLD_MAX = 0.10  # ... and upper end of those naming the former one
MIN_SWAPPED = 200  # at least this many size-swapped scenes per question
POOLED_PROBE_GAP = 0.15  # the organism at least this far above the tower's pooled-feature probe, per question
TOKEN_PROBE_GAP = 0.05  # object accuracy within this of the main-object-token probe (it uses what the tower gives)
ABLATED_OVER_CHANCE = 0.05  # every head ablated: the upper end of the accuracy interval at most chance + this
TEXT_KEPT = 0.9  # text-task accuracy after the llava stage, relative to after the text stage
TEXT_TAUGHT = 0.9  # ... counted only where the text stage taught the task (its accuracy after that stage)
TEXT_LAYER0_MAX = 0.3  # upper end of the text-retrieval attribution's layer-0 share


def _probe_accuracy(res: dict, readout: str) -> dict | None:
    tower = res.get("tower_probes") or {}
    if readout in tower:
        return tower[readout]["accuracy"]
    return (res.get("pooled_probe_accuracy") or {}).get("accuracy") if readout == "pooled" else None


def organism_checks(res: dict) -> dict:
    """Chapter 0's bars on the default organism (issue 28), each ``{"value", "bar", "met"}``, every one
    read where its measurement is in the result: held-out accuracy per question >= ``ORGANISM_BARS``;
    every object class >= ``PER_CLASS_BAR``; on at least ``MIN_SWAPPED`` size-swapped scenes per
    question (object, colour) the answer follows the new main object (lower end of its 95% Wilson
    interval >= ``FOLLOWS_MAIN_MIN``) and the old one at most ``FOLLOWS_OLD_MAX`` (upper end); the
    organism beats the tower's pooled-feature probe by ``POOLED_PROBE_GAP`` per question; its object
    accuracy is within ``TOKEN_PROBE_GAP`` of the main-object-token probe; with every head ablated its
    accuracy falls to chance (upper end <= chance + ``ABLATED_OVER_CHANCE``); the text task kept
    (after llava / after text) >= ``TEXT_KEPT`` only where the text stage taught it (>= ``TEXT_TAUGHT``:
    kept at chance is not kept); the text-retrieval attribution's layer-0 share <= ``TEXT_LAYER0_MAX``
    by the upper end of its interval."""
    m = res["model"]
    acc = res["accuracy"][m]
    out = {f"accuracy {q}": {"value": acc[q], "bar": b, "met": acc[q] >= b} for q, b in ORGANISM_BARS.items()}
    per_class = (res.get("per_class_object") or {}).get(m)
    if per_class:
        for c, v in per_class.items():
            v = v[0] if isinstance(v, (list, tuple)) else v
            out[f"object class {c}"] = {"value": v, "bar": PER_CLASS_BAR, "met": v >= PER_CLASS_BAR}
    cf = (res.get("counterfactual_follows_main") or {}).get(m)
    for q, r in (cf or {}).items():
        out[f"follows the new main object ({q})"] = {
            "value": r["follows_main"], "ci": r["follows_main_ci"], "bar": FOLLOWS_MAIN_MIN, "n": r["n"],
            "met": r["n"] >= MIN_SWAPPED and r["follows_main_ci"][0] >= FOLLOWS_MAIN_MIN}
        out[f"follows the old main object ({q})"] = {
            "value": r["follows_old"], "ci": r["follows_old_ci"], "bar": FOLLOWS_OLD_MAX, "n": r["n"],
            "met": r["n"] >= MIN_SWAPPED and r["follows_old_ci"][1] <= FOLLOWS_OLD_MAX}
    pooled = _probe_accuracy(res, "pooled")
    for q, v in (pooled or {}).items():
        out[f"pooled probe {q}"] = {"value": v, "bar": acc[q] - POOLED_PROBE_GAP, "met": v <= acc[q] - POOLED_PROBE_GAP}
    tokens = _probe_accuracy(res, "main_object_tokens")
    if tokens and "object" in tokens:
        gap = acc["object"] - tokens["object"]
        out["object vs main-object-token probe"] = {"value": gap, "bar": -TOKEN_PROBE_GAP, "met": gap >= -TOKEN_PROBE_GAP}
    ablated = (res.get("all_heads_ablated") or {}).get(m)
    for q, r in (ablated or {}).items():
        out[f"every head ablated ({q})"] = {"value": r["accuracy"], "ci": r["ci"], "bar": r["chance"] + ABLATED_OVER_CHANCE,
                                            "met": r["ci"][1] <= r["chance"] + ABLATED_OVER_CHANCE}
    text = res.get("text_retrieval_after_stage")
    if text and text.get("kept") is not None:
        taught = text.get("text", {}).get("all", 0.0) >= TEXT_TAUGHT
        out["text task kept"] = {"value": text["kept"], "bar": TEXT_KEPT, "taught": taught,
                                 "met": taught and text["kept"] >= TEXT_KEPT}
    layer0 = res.get("text_retrieval_attribution", {}).get(m)
    if layer0:
        a = layer0["all"]
        out["text retrieval layer 0"] = {"value": a["layer0_share"], "ci": a["layer0_ci"], "bar": TEXT_LAYER0_MAX,
                                         "met": a["layer0_ci"][1] <= TEXT_LAYER0_MAX}
    return out


def organism(res: dict) -> dict:
    """Chapter 0 (no verdict on the paper): the default organism's bars (:func:`organism_checks`)."""
    m = res["model"]
    acc, ci = res["accuracy"][m], res["accuracy_ci"][m]
    checks = organism_checks(res)
    finding = (f"`{m}` ({' > '.join(res['recipe'][m]['stages'])}), held-out accuracy on {res['n_eval'][m]:,} "
               f"multi-object test-split scenes: " + ", ".join(f"{q} {acc[q]:.1%} {_pct(ci[q])}" for q in acc))
    for name in res["accuracy"]:
        if name != m:
            o = res["accuracy"][name]
            finding += f"; `{name}`: " + ", ".join(f"{q} {o[q]:.1%}" for q in o)
    missed = [k for k, c in checks.items() if not c["met"]]
    out = status("0-organism", "(our stand-in for LLaVA-1.5)", m, finding,
                 "bars met" if not missed else "bars missed: " + ", ".join(missed))
    out["checks"] = checks
    return out


# ------------------------------------------------------------------------------------ competence
NOT_TESTABLE = "not testable on this organism"
_CF = ("follows the new main object ({q})", "follows the old main object ({q})")
#: Chapter -> the chapter-0 bars (names of :func:`organism_checks`) its question needs (issue 32): the
#: chapters that read the answer to one question about the main object need the organism to answer it
#: and to answer about the main object (the size-swap counterfactual); chapter 6 reads the class.
COMPETENCE_NEEDS = {
    **{ch: ("accuracy object", *(n.format(q="object") for n in _CF))
       for ch in ("2-single-head-ablation", "3-head-attribution", "4-faithfulness-completeness",
                  "5-where-the-heads-are", "8-object-background", "9-sensitivity")},
    "6-semantics": ("accuracy object",),
    "7-token-flow": ("accuracy object", "accuracy color", "accuracy position",
                     *(n.format(q=q) for q in ("object", "color") for n in _CF)),
}


def competence_missed(chapter: str, checks: dict) -> list[str]:
    """The bars of :data:`COMPETENCE_NEEDS` [``chapter``] that ``checks`` (:func:`organism_checks`) misses;
    a needed bar that was not measured is missed too ("... (not measured)")."""
    missed = []
    for name in COMPETENCE_NEEDS.get(chapter, ()):
        if name not in checks:
            missed.append(f"{name} (not measured)")
        elif not checks[name]["met"]:
            missed.append(name)
    return missed


def gate(st: dict, checks: dict | None) -> dict:
    """The competence gate, one rule for every chapter: a chapter whose organism misses a bar its
    question needs (:data:`COMPETENCE_NEEDS`) is *not testable on this organism*; its rule's outcome stays
    beside it (``verdict_if_competent``) and its numbers are shown.  ``checks`` None: a model without
    chapter 0's bars (a real checkpoint): the verdict stands, and ``competence`` says it was not measured."""
    out = dict(st)
    if checks is None:
        out["competence"] = {"needs": list(COMPETENCE_NEEDS.get(st["chapter"], ())), "missed": None,
                             "note": "no chapter-0 bars for this model: competence not measured"}
        return out
    missed = competence_missed(st["chapter"], checks)
    out["competence"] = {"needs": list(COMPETENCE_NEEDS.get(st["chapter"], ())), "missed": missed}
    if missed:
        out["verdict_if_competent"] = st["verdict"]
        out["verdict"] = f"{NOT_TESTABLE} (bar {', '.join(missed)} missed)"
    return out


def competence_table() -> list[dict]:
    """:data:`COMPETENCE_NEEDS` as rows for the book's table (chapter, the bars it needs)."""
    return [{"chapter": ch, "needs": ", ".join(needs)} for ch, needs in COMPETENCE_NEEDS.items()]


#: Enough images (issue 32): a chapter's primary analysis needs at least this many correctly answered
#: images in each class it analyses, and at least ``MIN_CLASSES`` classes.
MIN_IMAGES_PER_CLASS = 10
MIN_CLASSES = 8


def too_few_images(images_per_class: dict, min_per_class: int = MIN_IMAGES_PER_CLASS,
                   min_classes: int = MIN_CLASSES) -> str | None:
    """Why ``images_per_class`` (class -> analysed images) is too few for a verdict, or None."""
    small = {c: n for c, n in images_per_class.items() if n < min_per_class}
    if small:
        return (f"fewer than {min_per_class} images in {len(small)} class(es): "
                + ", ".join(f"{c} {n}" for c, n in sorted(small.items())))
    if len(images_per_class) < min_classes:
        return f"{len(images_per_class)} classes analysed, fewer than {min_classes}"
    return None


def enough_images(st: dict, images_per_class: dict) -> dict:
    """*Inconclusive* where the analysed images are too few (:func:`too_few_images`); the rule's outcome
    stays beside it (``verdict_if_enough_images``)."""
    why = too_few_images(images_per_class)
    out = dict(st, images_per_class=dict(images_per_class))
    if why:
        out["verdict_if_enough_images"] = st["verdict"]
        out["verdict"] = f"{INCONCLUSIVE} (too few images: {why})"
    return out


def final(st: dict, checks: dict | None, images_per_class: dict | None) -> dict:
    """What a chapter saves: its rule's status through the competence gate (:func:`gate`), then, if the
    organism is competent, through the images gate (:func:`enough_images`; ``None``: the chapter's rule
    counts its images itself)."""
    out = gate(st, checks)
    if images_per_class is not None and "verdict_if_competent" not in out:
        out = enough_images(out, images_per_class)
    return out


def task(res: dict) -> dict:
    """Chapter 1 (no verdict): the token groups resolve and the clean accuracy."""
    finding = (f"token groups from the processor and chat template ({res['group_sizes']['image']} image tokens); "
               f"{res['accuracy']:.0%} of the {res['n_images']} evaluation images answered correctly")
    return status("1-task-and-models", "task, prompt, token groups", res["model"], finding, "done")


def combine(outcomes) -> str:
    """One verdict from the outcomes ("yes", "no", "undetermined") of a chapter's parts: reproduced if
    every part is "yes"; partly if some part is; not reproduced if none is and some part is "no";
    inconclusive if every part is undetermined (a rule that nothing decided never defaults to a label)."""
    outcomes = list(outcomes)
    if outcomes and all(o == "yes" for o in outcomes):
        return REPRODUCED
    if "yes" in outcomes:
        return PARTLY
    return NOT if "no" in outcomes else INCONCLUSIVE


def below(d: dict, bar: float) -> str:
    """"yes" if the interval ``d["ci"]`` lies below ``bar``, "no" if at or above it, else "undetermined"."""
    lo, hi = d["ci"]
    return "yes" if hi is not None and hi < bar else "no" if lo is not None and lo >= bar else "undetermined"


def at_least(d: dict, bar: float) -> str:
    """"yes" if the interval ``d["ci"]`` lies at or above ``bar``, "no" if below it, else "undetermined"."""
    lo, hi = d["ci"]
    return "yes" if lo is not None and lo >= bar else "no" if hi is not None and hi < bar else "undetermined"


SINGLE_SHARE_MAX = 0.2  # chapter 2: the largest single head carries less than this share of the image effect


def single_head(res: dict) -> dict:
    """Chapter 2, by the one aggregation rule with bootstrap intervals.  (i) *No head is necessary
    alone*: the largest single head's share of the image effect is below ``SINGLE_SHARE_MAX`` (upper end
    of its interval), "no" if its lower end is at or above it; (ii) *the heads are redundant*: the largest
    random sets below all heads lose at least ``SUPERADDITIVE_FACTOR`` (1.5) times the sum of their
    single effects together, read as the margin joint - 1.5 x singles (both shares of the image effect)
    at or above 0 by the lower end of its interval, "no" if its upper end is below 0.  Combined by
    :func:`combine`.  (Results written before the intervals existed are read by their medians.)"""
    if "max_single_share" not in res:  # the committed book before issue 32
        small = res["median_max_single_share"] < 0.2
        ratio = res["superadditivity"]
        verdict = combine(["yes" if small else "no", "yes" if ratio >= 1.5 else "no"])
        finding = (f"the largest single head carries {res['median_max_single_share']:.1%} of the all-heads effect "
                   f"(median, {res['n_images']} images); {res['superadditivity_k']} random heads together lose "
                   f"{ratio:.1f}x the sum of their single effects")
        return status("2-single-head-ablation", "Fig. 1A", res["model"], finding, verdict)
    if res["max_single_share"] is None:
        return status("2-single-head-ablation", "Fig. 1A", res["model"], f"no statistic: {res['no_statistic']}",
                      f"{INCONCLUSIVE} (too few images: {res['no_statistic']})")
    m, j, s_, g = (res[k] for k in ("max_single_share", "joint_share", "singles_share", "superadditive_margin"))
    parts = [below(m, SINGLE_SHARE_MAX), at_least(g, 0.0)]
    f = lambda d: f"{d['value']:.3f} [{d['ci'][0]:.3f}, {d['ci'][1]:.3f}]"  # noqa: E731
    finding = (f"the largest single head carries {f(m)} of the image effect ({parts[0]}: below {SINGLE_SHARE_MAX}); "
               f"{res['superadditivity_k']} random heads together lose {f(j)}, the sum of their single effects "
               f"{f(s_)}, margin joint - {res['superadditive_factor']} x singles {f(g)} ({parts[1]}) "
               f"({res['n_images']} images, {len(res['images_per_class'])} classes; ratio of sums per class, "
               "mean over classes, 95% bootstrap intervals)")
    return status("2-single-head-ablation", "Fig. 1A", res["model"], finding, combine(parts))


def head_attribution(res: dict) -> dict:
    """Chapter 3.  The held-out Pearson r of the per-image fits, as the class-equal mean with its
    bootstrap interval (:func:`headflow.method.metrics.class_mean`): reproduced if the interval lies at
    or above 0.8; partly if it lies at or above 0.6; not reproduced if it lies below 0.6; otherwise
    inconclusive (also where no class has two images).  (Results written before the interval existed are
    read by their median.)"""
    fit = res["fit"]
    if "pearson_r" not in fit:  # the committed book before issue 32
        r = fit["pearson_r_median"]
        verdict = REPRODUCED if r >= 0.8 else PARTLY if r >= 0.6 else NOT
        finding = (f"median held-out r = {r:.2f}, R^2 = {fit['r2_median']:.2f} ({res['n_masks']:,} masks per "
                   f"image, rate {res['ablation_rate']})")
        return status("3-head-attribution", "Fig. 1B", res["model"], finding, verdict)
    r = fit["pearson_r"]
    if r is None:  # no class has two images with a fit (metrics.class_mean)
        finding = f"no class has two analysed images: no interval of the held-out r ({res['n_masks']:,} masks per image)"
        return status("3-head-attribution", "Fig. 1B", res["model"], finding, INCONCLUSIVE)
    high, mid = at_least(r, 0.8), at_least(r, 0.6)
    verdict = (REPRODUCED if high == "yes" else PARTLY if mid == "yes" else NOT if mid == "no" else INCONCLUSIVE)
    finding = (f"held-out r = {r['value']:.2f} [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}] (mean within class, then over "
               f"{len(r['images_per_class'])} classes; 95% bootstrap interval), R^2 median {fit['r2_median']:.2f} "
               f"({res['n_masks']:,} masks per image, rate {res['ablation_rate']})")
    return status("3-head-attribution", "Fig. 1B", res["model"], finding, verdict)


PRIMARY_CONTRAST = "single_head"  # chapter 4: the paper's contrast, attribution against single-head ablation


def contrast(d: dict) -> str:
    """One paired comparison k(method) - k(attribution): "yes" (attribution needs fewer: Holm p below
    ALPHA, median difference positive), "no" (the interval's upper end is at most 0: the method needs no
    more heads than attribution), else "undetermined"."""
    if d["attribution_needs_fewer"]:
        return "yes"
    hi = d.get("ci", [None, None])[1]
    return "no" if hi is not None and hi <= 0 else "undetermined"


def faithfulness(res: dict) -> dict:
    """Chapter 4, on held-out images.  The primary contrast is the paper's: attribution against
    single-head ablation, on each metric (faithfulness, completeness): *attribution needs fewer heads*
    ("yes") if the one-sided paired-bootstrap p-value of k(single head) - k(attribution) > 0,
    Holm-adjusted over every pair of the chapter (``FAMILY_RULE``), is below ``ALPHA``; "no" if the
    interval of that difference lies at or below 0; otherwise undetermined.  The other methods
    (attention weights, attribution patching, random) are secondary comparisons by the same test.
    Reproduced if the primary contrast is "yes" on both metrics and every secondary comparison is
    "yes"; partly if the primary contrast is "yes" on at least one metric; not reproduced if it is
    "no" on both metrics, or "no" on one and undetermined on the other; inconclusive if it is
    undetermined on both (the interval of the difference, whose half-width is the smallest
    difference the design could detect, is given beside it)."""
    paired = res["paired_vs_attribution"]
    primary = {metric: contrast(v[PRIMARY_CONTRAST]) for metric, v in paired.items() if PRIMARY_CONTRAST in v}
    secondary = [contrast(d) for v in paired.values() for m, d in v.items() if m != PRIMARY_CONTRAST]
    p = list(primary.values())
    if p and all(a == "yes" for a in p) and all(a == "yes" for a in secondary):
        verdict = REPRODUCED
    elif "yes" in p:
        verdict = PARTLY
    elif "no" in p:
        verdict = NOT
    else:
        verdict = INCONCLUSIVE
    k = res["k_at_0.8_heldout"]
    show = lambda d: ">all" if d["k"] is None else str(d["k"])  # noqa: E731
    order = ["attribution", "single_head", "attribution_patching", "attention_weight", "random"]
    fmt = lambda m: ", ".join(f"{n.replace('_', ' ')} {show(k[m][n])}" for n in order if n in k[m])  # noqa: E731

    def diff(metric):
        d = paired[metric][PRIMARY_CONTRAST]
        lo, hi = d.get("ci", [None, None])
        rng = "" if lo is None or hi is None else f" [{lo:+.0f}, {hi:+.0f}]"
        return f"{metric} {d.get('median_difference', float('nan')):+.0f}{rng} heads ({primary[metric]})"
    wins = [contrast(d) == "yes" for v in paired.values() for d in v.values()]
    finding = (f"held-out images, heads to reach 0.8: faithfulness {fmt('faithfulness')}; completeness "
               f"{fmt('completeness')}; primary contrast, k(single head) - k(attribution): "
               + "; ".join(diff(m) for m in primary)
               + f"; attribution needs fewer (paired bootstrap, Holm over {len(wins)}) in {sum(wins)} of {len(wins)} "
               "comparisons")
    return status("4-faithfulness-completeness", "Sec. 4", res["model"], finding, verdict)


def where_heads(res: dict) -> list[str]:
    """Chapter 5, applied to ``where_heads.json``; printable lines (:func:`where_heads_status`)."""
    return where_heads_status(res)["lines"]


def where_heads_status(res: dict) -> dict:
    """Chapter 5.  *Mid-to-late* holds for a model and question when the upper end of the 95%
    interval of the first-third share (positive attribution in layers of relative depth < 1/3) is
    below the uniform placement's share.  Paper: mid-to-late on the default's object question ->
    reproduced; on colour or position only (those two a family: one-sided bootstrap p of "below
    uniform", Holm-adjusted, below ``ALPHA`` / 2), or the object question's point estimate below
    uniform -> partly; otherwise not reproduced.  Contrasts between organisms are reported by
    whether they *count* (:func:`headflow.findings.layers.judge_comparisons`: clear the seed
    difference, Holm-adjusted p below ``ALPHA``)."""
    by = res["by_organism"][res["model"]]
    q0 = res.get("question", "object")

    def holds(d):
        f = d["first_third_share"]
        return f["ci"][1] < f["uniform"]

    obj = by[q0]["first_third_share"]
    # the secondary questions: one family, Holm; one-sided, so at ALPHA / 2 (as the primary's 95% interval)
    secondary = holm({q: d["first_third_share"]["p_below_uniform"] for q, d in by.items()
                      if q != q0 and "p_below_uniform" in d["first_third_share"]})
    others = [q for q, p in secondary.items() if p < ALPHA / 2]
    if holds(by[q0]):
        verdict = REPRODUCED
    elif others or obj["value"] < obj["uniform"]:
        verdict = PARTLY
    else:
        verdict = NOT
    parts = []
    for q, d in by.items():
        f, m = d["first_third_share"], d["mean_relative_depth"]
        parts.append(f"{q}: first third {f['value']:.2f} [{f['ci'][0]:.2f}, {f['ci'][1]:.2f}] vs uniform "
                     f"{f['uniform']:.3f}, mean relative depth {m['value']:.2f} [{m['ci'][0]:.2f}, {m['ci'][1]:.2f}]")
    finding = f"`{res['model']}`: " + "; ".join(parts)
    lines = []
    for q, part in zip(by, parts):
        if q == q0:
            lines.append(f"{res['model']} / {part} -> {'mid-to-late' if holds(by[q]) else 'not mid-to-late'} (primary)")
        elif q in secondary:
            lines.append(f"{res['model']} / {part}, Holm p {secondary[q]:.3f} -> "
                         f"{'mid-to-late' if q in others else 'not mid-to-late'} (secondary)")
    for label, c in res.get("comparisons", {}).items():
        diff = f"{label}: difference {c['difference']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]"
        if "counts" in c:
            holm_p = f", Holm p {c['p_holm']:.3f}" if "p_holm" in c else ""
            lines.append(f"{diff}, seeds {c['seed_difference']:+.3f}{holm_p} -> "
                         + ("counts" if c["counts"] else "does not count"))
        elif not label.startswith("seeds"):
            lines.append(f"{diff} -> not judged: no second seed of the default to read it against")
    lines.append(f"paper's claim ({q0} question, `{res['model']}`) -> {verdict}")
    st = status("5-where-the-heads-are", "Sec. 4", res["model"], finding, verdict)
    st["lines"] = lines
    return st


PLANTED_LONE_MIN = 0.005  # appendix 91: a head enters a planted set only if it carries this share on its own


def validation(res: dict) -> dict:
    """Validation appendix.  (a) Attribution *recovers* a planted set if its mean precision at ``|S|``
    over plantings is at least 0.9 and every planting's interval lies above the random expectation;
    planted sets are drawn from heads outside the organism's top 10% that carry at least
    ``PLANTED_LONE_MIN`` of the image effect on their own (sizes larger than that pool are not
    planted, and reported).  (b) The redundancy argument is *shown* if the pair planted in the
    network is redundant as measured (each single-head effect at most 0.1 of the pair's joint
    effect, by the aggregation rule of chapter 4) and attribution ranks the pair first and second.
    (c) Flow split over redundant pairs: scored only on plantings whose every pair is redundant as
    measured; recovered by the rule of (a).  Validated if (a) holds at every planted size, (b)
    holds and (c) holds at every size with a scored planting; partly if (a) holds at some size (the
    planted flow recovered: neither (b), built so that single-head ablation cannot see it, nor (c)
    alone makes "partly"); otherwise not validated.  Single-head ablation is
    scored on the same plantings and reported beside attribution; it does not enter the verdict."""
    def recovered(d):
        a = d["attribution"]
        return a["precision"] >= 0.9 and all(p["ci"][0] > d["random_expectation"] for p in a["per_planting"])
    flow = {size: recovered(d) for size, d in res["planted_flow"].items()}
    pairs = {size: recovered(d) for size, d in res["planted_pairs"].items()}
    red = res["redundancy_in_network"]
    shown = red["redundant_by_rule"] and sorted(red["attribution_ranks"].values()) == [1, 2]
    parts = list(flow.values()) + list(pairs.values()) + [shown]
    verdict = "validated" if all(parts) and flow else "partly" if any(flow.values()) else "not validated"
    others = [m for m in ("single_head", "attribution_patching", "attention_weight_value")
              if all(m in d for d in res["planted_flow"].values())]
    prec = ", ".join(f"{s} heads: {d['attribution']['precision']:.2f} ("
                     + ", ".join(f"{m.replace('_', ' ')} {d[m]['precision']:.2f}" for m in others) + ")"
                     for s, d in res["planted_flow"].items())
    pool = res.get("flow_pool", {})
    unplanted = (f" (not planted, the pool of {pool['n_heads']} heads is too small: {pool['not_plantable']})"
                 if pool.get("not_plantable") else "")
    split = ", ".join(f"{s} heads: attribution {d['attribution']['precision']:.2f}, single head "
                      f"{d['single_head']['precision']:.2f}" for s, d in res["planted_pairs"].items())
    unscored = [p for p in res.get("pair_plantings", []) if not p["scored"]]
    so = red["single_over_joint"]
    single_ok = bool(flow) and all(d["single_head"]["precision"] >= 0.9 for d in res["planted_flow"].values()
                                   if "single_head" in d)
    single = ("single-head ablation solves it too" if single_ok and all(flow.values()) else
              "single-head ablation solves it, attribution does not" if single_ok else
              "single-head ablation does not solve it either" if not any(flow.values()) else
              "single-head ablation does not solve it")
    finding = (f"planted flow, precision at |S| of attribution {prec}{unplanted}: {single}; flow split over "
               f"redundant pairs in the network, {split or 'no planting redundant as measured'}"
               + (f" ({len(unscored)} planting(s) not redundant as measured, not scored)" if unscored else "")
               + f"; a pair planted in the network: single-head effects {so['A']:.3f} / {so['B']:.3f} of the joint "
               f"effect ({red['joint_effect']:.2f} logits), attribution ranks {red['attribution_ranks']['A']} and "
               f"{red['attribution_ranks']['B']}, single-head ranks {red['single_head_ranks']['A']} and "
               f"{red['single_head_ranks']['B']}")
    return status("91-validation", "(Fig. 1A argument, planted truth)", "organism", finding, verdict)


def probe_outcome(pc: dict, pa: dict) -> str:
    """Chapter 6's probe test: "yes" if the class probe's interval lies above its chance level *and* the
    appearance probe's lies above its own (appearance is readable) *and* the class gain over chance exceeds
    the appearance gain; "no" if the class probe's interval reaches down to its chance level, or both are
    readable and the appearance gain is the larger; "undetermined" if the class is readable but the
    appearance probe is not above its chance (a below-chance appearance probe cannot decide the comparison:
    "class beats appearance" would reduce to "class beats chance")."""
    if not pc["ci"][0] > pc["chance"]:
        return "no"
    if not pa["ci"][0] > pa["chance"]:
        return "undetermined"
    return "yes" if pc["accuracy"] - pc["chance"] > pa["accuracy"] - pa["chance"] else "no"


def semantics_tests(sim: dict, pc: dict, pa: dict, tr: dict) -> dict:
    """Chapter 6's three tests on one target's numbers (intervals: the item cluster bootstrap), each
    "yes", "no" or "undetermined"."""
    yes = lambda b: "yes" if b else "no"  # noqa: E731
    return {"similarity": yes(sim["permutation_p"] < 0.05 and sim["difference_ci"][0] > 0),
            "probe": probe_outcome(pc, pa),
            "transfer": yes(tr["difference_ci"][0] is not None and tr["difference_ci"][0] > 0)}


WRONG_MIN = 5  # chapter 6: wrongly answered images needed to read the wrong-answer check
WRONG_MARGIN = 0.1  # ... own-class minus other-class cosine on them above which the class word's target is confounded


def readout_confounded(wrong: dict | None) -> bool:
    """Chapter 6's wrong-answer check as a test: on wrongly answered images (the organism did not
    recognise the class) the class-word target's vectors still sit by their own class's centroid (cosine
    to it minus to the others above ``WRONG_MARGIN``) -> the class structure under that target can come
    from the read-out (the target shares the class word's direction), not from recognition.  Fewer than
    ``WRONG_MIN`` wrong images cannot clear it: counted as confounded (the verdict then rests on the
    class-agnostic target alone)."""
    if not wrong or wrong.get("n", 0) < WRONG_MIN or wrong.get("own_class_cosine") is None:
        return True
    return wrong["own_class_cosine"] - wrong["other_class_cosine"] > WRONG_MARGIN


def semantics(res: dict) -> dict:
    """Chapter 6.  Three tests, each by its own rule, under each target:

    (a) *similarity*: same-class pairs (different item and appearance) are more alike than
        different-class pairs of one appearance: permutation p < 0.05 and the 95% interval of the
        difference of mean cosine above 0;
    (b) *probe* (:func:`probe_outcome`): the class probe reads the class above chance and gains more over
        chance than an appearance probe that itself reads appearance above chance;
    (c) *transfer*: a class's head set keeps more of its own class's images than of other classes'
        (95% interval of the faithfulness difference above 0).

    Every interval is by the cluster bootstrap over items.  Under the class word's logit, same-class
    pairs share the target's unembedding direction, so a class signal there may come from the
    read-out alone: the wrong-answer check (:func:`readout_confounded`) tests that.  Not reproduced if
    the class-agnostic target (answer KL), which tests the routing, holds none of its tests and fails
    one; otherwise, if the check fires, the verdict rests on the class-agnostic target alone, else on
    both targets, combined by :func:`combine` (reproduced if all hold; partly if some do; inconclusive
    if none is decided)."""
    sim, pc, pa, tr = res["similarity"], res["probe"]["class"], res["probe"]["appearance"], res["transfer"]
    logit = semantics_tests(sim, pc, pa, tr)
    ag = res.get("class_agnostic")
    agnostic = semantics_tests({"permutation_p": ag["permutation_p"], "difference_ci": ag["difference_ci"]},
                               ag["probe"]["class"], ag["probe"]["appearance"], ag["transfer"]) if ag else {}
    confounded = readout_confounded(res.get("wrong_check"))
    agn = combine(agnostic.values()) if agnostic else INCONCLUSIVE
    if agnostic and agn == NOT:  # the target that tests the routing finds nothing
        verdict = NOT
    elif confounded:
        verdict = agn
    else:
        verdict = combine(list(logit.values()) + list(agnostic.values()))
    c = res.get("counts", {})
    finding = (f"class-word logit: cosine same class {sim['same_class']:.2f} vs same appearance "
               f"{sim['same_appearance']:.2f} (permutation p = {sim['permutation_p']:.3f}, noise ceiling "
               f"{sim['noise_ceiling']:.2f}), class probe {pc['accuracy']:.0%} (chance {pc['chance']:.0%}), "
               f"transfer {tr['same']:.2f} vs {tr['other']:.2f}; "
               + (f"class-agnostic (answer KL): cosine {ag['same_class_similarity']:.2f} vs "
                  f"{ag['same_appearance_similarity']:.2f} (p = {ag['permutation_p']:.3f}), class probe "
                  f"{ag['probe']['class']['accuracy']:.0%}, transfer {ag['transfer']['same']:.2f} vs "
                  f"{ag['transfer']['other']:.2f}; " if ag else "no class-agnostic analysis; ")
               + f"tests held: logit {list(logit.values()).count('yes')}/3, class-agnostic "
               f"{list(agnostic.values()).count('yes')}/3; wrong-answer check: "
               + ("the class word's target is read-out-confounded, the class-agnostic target decides; "
                  if confounded else "no class structure without recognition; ")
               + f"probe (class-agnostic) {agnostic.get('probe', 'n/a')} "
               f"({res['n_images']} images of {c.get('n_items', '?')} items, {res['n_wrong']} wrong answers apart)")
    return status("6-semantics", "Sec. 5", res["model"], finding, verdict)


# Chapter 7, fixed before the run: a flow's onset is the first layer whose knockout loses more than this
# share of the image effect (lower end of its 95% interval); the other shares are the sensitivity analysis
#: Chapter 7: a flow's onset is the first layer whose knockout removes this share of the image effect.
ONSET_SHARE = 0.10
ONSET_SENSITIVITY = (0.05, 0.20)
MIN_TOP_K = 2  # top vs random heads: a set of fewer heads is not a comparison of head *sets*


def knockout(res: dict) -> dict:
    """Chapter 7.  For each question and receiving group, question -> group comes *before* image ->
    group if the paired-bootstrap difference of onsets (image minus question; window of one layer,
    share ``ONSET_SHARE``, logit target) is positive with its Holm-adjusted p below ALPHA over the
    chapter's family (every question x {role, final, role-only}); *later* if negative and significant;
    otherwise, or if a flow has no onset, *undetermined*.  Reproduced if "before" holds for role and
    final on the colour and position questions (the paper's groups; role-only is reported beside
    them, the test that tells role from final); not reproduced if any role or final test finds the
    question later; partly if at least one of the decisive tests finds "before"; inconclusive if none
    of them is determined (a rule that nothing decided never defaults to a positive label)."""
    answers = {q: {g: d["answer"] for g, d in v.items()} for q, v in res["timing"].items()}
    decisive = [answers[q][g] for q in KNOCKOUT_DECISIVE if q in answers for g in ("role", "final")]
    later = any(a == "no (later)" for v in answers.values() for a in v.values())
    verdict = (NOT if later else REPRODUCED if decisive and all(a == "yes" for a in decisive)
               else PARTLY if any(a == "yes" for a in decisive) else INCONCLUSIVE)

    def say(d):
        if d["difference"] is None:
            return f"undetermined (onsets: question {d['question_onset']}, image {d['image_onset']})"
        return f"{d['difference']:+d} layers, {d['answer']}"
    parts = [f"{q}: final {say(v['final'])}, role {say(v['role'])}, role-only {say(res['role_without_final'][q])}"
             for q, v in res["timing"].items()]
    agree = [q for q in res["timing"] if all(res["logit_diff"]["timing"][q][g]["answer"] == res["timing"][q][g]["answer"]
                                             for g in ("role", "final"))]
    onsets = res.get("onset_layer", {})
    iq = [f"{q} {onsets[q]['image->question']}" for q in res["timing"] if "image->question" in onsets.get(q, {})
          and onsets[q]["image->question"] is not None]
    finding = (f"onset (first layer losing > {res['onset_share']:.0%} of the image effect) of image -> group minus "
               "question -> group: " + "; ".join(parts)
               + (f"; image -> question starts at layer {', '.join(iq)}" if iq else "")
               + f"; the logit-difference target agrees on {len(agree)} of {len(res['timing'])} questions")
    return status("7-token-flow", "Sec. 6", res["model"], finding, verdict)


#: Chapter 7's decisive questions: the paper's role and final groups are read on these (see :func:`knockout`).
KNOCKOUT_DECISIVE = ("color", "position")


def knockout_key(res: dict) -> str:
    """Chapter 7's key number for the index, one line: per question (the decisive ones first, as
    :func:`knockout` reads them) whether question -> group comes before image -> group for the role and
    final groups, with the onset differences in layers; a question whose image flows have no onset says so."""
    def one(q):
        v = res["timing"][q]
        r, f = v["role"], v["final"]
        if r["difference"] is None and f["difference"] is None:
            missing = "image onset" if r["image_onset"] is None and f["image_onset"] is None else "onset"
            return f"{q} undetermined (no {missing})"
        diffs = ", ".join("?" if d["difference"] is None else f"{d['difference']:+d}" for d in (r, f))
        answers = r["answer"] if r["answer"] == f["answer"] else f"{r['answer']}, {f['answer']}"
        return f"{q} {answers} ({diffs} layers)"
    order = [q for q in KNOCKOUT_DECISIVE if q in res["timing"]] + \
        [q for q in res["timing"] if q not in KNOCKOUT_DECISIVE]
    return "question before image at role, final: " + "; ".join(one(q) for q in order)


#: Key numbers for the index that a chapter's finding does not open with, from its results (chapter -> function).
KEYS = {"7-token-flow": knockout_key}


TOKEN_THRESHOLD = 0.05  # chapter 8: a group carries image information if its ablation loses more


def group_carries(effect: dict, minus_control: dict, threshold: float = TOKEN_THRESHOLD) -> str:
    """Chapter 8, one token group: "yes" if ablating it loses more than ``threshold`` of the image effect
    and more than its size-matched control, both by the lower ends of their 95% intervals; "no" if either
    upper end says otherwise (at most ``threshold``, or at most the control); else "undetermined"."""
    if effect["ci"][0] > threshold and minus_control["ci"][0] > 0:
        return "yes"
    if effect["ci"][1] <= threshold or minus_control["ci"][1] <= 0:
        return "no"
    return "undetermined"


def tokens(res: dict, threshold: float = TOKEN_THRESHOLD) -> dict:
    """Chapter 8, on the ablations in every head (the primary analysis; the top heads are reported
    beside it).  Each group, the *main object* and the *background*, is judged against its size-matched
    control the same way (:func:`group_carries`): it carries image information if ablating its positions
    alone loses more than ``threshold`` (5%) of the image effect *and* more than as many random positions
    do (group minus its control), both by the lower end of the 95% interval; it does not if either upper
    end rules that out.  Combined by :func:`combine` (reproduced if both carry information; partly if
    one does; not reproduced if neither does and one is ruled out; inconclusive if neither is decided)."""
    a = res["all_heads"]
    o, b = a["object_effect"], a["background_effect"]
    main = group_carries(o, a["object_minus_random"], threshold)
    bg = group_carries(b, a["background_minus_random"], threshold)
    verdict = combine([main, bg])
    f = lambda d: f"{d['value']:.2f} [{d['ci'][0]:.2f}, {d['ci'][1]:.2f}]"  # noqa: E731
    t = res["top_heads"]
    finding = (f"in every head, ablating the main object's tokens loses {f(o)} of the image effect (size-matched "
               f"background positions {f(a['object_random_effect'])}), the other objects' {f(a['other_objects_effect'])}, "
               f"the background's {f(b)} (background-sized grid positions {f(a['background_random_effect'])}); "
               f"within the top {res['k']} heads: main object {f(t['object_effect'])}, "
               f"background {f(t['background_effect'])}; "
               f"per token the main object loses {a['object_per_token']['value']:.4f} and the background "
               f"{a['background_per_token']['value']:.4f} of the image effect ({a['n_images']} images, "
               f"{len(a['classes'])} classes)")
    return status("8-object-background", "Sec. 6", res["model"], finding, verdict)


SECOND_ORDER_MAX_SHARE = 0.25  # chapter 9: the pairwise terms may remove at most this share of 1 - R^2
PAIR_R2_GAP_MAX = 0.25  # chapter 9: attribution sums may predict pair ablations at most this much worse in R^2


def sensitivity(res: dict) -> dict:
    """Chapter 9 (the paper leaves these choices open).  A setting *moves* the top heads if its top-k
    overlap with the reference is lower than the mask-seed setting's (the noise floor: only the random
    masks change), by a one-sided paired bootstrap, Holm over the settings at each k, below ALPHA; the
    top heads are *robust* to a factor if none of its values moves them at any k asked.
    The linear model is *adequate* if (a) at every ablation rate tested (0.1, 0.5, 0.9) the second-order
    fit removes less than ``SECOND_ORDER_MAX_SHARE`` of the linear fit's unexplained held-out variance,
    by the upper end of its 95% interval, and (b) the attributions of the reference rate predict pair
    ablations of the top heads not more than ``PAIR_R2_GAP_MAX`` worse in R^2 than the single-head
    losses do, by the upper end of the paired interval of the gap.  (a) alone failing: "interactions
    matter"; (b) alone: "additive, but the attributions of one rate do not predict ablations near the
    clean model"; both: "interactions matter; attributions mispredict pair ablations"."""
    rows = [r for r in res["rows"] if r["factor"] != "reference"]
    fragile = sorted({r["factor"] for r in rows if any(t["moves"] for t in (r.get("against_noise") or {}).values())})
    inter = res["interactions"]
    shares = inter["rule_relative_to_unexplained"]
    a = all(v["ci"][1] < SECOND_ORDER_MAX_SHARE for v in shares.values())
    b = inter["pair_r2_gap"]["ci"][1] < PAIR_R2_GAP_MAX
    linear = ("linear model adequate" if a and b else "interactions matter" if b else
              "additive, but the attributions of one rate do not predict ablations near the clean model" if a else
              "interactions matter; attributions mispredict pair ablations")
    verdict = ("robust" if not fragile else "sensitive to " + ", ".join(fragile)) + "; " + linear
    k = str(res["k"])
    finding = (f"top-{k} overlap with the reference (noise floor: mask seed "
               f"{next(r['topk_overlap'][k] for r in rows if r['factor'] == 'seed'):.2f}): " + ", ".join(
                   f"{r['factor']}={r['value']} {r['topk_overlap'][k]:.2f}" for r in rows if r["factor"] != "seed")
               + "; second-order fit removes " + ", ".join(
                   f"{v['share']:.0%} [{v['ci'][0]:.0%}, {v['ci'][1]:.0%}] (rate {rate})" for rate, v in shares.items())
               + f" of the unexplained variance; pair ablations R^2 {inter['pair_r2_single']['value']:.2f} (single-head "
               f"sums) vs {inter['pair_r2_attribution']['value']:.2f} (attributions), {res['images_per_class_min']}+ "
               "images per class")
    return status("9-sensitivity", "(open choices)", res["model"], finding, verdict)


def proxy(pr: dict) -> str:
    """Chapter 5: a per-head proxy of attribution (rho with a 95% interval) is a *poor proxy* if the
    interval's upper end is below 0.5, a *good proxy* if its lower end is above 0.5, else inconclusive."""
    lo, hi = pr["ci"]
    return "poor proxy" if hi < 0.5 else "good proxy" if lo > 0.5 else "inconclusive"


def performance(res: dict) -> dict:
    """Appendix (no verdict on the paper): the fast path against the batched full forward (like
    for like), beside the FLOP ratio, at LLaVA-1.5-7B width and on the organism."""
    g, o = res["llava15_7b_width"], res["organism"]
    met = sum(bool(t["met"]) for t in res.get("targets", []))
    finding = (f"fast path vs batched full forwards: LLaVA-1.5-7B width {g['fast_vs_batched']['median']:.1f}x (FLOP "
               f"ratio {g['flop_ratio']:.1f}x), organism {o['fast_vs_batched']['median']:.1f}x (FLOP ratio "
               f"{o['flop_ratio']:.1f}x); suffix pass at {g['fraction_of_matmul_peak']['median']:.0%} of the matmul peak")
    if "scaling_efficiency_2_workers" in res:
        finding += f"; Ray scaling efficiency {res['scaling_efficiency_2_workers']:.2f} (2 workers)"
    targets = f"{met} of {len(res.get('targets', []))} targets met" if res.get("targets") else "no targets"
    return status("90-performance", "-", "organism", finding,
                  f"{targets}, {res['machine']['threads']} CPU threads")


# ------------------------------------------------------------------------------------ the rules, by chapter
#: Chapter -> the function here that applies its rule (a chapter's opening states it: :func:`rule_text`).
RULES = {"2-single-head-ablation": single_head, "3-head-attribution": head_attribution,
         "4-faithfulness-completeness": faithfulness, "5-where-the-heads-are": where_heads_status,
         "6-semantics": semantics, "7-token-flow": knockout, "8-object-background": tokens,
         "9-sensitivity": sensitivity, "91-validation": validation}


def rule_text(chapter: str) -> str:
    """The rule of ``chapter`` as its function here states it (the docstring, without its first word
    "Chapter N." and with the reStructuredText roles made plain), so the chapter's opening and the code
    that judges cannot disagree."""
    if chapter not in RULES:
        raise ValueError(f"no verdict rule for chapter {chapter!r}; chapters with one: {sorted(RULES)}")
    doc = inspect.cleandoc(RULES[chapter].__doc__ or "")
    doc = re.sub(r"^(Chapter \d+|Validation appendix)[.:,]?\s*", "", doc)
    doc = doc[:1].upper() + doc[1:]
    doc = re.sub(r":(?:func|data|mod|class):`~?([^`]+)`", lambda m: f"`{m.group(1).split('.')[-1]}`", doc)
    doc = " ".join(doc.replace("``", "`").split())

    def valued(m):  # a constant of this module named in the rule gets its value beside it
        value = globals().get(m.group(1))
        return m.group(0) if not isinstance(value, (int, float, tuple)) or m.group(2) else f"`{m.group(1)}` (= {value})"
    return re.sub(r"`([A-Z][A-Z0-9_]+)`( \((?=[-\d.]))?", valued, doc)


def competence_text(chapter: str, checks: dict | None) -> str:
    """What the organism's competence allows ``chapter`` to say (:func:`gate`, in words)."""
    needs = COMPETENCE_NEEDS.get(chapter, ())
    if not needs:
        return "This chapter's rule needs none of chapter 0's bars."
    if checks is None:
        return (f"The rule needs chapter 0's bars {', '.join(needs)}; this model has none measured (not an organism "
                "chapter 0 trained), so its competence is not measured and the verdict stands unchecked.")
    missed = competence_missed(chapter, checks)
    if missed:
        return (f"The rule needs chapter 0's bars {', '.join(needs)}; this model misses {', '.join(missed)}, so the "
                f"verdict is *{NOT_TESTABLE}* and the numbers below show what the mechanics measure.")
    return f"The rule needs chapter 0's bars {', '.join(needs)}; this model meets them all, so the verdict can speak."
