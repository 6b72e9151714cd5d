"""Every intervention: (a) changes the output when it should, (b) changes nothing when empty,
(c) matches the slow reference in tests/reference.py; under both sdpa and eager."""
import pytest
import torch
from reference import run_reference
from tiny_models import tiny_qwen2_vl

from headflow.images import coco
from headflow.mechanism import interventions as iv
from headflow.task.prompt import build_prompt, question_text

BASES = ["sdpa", "eager"]
ATOL = 2e-5


@pytest.fixture(scope="module")
def batch(tiny_llava):
    """Two images, two different questions: the shorter prompt is left-padded."""
    model, processor = tiny_llava
    exs = coco.load_set(coco.resolve_set("fashionscenes/eval"))[:2]
    prompts = [build_prompt(processor, question_text(q)) for q in ("object", "color")]
    inputs = processor(images=[e.load_image() for e in exs], text=prompts, return_tensors="pt", padding=True)
    assert (inputs["attention_mask"][1] == 0).any()  # really padded
    return inputs


def _logits(model, inputs, base, **kw):
    model.set_attn_implementation({"text_config": base})
    iv.install(model, base)
    with torch.inference_mode(), iv.intervene(model, **kw):
        return model(**inputs).logits[:, -1]


def _plain(model, inputs, base):
    model.set_attn_implementation({"text_config": base})
    with torch.inference_mode():
        return model(**inputs).logits[:, -1]


def _final(img):
    """(B, L) bool: the last position of each row."""
    final = torch.zeros_like(img)
    final[:, -1] = True
    return final


def _random_keep(model, B, rate, seed):
    g = torch.Generator().manual_seed(seed)
    n_l, n_h = iv.text_layers_and_heads(model)
    return torch.rand(B, n_l, n_h, generator=g) >= rate


@pytest.mark.parametrize("base", BASES)
def test_empty_intervention_is_bit_identical(tiny_llava, batch, base):
    model, _ = tiny_llava
    plain = _plain(model, batch, base)
    assert torch.equal(_logits(model, batch, base), plain)
    keep_all = torch.ones(2, *iv.text_layers_and_heads(model), dtype=torch.bool)
    abl = iv.HeadAblation(keep_all, iv.image_mask(model, batch["input_ids"]))
    assert torch.equal(_logits(model, batch, base, ablation=abl), plain)


@pytest.fixture(scope="module")
def qwen():
    """Tiny Qwen2-VL (grouped-query attention, M-RoPE) and a padded batch of two prompts."""
    model, processor = tiny_qwen2_vl()
    exs = coco.load_set(coco.resolve_set("fashionscenes/eval"))[:2]
    prompts = [build_prompt(processor, question_text(q)) for q in ("object", "color")]
    inputs = processor(images=[e.load_image() for e in exs], text=prompts, return_tensors="pt", padding=True)
    assert (inputs["attention_mask"][1] == 0).any()
    return model, inputs


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("kind", ["zero", "dataset-mean"])
def test_head_ablation_on_grouped_query_mrope_model(qwen, base, kind):
    model, batch = qwen
    img = iv.image_mask(model, batch["input_ids"])
    keep = _random_keep(model, 2, 0.5, seed=2)
    keep[0] = True
    baseline, ref_kw = iv.Baseline("zero"), {}
    if kind == "dataset-mean":
        model.set_attn_implementation({"text_config": base})
        baseline = iv.dataset_mean_baseline(model, [batch])
        ref_kw = {"base_k": baseline.keys, "base_v": baseline.values}
    assert torch.equal(_logits(model, batch, base), _plain(model, batch, base))
    got = _logits(model, batch, base, ablation=iv.HeadAblation(keep, img, baseline))
    ref = run_reference(model, batch, image=img, keep=keep, baseline=kind, **ref_kw)[:, -1]
    plain = _plain(model, batch, base)
    assert torch.allclose(got, ref, atol=ATOL), (got - ref).abs().max()
    assert torch.allclose(got[0], plain[0], atol=ATOL) and (got[1] - plain[1]).abs().max() > 1e-4
    final = _final(img)
    ko = iv.Knockout(final, img, layers=[0, 2], heads=[1, 6])  # heads 1 and 6 read different kv heads
    got = _logits(model, batch, base, knockouts=[ko])
    ref = run_reference(model, batch, image=img, knockouts=[(final, img, [0, 2], [1, 6])])[:, -1]
    assert torch.allclose(got, ref, atol=ATOL) and (got - plain).abs().max() > 1e-5


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("kind", ["zero", "image-mean", "dataset-mean"])
@pytest.mark.parametrize("scope", ["text", "all"])
def test_head_ablation_matches_reference(tiny_llava, batch, base, kind, scope):
    model, _ = tiny_llava
    img = iv.image_mask(model, batch["input_ids"])
    keep = _random_keep(model, 2, 0.5, seed=1)
    keep[0] = True  # row 0 untouched
    baseline = iv.Baseline("zero") if kind == "zero" else iv.Baseline("image-mean")
    ref_kw = {}
    if kind == "dataset-mean":
        model.set_attn_implementation({"text_config": base})
        baseline = iv.dataset_mean_baseline(model, [batch])
        ref_kw = {"base_k": baseline.keys, "base_v": baseline.values}
    got = _logits(model, batch, base, ablation=iv.HeadAblation(keep, img, baseline, scope))
    ref = run_reference(model, batch, image=img, keep=keep, scope=scope, baseline=kind, **ref_kw)[:, -1]
    plain = _plain(model, batch, base)
    assert torch.allclose(got, ref, atol=ATOL), (got - ref).abs().max()
    assert torch.allclose(got[0], plain[0], atol=ATOL)  # the untouched row
    assert (got[1] - plain[1]).abs().max() > 1e-4  # the ablation is real (float noise is ~1e-7)


def _random_slots(img, seed, rate=0.5):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(img.shape[0], int(img[0].sum()), generator=g) < rate


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("kind", ["zero", "image-mean", "dataset-mean"])
@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_position_ablation_matches_reference(tiny_llava, batch, qwen, base, kind, family):
    """Position-level ablation (a subset of image positions per row) matches the float64 reference,
    changes the output, and with no position selected changes nothing (bit-identical)."""
    model, inputs = (tiny_llava[0], batch) if family == "llava" else qwen
    img = iv.image_mask(model, inputs["input_ids"])
    keep = _random_keep(model, 2, 0.5, seed=3)
    slots = _random_slots(img, seed=5)
    baseline, ref_kw = iv.Baseline(kind) if kind != "dataset-mean" else None, {}
    if kind == "dataset-mean":
        model.set_attn_implementation({"text_config": base})
        baseline = iv.dataset_mean_baseline(model, [inputs])
        ref_kw = {"base_k": baseline.keys, "base_v": baseline.values}
    got = _logits(model, inputs, base, ablation=iv.HeadAblation(keep, img, baseline, slots=slots))
    ref = run_reference(model, inputs, image=img, keep=keep, baseline=kind, slots=slots, **ref_kw)[:, -1]
    plain = _plain(model, inputs, base)
    whole = _logits(model, inputs, base, ablation=iv.HeadAblation(keep, img, baseline))
    assert torch.allclose(got, ref, atol=ATOL), (got - ref).abs().max()
    assert (got - plain).abs().max() > 1e-4 and (got - whole).abs().max() > 1e-4  # real, and not the whole image
    none = torch.zeros_like(slots)
    assert torch.equal(_logits(model, inputs, base, ablation=iv.HeadAblation(keep, img, baseline, slots=none)), plain)
    every = torch.ones_like(slots)
    assert torch.allclose(_logits(model, inputs, base, ablation=iv.HeadAblation(keep, img, baseline, slots=every)),
                          whole, atol=1e-6)


@pytest.mark.parametrize("base", BASES)
def test_knockout_matches_reference_and_zeroes_probabilities(tiny_llava, batch, base):
    model, processor = tiny_llava
    ids = batch["input_ids"]
    img = iv.image_mask(model, ids)
    final = _final(img)
    ko = iv.Knockout(queries=final, keys=img, layers=[1], heads=[0, 2])
    got = _logits(model, batch, base, knockouts=[ko])
    ref = run_reference(model, batch, image=img, knockouts=[(final, img, [1], [0, 2])])[:, -1]
    assert torch.allclose(got, ref, atol=ATOL)
    assert (got - _plain(model, batch, base)).abs().max() > 1e-4
    # the knocked-out probabilities are exactly zero, the others are not
    cap = iv.Capture(queries=final, image=img)
    with torch.inference_mode(), iv.intervene(model, knockouts=[ko], capture=cap):
        model(**batch)
    assert cap.mass[1].shape == (2, 4, 1)
    assert (cap.mass[1][:, [0, 2]] == 0).all() and (cap.mass[1][:, [1, 3]] > 0).all() and (cap.mass[0] > 0).all()


@pytest.mark.parametrize("base", BASES)
def test_knockout_with_per_row_heads_matches_reference(qwen, base):
    """One knockout, a different head set per row (grouped-query model): matches the reference;
    a row with no head selected is untouched."""
    model, batch = qwen
    img = iv.image_mask(model, batch["input_ids"])
    final = _final(img)
    n_heads = iv.text_layers_and_heads(model)[1]
    hm = torch.zeros(2, n_heads, dtype=torch.bool)
    hm[1, [0, 3, 5]] = True
    got = _logits(model, batch, base, knockouts=[iv.Knockout(final, img, layers=[0, 1], head_mask=hm)])
    ref = run_reference(model, batch, image=img, knockouts=[(final, img, [0, 1], hm)])[:, -1]
    plain = _plain(model, batch, base)
    assert torch.allclose(got, ref, atol=ATOL) and torch.allclose(got[0], plain[0], atol=ATOL)
    assert (got[1] - plain[1]).abs().max() > 1e-5
    with pytest.raises(ValueError, match="either heads"):
        iv.Knockout(final, img, [0], heads=[1], head_mask=hm)


@pytest.mark.parametrize("base", BASES)
def test_ablation_and_knockout_compose(tiny_llava, batch, base):
    model, _ = tiny_llava
    ids = batch["input_ids"]
    img = iv.image_mask(model, ids)
    question = torch.zeros_like(img)
    question[:, -8:-3] = True
    final = _final(img)
    keep = _random_keep(model, 2, 0.4, seed=3)
    got = _logits(model, batch, base, ablation=iv.HeadAblation(keep, img, iv.Baseline("zero")),
                  knockouts=[iv.Knockout(final, question, layers=[0])])
    ref = run_reference(model, batch, image=img, keep=keep, baseline="zero",
                        knockouts=[(final, question, [0], None)])[:, -1]
    assert torch.allclose(got, ref, atol=ATOL)


def _eager_weights_and_capture(model, batch, kv: bool = False):
    """The eager attention weights of every layer, and a Capture of the final token -> image."""
    img = iv.image_mask(model, batch["input_ids"])
    model.set_attn_implementation({"text_config": "eager"})
    with torch.inference_mode():
        att = model(**batch, output_attentions=True).attentions
    iv.install(model, "sdpa")
    cap = iv.Capture(queries=_final(img), image=img, kv=kv)
    with torch.inference_mode(), iv.intervene(model, capture=cap):
        model(**batch)
    return img, att, cap


def test_capture_matches_eager_attention_weights(tiny_llava, batch):
    model, _ = tiny_llava
    img, att, cap = _eager_weights_and_capture(model, batch)
    for l, a in enumerate(att):
        expected = (a[:, :, -1, :] * img[:, None, :]).sum(-1)
        assert torch.allclose(cap.mass[l][:, :, 0], expected, atol=1e-5)


def test_value_weighted_capture_matches_weights_times_value_norms(tiny_llava, batch):
    """value_mass = sum over image keys of the eager attention weight times the norm of the value."""
    model, _ = tiny_llava
    img, att, cap = _eager_weights_and_capture(model, batch, kv=True)
    groups = att[0].shape[1] // cap.values[0].shape[1]
    for l, a in enumerate(att):
        w = a[:, :, -1, :][img[:, None, :].expand(-1, a.shape[1], -1)].view(a.shape[0], a.shape[1], -1)
        vnorm = cap.values[l].repeat_interleave(groups, dim=1).norm(dim=-1)  # (B, H, n_image)
        assert torch.allclose(cap.value_mass[l][:, :, 0], (w * vnorm).sum(-1), atol=1e-4)


def test_capture_under_ablation_reads_the_baseline(tiny_llava):
    """Combined with a head ablation, the capture sees what the ablated heads read: (a) every head
    ablated to the image's own keys/values changes nothing; (b) in layer 0 (whose text queries do
    not depend on the image), every head ablated to image 0's keys/values makes image 1's capture
    equal image 0's clean one; (c) an empty ablation changes nothing; a capture of queries before
    the image is refused under a text-scope ablation."""
    model, processor = tiny_llava
    iv.install(model, "sdpa")
    exs = coco.load_set(coco.resolve_set("fashionscenes/eval"))[:2]
    batch = processor(images=[e.load_image() for e in exs], text=[build_prompt(processor, question_text("object"))] * 2,
                      return_tensors="pt")
    img = iv.image_mask(model, batch["input_ids"])
    n_layers, n_heads = iv.text_layers_and_heads(model)
    clean = iv.Capture(queries=_final(img), image=img, kv=True)
    with torch.inference_mode(), iv.intervene(model, capture=clean):
        model(**batch)

    def captured(keep, keys, values, rows=slice(None)):
        sub = {k: v[rows] for k, v in batch.items()}
        cap = iv.Capture(queries=_final(img[rows]), image=img[rows])
        base = iv.Baseline("dataset-mean", keys=keys, values=values)
        with torch.inference_mode(), iv.intervene(model, ablation=iv.HeadAblation(keep, img[rows], base), capture=cap):
            model(**sub)
        return cap

    none = torch.zeros(n_layers, n_heads, dtype=torch.bool)
    own = captured(none, [clean.keys[l][:1] for l in range(n_layers)], [clean.values[l][:1] for l in range(n_layers)],
                   slice(0, 1))
    for l in range(n_layers):
        assert torch.allclose(own.mass[l], clean.mass[l][:1], atol=1e-6)
        assert torch.allclose(own.value_mass[l], clean.value_mass[l][:1], atol=1e-5)
    other = captured(none, [clean.keys[l][0] for l in range(n_layers)], [clean.values[l][0] for l in range(n_layers)],
                     slice(1, 2))
    assert torch.allclose(other.mass[0], clean.mass[0][:1], atol=1e-6)
    assert not torch.allclose(clean.mass[0][1:2], clean.mass[0][:1], atol=1e-4)  # so (b) could fail
    empty = captured(~none, [clean.keys[l][0] for l in range(n_layers)], [clean.values[l][0] for l in range(n_layers)])
    for l in range(n_layers):
        assert torch.equal(empty.mass[l], clean.mass[l])
    with pytest.raises(ValueError, match="must watch queries after the image"):
        cap = iv.Capture(queries=img, image=img)
        with torch.inference_mode(), iv.intervene(model, ablation=iv.HeadAblation(none, img, "zero"), capture=cap):
            model(**batch)


def test_bad_inputs(tiny_llava, batch):
    model, _ = tiny_llava
    img = iv.image_mask(model, batch["input_ids"])
    with pytest.raises(ValueError, match=r"ablation mask has shape \(2, 3, 4\); this model needs \(batch, 2, 4\)"):
        with iv.intervene(model, ablation=iv.HeadAblation(torch.ones(2, 3, 4, dtype=torch.bool), img)):
            pass
    with pytest.raises(ValueError, match="unknown baseline 'mean'"):
        iv.HeadAblation(torch.ones(2, 4, dtype=torch.bool), img, "mean")
    with pytest.raises(ValueError, match=r"slots have shape \(2, 3\); this batch needs \(2, \d+\)"):
        iv.HeadAblation(torch.ones(2, 4, dtype=torch.bool), img, "zero", slots=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown ablation scope"):
        iv.HeadAblation(torch.ones(2, 4, dtype=torch.bool), img, "zero", scope="image")
    with pytest.raises(ValueError, match=r"knockout layers \[5\] out of range"):
        with iv.intervene(model, knockouts=[iv.Knockout(img, img, layers=[5])]):
            pass
    with pytest.raises(ValueError, match=r"head \(0, 9\) out of range"):
        iv.keep_mask(model, [(0, 9)])
    with pytest.raises(ValueError, match="query or key group is empty"):
        with iv.intervene(model, knockouts=[iv.Knockout(torch.zeros_like(img), img, layers=[0])]):
            pass
    with pytest.raises(ValueError, match="needs keys and values"):
        iv.Baseline("dataset-mean")


@pytest.mark.parametrize("base", BASES)
def test_on_the_organism(organism_model, base):
    """The trained organism: empty is bit-identical; ablation and knockout match the reference."""
    model, processor = organism_model
    exs = coco.load_set(coco.resolve_set("fashionscenes/eval"))[5:7]
    prompts = [build_prompt(processor, question_text(q)) for q in ("object", "position")]
    batch = processor(images=[e.load_image() for e in exs], text=prompts, return_tensors="pt", padding=True)
    img = iv.image_mask(model, batch["input_ids"])
    plain = _plain(model, batch, base)
    assert torch.equal(_logits(model, batch, base), plain)
    model.set_attn_implementation({"text_config": base})
    baseline = iv.dataset_mean_baseline(model, [batch])
    keep = _random_keep(model, 2, 0.3, seed=5)
    final = _final(img)
    ko = iv.Knockout(final, img, layers=[0, 1])
    got = _logits(model, batch, base, ablation=iv.HeadAblation(keep, img, baseline), knockouts=[ko])
    ref = run_reference(model, batch, image=img, keep=keep, baseline="dataset-mean", base_k=baseline.keys,
                        base_v=baseline.values, knockouts=[(final, img, [0, 1], None)])[:, -1]
    assert torch.allclose(got, ref, atol=1e-4), (got - ref).abs().max()
    assert (got - plain).abs().max() > 1e-2
