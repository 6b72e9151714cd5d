"""The prefix-reusing fast path equals the full forward under the same ablation (fp32)."""
import numpy as np
import pytest
import torch
from tiny_models import tiny_qwen2_vl

from headflow.images import coco
from headflow.mechanism import interventions as iv
from headflow.mechanism.prefix_reuse import PrefixReuse, position_ids
from headflow.task.prompt import build_prompt, question_text

TOL = 1e-4


def _one(processor, image, q="object"):
    return processor(images=[image], text=[build_prompt(processor, question_text(q))], return_tensors="pt")


def _full(model, inputs, keep, baseline, slots=None):
    B = keep.shape[0]
    big = {}
    for k, v in inputs.items():
        if k in ("pixel_values", "image_grid_thw") and "image_grid_thw" in inputs:
            big[k] = v.repeat(B, *[1] * (v.dim() - 1))  # Qwen2-VL: patches of all images along dim 0
        else:
            big[k] = v.expand(B, *v.shape[1:])
    abl = iv.HeadAblation(keep, iv.image_mask(model, big["input_ids"]), baseline, slots=slots)
    with torch.inference_mode(), iv.intervene(model, ablation=abl):
        return model(**big, logits_to_keep=1).logits[:, -1]


def _masks(model, n, seed):
    g = torch.Generator().manual_seed(seed)
    n_l, n_h = iv.text_layers_and_heads(model)
    rates = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0] + [0.5] * (n - 5))[:n]
    return torch.rand(n, n_l, n_h, generator=g) >= rates[:, None, None]


def _models():
    return ["organism", "llava", "qwen2_vl"]


@pytest.fixture(scope="module")
def setups(tiny_llava, organism_model):
    exs = coco.load_set(coco.resolve_set("fashionscenes/eval"))[:4]
    out = {}
    for name, (model, processor) in {"organism": organism_model, "llava": tiny_llava,
                                     "qwen2_vl": tiny_qwen2_vl()}.items():
        refs = [_one(processor, e.load_image()) for e in exs[1:]]
        out[name] = (model, processor, exs[0], refs)
    return out


@pytest.mark.parametrize("family", _models())
@pytest.mark.parametrize("base", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", ["dataset-mean", "zero", "image-mean"])
def test_fast_path_equals_full_forward(setups, family, base, kind):
    model, processor, ex, refs = setups[family]
    iv.install(model, base)
    baseline = iv.dataset_mean_baseline(model, refs) if kind == "dataset-mean" else iv.Baseline(kind)
    inputs = _one(processor, ex.load_image())
    keep = _masks(model, 9, seed=4)
    fast = PrefixReuse(model, inputs, baseline).final_logits(keep, batch_size=4)
    full = _full(model, inputs, keep, baseline)
    assert (fast - full).abs().max() <= TOL
    ablating = ~keep.flatten(1).all(1)
    assert ablating.sum() >= 7 and not ablating[0]
    assert (full - full[0]).abs().amax(-1)[ablating].min() > 1e-4  # every non-empty mask changes the answer
    # nothing ablated: the clean model
    with torch.inference_mode():
        clean = model(**inputs, logits_to_keep=1).logits[:, -1]
    assert (fast[0] - clean[0]).abs().max() <= TOL


@pytest.mark.parametrize("family", _models())
@pytest.mark.parametrize("base", ["sdpa", "eager"])
def test_fast_path_with_position_ablation_equals_full_forward(setups, family, base):
    """Position-level ablation (each row its own subset of image positions, some rows none, one all)
    through the fast path equals the full forward."""
    model, processor, ex, refs = setups[family]
    iv.install(model, base)
    baseline = iv.dataset_mean_baseline(model, refs)
    inputs = _one(processor, ex.load_image())
    keep = _masks(model, 9, seed=6)
    n_img = int(iv.image_mask(model, inputs["input_ids"]).sum())
    g = torch.Generator().manual_seed(7)
    slots = torch.rand(9, n_img, generator=g) < 0.4
    slots[2] = False
    slots[3] = True
    reuse = PrefixReuse(model, inputs, baseline)
    fast = reuse.final_logits(keep, batch_size=4, slots=slots)
    full = _full(model, inputs, keep, baseline, slots)
    assert (fast - full).abs().max() <= TOL
    whole = reuse.final_logits(keep, batch_size=4)
    assert (fast[3] - whole[3]).abs().max() <= TOL  # every position = the head ablation
    differs = (fast - whole).abs().amax(-1)
    partial = ~keep.flatten(1).all(1)
    partial[[2, 3]] = False
    assert partial.sum() >= 5 and differs[partial].min() > 1e-4  # a subset is not the whole image
    with pytest.raises(ValueError, match="one bool per image position"):
        reuse.final_logits(keep, slots=slots[:, :3])


def test_wrong_suffix_positions_are_caught(setups):
    """Negative control: the test above would notice wrong M-RoPE positions for the suffix."""
    model, processor, ex, refs = setups["qwen2_vl"]
    iv.install(model, "sdpa")
    inputs = _one(processor, ex.load_image())
    keep = _masks(model, 5, seed=1)
    reuse = PrefixReuse(model, inputs, iv.Baseline("zero"))
    good = reuse.final_logits(keep)
    pos = position_ids(model, inputs)
    assert pos.shape[0] == 3 and not torch.equal(pos[0, 0, reuse.P:], torch.arange(reuse.P, pos.shape[-1]))
    reuse.suffix_pos = torch.arange(reuse.P, pos.shape[-1])[None, None].expand(3, 1, -1)
    assert (reuse.final_logits(keep) - good).abs().max() > 1e-3


def test_bad_masks(setups):
    model, processor, ex, _ = setups["llava"]
    reuse = PrefixReuse(model, _one(processor, ex.load_image()), iv.Baseline("zero"))
    with pytest.raises(ValueError, match=r"masks have shape \(3, 2\); this model needs \(n_masks, 2, 4\)"):
        reuse.final_logits(torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="one prompt"):
        PrefixReuse(model, processor(images=[ex.load_image()] * 2, text=["USER: <image>\nWhere ASSISTANT:"] * 2,
                                     return_tensors="pt"), iv.Baseline("zero"))


def _bf16_check(device):
    """The fast path in bfloat16 against the full forward in bfloat16, on the answer logit: a smoke
    test of the same code path at reduced precision (stated tolerance: 0.05 on a logit of order 1,
    and the per-mask values must rank alike)."""
    from headflow.images import coco as _coco
    from headflow.method import experiment
    from headflow.models import tiny

    model, processor = tiny.build("llava")
    model = model.to(device=device, dtype=torch.bfloat16)
    iv.install(model, "sdpa")
    set_file = _coco.resolve_set("fashionscenes/eval")
    task = experiment.prepare(processor, _coco.load_set(set_file)[:1], _coco.class_names(set_file),
                              question_text("object"))[0]
    keep = _masks(model, 16, seed=5).to(device)
    full = experiment.target_values(experiment.full_logits(model, task, iv.Baseline("zero"), keep), task)
    fast = experiment.target_values(PrefixReuse(model, task.inputs, iv.Baseline("zero")).final_logits(keep), task)
    assert abs(fast - full).max() <= 0.05, abs(fast - full).max()
    assert np.corrcoef(fast, full)[0, 1] > 0.99


def test_fast_path_in_bfloat16_on_cpu():
    _bf16_check("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fast_path_in_bfloat16_on_cuda():
    _bf16_check("cuda")


def test_prefix_attention_in_bfloat16_is_as_precise_as_sdpa():
    """The merged softmax accumulates in float32: in bf16 its error against a float64 reference is
    no larger than stock sdpa's (before the float32 accumulation it was about 3x larger)."""
    from types import SimpleNamespace

    import torch.nn.functional as F

    from headflow.mechanism.prefix_attention import PrefixState, prefix_attention

    g = torch.Generator().manual_seed(0)
    B, H, Hkv, P, S, D = 4, 8, 2, 600, 12, 64
    q = torch.randn(B, H, S, D, generator=g) * 2
    k_pre, v_pre = torch.randn(Hkv, P, D, generator=g) * 2, torch.randn(Hkv, P, D, generator=g)
    k_suf, v_suf = torch.randn(B, Hkv, S, D, generator=g) * 2, torch.randn(B, Hkv, S, D, generator=g)
    bf = lambda x: x.to(torch.bfloat16)  # noqa: E731
    # the float64 reference over [prefix | suffix] of the bf16-rounded inputs
    K = torch.cat([bf(k_pre).double()[None].expand(B, -1, -1, -1), bf(k_suf).double()], 2).repeat_interleave(H // Hkv, 1)
    V = torch.cat([bf(v_pre).double()[None].expand(B, -1, -1, -1), bf(v_suf).double()], 2).repeat_interleave(H // Hkv, 1)
    allowed = torch.ones(S, P + S, dtype=torch.bool)
    allowed[:, P:] = torch.ones(S, S, dtype=torch.bool).tril()
    scale = D ** -0.5
    ref = F.scaled_dot_product_attention(bf(q).double(), K, V, attn_mask=allowed, scale=scale).transpose(1, 2)
    stock = F.scaled_dot_product_attention(bf(q), bf(K), bf(V), attn_mask=allowed, scale=scale).transpose(1, 2)
    state = PrefixState([bf(k_pre)], [bf(v_pre)], [bf(k_pre)], [bf(v_pre)],
                        keep=torch.ones(B, 1, H, dtype=torch.bool))
    ours = prefix_attention(SimpleNamespace(layer_idx=0), bf(q), bf(k_suf), bf(v_suf), state, scale)
    assert ours.dtype == torch.bfloat16 and ours.shape == (B, S, H, D)
    rel = lambda x: float((x.double() - ref).norm() / ref.norm())  # noqa: E731
    assert rel(ours) <= 1.2 * rel(stock), (rel(ours), rel(stock))
