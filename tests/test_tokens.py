import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaProcessor

from headflow.images import coco
from headflow.mechanism import tokens
from headflow.models import llava_builder
from headflow.task.prompt import build_prompt, question_text

try:
    from transformers import CLIPImageProcessorPil as ImageProcessor
except ImportError:  # transformers 4.x
    from transformers import CLIPImageProcessor as ImageProcessor

Q = question_text("object")


def _groups(processor, config, image, mask=None, question=Q):
    prompt = build_prompt(processor, question)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    return tokens.resolve(processor, config, question, inputs, mask=mask), inputs


def test_organism_layout(tiny_llava):
    model, processor = tiny_llava
    ex = coco.load_set(coco.resolve_set("fashionscenes/eval"))[0]
    g, inputs = _groups(processor, model.config, ex.load_image(), ex.mask)
    ids = inputs["input_ids"][0]
    toks = g.tokens
    assert g.sizes["image"] == 64 and g.grid == (8, 8)
    img = g["image"]
    assert torch.equal(img, torch.arange(int(img[0]), int(img[0]) + 64))
    assert (ids[img] == model.config.image_token_id).all()
    assert [toks[i] for i in g["role"]] == ["ASSISTANT", ":"]
    assert g["final"].tolist() == [len(ids) - 1]
    assert " ".join(toks[i] for i in g["question"]) == "What is the main object in the image ? Answer in one word ."
    assert [toks[i] for i in g["system"]] == ["<s>", "USER", ":"]
    # groups partition the prompt (final is inside role)
    cover = torch.cat([g[n] for n in ("image", "question", "role", "system")]).sort().values
    assert torch.equal(cover, torch.arange(len(ids)))
    assert set(g["object"].tolist()) | set(g["background"].tolist()) == set(img.tolist())
    assert not set(g["object"].tolist()) & set(g["background"].tolist())


def test_object_tokens_are_patches_touched_by_the_mask(tiny_llava):
    model, processor = tiny_llava
    for ex in coco.load_set(coco.resolve_set("fashionscenes/eval"))[:10]:
        g, _ = _groups(processor, model.config, ex.load_image(), ex.mask)
        touched = ex.mask.reshape(8, 8, 8, 8).any(axis=(1, 3)).reshape(-1)  # 8x8 grid of 8x8 px patches
        expected = (g["image"][torch.from_numpy(touched)]).tolist()
        assert g["object"].tolist() == expected


def test_other_objects_are_background_patches_touched_by_another_item(tiny_llava):
    model, processor = tiny_llava
    for ex in coco.load_set(coco.resolve_set("fashionscenes/eval"))[:10]:
        assert len(ex.others) >= 1 and len(ex.other_classes) == len(ex.others)
        image = ex.load_image()
        inputs = processor(images=image, text=build_prompt(processor, question_text("object")), return_tensors="pt")
        g = tokens.resolve(processor, model.config, question_text("object"), inputs, mask=ex.mask, others=ex.others)
        main = ex.mask.reshape(8, 8, 8, 8).any(axis=(1, 3)).reshape(-1)
        other = ex.others.any(0).reshape(8, 8, 8, 8).any(axis=(1, 3)).reshape(-1)
        expected = g["image"][torch.from_numpy(other & ~main)].tolist()
        assert g["other_objects"].tolist() == expected and expected
        assert set(expected) <= set(g["background"].tolist())


def _llava15_like():
    """A tiny random LLaVA with LLaVA-1.5's image geometry: 336 px, patch 14 -> 576 image tokens,
    shortest-edge resize + centre crop, and a different chat template (with a system line)."""
    tok = llava_builder.build_tokenizer()
    ip = ImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_center_crop=True)
    template = llava_builder.CHAT_TEMPLATE.replace("{% for message in messages %}",
                                              "A chat between a user and an assistant. {% for message in messages %}", 1)
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=template)
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                     num_attention_heads=2, image_size=336, patch_size=14),
                      text_config=LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                              num_hidden_layers=1, num_attention_heads=2),
                      image_token_id=tok.convert_tokens_to_ids("<image>"))
    return proc, cfg


def test_llava15_geometry_and_template():
    proc, cfg = _llava15_like()
    w, h = 120, 80  # not square: resized to 504x336, then 84 px cropped off each side
    mask = np.zeros((h, w), bool)
    mask[30:50, 50:70] = True  # in the middle: survives the crop
    g, inputs = _groups(proc, cfg, Image.new("RGB", (w, h), "gray"), mask)
    assert g.sizes["image"] == 576 and g.grid == (24, 24)
    assert [g.tokens[i] for i in g["role"]] == ["ASSISTANT", ":"]
    assert g.sizes["system"] > 3  # the system line's tokens
    # rows 30..50 of 80 px -> 126..210 of 336 -> patch rows 9..14; cols 50..70 of 120 -> 210..294 of 504,
    # minus the 84 px crop -> 126..210 -> patch cols 9..14
    frac = g.object_fraction
    assert frac[9:15, 9:15].min() > 0 and frac.sum() > 0
    assert frac[:8].sum() == 0 and frac[16:].sum() == 0 and frac[:, :8].sum() == 0 and frac[:, 16:].sum() == 0
    # an object in the cropped-off margin leaves the object group empty, and asking for it says so
    edge = np.zeros((h, w), bool)
    edge[30:50, 0:15] = True
    g2, _ = _groups(proc, cfg, Image.new("RGB", (w, h), "gray"), edge)
    with pytest.raises(ValueError, match="token group 'object' is empty"):
        g2.nonempty("object")


def test_bad_group_requests(tiny_llava):
    model, processor = tiny_llava
    g, inputs = _groups(processor, model.config, Image.new("RGB", (64, 64)))
    with pytest.raises(KeyError, match="unknown token group 'caption'"):
        g["caption"]
    assert g["answer"].numel() == 0  # no teacher-forced answer tokens for a one-token answer
    with pytest.raises(ValueError, match="pass mask="):
        g["object"]
    with pytest.raises(ValueError, match="does not occur in the prompt"):
        tokens.resolve(processor, model.config, "Is this a cat?", inputs, prompt=build_prompt(processor, Q))
