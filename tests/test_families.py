"""Every tested family, on its tiny random-weight model (headflow.tiny): the patch layout agrees
with where the model puts each patch; token groups resolve from the processor's output; every
intervention matches the float64 reference under sdpa and eager and is bit-identical when empty;
nothing leaks around an ablated head (the no-leak invariant); the fast path is exact where valid
and refuses (then falls back) where not.  The last test checks that exactly
``models.TESTED_FAMILIES`` ran."""
import copy
from collections import defaultdict

import numpy as np
import pytest
import torch
from PIL import Image
from reference import run_reference

from headflow.book import compat
from headflow.images import coco
from headflow.mechanism import interventions as iv
from headflow.mechanism import tokens
from headflow.mechanism.prefix_reuse import PrefixReuse
from headflow.method import experiment
from headflow.models import families, tiny
from headflow.models import loading as models
from headflow.task.prompt import build_prompt, question_text
from headflow.util.paths import REPO_ROOT

FAMS = list(tiny.FAMILIES)
BASES = ["sdpa", "eager"]
ATOL = 2e-5
RAN: dict[str, set] = defaultdict(set)  # check -> families whose test of it passed


def _done(check: str, family: str):
    RAN[check].add(family)


@pytest.fixture(scope="module")
def built():
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = tiny.build(family)
        return cache[family]
    return get


def _examples(n=3):
    return coco.load_set(coco.resolve_set("fashionscenes/eval"))[:n]


def _batch(processor, images, question="object"):
    prompt = build_prompt(processor, question_text(question))
    return processor(images=[[im] for im in images], text=[prompt] * len(images), return_tensors="pt", padding=True)


def _logits(model, inputs, base, **kw):
    iv.install(model, base)
    with torch.inference_mode(), iv.intervene(model, **kw):
        return model(**inputs).logits[:, -1]


def _plain(model, inputs, base):
    model.set_attn_implementation({"text_config": base})
    with torch.inference_mode():
        return model(**inputs).logits[:, -1]


# ------------------------------------------------------------------------------------ layout, groups
@pytest.mark.parametrize("family", FAMS)
def test_patch_layout_agrees_with_where_the_model_puts_each_patch(family):
    """With the vision tower's attention outputs zeroed, an image token depends on its own patches
    only.  Perturb a 4x4-pixel block of the image: the tokens whose layout region holds the block's
    centre must change, no token whose region is farther than 6 px from the block may change, and
    no position outside the image tokens (newline slots included) changes."""
    model, processor = tiny.build(family, local_vision=True)
    H, W = (64, 96) if family.startswith("qwen") else (64, 64)  # Qwen: a non-square grid
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (H, W, 3)).astype(np.uint8)

    def embeds(img):
        inputs = _batch(processor, [Image.fromarray(img)])
        got = {}
        hook = model.get_decoder().register_forward_pre_hook(
            lambda mod, a, kw: got.update(e=kw["inputs_embeds"][0].detach().clone()), with_kwargs=True)
        with torch.inference_mode():
            model(**inputs)
        hook.remove()
        return inputs, got["e"]

    inputs, e0 = embeds(base)
    layout = families.patch_layout(model, processor, inputs, (H, W))
    if family.startswith("qwen"):
        v = layout.views[0]
        assert v.rows != v.cols  # the hard case: a non-square grid
    image_pos = families.image_token_mask(model, inputs["input_ids"])[0].nonzero().flatten()
    boxes = layout.boxes()
    for y, x in [(4, 4), (10, 50), (40, 20), (56, 56), (30, 30)]:
        x = min(x, W - 5)
        pert = base.copy()
        pert[y:y + 4, x:x + 4] = 255 - pert[y:y + 4, x:x + 4]
        changed = (embeds(pert)[1] - e0).abs().amax(-1) > 1e-5
        in_image = changed[image_pos].numpy()
        cy, cx = (y + 2) / H, (x + 2) / W
        patch = ~np.isnan(boxes[:, 0])
        must = patch & (boxes[:, 0] <= cy) & (cy < boxes[:, 1]) & (boxes[:, 2] <= cx) & (cx < boxes[:, 3])
        m = 6
        may = patch & (boxes[:, 0] * H - m < y + 4) & (boxes[:, 1] * H + m > y) & \
            (boxes[:, 2] * W - m < x + 4) & (boxes[:, 3] * W + m > x)
        assert must.sum() >= 1 and in_image[must].all(), (family, y, x, np.nonzero(must & ~in_image))
        assert not (in_image & ~may).any(), (family, y, x, np.nonzero(in_image & ~may))
        changed[image_pos] = False
        assert not changed.any()
    _done("layout", family)


@pytest.mark.parametrize("family", FAMS)
def test_token_groups_resolve_from_the_processor_output(built, family):
    model, processor = built(family)
    ex = _examples(1)[0]
    q = question_text("object")
    inputs = _batch(processor, [ex.load_image()])
    g = tokens.resolve(processor, model, q, inputs, mask=ex.mask)
    toks = g.tokens
    assert " ".join(toks[i] for i in g["question"]) == "What is the main object in the image ? Answer in one word ."
    assert g["final"].tolist() == [inputs["input_ids"].shape[1] - 1]
    assert g.sizes["role"] >= 1 and int(g["role"].max()) == inputs["input_ids"].shape[1] - 1
    img = set(g["image"].tolist())
    obj, bg = set(g["object"].tolist()), set(g["background"].tolist())
    assert obj and bg and not obj & bg and obj | bg <= img
    non_patch = np.isnan(g.patch_share)
    assert len(img - obj - bg) == int(non_patch.sum())  # non-patch slots are in neither
    if family == "llava_next":
        assert non_patch.sum() == 8  # a newline slot after each of the 8 grid rows
    # the object share over the patch slots is close to the mask's share of the image (one view
    # covers the whole image; tiles cover it once more)
    assert abs(np.nanmean(g.patch_share) - ex.mask.mean()) < 0.05
    span = iv.image_mask(model, inputs["input_ids"])[0]
    assert span[g["image"]].all() and not span[g["question"]].any()
    _done("groups", family)


# ------------------------------------------------------------------------------------ interventions
@pytest.fixture(scope="module")
def pair(built):
    """Per family: the model and a batch of two images (same question)."""
    def get(family):
        model, processor = built(family)
        return model, _batch(processor, [e.load_image() for e in _examples(2)])
    return get


@pytest.mark.parametrize("family", FAMS)
@pytest.mark.parametrize("base", BASES)
def test_interventions_match_the_reference(pair, family, base):
    """Head ablation (zero and dataset-mean baselines), position-level ablation, per-row knockout
    and capture, against the float64 reference; an empty intervention is bit-identical."""
    model, batch = pair(family)
    img = iv.image_mask(model, batch["input_ids"])
    n_l, n_h = iv.text_layers_and_heads(model)
    plain = _plain(model, batch, base)
    empty = iv.HeadAblation(torch.ones(2, n_l, n_h, dtype=torch.bool), img)
    assert torch.equal(_logits(model, batch, base), plain)
    assert torch.equal(_logits(model, batch, base, ablation=empty), plain)
    keep = torch.rand(2, n_l, n_h, generator=torch.Generator().manual_seed(1)) >= 0.5
    keep[0] = True  # row 0 untouched
    model.set_attn_implementation({"text_config": base})
    dm = iv.dataset_mean_baseline(model, [batch])
    for baseline, ref_kw in ((iv.Baseline("zero"), {}), (dm, {"base_k": dm.keys, "base_v": dm.values})):
        got = _logits(model, batch, base, ablation=iv.HeadAblation(keep, img, baseline))
        ref = run_reference(model, batch, image=img, keep=keep, baseline=baseline.kind, **ref_kw)[:, -1]
        assert torch.allclose(got, ref, atol=ATOL), (family, baseline.kind, (got - ref).abs().max())
        assert torch.allclose(got[0], plain[0], atol=ATOL) and (got[1] - plain[1]).abs().max() > 1e-4
    slots = torch.rand(2, int(img[0].sum()), generator=torch.Generator().manual_seed(2)) < 0.5
    got = _logits(model, batch, base, ablation=iv.HeadAblation(~keep, img, iv.Baseline("zero"), slots=slots))
    ref = run_reference(model, batch, image=img, keep=~keep, baseline="zero", slots=slots)[:, -1]
    assert torch.allclose(got, ref, atol=ATOL) and (got - plain).abs().max() > 1e-4
    final = torch.zeros_like(img)
    final[:, -1] = True
    hm = torch.zeros(2, n_h, dtype=torch.bool)
    hm[1, [0, n_h - 1]] = True
    got = _logits(model, batch, base, knockouts=[iv.Knockout(final, img, layers=[0, n_l - 1], head_mask=hm)])
    ref = run_reference(model, batch, image=img, knockouts=[(final, img, [0, n_l - 1], hm)])[:, -1]
    assert torch.allclose(got, ref, atol=ATOL) and torch.allclose(got[0], plain[0], atol=ATOL)
    assert (got[1] - plain[1]).abs().max() > 1e-5
    if base == "eager":  # the captured image mass equals eager attention's own weights
        cap = iv.Capture(queries=final, image=img)
        with torch.inference_mode(), iv.intervene(model, capture=cap):
            out = model(**batch, output_attentions=True)
        for l, a in enumerate(out.attentions):
            want = (a[:, :, -1:, :] * img[:, None, None, :]).sum(-1)
            assert torch.allclose(cap.mass[l], want.float(), atol=1e-5)
    _done(f"interventions-{base}", family)


def _all_ablated(model, inputs, baseline, span):
    n_l, n_h = iv.text_layers_and_heads(model)
    keep = torch.zeros(inputs["input_ids"].shape[0], n_l, n_h, dtype=torch.bool)
    with torch.inference_mode(), iv.intervene(model, ablation=iv.HeadAblation(keep, span, baseline)):
        return model(**inputs).logits[:, -1]


@pytest.mark.parametrize("family", FAMS)
@pytest.mark.parametrize("kind", ["zero", "dataset-mean"])
def test_no_leak_every_head_ablated_two_images_same_logits(pair, family, kind):
    """With every head ablated (scope text), the answer cannot depend on the image."""
    model, inputs = pair(family)
    iv.install(model, "sdpa")
    baseline = iv.dataset_mean_baseline(model, [inputs]) if kind == "dataset-mean" else iv.Baseline("zero")
    got = _all_ablated(model, inputs, baseline, iv.image_mask(model, inputs["input_ids"]))
    assert (got[0] - got[1]).abs().max() <= 1e-5
    clean = _plain(model, inputs, "sdpa")
    assert (clean[0] - clean[1]).abs().max() > 1e-3  # the images differ for the model
    _done(f"no-leak-{kind}", family)


def test_a_span_of_image_ids_alone_leaks_through_idefics3_tile_markers(pair):
    """Idefics3 puts ``<fake_token_around_image><row_r_col_c>`` between tiles: those markers read
    the earlier tiles as image queries; ablating only the image-id positions leaves them to carry
    the image to the answer.  The project's span (the hull) covers them and the leak is gone."""
    model, inputs = pair("idefics3")
    iv.install(model, "sdpa")
    ids_only = families.image_token_mask(model, inputs["input_ids"])
    span = iv.image_mask(model, inputs["input_ids"])
    assert (span & ~ids_only).sum() > 0  # separators inside the run
    leaky = _all_ablated(model, inputs, iv.Baseline("zero"), ids_only)
    assert (leaky[0] - leaky[1]).abs().max() > 1e-4
    tight = _all_ablated(model, inputs, iv.Baseline("zero"), span)
    assert (tight[0] - tight[1]).abs().max() <= 1e-5


def test_a_span_of_image_ids_alone_leaks_through_a_separator(built):
    """The same on LLaVA with a separator put inside the image run by hand (as Mistral3's [IMG_BREAK])."""
    model, processor = built("llava")
    iv.install(model, "sdpa")
    inputs = _batch(processor, [e.load_image() for e in _examples(2)])
    ids = inputs["input_ids"]
    where = (ids[0] == families.image_token_id(model.config)).nonzero().flatten()
    mid = int(where[len(where) // 2])
    new_ids = torch.cat([ids[:, :mid], torch.full((2, 1), int(ids[0, where.min() - 1])), ids[:, mid:]], 1)
    sep = {**inputs, "input_ids": new_ids, "attention_mask": torch.ones_like(new_ids)}
    leaky = _all_ablated(model, sep, iv.Baseline("zero"), families.image_token_mask(model, new_ids))
    assert (leaky[0] - leaky[1]).abs().max() > 1e-4
    tight = _all_ablated(model, sep, iv.Baseline("zero"), iv.image_mask(model, new_ids))
    assert (tight[0] - tight[1]).abs().max() <= 1e-5


def test_span_is_the_hull_of_the_image_run_plus_boundary_markers(built):
    model, _ = built("llava")
    img = families.image_token_id(model.config)
    ids = torch.tensor([[1, 5, img, img, 9, img, 7, 8]])  # a separator (9) inside the image run
    assert families.image_span(model, ids).tolist() == [[False, False, True, True, True, True, False, False]]
    qwen, _ = built("qwen2_vl")
    c = qwen.config
    ids = torch.tensor([[3, c.vision_start_token_id, c.image_token_id, c.image_token_id, c.vision_end_token_id, 4]])
    assert families.image_span(qwen, ids).tolist() == [[False, True, True, True, True, False]]


# ------------------------------------------------------------------------------------ fast path
def _task(model, processor):
    words = compat.known_words(processor, coco.class_names(coco.resolve_set("fashionscenes/eval")))
    exs = [e for e in coco.load_set(coco.resolve_set("fashionscenes/eval")) if e.class_name in words][:1]
    return experiment.prepare(processor, exs, words, question_text("object"))[0]


def _long_window(model):
    """The same Gemma 3 weights with a sliding window longer than the prompt."""
    cfg = copy.deepcopy(model.config)
    cfg.text_config.sliding_window = 512
    other = type(model)._from_config(cfg, attn_implementation="sdpa").eval()
    other.load_state_dict(model.state_dict())
    return other


@pytest.mark.parametrize("family", FAMS)
@pytest.mark.parametrize("base", BASES)
def test_fast_path_is_exact_where_valid_and_refuses_where_not(built, family, base):
    model, processor = built(family)
    task = _task(model, processor)
    n_l, n_h = iv.text_layers_and_heads(model)
    keep = torch.rand(6, n_l, n_h, generator=torch.Generator().manual_seed(3)) >= 0.5
    keep[0], keep[1] = True, False
    L = task.inputs["input_ids"].shape[1]
    if family == "gemma3":  # the tiny model's window (8) is shorter than the prompt: refuse, fall back
        assert "sliding window" in families.prefix_reuse_problem(model, L)
        iv.install(model, base)
        with pytest.raises(ValueError, match="sliding window"):
            PrefixReuse(model, task.inputs, iv.Baseline("zero"))
        fallback = experiment.masks_y(model, task, iv.Baseline("zero"), keep)
        full = experiment.target_values(experiment.full_logits(model, task, iv.Baseline("zero"), keep), task)
        assert np.abs(fallback - full).max() <= 1e-6
        model = _long_window(model)  # then the fast path is valid, given token_type_ids in the prefix pass
        assert "token_type_ids" in task.inputs
    assert families.prefix_reuse_problem(model, L) is None
    iv.install(model, base)
    baseline = iv.dataset_mean_baseline(model, [_batch(processor, [e.load_image() for e in _examples(3)[1:]])])
    fast = PrefixReuse(model, task.inputs, baseline).final_logits(keep)
    full = experiment.full_logits(model, task, baseline, keep)
    assert (fast - full).abs().max() <= 1e-4, (family, (fast - full).abs().max())
    assert (full[1] - full[0]).abs().max() > 1e-3  # the masks matter
    _done(f"fast-path-{base}", family)


@pytest.mark.parametrize("family", FAMS)
@pytest.mark.parametrize("base", BASES)
def test_knockouts_on_the_suffix_path_equal_full_forwards(built, family, base):
    """Chapter 7's rows (every flow of findings.flow in every window, one head set besides all heads): run
    as suffix passes over the prefix computed once, each row's logits equal the full forward's."""
    from types import SimpleNamespace

    from headflow.findings import flow

    model, processor = built(family)
    task = _task(model, processor)
    if family == "gemma3":
        model = _long_window(model)
    iv.install(model, base)
    n_l, n_h = iv.text_layers_and_heads(model)
    st = SimpleNamespace(model=model, processor=processor, question=question_text("object"), n_layers=n_l,
                         n_heads=n_h, baseline=iv.Baseline("zero"))
    plan = flow.chapter_plan(n_l, {"all heads": None, "two heads": np.array([0, n_h + 1])}, window=1,
                             sensitivity_window=2)
    kos = flow.knockouts_for(plan, flow.group_masks(st, task), n_l, n_h)
    reuse = flow.suffix_path(st, task, kos, len(plan.rows))
    assert reuse is not None, family  # every flow ends after the image in every tested template
    ids = list(range(min(model.config.get_text_config().vocab_size, 200)))
    keep = torch.ones(len(plan.rows), n_l, n_h, dtype=torch.bool)
    fast = reuse.final_logits(keep, batch_size=5, reduce=lambda lg: lg[:, ids], knockouts=kos).double()
    full = flow.full_knockout_logits(st, task, kos, len(plan.rows), ids, batch_size=5)
    assert (fast - full).abs().max() <= 1e-4, (family, (fast - full).abs().max())
    with torch.inference_mode():
        clean = model(**task.inputs, logits_to_keep=1).logits[0, -1, ids].double()
    assert (full - clean).abs().amax(-1).max() > 1e-3  # the knockouts matter
    # a knockout whose queries start inside the prefix is refused (the rows then take full forwards)
    L = task.inputs["input_ids"].shape[1]
    inside = iv.Knockout(torch.ones(L, dtype=torch.bool), torch.ones(L, dtype=torch.bool), [0])
    assert "before position" in reuse.knockouts_fit([inside], 1)
    with pytest.raises(ValueError, match="full forwards"):
        reuse.final_logits(keep[:1], knockouts=[inside])
    _done(f"knockout-suffix-{base}", family)


# ------------------------------------------------------------------------------------ baselines
def test_dataset_mean_baseline_needs_the_same_image_token_count(built):
    """Qwen2-VL gives a 64x64 image 16 tokens and a 64x96 one more: a per-position baseline built on
    one size refuses the other with a message that names the fix (the study fixes the image size)."""
    model, processor = built("qwen2_vl")
    iv.install(model, "sdpa")
    square = _batch(processor, [_examples(1)[0].load_image()])
    wide = _batch(processor, [Image.new("RGB", (96, 64), "gray")])
    baseline = iv.dataset_mean_baseline(model, [square])
    n_l, n_h = iv.text_layers_and_heads(model)
    keep = torch.zeros(1, n_l, n_h, dtype=torch.bool)
    with pytest.raises(ValueError, match="rebuild the baseline with images processed like these"):
        with torch.inference_mode(), iv.intervene(model, ablation=iv.HeadAblation(keep, iv.image_mask(
                model, wide["input_ids"]), baseline)):
            model(**wide)


def test_unknown_family_and_flow_outside_attention_are_named(built):
    model, _ = built("llava")

    class Other:
        config = type("C", (), {"model_type": "blip2"})()
    with pytest.raises(ValueError, match="unknown model family 'blip2'"):
        families.family_of(Other())
    assert families.blocking_problem(model) is None
    qwen3 = type("M", (), {"config": type("C", (), {"model_type": "qwen3_vl"})()})()
    assert "deepstack" in families.blocking_problem(qwen3)
    mistral = type("M", (), {"config": type("C", (), {"model_type": "mistral3"})()})()
    with pytest.raises(ValueError, match="no patch layout is known"):
        families.patch_layout(mistral, None, {"input_ids": torch.zeros(1, 3, dtype=torch.long)}, (64, 64))


def test_fast_path_refuses_a_prefix_lm_and_masks_y_falls_back(built, monkeypatch):
    model, processor = built("llava")
    iv.install(model, "sdpa")
    task = _task(model, processor)
    keep = torch.rand(5, *iv.text_layers_and_heads(model)) > 0.5
    fast = experiment.masks_y(model, task, iv.Baseline("zero"), keep)
    monkeypatch.setitem(families.FAMILIES, "llava", families.Family("llava", prefix_lm=True))
    with pytest.raises(ValueError, match="prefix-LM mask"):
        PrefixReuse(model, task.inputs, iv.Baseline("zero"))
    full = experiment.masks_y(model, task, iv.Baseline("zero"), keep)  # batched full forwards instead
    assert abs(full - fast).max() <= 1e-4


def test_saved_tiny_models_load_through_models_load(tmp_path):
    """The folders the family CI profile runs the chapters on load with the stock Auto classes
    (an image-only processor where the stock one needs torchvision for video)."""
    for family in ("qwen2_5_vl", "internvl"):
        tiny.save(family, tmp_path / family)
        model, processor = models.load(str(tmp_path / family))
        assert families.family_of(model).name == family
        inputs = _batch(processor, [e.load_image() for e in _examples(1)])
        assert int(families.image_token_mask(model, inputs["input_ids"]).sum()) > 0


def test_zz_exactly_the_tested_families_ran():
    """Runs last in this file: every check above passed for exactly ``models.TESTED_FAMILIES``,
    which is also the adapter table's list of tested families."""
    assert set(models.TESTED_FAMILIES) == {n for n, f in families.FAMILIES.items() if f.tested}
    checks = ["layout", "groups", "interventions-sdpa", "interventions-eager", "no-leak-zero", "no-leak-dataset-mean",
              "fast-path-sdpa", "fast-path-eager", "knockout-suffix-sdpa", "knockout-suffix-eager"]
    for check in checks:
        assert RAN[check] == set(models.TESTED_FAMILIES), (check, sorted(RAN[check]))


def test_compat_table_measures_every_tested_family():
    from headflow.book import compat

    t = compat.table()
    assert list(t.index) == list(models.TESTED_FAMILIES)
    assert t["empty ablation bit-identical"].all() and t["knockout changes answer"].all()
    assert (t["no_leak (max |diff|)"].astype(float) <= 1e-5).all()
    fast = t["fast path (max |fast - full|)"]
    assert fast["gemma3"].startswith("refused: a sliding window")
    assert (fast.drop("gemma3").astype(float) <= 1e-4).all()
    assert t.loc["llava_next", "views"] == 2 and t.loc["internvl", "views"] == 5 and t.loc["idefics3", "views"] == 5


@pytest.mark.slow
def test_families_profile_runs_chapters_1_to_3_on_every_tested_family(tmp_path):
    """The notebooks run unchanged on each family's tiny model (model=tiny:<family>), as mechanics
    runs that keep every image and say so; the profile refuses to write into book/."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    bad = subprocess.run([sys.executable, "-m", "headflow.run", "--profile", "families", "--out",
                          str(REPO_ROOT / "book")], capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "never into book/" in bad.stderr
    r = subprocess.run([sys.executable, "-m", "headflow.run", "--profile", "families", "--out", str(tmp_path)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    n_classes = len(coco.class_names(coco.resolve_set("fashionscenes/eval")))
    for fam in models.TESTED_FAMILIES:
        d = tmp_path / f"tiny_{fam}"
        task = json.loads((d / "results" / "task.json").read_text())
        n_task = -(-20 // n_classes) * n_classes  # n_images 20: the same number from every class
        assert task["model"] == f"tiny:{fam}" and task["n_images"] == n_task and task["group_sizes"]["object"] > 0
        single = json.loads((d / "results" / "single_head.json").read_text())
        attribution = json.loads((d / "results" / "head_attribution.json").read_text())
        assert attribution["n_images"] == n_classes and attribution["n_masks"] == 60  # all kept, one per class
        assert single["status"]["verdict"]
        for nb in ("02-single-head-ablation", "03-head-attribution"):
            assert f"mechanics run: all {n_classes} images kept" in (d / f"{nb}.ipynb").read_text()


def _mixed_size_set(tmp_path):
    """A COCO set of FashionScenes images, every second one widened to 96x64 (its mask too)."""
    import json

    exs = coco.load_set(coco.resolve_set("fashionscenes/eval"))[:24]
    (tmp_path / "images").mkdir()
    images, anns = [], []
    for i, e in enumerate(exs):
        img, mask = e.load_image(), e.mask
        if i % 2:
            img = img.resize((96, 64))
            mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((96, 64))) >= 128
        img.save(tmp_path / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": img.width, "height": img.height})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": coco.class_names(
            coco.resolve_set("fashionscenes/eval")).index(e.class_name) + 1, "segmentation": coco.encode_mask(mask),
            "area": int(mask.sum()), "bbox": [0, 0, img.width, img.height], "iscrowd": 0})
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(coco.class_names(coco.resolve_set("fashionscenes/eval")))]
    (tmp_path / "instances.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return tmp_path


def test_one_image_size_gives_every_image_the_same_positions(tmp_path):
    """Qwen2-VL's token count follows the image's size: images of two sizes make the per-position
    dataset-mean baseline undefined (the study refuses, naming the fix); image_size brings every
    image to one size (scaled to cover, centre-cropped, mask and box alike) and the study runs."""
    from headflow.method import study

    folder = _mixed_size_set(tmp_path)
    exs = coco.load_set(folder / "instances.json")
    assert {e.load_image().size for e in exs} == {(64, 64), (96, 64)}
    with pytest.raises(ValueError, match="different numbers of image positions.*one size"):
        study.setup("tiny:qwen2_vl", str(folder), per_class=1, n_reference=4, keep="all")
    fixed = coco.at_size(exs, (96, 64))
    assert {e.load_image().size for e in fixed} == {(96, 64)} and {e.mask.shape for e in fixed} == {(64, 96)}
    square = fixed[0]  # a 64x64 image scaled by 1.5 and cropped to 64 rows: the mask keeps its share within 0.1
    assert abs(square.mask.mean() - exs[0].mask.mean()) < 0.1
    st = study.setup("tiny:qwen2_vl", str(folder), per_class=1, n_reference=4, keep="all", image_size=[96, 64])
    counts = {int(iv.image_mask(st.model, t.inputs["input_ids"]).sum()) for t in st.tasks}
    assert len(counts) == 1 and st.meta["image_size"] == [96, 64]
