"""Tiny random-weight models of each tested family, with offline processors (mechanics only).

No real weights can be downloaded here, so every family's code path is proven on a model built
from its stock transformers config class, with a processor built from a locally made word-level
tokenizer and the family's own image processor at explicit sizes.  Each exercises its family's
hard case on the 64x64 FashionScenes images:

==============  =====================================================================
llava           one 8x8 grid (the organism's geometry)
llava_next      anyres: 2x2 tiles of 32 px plus the base view, a newline slot per row
qwen2_vl        grouped-query attention, M-RoPE, 2x2 merge (non-square with a non-square image)
qwen2_5_vl      as qwen2_vl, with window attention in the vision tower
internvl        2x2 tiles of 32 px plus a thumbnail, pixel shuffle, ``<img>``/``</img>``
idefics3        image splitting: 2x2 tiles plus the global image, row/col markers
gemma3          sliding-window layers, bidirectional image attention via ``token_type_ids``,
                4x4 tokens pooled from 8x8 patches
==============  =====================================================================

A random-weight model answers nothing correctly: these models test mechanics, never findings.

    model, processor = tiny.build("internvl")
    tiny.save("internvl", "/tmp/tiny/internvl")   # a folder that headflow.models.loading.load reads

``python -m headflow.tiny --out DIR`` saves every family under ``DIR/<family>``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import transformers as T
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from headflow.images.fashionscenes import CLASSES
from headflow.models import families, llava_builder
from headflow.task.prompt import QUESTIONS

FAMILIES = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "internvl", "idefics3", "gemma3")

_WORDS = (" ".join(QUESTIONS.values()) + " : USER ASSISTANT User Assistant user assistant model system "
          "t-shirt trouser pullover dress coat sandal shirt sneaker bag boot "
          "red green blue yellow white black orange purple left right top bottom center middle")

# the chat template of each family: the image placeholder the processor expands, then the question
_TEMPLATES = {
    "llava_next": ("{% for m in messages %}{% if m['role'] == 'user' %}USER: {% for p in m['content'] %}"
                   "{% if p['type'] == 'image' %}<image> {% else %}{{ p['text'] }}{% endif %}{% endfor %} "
                   "{% else %}ASSISTANT: {% for p in m['content'] %}{{ p['text'] }}{% endfor %}</s>"
                   "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"),
    "qwen": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for p in m['content'] %}"
             "{% if p['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ p['text'] }}"
             "{% endif %}{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
             "{% endif %}"),
    "internvl": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for p in m['content'] %}"
                 "{% if p['type'] == 'image' %}<IMG_CONTEXT>\n{% else %}{{ p['text'] }}{% endif %}{% endfor %}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    "idefics3": ("<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}:{% for p in m['content'] %}"
                 "{% if p['type'] == 'image' %}<image>{% else %}{{ p['text'] }}{% endif %}{% endfor %}"
                 "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"),
    "gemma3": ("{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
               "{% for p in m['content'] %}"
               "{% if p['type'] == 'image' %}<start_of_image>{% else %}{{ p['text'] }}{% endif %}{% endfor %}"
               "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"),
}
_SPECIALS = {
    "llava_next": ["<image>"],
    "qwen": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
             "<|video_pad|>"],
    "internvl": ["<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
    "idefics3": ["<|im_start|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>", "<global-img>"]
                + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)],
    "gemma3": ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"],
}
_EXTRA = {  # the tokenizer's named special tokens each processor reads
    "llava_next": {"image_token": "<image>"},
    "qwen": {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "vision_bos_token": "<|vision_start|>",
             "vision_eos_token": "<|vision_end|>"},
    "internvl": {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                 "video_token": "<video>"},
    "idefics3": {"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
                 "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"},
    "gemma3": {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
}


def tokenizer(kind: str):
    """A word-level tokenizer for the questions, answers and role words, with ``kind``'s specials."""

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Split(Regex(r"[:?.,]"), behavior="isolated")])
    specials = ["<unk>", "<pad>", "<s>", "</s>"] + _SPECIALS[kind]
    words = _WORDS + " " + " ".join(CLASSES)  # the study's answer words as they are now (a merged class too)
    tok.train_from_iterator([words], trainer=trainers.WordLevelTrainer(special_tokens=specials))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", padding_side="left", extra_special_tokens=_EXTRA[kind],
                                   model_input_names=["input_ids", "attention_mask"])


def _text(tok, n_layers: int = 3, heads: int = 8, kv_heads: int = 2, **extra) -> dict:
    return dict(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=n_layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=1024,
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                tie_word_embeddings=False, **extra)


def _vision(**extra) -> dict:
    return {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, **extra}


def _llava(vision_layers: int):
    processor = llava_builder.build_processor()
    arch = llava_builder.LlavaArch(vision_hidden=32, vision_layers=vision_layers, vision_heads=2, text_hidden=64,
                                   text_intermediate=128, text_layers=3, text_heads=4)
    return llava_builder.build_model(processor, arch), processor


def _llava_next(vision_layers: int):
    tok = tokenizer("llava_next")
    ip = T.LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                      image_grid_pinpoints=[[32, 64], [64, 32], [64, 64]], do_pad=True)
    proc = T.LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                                num_additional_image_tokens=1, chat_template=_TEMPLATES["llava_next"])
    vis = T.CLIPVisionConfig(**_vision(image_size=32, patch_size=8, num_hidden_layers=vision_layers))
    cfg = T.LlavaNextConfig(vision_config=vis, text_config=T.LlamaConfig(**_text(tok)),
                            image_token_index=tok.convert_tokens_to_ids("<image>"),
                            image_grid_pinpoints=[[32, 64], [64, 32], [64, 64]], vision_feature_layer=-1)
    return T.LlavaNextForConditionalGeneration._from_config(cfg, attn_implementation="sdpa"), proc


def _qwen(family: str, vision_layers: int):
    tok = tokenizer("qwen")
    ip = T.Qwen2VLImageProcessorPil(min_pixels=32 * 32, max_pixels=64 * 64, patch_size=8, merge_size=2,
                                    temporal_patch_size=2)
    proc_cls = T.Qwen2VLProcessor if family == "qwen2_vl" else T.Qwen2_5_VLProcessor
    proc = families.image_only_processor(proc_cls)(image_processor=ip, tokenizer=tok, video_processor=None,
                                 chat_template=_TEMPLATES["qwen"])
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}  # head_dim 16
    ids = tok.convert_tokens_to_ids
    special = dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                   vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    if family == "qwen2_vl":
        vis = dict(depth=vision_layers, embed_dim=32, hidden_size=128, num_heads=2, patch_size=8,
                   spatial_merge_size=2, temporal_patch_size=2, mlp_ratio=2)
        cfg = T.Qwen2VLConfig(vision_config=vis, text_config=_text(tok, rope_parameters=rope), **special)
        return T.Qwen2VLForConditionalGeneration._from_config(cfg, attn_implementation="sdpa"), proc
    vis = dict(depth=vision_layers, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=8,
               spatial_merge_size=2, temporal_patch_size=2, window_size=32, out_hidden_size=128,
               fullatt_block_indexes=[max(vision_layers - 1, 0)])
    cfg = T.Qwen2_5_VLConfig(vision_config=vis, text_config=_text(tok, rope_parameters=rope), **special)
    return T.Qwen2_5_VLForConditionalGeneration._from_config(cfg, attn_implementation="sdpa"), proc


def _internvl(vision_layers: int):
    tok = tokenizer("internvl")
    ip = T.GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}, crop_to_patches=True, min_patches=1,
                                    max_patches=4)
    proc = families.image_only_processor(T.InternVLProcessor)(image_processor=ip, tokenizer=tok, video_processor=None,
                                            image_seq_length=16, chat_template=_TEMPLATES["internvl"])
    vis = _vision(image_size=[32, 32], patch_size=[4, 4], num_hidden_layers=vision_layers)
    cfg = T.InternVLConfig(vision_config=vis, text_config=T.Qwen2Config(**_text(tok)).to_dict(),
                           image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=16,
                           downsample_ratio=0.5)
    return T.InternVLForConditionalGeneration._from_config(cfg, attn_implementation="sdpa"), proc


def _idefics3(vision_layers: int):
    tok = tokenizer("idefics3")
    ip = T.Idefics3ImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32},
                                     do_image_splitting=True)
    proc = T.Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=16,
                               chat_template=_TEMPLATES["idefics3"])
    vis = _vision(image_size=32, patch_size=4, num_hidden_layers=vision_layers)
    cfg = T.Idefics3Config(vision_config=vis, text_config=T.LlamaConfig(**_text(tok)).to_dict(),
                           image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=2)
    return T.Idefics3ForConditionalGeneration._from_config(cfg, attn_implementation="sdpa"), proc


def _gemma3(vision_layers: int):
    tok = tokenizer("gemma3")
    ip = T.Gemma3ImageProcessorPil(size={"height": 32, "width": 32}, do_pan_and_scan=False)
    proc = T.Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=16,
                             chat_template=_TEMPLATES["gemma3"])
    vis = T.SiglipVisionConfig(**_vision(image_size=32, patch_size=4, num_hidden_layers=vision_layers))
    # layers 0 and 1 slide over 8 tokens, layer 2 is global: the prompt is longer than the window
    txt = T.Gemma3TextConfig(**_text(tok, head_dim=16), query_pre_attn_scalar=16, sliding_window=8,
                             layer_types=["sliding_attention", "sliding_attention", "full_attention"])
    ids = tok.convert_tokens_to_ids
    cfg = T.Gemma3Config(vision_config=vis, text_config=txt, mm_tokens_per_image=16,
                         boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
                         image_token_index=ids("<image_soft_token>"))
    model = T.Gemma3ForConditionalGeneration._from_config(cfg, attn_implementation="sdpa")
    with torch.no_grad():  # initialised to zeros, which would leave the image without any effect
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, 0.5)
    return model, proc


_VISION_ATTN_OUT = ("self_attn.out_proj", "attn.proj", "attention.projection_layer")


def build(family: str, seed: int = 0, local_vision: bool = False):
    """``(model, processor)`` of ``family``'s tiny model, in eval mode (random weights from ``seed``).
    ``local_vision=True`` zeroes the vision tower's attention outputs, so that each image token
    depends on its own patches only (the patch-layout test perturbs one region and watches which
    tokens change)."""
    builders = {"llava": _llava, "llava_next": _llava_next, "qwen2_vl": lambda v: _qwen("qwen2_vl", v),
                "qwen2_5_vl": lambda v: _qwen("qwen2_5_vl", v), "internvl": _internvl, "idefics3": _idefics3,
                "gemma3": _gemma3}
    if family not in builders:
        raise ValueError(f"no tiny model for family {family!r}; choose one of {FAMILIES}")
    torch.manual_seed(seed)
    model, processor = builders[family](1)
    if local_vision:
        with torch.no_grad():
            for name, mod in model.named_modules():
                if ("vision" in name or "visual" in name) and name.endswith(_VISION_ATTN_OUT):
                    mod.weight.zero_()
                    if mod.bias is not None:
                        mod.bias.zero_()
    return model.eval(), processor


def save(family: str, folder: str | Path, seed: int = 0) -> Path:
    """Save ``family``'s tiny model and processor to ``folder`` (readable by :func:`headflow.models.loading.load`)."""
    model, processor = build(family, seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder; each family goes to <out>/<family>")
    ap.add_argument("--families", nargs="*", default=list(FAMILIES))
    args = ap.parse_args(argv)
    for fam in args.families:
        print(fam, save(fam, Path(args.out) / fam))


if __name__ == "__main__":
    main()
