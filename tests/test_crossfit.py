"""Cross-fitting over images and pass counting by instrumentation."""
import numpy as np
import pytest
import torch

from headflow.mechanism import interventions as iv
from headflow.mechanism.prefix_reuse import PrefixReuse
from headflow.method import cost, crossfit, experiment, rankings


def test_folds_are_disjoint_cover_every_image_and_stratify_classes():
    keys = [f"img{i}" for i in range(23)]
    classes = [f"c{i % 4}" for i in range(23)]
    fs = crossfit.folds(keys, classes, 3, seed=0)
    flat = [k for f in fs for k in f]
    assert sorted(flat) == sorted(keys) and len(flat) == len(set(flat))
    for c in set(classes):
        counts = [sum(classes[keys.index(k)] == c for k in f) for f in fs]
        assert max(counts) - min(counts) <= 1


def test_build_ranking_normalises_logit_scores_and_skips_non_positive_effects():
    scores = {"a": np.array([[10.0, 0.0]]), "b": np.array([[0.0, 1.0]]), "c": np.array([[0.0, 99.0]])}
    runs = {"a": {"y_clean": 10.0, "y_none": 0.0}, "b": {"y_clean": 1.0, "y_none": 0.5},
            "c": {"y_clean": 0.0, "y_none": 1.0}}
    classes = {"a": "x", "b": "x", "c": "x"}
    # normalised: a -> [1, 0], b -> [0, 2]; c left out (effect -1); mean [0.5, 1] -> head 1 first
    assert crossfit.build_ranking(scores, runs, classes, ["a", "b", "c"], "attribution").tolist() == [1, 0]
    # attention weights are not logits: no division -> mean [3.33, 33.3] over all three
    assert crossfit.build_ranking(scores, runs, classes, ["a", "b"], "attention_weight").tolist() == [0, 1]


def _task(model, processor):
    from PIL import Image

    from headflow.images import coco

    ex = coco.load_set(coco.resolve_set("fashionscenes/eval"))[0]
    words = coco.class_names(coco.resolve_set("fashionscenes/eval"))
    t = experiment.prepare(processor, [ex], words, "What is the main object in the image? Answer in one word.")[0]
    assert isinstance(ex.load_image(), Image.Image)
    return t


def test_pass_counter_counts_full_suffix_and_gradient_passes(tiny_llava):
    model, processor = tiny_llava
    iv.install(model, "sdpa")
    t = _task(model, processor)
    with cost.count(model) as n:
        rankings.attention_weight(model, t, "final")
    assert n.as_dict() == {"full_passes": 1, "suffix_passes": 0, "gradient_passes": 0}
    keep = torch.ones(7, 2, 4, dtype=torch.bool)
    with cost.count(model) as n:
        PrefixReuse(model, t.inputs, iv.Baseline("zero")).final_logits(keep, batch_size=3)
    assert n.as_dict() == {"full_passes": 1, "suffix_passes": 7, "gradient_passes": 0}
    with cost.count(model) as n:
        rankings.attribution_patching(model, t, iv.Baseline("zero"))
    assert n.as_dict() == {"full_passes": 1, "suffix_passes": 0, "gradient_passes": 1}


# ------------------------------------------------------------------------------------ adaptive k (issue 31)
class _Task:
    def __init__(self, key, class_name):
        self.key, self.class_name = key, class_name


class _Study:
    """What crossfit.run reads of a study, for model-free runs: tasks, the head grid."""

    def __init__(self, n_images, n_classes, n_layers, n_heads):
        self.tasks = [_Task(f"img{i}", f"c{i % n_classes}") for i in range(n_images)]
        self.n_layers, self.n_heads = n_layers, n_heads
        self.model = self.baseline = self.target = None


def _synthetic_curves(H, keys, names, seed):
    """Per (image, ranking name): y(top-k kept) and y(top-k ablated) over k = 0..H, with y_none = 0 and
    y_clean = the image effect: non-monotone, noisy, several crossings of 0.8 (a spike between grid
    points), flat random-like curves that cross late, and some images with a non-positive effect."""
    rng = np.random.default_rng(seed)
    k = np.arange(H + 1) / H
    table = {}
    effects = {key: (rng.uniform(0.5, 3.0) if i % 11 else -0.2) for i, key in enumerate(keys)}
    for key in keys:
        for n in names:
            kind = n.split("/")[0]
            if kind == "random":
                f = k + 0.03 * rng.standard_normal(H + 1)  # flat: crosses near 0.8 H
            elif kind == "attention_weight":  # a spike above 0.8 at k = 37 (no grid point), low until late
                f = np.where(np.arange(H + 1) == 37, 0.95, 0.5 * k) + 0.02 * rng.standard_normal(H + 1)
                f[-60:] = np.linspace(0.6, 1.0, 60)
            elif kind == "single_head":  # crosses up, back down, up again (several crossings)
                f = 0.9 * np.sin(np.pi * np.clip(k * 12, 0, 1)) + np.clip(k * 3 - 1, 0, 1)
                f += 0.1 * rng.standard_normal(H + 1)
            elif kind == "attribution_patching":  # a step at a different k per image: bootstrap replicates
                f = (np.arange(H + 1) >= rng.uniform(100, 420)).astype(float)  # cross after the aggregate's grid k
            else:  # saturating, noisy
                f = 1 - np.exp(-k * rng.uniform(20, 80)) + 0.05 * rng.standard_normal(H + 1)
            f[0], f[-1] = 0.0, 1.0
            g = 1 - (1 - k) ** rng.uniform(0.3, 3) + 0.05 * rng.standard_normal(H + 1)
            g[0], g[-1] = 0.0, 1.0
            e = effects[key]
            table[key, n] = (f * e, e - g * e)  # kept: y = faith * effect; ablated: y = clean - compl * effect
    return table, effects


def _patched_run(monkeypatch, st, table, effects, design, **kw):
    seen = []

    def judge_split(st_, task, orders, ks_kept, ks_ablated, batch_size=128):
        seen.append(sum(len(v) for v in ks_kept.values()) + sum(len(v) for v in ks_ablated.values()))
        def y(n, row, ks):  # a ranking refitted on another fold split ("name@r") judges a little differently
            base, _, r = n.partition("@")
            return table[task.key, base][row][list(ks)] * (1 + 0.05 * int(r or 0))
        return {n: (y(n, 0, ks_kept.get(n, [])), y(n, 1, ks_ablated.get(n, []))) for n in orders}

    monkeypatch.setattr(crossfit, "judge_split", judge_split)
    H = st.n_layers * st.n_heads
    rng = np.random.default_rng(1)
    scores = {m: {t.key: rng.standard_normal((st.n_layers, st.n_heads)) for t in st.tasks} for m in crossfit.METHODS}
    runs = {key: {"y_clean": e, "y_none": 0.0} for key, e in effects.items()}
    cf = crossfit.run(st, scores, runs, 2, 0, kw.pop("n_random"), 0, design=design, **kw)
    assert all(v.shape[1] == H + 1 for c in cf["curves"].values() for v in c.values())
    return cf, sum(seen)


def _same_statistics(a, b):
    for metric in ("faithfulness", "completeness"):
        for m, r in a["heldout"][metric].items():
            assert (r["k"], r["ci"]) == (b["heldout"][metric][m]["k"], b["heldout"][metric][m]["ci"]), (metric, m)
        for m, r in a["paired_vs_attribution"][metric].items():
            o = b["paired_vs_attribution"][metric][m]
            assert (r["median_difference"], r["ci"], r["p_holm"]) == (o["median_difference"], o["ci"], o["p_holm"])
        for key in ("class_rankings", "in_sample"):
            assert {m: r["k"] for m, r in a[key][metric].items()} == {m: r["k"] for m, r in b[key][metric].items()}


def test_adaptive_k_equals_every_k_on_synthetic_curves_at_1024_heads(monkeypatch):
    st = _Study(n_images=24, n_classes=4, n_layers=32, n_heads=32)
    names = [m for m in crossfit.METHODS] + [f"{m}/in-sample" for m in crossfit.METHODS] + \
        [f"{m}/class" for m in ("attribution", "single_head", "attribution_patching")] + [f"random/{r}" for r in range(3)]
    table, effects = _synthetic_curves(1024, [t.key for t in st.tasks], names, seed=0)
    kw = {"n_random": 3, "n_boot": 200, "min_images": 2, "threshold": 0.8}
    every, n_every = _patched_run(monkeypatch, st, table, effects, "every", **kw)
    adaptive, n_adaptive = _patched_run(monkeypatch, st, table, effects, "adaptive", **kw)
    a = crossfit.summarise(adaptive, 200, 0, 2)
    b = crossfit.summarise(every, 200, 0, 2)
    _same_statistics(a, b)
    # the spike at k = 37 (no grid point) is the attention-weight ranking's first crossing in both designs
    assert a["heldout"]["faithfulness"]["attention_weight"]["k"] == 37
    assert adaptive["design"]["masks_judged"]["faithfulness"] + adaptive["design"]["masks_judged"]["completeness"] \
        == n_adaptive < n_every == sum(every["design"]["masks_every_k"].values())
    print(f"adaptive / every-k masks at H = 1024: {n_adaptive / n_every:.3f}")
    # repeated fold splits: the fold-dependent rankings judged once per split, their mean read; identical again
    kw2 = {**kw, "n_repeats": 2}
    every2, n2 = _patched_run(monkeypatch, st, table, effects, "every", **kw2)
    adaptive2, _ = _patched_run(monkeypatch, st, table, effects, "adaptive", **kw2)
    _same_statistics(crossfit.summarise(adaptive2, 200, 0, 2), crossfit.summarise(every2, 200, 0, 2))
    assert set(every2["curves"]) == set(every["curves"]) and len(every2["repeat_folds"]) == 2
    assert every2["repeat_folds"][0] != every2["repeat_folds"][1]
    np.testing.assert_allclose(every2["curves"]["attribution"]["faithfulness"],  # the mean of x 1 and x 1.05
                               every["curves"]["attribution"]["faithfulness"] * 1.025)
    np.testing.assert_array_equal(every2["curves"]["random/0"]["faithfulness"], every["curves"]["random/0"]["faithfulness"])
    # only the fold-dependent rankings (5 global, 3 per class) are judged again, at every k, kept and ablated
    assert n2 - n_every == len(st.tasks) * 8 * 2 * 1025
    assert every2["design"]["repeats_share"] == pytest.approx(len(st.tasks) * 8 * 2 * 1025 / n2)
    assert every["design"]["repeats_share"] == 0 and every["design"]["seconds"] > 0
    with pytest.raises(ValueError, match="other summary settings"):
        crossfit.summarise(adaptive, 100, 0, 2)
    # capped at k_max: crossings at or below it exact, later ones censored ("> k_max"), passes within the plan's bound
    from headflow.scale import passes
    capped, n_capped = _patched_run(monkeypatch, st, table, effects, "adaptive", **kw, k_max=300)
    c = crossfit.summarise(capped, 200, 0, 2)
    for metric in ("faithfulness", "completeness"):
        for m, r in b["heldout"][metric].items():
            got = c["heldout"][metric][m]["k"]
            assert got == (r["k"] if r["k"] is not None and r["k"] <= 300 else None), (metric, m)
    assert c["heldout"]["faithfulness"]["attention_weight"]["k"] == 37
    assert c["heldout"]["faithfulness"]["random"]["k"] is None  # crosses near 0.8 x 1024: censored
    assert "> 300" in crossfit.k_table(c, {}).loc["random", "faithfulness k"]
    bound = passes.judge_adaptive(1024, passes.N_ORDERS, 3, 0, 300).suffix_passes * len(st.tasks)
    assert n_capped <= bound < n_adaptive, (n_capped, bound, n_adaptive)
    print(f"capped at k_max = 300: {n_capped / n_every:.3f} of every k (bound {bound / n_every:.3f})")


def test_adaptive_k_equals_every_k_on_the_organism(organism_model, monkeypatch, tmp_path):
    from headflow.method import study

    net, processor = organism_model
    monkeypatch.setattr(study.models, "load", lambda *a, **k: (net, processor))
    monkeypatch.setattr(study, "RUN_DIR", tmp_path / "runs")
    st = study.setup("organism", "fashionscenes/eval", "object", per_class=2, n_reference=10)
    runs = study.attribution_runs(st, 60, 0.5, 0)
    scores, _ = crossfit.method_scores(st, study.fits(runs), runs, 60)
    kw = dict(n_boot=200, min_images=2, threshold=0.8)
    passes = {}
    cfs = {}
    for design in ("every", "adaptive"):
        with cost.count(st.model) as n:
            cfs[design] = crossfit.run(st, scores, runs, 2, 0, 2, 0, design=design, **kw)
        passes[design] = n.as_dict()["suffix_passes"]
    _same_statistics(crossfit.summarise(cfs["adaptive"], 200, 0, 2), crossfit.summarise(cfs["every"], 200, 0, 2))
    masks = {d: sum(cf["design"]["masks_judged"].values()) for d, cf in cfs.items()}
    # each distinct mask is sent once (crossfit.judge_split), so the passes are at most the entries judged
    assert passes["every"] <= masks["every"] and passes["adaptive"] <= masks["adaptive"] < masks["every"]
    assert 0 < passes["adaptive"] < passes["every"]
    from headflow.scale.passes import N_ORDERS, judge_adaptive
    H = st.n_layers * st.n_heads
    assert passes["adaptive"] <= judge_adaptive(H, N_ORDERS, 2, 0, H).suffix_passes * len(st.tasks)  # the plan's bound
    print(f"organism (H = 64): adaptive {passes['adaptive']} / every-k {passes['every']} suffix passes "
          f"= {passes['adaptive'] / passes['every']:.3f}")


def test_judge_split_judges_each_distinct_mask_once_and_gives_each_ranking_its_own_values(tiny_llava):
    """Two rankings that agree, one that does not, and the ends every ranking shares: each distinct
    top-k mask is one suffix pass, and every ranking's y equals its own masks judged alone (up to float
    rounding: a batch of other masks may round differently)."""
    from types import SimpleNamespace

    from headflow.method import metrics

    model, processor = tiny_llava
    iv.install(model, "sdpa")
    t = _task(model, processor)
    L, Hn = iv.text_layers_and_heads(model)
    st = SimpleNamespace(model=model, baseline=iv.Baseline("zero"), target="logit", n_layers=L, n_heads=Hn)
    H = L * Hn
    a = np.random.default_rng(0).permutation(H)
    orders = {"a": a, "a_again": a.copy(), "b": a[::-1].copy()}
    ks = {n: list(range(H + 1)) for n in orders}
    with cost.count(model) as n:
        got = crossfit.judge_split(st, t, orders, ks, ks)
    # per ranking 2 x (H + 1) masks: "a_again" adds none, "b" (the reverse order) shares some with "a"
    # (k = 0 and all heads; b's top-k kept alone is a's top-(H - k) ablated); the count from the masks themselves
    masks = torch.cat([torch.cat(metrics.topk_masks(orders[n], ks[n], L, Hn)) for n in orders])
    distinct = len(torch.unique(masks.reshape(len(masks), -1), dim=0))
    assert n.as_dict()["suffix_passes"] == distinct < 2 * 2 * (H + 1)
    for name, order in orders.items():
        only, _ = metrics.topk_masks(order, ks[name], L, Hn)
        _, abl = metrics.topk_masks(order, ks[name], L, Hn)
        np.testing.assert_allclose(got[name][0], experiment.masks_y(model, t, st.baseline, only, "logit"), rtol=1e-5)
        np.testing.assert_allclose(got[name][1], experiment.masks_y(model, t, st.baseline, abl, "logit"), rtol=1e-5)
