"""Planted ground truth: the constructions behave as their definitions say."""
import numpy as np
import torch

from headflow.findings import validation
from headflow.mechanism import interventions as iv
from headflow.method import experiment


def test_planted_sets_avoid_the_excluded_heads_and_have_the_sizes():
    sets = validation.draw_planted_sets([2, 5], 3, exclude=[0, 1, 2], n_total=12, seed=0)
    assert [s["size"] for s in sets] == [2, 2, 2, 5, 5, 5]
    assert all(not set(s["heads"].tolist()) & {0, 1, 2} for s in sets)
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


def test_planted_redundancy_single_heads_do_nothing_the_pair_does_everything(tiny_llava):
    model, processor = tiny_llava
    t = _task(processor)
    red = validation.PlantedRedundancy(model, iv.Baseline("zero"), 2, 4, (1, 6))
    pieces = (0.5, 2.0, 1.0)
    keep = torch.ones(4, 8, dtype=torch.bool)
    keep[1, 1] = False
    keep[2, 6] = False
    keep[3, [1, 6]] = False
    y = red.y(t, keep.view(4, 2, 4), pieces)
    np.testing.assert_allclose(y, [2.5, 2.5, 2.5, 0.5])


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
