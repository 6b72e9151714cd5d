"""The machinery of chapters 6-9: knockout plans, position-level group ablations, the semantic
comparisons and the sensitivity statistics, each against an obvious reference or a planted truth."""
import numpy as np
import pytest
import torch

from headflow.findings import flow, positions, semantics, sensitivity, verdicts
from headflow.images import coco
from headflow.mechanism import interventions as iv
from headflow.method import experiment, study
from headflow.task.prompt import question_text


@pytest.fixture(scope="module")
def tiny_study(tiny_llava):
    model, processor = tiny_llava
    iv.install(model, "sdpa")
    f = coco.resolve_set("fashionscenes/eval")
    words = coco.class_names(f)
    q = question_text("object")
    tasks = experiment.prepare(processor, coco.load_set(f)[:3], words, q)
    n_layers, n_heads = iv.text_layers_and_heads(model)
    return study.Study("tiny", model, processor, words, q, tasks, 3, 1.0, iv.Baseline("zero"), "zero", "logit",
                       n_layers, n_heads, {"image_set": "fashionscenes/eval"})


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
    """object + background = the head set ablated on the whole image; each row equals a full
    forward with the same slots."""
    st = tiny_study
    heads = np.array([0, 3, 5])
    g = positions.group_effects(st, st.tasks[:1], heads, 1, seed=0)
    t = st.tasks[0]
    keep = positions.head_keep(heads, st.n_layers, st.n_heads)
    whole = experiment.masks_y(st.model, t, st.baseline, keep[None])[0]
    y_clean = experiment.masks_y(st.model, t, st.baseline, torch.ones(1, st.n_layers, st.n_heads, dtype=torch.bool))[0]
    assert abs(g["lost"][0, 2] - (y_clean - whole)) < 1e-4
    obj = positions.object_slots(st, t)["object"]
    img = iv.image_mask(st.model, t.inputs["input_ids"])
    with torch.inference_mode(), iv.intervene(st.model, ablation=iv.HeadAblation(keep, img, st.baseline,
                                                                                  slots=torch.as_tensor(obj)[None])):
        y_obj = float(st.model(**t.inputs).logits[0, -1, t.target_id])
    assert abs(g["lost"][0, 0] - (y_clean - y_obj)) < 1e-4
    assert 0 < g["n_object"][0] < g["n_image"][0]


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
    p = semantics.probe(V, cls, item)
    assert p["ci"][0] > p["chance"] and p["chance"] == 0.25


def test_second_order_fit_finds_a_planted_interaction():
    rng = np.random.default_rng(0)
    keep = rng.random((400, 2, 4)) > 0.5
    a = (~keep).reshape(400, -1).astype(float)
    y_lin = 5 - a[:, 0] - 2 * a[:, 3] + 0.05 * rng.normal(size=400)
    runs = {"lin": {"keep": keep, "y": y_lin}, "int": {"keep": keep, "y": y_lin + 3 * a[:, 0] * a[:, 3]}}
    gain = sensitivity.second_order_gain(runs, ["lin", "int"], [0, 3, 5])
    assert abs(gain[0]) < 0.02 and gain[1] > 0.2


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
                     "appearance": {"accuracy": 0.2, "ci": [0.1, 0.3], "chance": 0.17}},
           "transfer": {"same": 0.8, "other": 0.5, "difference_ci": [0.1, 0.4]}}
    assert verdicts.semantics(sem)["verdict"] == verdicts.REPRODUCED
    sem["transfer"]["difference_ci"] = [-0.1, 0.4]
    assert verdicts.semantics(sem)["verdict"] == verdicts.PARTLY

    def ko(answers):
        tim = {q: {g: {"answer": a, "difference": 1, "question_onset": 0, "image_onset": 1} for g in ("role", "final")}
               for q, a in answers.items()}
        return {"model": "m", "onset_share": 0.1, "timing": tim,
                "role_without_final": {q: v["role"] for q, v in tim.items()}, "logit_diff": {"timing": tim}}
    assert verdicts.knockout(ko({"object": "undetermined", "color": "yes", "position": "yes"}))["verdict"] == "reproduced"
    assert verdicts.knockout(ko({"color": "yes", "position": "undetermined"}))["verdict"] == "partly"
    assert verdicts.knockout(ko({"color": "yes", "position": "no (later)"}))["verdict"] == "not reproduced"
    tok = {"model": "m", "k": 5, "object_effect": {"value": 0.3, "ci": [0.2, 0.4]},
           "background_effect": {"value": 0.04, "ci": [0.01, 0.07]}, "random_effect": {"value": 0.1},
           "object_attribution_share": {"value": 0.5}, "object_area_share": 0.3}
    assert verdicts.tokens(tok)["verdict"] == verdicts.PARTLY


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
