"""Bad input gets a clear error at the library's boundary, naming the problem and the fix, never a
wrong number (issue 30's cases, found as a new user)."""
import numpy as np
import pytest
import torch
from PIL import Image

from headflow.book import runner as run
from headflow.images import fashionscenes as data
from headflow.mechanism import interventions as iv
from headflow.mechanism.evaluate import _inputs
from headflow.method import attribution, metrics
from headflow.models import loading as models
from headflow.task import answers
from headflow.task.prompt import build_prompt, question_text


def test_fit_refuses_targets_that_do_not_match_the_masks():
    keep = attribution.sample_masks(50, 2, 4, 0.5, seed=0).numpy()
    with pytest.raises(ValueError, match="one target per mask: 50 masks"):
        attribution.fit(keep, np.zeros(40))
    with pytest.raises(ValueError, match="non-finite"):
        attribution.fit(keep, np.r_[np.zeros(49), np.nan])


def test_float_masks_are_refused_not_read_as_all_kept():
    keep = attribution.sample_masks(50, 2, 4, 0.5, seed=0).numpy()
    with pytest.raises(ValueError, match="boolean keep-masks"):
        attribution.fit(keep.astype(np.float64) * 0.5, np.arange(50.0))
    with pytest.raises(ValueError, match="must be \\(S, n_layers, n_heads\\)"):
        attribution.fit(keep.reshape(50, 2, 2, 2), np.arange(50.0))
    with pytest.raises(ValueError, match="bool mask"):
        iv.HeadAblation(keep=torch.full((2, 4), 0.3), image_mask=torch.ones(1, 5, dtype=torch.bool))


def test_knockout_masks_of_the_wrong_length_are_named(tiny_llava):
    model, processor = tiny_llava
    img = data.render_many(data.sample_specs("test", 1, seed=1))[0]
    inputs = _inputs(processor, list(img), build_prompt(processor, question_text("object")))
    n = inputs["input_ids"].shape[1]
    ko = iv.Knockout(queries=torch.ones(n - 3, dtype=torch.bool), keys=torch.ones(n - 3, dtype=torch.bool),
                     layers=[0])
    with pytest.raises(ValueError, match=f"cover {n - 3} positions but this prompt has {n}"):
        with iv.intervene(model, knockouts=[ko]):
            model(**inputs, logits_to_keep=1)


def test_a_mixed_size_reference_set_is_refused():
    model, processor = models.load("tiny:qwen2_vl")
    prompt = build_prompt(processor, question_text("object"))
    small = _inputs(processor, [Image.new("RGB", (64, 64), "red")], prompt)
    large = _inputs(processor, [Image.new("RGB", (128, 96), "red")], prompt)
    with pytest.raises(ValueError, match="processed to one size.*image-mean"):
        iv.dataset_mean_baseline(model, [small, large])


def test_a_misspelled_model_is_refused_with_the_nearest_name():
    with pytest.raises(ValueError, match="unknown model 'organsim'.*'organism'"):
        models.load("organsim")
    assert run.check_value("model", "organsim") and run.check_value("model", "organism") is None


def test_the_runner_checks_values_not_only_names():
    assert "at least 1" in run.check_value("per_class", -1)
    assert "between 0 and 1" in run.check_value("ablation_rate", 1.5)
    assert "one of" in run.check_value("baseline", "mean")
    assert run.check_value("per_class", 3) is None


def test_faithfulness_on_a_near_zero_image_effect_is_undefined():
    assert metrics.completeness(-5.0, 0.30, 0.29) is None  # was (0.30 + 5) / 0.01 = 530
    assert metrics.faithfulness(0.2, 1.0, 0.5) == pytest.approx(-0.6)
    curve = metrics.completeness(np.array([0.0, 1.0]), 2.0, 0.0)
    assert curve.tolist() == [1.0, 0.5]


def test_capitalised_answers_keep_acronyms_and_inner_capitals():
    assert answers.surface("tv", "capitalized") == "TV"
    assert answers.surface("iPhone", "capitalized") == "iPhone"
    assert answers.surface("hot dog", "capitalized") == "Hot dog"


def test_label_sets_that_would_crash_are_refused(tiny_llava):
    _, processor = tiny_llava
    q = question_text("object")
    with pytest.raises(ValueError, match="at least two classes"):
        answers.answers(processor, ["bag"], q)
    with pytest.raises(ValueError, match="contains '</s>'"):
        answers.answers(processor, ["bag</s>", "boot"], q)
