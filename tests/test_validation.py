"""Planted ground truth: the constructions behave as their definitions say."""
import numpy as np
import pytest
import torch

from headflow.findings import validation
from headflow.mechanism import interventions as iv
from headflow.method import experiment


def test_planted_sets_avoid_the_excluded_heads_and_have_the_sizes():
    lone = np.array([0.3, 0.2, 0.1, 0.0, 0.02, 0.01, 0.004, 0.05, 0.02, 0.03, 0.01, 0.02])
    pool = validation.flow_pool(lone, exclude=[0, 1, 2], floor=0.005)
    assert pool.tolist() == [4, 5, 7, 8, 9, 10, 11]  # head 3 and head 6 carry too little on their own
    sets = validation.draw_planted_sets([2, 5], 3, pool, seed=0)
    assert [s["size"] for s in sets] == [2, 2, 2, 5, 5, 5]
    assert all(set(s["heads"].tolist()) <= set(pool.tolist()) for s in sets)
    with pytest.raises(ValueError, match="the pool holds only 7 heads"):
        validation.draw_planted_sets([8], 1, pool, seed=0)
    assert validation.precision_at(np.array([7, 3, 9, 1]), [3, 9]) == 0.5


def _task(processor):
    from headflow.images import coco

    f = coco.resolve_set("fashionscenes/eval")
    return experiment.prepare(processor, coco.load_set(f)[:1], coco.class_names(f),
                              "What is the main object in the image? Answer in one word.")[0]


def test_planted_flow_is_the_model_with_every_other_head_ablated(tiny_llava):
    model, processor = tiny_llava
    iv.install(model, "sdpa")
    t = _task(processor)
    base = iv.Baseline("zero")
    planted = validation.PlantedFlow(model, base, 2, 4, np.array([1, 6]))
    keep = torch.rand(5, 2, 4) > 0.5
    expected = experiment.masks_y(model, t, base, keep & planted.keep_planted)
    np.testing.assert_allclose(planted.y(t, keep), expected)
    outside = torch.ones(1, 2, 4, dtype=torch.bool)
    outside[0, 0, 1] = outside[0, 1, 2] = False  # ablating the planted heads = ablating everything
    nothing = ~torch.ones(1, 2, 4, dtype=torch.bool)
    np.testing.assert_allclose(planted.y(t, outside), experiment.masks_y(model, t, base, nothing), atol=1e-5)


def test_planted_unit_fires_only_when_neither_head_is_kept_and_leaves_the_original_alone(tiny_llava):
    from headflow.findings import planting

    model, processor = tiny_llava
    iv.install(model, "sdpa")
    t = _task(processor)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    red = planting.plant(model, [t], [(1, 2)])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a copy was edited
    mlp = red.model.model.language_model.layers[0].mlp
    unit = red.construction["units"][0]
    acts = []
    hook = mlp.down_proj.register_forward_pre_hook(lambda m, a: acts.append(a[0][:, -1, unit].clone()))
    keep = torch.ones(4, 2, 4, dtype=torch.bool)
    keep[1, 0, 1] = keep[2, 0, 2] = False  # A ablated; B ablated
    keep[3, 0, [1, 2]] = False  # both
    try:
        experiment.full_logits(red.model, t, red.baseline, red.keep_mask(keep))
    finally:
        hook.remove()
    a = torch.cat(acts)
    assert a[3] > 1.0 and a[:3].abs().max() < 0.01 * a[3]
    with pytest.raises(ValueError, match="distinct heads of layer 0"):
        planting.plant(model, [t], [(1, 1)])
    with pytest.raises(ValueError, match="cannot plant 3 pairs"):
        planting.draw_pairs([0, 1, 2, 3], 3, 0)


def test_redundancy_planted_in_the_organism_is_measured_redundant_and_attribution_finds_it():
    from headflow.findings import planting
    from headflow.method import study

    st = study.setup("organism", "fashionscenes/eval", "object", per_class=1, n_reference=10)
    red = planting.plant(st.model, st.tasks, [(0, 5)], push=8.0)
    rep = planting.measure(red, st.tasks, 80, 0.5, 0, min_images=1)
    pair = rep["pairs"][0]
    assert pair["joint_effect"] > 1.0 and pair["redundant_by_rule"]
    assert max(abs(v) for v in pair["single_over_joint"].values()) <= 0.1
    assert sorted(pair["attribution_ranks"].values()) == [1, 2]
    assert min(pair["single_head_ranks"].values()) > 2


def test_recover_scores_the_planted_model_with_every_ranker(tiny_llava):
    """The gradient and attention rankers read the planted model: attribution patching is 0 outside S,
    and attention weight differs from the organism's own for heads outside S (they read the baseline)."""
    from headflow.method import rankings

    model, processor = tiny_llava
    iv.install(model, "sdpa")
    t = _task(processor)
    base = iv.Baseline("zero")
    planted = validation.PlantedFlow(model, base, 2, 4, np.array([1, 6]))
    rankers = {"attribution_patching": planted.attribution_patching, "attention_weight_value": planted.attention_weight}
    rec = validation.recover(planted.y, [t], 2, 4, 40, 0.5, 0, rankers=rankers)
    assert set(rec) >= {"attribution", "single_head", *rankers}
    patch = rec["attribution_patching"][t.key] * rec["effects"][t.key]
    outside = np.setdiff1d(np.arange(8), [1, 6])
    assert (patch[outside] == 0).all() and (patch[[1, 6]] != 0).all()
    own = rankings.attention_weight(model, t, "final", "value-norm").ravel()
    got = planted.attention_weight(t)
    np.testing.assert_allclose(got[1], own[1], rtol=1e-5)  # a planted head in layer 0 reads what it did...
    assert not np.allclose(got[outside], own[outside])  # ...the others read zero keys and values
