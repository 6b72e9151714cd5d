"""How many passes each chapter sends through the language model, per image, as formulas.

The counts are those :func:`headflow.method.cost.count` sees when the chapter's library calls
run (``tests/test_plan.py`` instruments them on the organism and checks every formula exactly):

- *forward passes*: rows through the whole prompt (a fast-path prefix pass counts as one);
- a knockout row of chapter 7 is a suffix pass: every flow it knocks out ends at text after the
  image, so the prefix up to the end of the image is computed once per image
  (:func:`headflow.findings.flow.suffix_path`; a family that refuses the fast path runs full forwards);
- *suffix passes*: rows of the fast path over the text after the image only;
- *gradient passes*: full forwards with a backward (attribution patching).

``H``: heads in all layers; ``M``: masks per image.  Counts are for a cold run store; the plan
(:mod:`headflow.scale.plan`) then counts a unit that several chapters share once
(:func:`shared_attribution`): the first chapter computes it, the others read it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from headflow.findings.flow import FLOWS
from headflow.method import metrics


@dataclass
class Passes:
    forward_passes: int = 0
    suffix_passes: int = 0
    gradient_passes: int = 0

    def __add__(self, other: "Passes") -> "Passes":
        return Passes(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values())))

    def times(self, n: int) -> "Passes":
        return Passes(*(n * v for v in asdict(self).values()))

    def as_dict(self) -> dict:
        return asdict(self)


def attribution_unit(M: int) -> Passes:
    """One image's random-mask run: a prefix pass and ``M`` masks plus all-kept and none-kept."""
    return Passes(1, M + 2)


def single_head(H: int) -> Passes:
    return Passes(1, H + 1)


def redundancy(H: int, n_random_sets: int, n_k: int = 10) -> Passes:
    """Chapter 2 per image: single heads, the joint (all heads) ablation, random sets."""
    ks = [k for k in metrics.k_grid(H, n_k) if k > 0]
    return single_head(H) + Passes(1, 2) + Passes(1, len(ks) * n_random_sets + 1)


def baseline_rankings(H: int) -> Passes:
    """Chapter 4 per image: single heads, attention weights (final and text queries), attribution patching."""
    return single_head(H) + Passes(2, 0) + Passes(1, 0, 1)


def judge(H: int, n_orders: int, n_random: int, n_k_random: int) -> Passes:
    """Chapter 4 per held-out image: every ranking's top-k kept alone and ablated, at every k for
    ``n_orders`` rankings and at the ``n_k_random``-point grid (0: every k) for ``n_random`` random ones."""
    random_ks = (H + 1 if n_k_random <= 0 else len(metrics.k_grid(H, n_k_random))) if n_random else 0
    return Passes(1, 2 * (n_orders * (H + 1) + n_random * random_ks))


N_ORDERS = 13  # 5 methods cross-fitted globally + 3 per class + 5 in-sample (crossfit.run)
N_FOLD_ORDERS = 8  # of which depend on the fold split (refitted on every repeated split)


def judge_adaptive(H: int, n_orders: int, n_random: int, n_k_random: int, k_max: int, n_grid: int = 16,
                   n_repeats: int = 1, n_fold_orders: int = N_FOLD_ORDERS) -> Passes:
    """Chapter 4 per image under ``crossfit.run(design="adaptive", k_max=...)``: an *upper bound* (the
    passes depend on where the curves cross; the test checks the instrumented count stays at or below
    it).  Two prefix passes (the grid, then the dense part); per ranking and metric at most the grid's
    k and every k up to ``k_max``; the fold-dependent rankings once per repeated split."""
    grid = set(metrics.k_grid(H, n_grid)) | {0, H}
    dense = grid | set(range(k_max + 1))
    base_r = set(range(H + 1)) if n_k_random <= 0 else set(metrics.k_grid(H, n_k_random))
    rankings = n_orders + (n_repeats - 1) * n_fold_orders
    return Passes(2, 2 * (rankings * len(dense) + n_random * len(base_r & dense | ({0, H} & base_r))))


def knockouts(n_layers: int, window: int, sensitivity_window: int | None, n_flows: int, n_sets: int) -> Passes:
    """Chapter 7 per image (:func:`headflow.findings.flow.chapter_plan`): one prefix pass, then a suffix
    pass per row (every flow over the windows of ``window`` and of ``sensitivity_window`` layers in all
    heads, the control flow over the windows of ``window`` in each of the other ``n_sets - 1`` head sets),
    and y_clean/y_none (two suffix passes, read for the logit and the logit difference at once)."""
    w1 = n_layers - window + 1
    w2 = n_layers - sensitivity_window + 1 if sensitivity_window and sensitivity_window != window else 0
    return Passes(1, n_flows * (w1 + w2) + (n_sets - 1) * w1 + 2)


def groups_and_tokens(n_random: int, token_masks: int, n_sets: int = 2) -> Passes:
    """Chapter 8 per image: in each of ``n_sets`` head sets the three groups, all positions and
    ``n_random`` controls of each group (:func:`headflow.findings.positions.group_rows`), with
    y_clean/y_none, on one prefix; then position attribution."""
    return Passes(1, n_sets * (4 + 3 * n_random) + 2) + Passes(1, token_masks + 2)


def setup(n_asked: int, n_reference: int, decode_steps: int = 1) -> Passes:
    """A study's set-up: the clean answers (``decode_steps`` rows per image: the greedy decode of the
    longest answer) and the reference images of the baseline."""
    return Passes(n_asked * decode_steps + n_reference, 0)


def shared_attribution(name: str, p: dict, default_question: str = "object") -> tuple[tuple, int] | None:
    """The random-mask attribution units a chapter stores in the run store that chapters share
    (:func:`headflow.method.study.store_for`: keyed by masks, rate and question, not by which images):
    ``(store key, images per class)``, the first that many per class; None if the chapter has none.
    Chapters 3-5 run them on their ``per_class`` images, 7 and 8 on their ``n_fit`` fitting images (the
    object question's, where chapter 7 asks several)."""
    rate = p.get("ablation_rate", 0.5)
    if name in ("03-head-attribution", "04-faithfulness-completeness", "05-where-the-heads-are"):
        return ("attribution", p["n_masks"], rate, p.get("question", default_question)), p.get("per_class", 0)
    if name in ("07-token-flow", "08-object-background"):
        return ("attribution", p["n_masks"], rate, default_question), p.get("n_fit", 0)
    return None


def chapter(name: str, H: int, n_layers: int, p: dict, n_images: int, n_classes: int) -> Passes:
    """Passes of one chapter of a profile: ``p`` its parameters (masks already sized for the model),
    ``n_images`` the images it analyses, ``n_classes`` the label set's size."""
    M = p.get("n_masks", 0)
    ref = p.get("n_reference", 0)
    if name == "01-task-and-models":
        return setup(p["n_images"], 0)
    if name == "02-single-head-ablation":
        return setup(n_images, ref) + redundancy(H, p["n_random_sets"]).times(n_images)
    if name == "03-head-attribution":
        rates = [r for r in p.get("rates", []) if r != 0.5]
        return setup(n_images, ref) + attribution_unit(M).times(n_images + p.get("n_rate_images", 0) * len(rates))
    if name == "04-faithfulness-completeness":
        if p.get("design", "every") == "adaptive":
            j = judge_adaptive(H, N_ORDERS, p["n_random"], p["n_k_random"], p.get("k_max") or H,
                               n_repeats=p.get("n_repeats", 1))
        else:
            j = judge(H, N_ORDERS, p["n_random"], p["n_k_random"])
        per = attribution_unit(M) + baseline_rankings(H) + j
        return setup(n_images, ref) + per.times(n_images) + attribution_unit(M)
    if name == "05-where-the-heads-are":
        probes = p.get("n_probe_per_class", 0) * n_classes
        return setup(n_images, ref) + attribution_unit(M).times(n_images) + Passes(probes + 2 * n_images, 0)
    fit_images = p.get("n_fit", 0) * n_classes
    fit = setup(fit_images, ref) + attribution_unit(M).times(fit_images) + judge(H, 1, 0, 0).times(fit_images)
    if name == "07-token-flow":
        eval_images = p["n_eval"] * n_classes
        per = knockouts(n_layers, p["window"], p.get("sensitivity_window", 3), len(FLOWS), 2 + p["n_random"])
        return (fit + setup(eval_images, ref) + per.times(eval_images)).times(len(p["questions"]))
    if name == "08-object-background":
        eval_images = p["n_eval"] * n_classes
        return fit + setup(eval_images, ref) + groups_and_tokens(p["n_random"], p["token_masks"]).times(eval_images)
    raise ValueError(f"no pass formula for chapter {name!r}; add one to headflow.scale.passes.chapter")
