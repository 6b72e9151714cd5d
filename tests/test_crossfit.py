"""Cross-fitting over images and pass counting by instrumentation."""
import numpy as np
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
