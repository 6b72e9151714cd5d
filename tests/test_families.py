"""The family adapter table: the image span covers every position that carries the image, so
nothing leaks around an ablated head (the no-leak invariant), and the fast path refuses where it
would be wrong."""
import pytest
import torch

from headflow import coco, experiment, families, interventions as iv
from headflow.task import build_prompt, question_text
from tiny_models import tiny_qwen2_vl


def _inputs(processor, n=2):
    exs = coco.load_set(coco.resolve_set("fashionscenes/eval"))[:n]
    prompt = build_prompt(processor, question_text("object"))
    return processor(images=[e.load_image() for e in exs], text=[prompt] * n, return_tensors="pt")


def _all_ablated_logits(model, inputs, baseline, span):
    n_layers, n_heads = iv.text_layers_and_heads(model)
    keep = torch.zeros(inputs["input_ids"].shape[0], n_layers, n_heads, dtype=torch.bool)
    with torch.inference_mode(), iv.intervene(model, ablation=iv.HeadAblation(keep, span, baseline)):
        return model(**inputs).logits[:, -1]


def test_span_is_the_hull_of_the_image_run_plus_boundary_markers(tiny_llava):
    model, _ = tiny_llava
    img = families.image_token_id(model.config)
    ids = torch.tensor([[1, 5, img, img, 9, img, 7, 8]])  # a separator (9) inside the image run
    assert families.image_span(model, ids).tolist() == [[False, False, True, True, True, True, False, False]]
    assert families.image_token_mask(model, ids)[0, 4].item() is False
    qwen, _ = tiny_qwen2_vl()
    c = qwen.config
    ids = torch.tensor([[3, c.vision_start_token_id, c.image_token_id, c.image_token_id, c.vision_end_token_id, 4]])
    assert families.image_span(qwen, ids).tolist() == [[False, True, True, True, True, False]]


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
@pytest.mark.parametrize("kind", ["zero", "dataset-mean"])
def test_no_leak_every_head_ablated_two_images_same_logits(tiny_llava, family, kind):
    """With every head ablated (scope text), the answer cannot depend on the image."""
    model, processor = tiny_llava if family == "llava" else tiny_qwen2_vl()
    iv.install(model, "sdpa")
    inputs = _inputs(processor)
    baseline = iv.dataset_mean_baseline(model, [inputs]) if kind == "dataset-mean" else iv.Baseline("zero")
    span = iv.image_mask(model, inputs["input_ids"])
    got = _all_ablated_logits(model, inputs, baseline, span)
    assert (got[0] - got[1]).abs().max() <= 1e-5
    with torch.inference_mode():
        clean = model(**inputs).logits[:, -1]
    assert (clean[0] - clean[1]).abs().max() > 1e-3  # the images differ for the model


def test_a_span_of_image_ids_alone_leaks_through_a_separator(tiny_llava):
    """A separator inside the image run (as Mistral3's [IMG_BREAK] or Idefics3's row markers) reads
    the image as an image query; ablating only the image-id positions leaves it to carry the image
    to the answer.  The project's span covers it and the leak is gone."""
    model, processor = tiny_llava
    iv.install(model, "sdpa")
    inputs = _inputs(processor)
    ids = inputs["input_ids"]
    img_id = families.image_token_id(model.config)
    where = (ids[0] == img_id).nonzero().flatten()
    mid = int(where[len(where) // 2])
    sep = int(ids[0, where.min() - 1])  # an ordinary text token as the separator
    new_ids = torch.cat([ids[:, :mid], torch.full((2, 1), sep), ids[:, mid:]], 1)
    sep_inputs = {**inputs, "input_ids": new_ids, "attention_mask": torch.ones_like(new_ids)}
    base = iv.Baseline("zero")
    leaky = _all_ablated_logits(model, sep_inputs, base, families.image_token_mask(model, new_ids))
    assert (leaky[0] - leaky[1]).abs().max() > 1e-4
    tight = _all_ablated_logits(model, sep_inputs, base, iv.image_mask(model, new_ids))
    assert (tight[0] - tight[1]).abs().max() <= 1e-5


def test_fast_path_refuses_a_prefix_lm_and_masks_y_falls_back(tiny_llava, monkeypatch):
    model, processor = tiny_llava
    iv.install(model, "sdpa")
    exs = coco.load_set(coco.resolve_set("fashionscenes/eval"))[:1]
    task = experiment.prepare(processor, exs, coco.class_names(coco.resolve_set("fashionscenes/eval")),
                              question_text("object"))[0]
    keep = torch.rand(5, *iv.text_layers_and_heads(model)) > 0.5
    fast = experiment.masks_y(model, task, iv.Baseline("zero"), keep)
    prefix_lm = families.Family("llava", prefix_lm=True)
    monkeypatch.setitem(families.FAMILIES, "llava", prefix_lm)
    from headflow.prefix_reuse import PrefixReuse

    with pytest.raises(ValueError, match="prefix-LM mask"):
        PrefixReuse(model, task.inputs, iv.Baseline("zero"))
    full = experiment.masks_y(model, task, iv.Baseline("zero"), keep)  # batched full forwards instead
    assert abs(full - fast).max() <= 1e-4


def test_unknown_family_and_flow_outside_attention_are_named(tiny_llava):
    model, _ = tiny_llava

    class Other:
        config = type("C", (), {"model_type": "blip2"})()
    with pytest.raises(ValueError, match="unknown model family 'blip2'"):
        families.family_of(Other())
    assert families.blocking_problem(model) is None
    qwen3 = type("M", (), {"config": type("C", (), {"model_type": "qwen3_vl"})()})()
    assert "deepstack" in families.blocking_problem(qwen3)


def test_tested_families_agree_with_the_adapter_table():
    from headflow import models

    assert set(models.TESTED_FAMILIES) == {n for n, f in families.FAMILIES.items() if f.tested}
