"""The machinery of chapters 6-9: knockout plans, position-level group ablations, the semantic
comparisons and the sensitivity statistics, each against an obvious reference or a planted truth."""
import dataclasses

import numpy as np
import pytest
import torch

from headflow.findings import flow, positions, semantics, sensitivity, verdicts
from headflow.images import coco
from headflow.mechanism import interventions as iv
from headflow.method import experiment, study
from headflow.task.prompt import question_text


def _study(name, model, processor, question, n):
    """A study of the first ``n`` evaluation-set images under the zero baseline."""
    iv.install(model, "sdpa")
    f = coco.resolve_set("fashionscenes/eval")
    words = coco.class_names(f)
    q = question_text(question)
    tasks = experiment.prepare(processor, coco.load_set(f)[:n], words, q)
    n_layers, n_heads = iv.text_layers_and_heads(model)
    return study.Study(name, model, processor, words, q, tasks, n, 1.0, iv.Baseline("zero"), "zero", "logit",
                       n_layers, n_heads, {"image_set": "fashionscenes/eval"})


@pytest.fixture(scope="module")
def tiny_study(tiny_llava):
    return _study("tiny", *tiny_llava, "object", 3)


def test_pick_per_class_offset():
    class E:
        def __init__(self, c, i):
            self.class_name, self.image_id = c, i
    exs = [E(c, i) for i, c in enumerate("aabbbaab")]
    assert [e.image_id for e in study.pick_per_class(exs, 1, offset=1)] == [1, 3]
    assert [e.image_id for e in study.pick_per_class(exs, 2, offset=2)] == [4, 5, 6, 7]


def test_knockout_plan_equals_one_knockout_per_row(tiny_study):
    """Every row of a batched plan equals the same knockout run alone (heads given per layer), for the
    logit and the logit difference; role-only is role without the final token."""
    st = tiny_study
    t = st.tasks[0]
    plan = flow.chapter_plan(st.n_layers, {"all heads": None, "some": np.array([1, 6])}, window=1,
                             sensitivity_window=2)
    assert len(plan.select("image->final", 1, "some")) == st.n_layers and not plan.select("image->role", 1, "some")
    assert len(plan.select("question->role-only", 2)) == st.n_layers - 1
    got = flow.run_image(st, t, plan)
    assert got["suffix_path"]  # every row a suffix pass over one prefix; checked against full forwards below
    g = flow.group_masks(st, t)
    assert g["role-only"].any() and not (g["role-only"] & g["final"]).any()
    assert ((g["role-only"] | g["final"]) == g["role"]).all()
    ids = [t.target_id] + list(t.other_ids)
    for r, (f, layers, s) in enumerate(plan.rows):
        src, dst = flow.FLOWS[f]
        heads = {layer: None if s == "all heads" else [h % st.n_heads for h in (1, 6) if h // st.n_heads == layer]
                 for layer in layers}
        kos = [iv.Knockout(g[dst], g[src], [layer], hs) for layer, hs in heads.items() if hs != []]
        with torch.inference_mode(), iv.intervene(st.model, knockouts=kos):
            logits = st.model(**t.inputs).logits[0, -1, ids].double()
        assert abs(got["y"][r] - float(logits[0])) < 1e-4, (f, layers, s)
        assert abs(got["y_diff"][r] - float(logits[0] - logits[1:].max())) < 1e-4, (f, layers, s)
    assert (np.abs(got["y"] - got["y_clean"]) > 1e-4).sum() >= 6  # the knockouts act
    with pytest.raises(ValueError, match="window size"):
        flow.windows(st.n_layers, st.n_layers + 1)


def test_chapter_7_rows_on_the_suffix_path_equal_full_forwards_on_the_organism(organism_model, monkeypatch):
    st = _study("organism", *organism_model, "color", 2)
    n_layers, tasks = st.n_layers, st.tasks
    plan = flow.chapter_plan(n_layers, {"all heads": None, "top": np.array([3, 9, 17])}, window=1, sensitivity_window=3)
    fast = [flow.run_image(st, t, plan) for t in tasks]
    monkeypatch.setattr(flow, "suffix_path", lambda *a, **k: None)  # force full forwards
    full = [flow.run_image(st, t, plan) for t in tasks]
    for a, b in zip(fast, full):
        assert a["suffix_path"] and not b["suffix_path"]
        for key in ("y", "y_diff", "y_clean", "y_none", "y_clean_diff", "y_none_diff"):
            assert np.abs(np.asarray(a[key]) - np.asarray(b[key])).max() < 1e-4, key
        assert np.array_equal(a["correct"], b["correct"])


def test_onset_and_timing_statistics():
    assert flow.onset(np.array([0.05, 0.3, 0.5]), np.array([0.0, 0.08, 0.2]), 0.1) == 2  # by the interval's lower end
    assert flow.onset(np.array([0.05, 0.3]), None, 0.1) == 1 and flow.onset(np.array([0.05, 0.02]), None, 0.1) is None
    draws = np.array([[0.0, 0.2, 0.3], [0.0, 0.0, 0.05]])
    assert np.array_equal(flow.onset_draws(draws, 0.1), [1.0, np.nan], equal_nan=True)
    q = {"onset": 0, "draws": np.zeros(200)}
    i = {"onset": 2, "draws": np.full(200, 2.0)}
    t = flow.timing(q, i)
    assert t["difference"] == 2 and t["p"] == 0.0 and t["ci"] == [2.0, 2.0]
    none = flow.timing(q, {"onset": None, "draws": np.full(200, np.nan)})
    assert none["p"] is None and none["difference"] is None
    patchy = flow.timing(q, {"onset": 2, "draws": np.where(np.arange(200) < 20, np.nan, 2.0)})
    assert patchy["p"] is None and patchy["difference"] == 2  # 10% of the draws without an onset
    later = flow.timing(i, q)
    noisy = flow.timing(q, {"onset": 1, "draws": np.where(np.arange(200) < 90, 0.0, 1.0)})
    judged = flow.judge({"a": t, "b": later, "c": noisy, "d": none})
    assert judged["a"]["answer"] == "yes" and judged["b"]["answer"] == "no (later)"
    assert judged["c"]["answer"] == "undetermined" and judged["d"]["answer"] == "undetermined"
    assert judged["d"]["p_holm"] is None and judged["c"]["p_holm"] >= judged["c"]["p"]


def test_group_effects_rows_are_position_ablations(tiny_study):
    """The groups partition the patch grid; "all" = the head set ablated on the whole image; each row
    equals a full forward with the same slots; every control has its group's size and comes from its pool."""
    st = tiny_study
    heads = np.array([0, 3, 5])
    t = st.tasks[0]
    g = positions.group_effects(st, [t], {"some": heads, "all heads": None}, 2, seed=0)
    names = g["names"]
    slots = positions.object_slots(st, t)
    parts = [slots[n] for n in positions.GROUPS]
    assert (sum(p.astype(int) for p in parts) == slots["patches"]).all() and slots["main object"].any()
    keep = positions.head_keep(heads, st.n_layers, st.n_heads)
    whole = experiment.masks_y(st.model, t, st.baseline, keep[None])[0]
    y_clean = experiment.masks_y(st.model, t, st.baseline, torch.ones(1, st.n_layers, st.n_heads, dtype=torch.bool))[0]
    assert abs(g["lost"]["some"][0, names.index("all")] - (y_clean - whole)) < 1e-4
    assert abs(g["lost"]["all heads"][0, names.index("all")] - g["effects"][0]) < 1e-4
    img = iv.image_mask(st.model, t.inputs["input_ids"])
    for group in ("main object", "background"):
        with torch.inference_mode(), iv.intervene(st.model, ablation=iv.HeadAblation(
                keep, img, st.baseline, slots=torch.as_tensor(slots[group])[None])):
            y = float(st.model(**t.inputs).logits[0, -1, t.target_id])
        assert abs(g["lost"]["some"][0, names.index(group)] - (y_clean - y)) < 1e-4, group
    _, rows = positions.group_rows(slots, 3, np.random.default_rng(0))
    for i, n in enumerate(positions.group_rows(slots, 3, np.random.default_rng(0))[0]):
        if n.startswith("control "):
            group = n.removeprefix("control ").rsplit(" ", 1)[0]
            pool = slots["patches"] if positions.CONTROL_POOL[group] == "grid" else slots[positions.CONTROL_POOL[group]]
            assert rows[i].sum() == min(slots[group].sum(), pool.sum()) and not (rows[i] & ~pool).any(), n
    summ = positions.summarise_groups(g, 20, 0, min_images=1)
    assert summ["all heads"]["all"]["all"]["value"] == pytest.approx(1.0)


def test_object_share_rule():
    attr = {"a": np.array([1.0, 1.0, 2.0, -5.0]), "b": np.array([0.0, 3.0, 1.0, 0.0]), "c": -np.ones(4)}
    obj = {k: np.array([True, False, False, False]) for k in attr}
    res = positions.object_share(attr, obj, {"a": "x", "b": "x", "c": "x"})
    assert res["share"] == pytest.approx((1 + 0) / (4 + 4)) and res["area"] == 0.25 and res["images_left_out"] == 1


def _planted_vectors(seed=0, signal=1.0):
    """Vectors = class pattern * signal + item noise + appearance pattern (weaker)."""
    rng = np.random.default_rng(seed)
    H, classes, apps = 40, 4, 3
    cp, ap = rng.normal(size=(classes, H)), rng.normal(size=(apps, H))
    V, cls, item, app = [], [], [], []
    for c in range(classes):
        for i in range(3):
            noise = rng.normal(size=H)
            for a in range(apps):
                V.append(signal * cp[c] + 0.3 * ap[a] + noise + 0.2 * rng.normal(size=H))
                cls.append(c)
                item.append(c * 10 + i)
                app.append(a)
    return np.array(V), np.array(cls), np.array(item), np.array(app)


def test_semantic_pairs_never_pair_an_item_with_itself():
    V, cls, item, app = _planted_vectors()
    kinds = semantics.pair_kinds(cls, item, app)
    i, j = np.nonzero(kinds["same class"])
    assert len(i) and (item[i] != item[j]).all() and (app[i] != app[j]).all() and (cls[i] == cls[j]).all()
    i, j = np.nonzero(kinds["same appearance"])
    assert len(i) and (cls[i] != cls[j]).all() and (app[i] == app[j]).all()


def test_permutation_test_and_probe_find_a_planted_class_signal_and_not_a_missing_one():
    V, cls, item, app = _planted_vectors(signal=2.0)
    strong = semantics.permutation_test(V, cls, item, app, 300, 0)
    assert strong["p"] < 0.01 and strong["cohens_d"] > 0.5
    none = semantics.permutation_test(*_planted_vectors(signal=0.0), 300, 0)
    assert none["p"] > 0.05
    p = semantics.probe(V, cls, item, strata=cls, n_boot=200)
    assert p["interval"] == "item cluster bootstrap" and p["ci"][0] <= p["accuracy"] <= p["ci"][1]
    d = semantics.cohens_d_items(V, cls, item, app)
    assert d["n_items"] == len(np.unique(item)) and d["d"] > 0.5
    assert p["ci"][0] > p["chance"] and p["chance"] == 0.25


def test_second_order_fit_finds_a_planted_interaction():
    rng = np.random.default_rng(0)
    keep = rng.random((400, 2, 4)) > 0.5
    a = (~keep).reshape(400, -1).astype(float)
    y_lin = 5 - a[:, 0] - 2 * a[:, 3] + 0.05 * rng.normal(size=400)
    runs = {"lin": {"keep": keep, "y": y_lin}, "int": {"keep": keep, "y": y_lin + 3 * a[:, 0] * a[:, 3]}}
    gain = sensitivity.second_order_gain(runs, ["lin", "int"], [0, 3, 5])
    assert abs(gain[0]) < 0.02 and gain[1] > 0.2


def test_share_of_unexplained_variance_removed_is_a_ratio_of_sums_with_a_rule_at_zero():
    rng = np.random.default_rng(0)
    keep = rng.random((400, 2, 4)) > 0.5
    a = (~keep).reshape(400, -1).astype(float)
    y_lin = 5 - a[:, 0] - 2 * a[:, 3] + 0.3 * rng.normal(size=400)
    runs = {f"i{j}": {"keep": keep, "y": y_lin + (3 * a[:, 0] * a[:, 3] if j % 2 else 0)} for j in range(8)}
    sse = sensitivity.heldout_sse(runs, list(runs), [0, 3, 5])
    got = sensitivity.share_removed(sse, ["a", "b"] * 4, 200, 0)
    want = (sse[:, 0] - sse[:, 1]).sum() / sse[:, 0].sum()
    assert abs(got["share"] - want) < 1e-12 and got["ci"][0] <= got["share"] <= got["ci"][1]
    assert 0.3 < got["share"] < 1  # half the images carry a planted interaction
    only_lin = sensitivity.share_removed(sse[::2], ["a", "b", "a", "b"], 200, 0)
    assert only_lin["ci"][1] < 0.05
    assert sensitivity.share_removed(np.zeros((4, 2)), ["a", "b", "a", "b"], 50, 0)["share"] == 0.0


def test_settings_are_read_against_the_mask_seed_noise_floor():
    base = {"topk_overlap": {"8": 0.0}, "topk_overlap_ci": {"8": [0, 0]}}
    rows = [{"factor": "reference", "value": "", **base}, {"factor": "seed", "value": "1", **base},
            {"factor": "rate", "value": "0.9", **base}, {"factor": "scope", "value": "all", **base}]
    rows[1]["topk_overlap"] = {"8": 0.9}
    rows[2]["topk_overlap"] = {"8": 0.3}
    rows[3]["topk_overlap"] = {"8": 0.85}
    rng = np.random.default_rng(0)
    draws = {("reference", ""): {8: np.ones(500)}, ("seed", "1"): {8: 0.9 + 0.05 * rng.normal(size=500)},
             ("rate", "0.9"): {8: 0.3 + 0.05 * rng.normal(size=500)},
             ("scope", "all"): {8: 0.88 + 0.05 * rng.normal(size=500)}}
    sensitivity.against_noise(rows, draws, [8])
    assert rows[2]["against_noise"]["8"]["moves"] and not rows[3]["against_noise"]["8"]["moves"]
    assert "against_noise" not in rows[0] and "against_noise" not in rows[1]
    res = {"model": "m", "k": 8, "rows": rows, "images_per_class_min": 5,
           "interactions": {"rule_relative_to_unexplained": {"0.1": {"share": 0.1, "ci": [0.05, 0.2]},
                                                             "0.5": {"share": 0.02, "ci": [0.0, 0.05]}},
                            "pair_r2_gap": {"value": 0.5, "ci": [0.4, 0.6]},
                            "pair_r2_single": {"value": 0.99}, "pair_r2_attribution": {"value": 0.49}}}
    v = verdicts.sensitivity(res)["verdict"]
    assert v.startswith("sensitive to rate") and "do not predict ablations near the clean model" in v
    res["interactions"]["pair_r2_gap"]["ci"] = [0.0, 0.1]
    assert verdicts.sensitivity(res)["verdict"].endswith("linear model adequate")
    res["interactions"]["rule_relative_to_unexplained"]["0.1"]["ci"] = [0.2, 0.3]
    assert verdicts.sensitivity(res)["verdict"].endswith("; interactions matter")


def test_sensitivity_settings_change_one_factor_each():
    rows = sensitivity.settings()
    assert rows[0]["factor"] == "reference"
    for r in rows[1:]:
        changed = [f for f in sensitivity.REFERENCE if r[f] != sensitivity.REFERENCE[f]]
        assert changed == [r["factor"]]
    with pytest.raises(ValueError, match="unknown sensitivity factors"):
        sensitivity.settings({"temperature": [1]})
    assert sensitivity.overlap(np.arange(10.0), np.arange(10.0)[::-1], 3) == 0.0


def test_new_chapter_rules():
    sem = {"model": "m", "n_images": 10, "n_wrong": 2,
           "similarity": {"same_class": 0.8, "same_appearance": 0.5, "permutation_p": 0.001, "difference_ci": [0.1, 0.4],
                          "noise_ceiling": 0.9},
           "probe": {"class": {"accuracy": 0.6, "ci": [0.5, 0.7], "chance": 0.1},
                     "appearance": {"accuracy": 0.25, "ci": [0.18, 0.3], "chance": 0.17}},
           "transfer": {"same": 0.8, "other": 0.5, "difference_ci": [0.1, 0.4]},
           "wrong_check": {"n": 12, "own_class_cosine": 0.2, "other_class_cosine": 0.18}}
    sem["class_agnostic"] = {"same_class_similarity": 0.7, "same_appearance_similarity": 0.5, "permutation_p": 0.01,
                             "difference_ci": [0.05, 0.3], "probe": sem["probe"], "transfer": dict(sem["transfer"])}
    assert verdicts.semantics(sem)["verdict"] == verdicts.REPRODUCED
    sem["transfer"]["difference_ci"] = [-0.1, 0.4]
    assert verdicts.semantics(sem)["verdict"] == verdicts.PARTLY
    # the wrong-answer check fires (class structure on images the organism got wrong): the class word's target
    # is not read, the class-agnostic one decides
    sem["wrong_check"] = {"n": 90, "own_class_cosine": 0.64, "other_class_cosine": 0.14}  # the committed chapter 6
    assert verdicts.semantics(sem)["verdict"] == verdicts.REPRODUCED
    # a below-chance appearance probe cannot decide the probe comparison (the committed 16.3% vs 21.2% chance)
    low = {"accuracy": 0.163, "ci": [0.086, 0.241], "chance": 0.2125}
    assert verdicts.probe_outcome(sem["probe"]["class"], low) == "undetermined"
    assert verdicts.semantics({**sem, "class_agnostic": {**sem["class_agnostic"], "probe": {
        "class": sem["probe"]["class"], "appearance": low}}})["verdict"] == verdicts.PARTLY
    sem["transfer"]["difference_ci"] = [0.1, 0.4]
    # every test passes under the class word's logit, none under the class-agnostic target: the read-out
    sem["class_agnostic"].update(permutation_p=0.4, difference_ci=[-0.1, 0.1],
                                 probe={"class": {"accuracy": 0.1, "ci": [0.05, 0.2], "chance": 0.1},
                                        "appearance": sem["probe"]["appearance"]},
                                 transfer={"same": 0.5, "other": 0.5, "difference_ci": [-0.1, 0.1]})
    assert verdicts.semantics(sem)["verdict"] == verdicts.NOT

    def ko(answers):
        tim = {q: {g: {"answer": a, "difference": 1, "question_onset": 0, "image_onset": 1} for g in ("role", "final")}
               for q, a in answers.items()}
        return {"model": "m", "onset_share": 0.1, "timing": tim,
                "role_without_final": {q: v["role"] for q, v in tim.items()}, "logit_diff": {"timing": tim}}
    assert verdicts.knockout(ko({"object": "undetermined", "color": "yes", "position": "yes"}))["verdict"] == "reproduced"
    assert verdicts.knockout(ko({"color": "yes", "position": "undetermined"}))["verdict"] == "partly"
    assert verdicts.knockout(ko({"color": "yes", "position": "no (later)"}))["verdict"] == "not reproduced"
    nothing = ko({q: "undetermined" for q in ("object", "color", "position")})  # the committed chapter 7's case
    assert verdicts.knockout(nothing)["verdict"] == verdicts.INCONCLUSIVE
    e = lambda v, lo, hi: {"value": v, "ci": [lo, hi]}  # noqa: E731
    heads = {"object_effect": e(0.3, 0.2, 0.4), "background_effect": e(0.04, 0.01, 0.07),
             "other_objects_effect": e(0.1, 0.05, 0.15), "object_random_effect": e(0.1, 0.05, 0.15),
             "background_random_effect": e(0.5, 0.4, 0.6), "object_minus_random": e(0.2, 0.1, 0.3),
             "background_minus_random": e(0.1, 0.02, 0.2),
             "object_per_token": e(0.01, 0, 0.02), "background_per_token": e(0.001, 0, 0.002),
             "n_images": 20, "classes": ["a", "b"]}
    tok = {"model": "m", "k": 5, "all_heads": heads, "top_heads": heads}
    assert verdicts.tokens(tok)["verdict"] == verdicts.PARTLY
    tok["all_heads"] = {**heads, "background_effect": e(0.2, 0.1, 0.3)}
    assert verdicts.tokens(tok)["verdict"] == verdicts.REPRODUCED
    tok["all_heads"]["object_minus_random"] = e(0.05, -0.01, 0.1)  # no more than as many background tokens
    assert verdicts.tokens(tok)["verdict"] == verdicts.PARTLY
    # the background judged against its size-matched control too: the committed chapter 8's case (it loses
    # 0.41 of the effect, but its control 0.085 [-0.04, 0.26] less is not above zero) does not count
    tok["all_heads"] = {**heads, "object_minus_random": e(0.05, -0.01, 0.1), "background_effect": e(0.41, 0.3, 0.5),
                        "background_minus_random": e(0.085, -0.04, 0.26)}
    assert verdicts.tokens(tok)["verdict"] == verdicts.INCONCLUSIVE
    tok["all_heads"]["object_effect"] = e(0.03, 0.01, 0.045)  # at most 5% by its upper end: it does not
    assert verdicts.tokens(tok)["verdict"] == verdicts.NOT  # one part ruled out, the other undecided
    tok["all_heads"]["background_minus_random"] = e(-0.1, -0.2, -0.01)
    assert verdicts.tokens(tok)["verdict"] == verdicts.NOT


def test_local_mathjax_is_copied_only_when_a_page_uses_math(tmp_path):
    from headflow.book import site

    (tmp_path / "a.html").write_text("<p>no math</p>")
    assert site.local_mathjax(tmp_path) == [] and not (tmp_path / "_static").exists()
    (tmp_path / "b.html").write_text('<script src="_static/mathjax/MathJax.js?config=TeX-AMS_CHTML"></script>')
    assert [p.name for p in site.local_mathjax(tmp_path)] == ["b.html"]
    assert (tmp_path / "_static" / "mathjax" / "MathJax.js").exists()


def test_duplicate_inline_scripts_are_dropped():
    from sphinx.builders.html._assets import _JavaScript

    from headflow.book import sphinx_fixes

    ctx = {"script_files": [_JavaScript("a.js"), _JavaScript(None, body="const X = 1"), _JavaScript("", body="const X = 1"),
                            _JavaScript(None, body="const Y = 1"), _JavaScript("a.js")]}
    sphinx_fixes.drop_duplicate_scripts(None, "p", "page.html", ctx, None)
    assert [(s.filename, s.attributes.get("body")) for s in ctx["script_files"]] == [
        ("a.js", None), (None, "const X = 1"), (None, "const Y = 1")]


def test_answer_kl_target_is_zero_when_clean_and_matches_full_forwards(tiny_study):
    """The class-agnostic target: -KL(p_clean || p) over the answer words, on the fast path, equals the
    same quantity from full forwards with the same ablation; 0 for the clean model, negative without
    the image."""
    st = tiny_study
    t = dataclasses.replace(st.tasks[0], clean_logp=None)
    keep = torch.ones(3, st.n_layers, st.n_heads, dtype=torch.bool)
    keep[1] = False
    keep[2, 0, :2] = False
    y = experiment.masks_y(st.model, t, st.baseline, keep, "answer-kl")
    assert abs(y[0]) < 1e-6 and y[1] < 0 and t.clean_logp is not None
    ids = [t.target_id] + list(t.other_ids)
    img = iv.image_mask(st.model, t.inputs["input_ids"])
    ref = []
    for k in keep:
        with torch.inference_mode(), iv.intervene(st.model, ablation=iv.HeadAblation(k[None], img, st.baseline)):
            ref.append(st.model(**t.inputs).logits[0, -1, ids].double().log_softmax(-1))
    p = ref[0].exp()
    want = [-float((p * (ref[0] - r)).sum()) for r in ref]
    assert np.allclose(y, want, atol=1e-4), (y, want)
    with pytest.raises(ValueError, match="clean answer distribution"):
        experiment.target_of(dataclasses.replace(t, clean_logp=None), "answer-kl")


def test_item_draws_resample_whole_items_within_classes():
    V, cls, item, app = _planted_vectors()
    for idx, new_item in semantics.item_draws(item, cls, 20, 0):
        assert len(idx) == len(item)  # every item has its 3 renditions, and classes keep their item counts
        for lab in np.unique(new_item):
            rows = idx[new_item == lab]
            assert len(set(item[rows])) == 1 and sorted(app[rows]) == [0, 1, 2]
        assert sorted(np.unique(cls[idx], return_counts=True)[1]) == sorted(np.unique(cls, return_counts=True)[1])


def test_limits_pick_comparisons_by_rule_and_count_wrong_renditions(tmp_path):
    import json

    cmp = {"z first in order": {"difference": 0.36, "ci": [0.1, 0.4], "counts": False},
           "b": {"difference": -0.5, "ci": [-0.6, -0.4], "counts": True},
           "a": {"difference": 0.2, "ci": [0.1, 0.3], "counts": True}}
    (tmp_path / "where_heads.json").write_text(json.dumps({"comparisons": cmp}))
    (tmp_path / "semantics.json").write_text(json.dumps({"n_wrong": 5, "n_images": 10,
                                                         "wrong_by_appearance": {"sketch": 1, "color": 4, "scale": 0}}))
    lines = sensitivity.limits(tmp_path)
    where = next(x for x in lines if x.startswith("Where the heads sit"))
    assert "z first" not in where and where.index("for b") < where.index("for a")
    assert "(color 4, sketch 1)" in next(x for x in lines if x.startswith("Appearance"))
    for c in cmp.values():
        c["counts"] = False
    (tmp_path / "where_heads.json").write_text(json.dumps({"comparisons": cmp}))
    assert "none of chapter 5's 3 comparisons" in " ".join(sensitivity.limits(tmp_path))


def test_sensitivity_settings_share_passes_and_give_what_their_own_runs_give(tiny_study, monkeypatch, tmp_path):
    """The reference, the logit-difference setting (the reference's passes, read for another target)
    and the half-masks setting (the reference's first masks) come from one run, and each gives exactly
    what its own run alone gives (fresh stores for each way; the half-masks setting up to float rounding)."""
    ref = {**sensitivity.REFERENCE, "baseline": "zero"}
    sets = [{"factor": "reference", "value": "", **ref},
            {"factor": "target", "value": "logit-diff", **ref, "target": "logit-diff"},
            {"factor": "masks", "value": "half", **ref, "masks": "half"}]
    lm = tiny_study.model.model.language_model
    calls = []
    hook = lm.register_forward_pre_hook(lambda m, a, kw: calls.append(1), with_kwargs=True)
    try:
        monkeypatch.setattr(study, "RUN_DIR", tmp_path / "shared")
        shared = sensitivity.run_settings(tiny_study, sets, 20, show=False)
        n_shared, calls[:] = len(calls), []
        alone = {}
        for i, s in enumerate(sets):
            monkeypatch.setattr(study, "RUN_DIR", tmp_path / f"alone{i}")
            alone[(s["factor"], s["value"])] = sensitivity.run_setting(tiny_study, s, 20)
        n_alone = len(calls)
    finally:
        hook.remove()
    assert n_alone == 3 * n_shared > 0  # one prefix and one suffix batch per image, each way
    for key, got in alone.items():
        assert set(got["maps"]) == set(shared[key]["maps"]) and got["left_out"] == shared[key]["left_out"]
        assert got["n_masks"] == shared[key]["n_masks"] == (10 if key == ("masks", "half") else 20)
        same = np.testing.assert_array_equal if key != ("masks", "half") else \
            (lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5))  # other batches may round differently
        same(got["r"], shared[key]["r"])
        for k, v in got["maps"].items():
            same(v, shared[key]["maps"][k])
    a, b, c = (shared[(s["factor"], s["value"])]["r"] for s in sets)
    assert not np.allclose(a, b, equal_nan=True) and not np.allclose(a, c, equal_nan=True)  # three fits
