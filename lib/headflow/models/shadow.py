"""Shadow models: each paper-scale checkpoint as the study's code sees it, offline, with random weights.

A shadow of a checkpoint (``model="shadow:<hub id>"``) keeps everything of it that the study's
code paths touch: the real vocabulary (:mod:`headflow.models.vocabularies`), the published chat
template (``data/templates``), the image processor as released (``processor`` in
``data/checkpoints.yml``: LLaVA-1.5's 336 px crop, LLaVA-NeXT's grid pinpoints, Qwen's min/max
pixels, InternVL3-hf's single 448 px view), the text model's architecture class, its real number
of query heads per layer and its key/value-head ratio, its vocabulary size and tied embeddings.
What it shrinks: 2 text layers of head dimension 16, a one-layer vision tower of width 32, random
weights.  So token groups, answers, image-token counts and the interventions' shapes are the real
checkpoint's; what the shadow answers is noise (its chapters are *mechanics runs*).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch
import transformers as T
import yaml
from huggingface_hub import snapshot_download

from headflow.models import families, vocabularies
from headflow.util.paths import DATA_DIR

PREFIX = "shadow:"
CHECKPOINTS_FILE = DATA_DIR / "checkpoints.yml"
TEMPLATE_DIR = DATA_DIR / "templates"
TEXT_LAYERS = 2
HEAD_DIM = 16
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
TEXT_CONFIGS = {"llama": T.LlamaConfig, "mistral": T.MistralConfig, "qwen2": T.Qwen2Config}


@lru_cache(maxsize=1)
def _table() -> dict:
    return yaml.safe_load(CHECKPOINTS_FILE.read_text())


def checkpoints() -> dict[str, dict]:
    """``{hub id: entry of data/checkpoints.yml}`` for the ten checkpoints."""
    return {c["id"]: c for c in _table()["checkpoints"]}


def entry(checkpoint: str) -> dict:
    table = checkpoints()
    if checkpoint not in table:
        raise ValueError(f"no shadow for {checkpoint!r}: data/checkpoints.yml lists {sorted(table)}")
    return table[checkpoint]


def template(checkpoint: str) -> str:
    """The checkpoint's published chat template (``data/templates/<name>.jinja``)."""
    return (TEMPLATE_DIR / f"{entry(checkpoint)['template']}.jinja").read_text()


def tokenizer(checkpoint: str):
    """The checkpoint's real tokenizer with the image tokens its processor expands."""
    e = entry(checkpoint)
    tok = vocabularies.tokenizer(e["vocabulary"])
    if e["family"] in ("llava", "llava_next"):  # llava-hf: <image> 32000, then <pad> 32001 (in this order)
        tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
        tok.add_special_tokens({"pad_token": "<pad>"})
    tok.chat_template = template(checkpoint)
    return tok


def _text_config(e: dict, tok, **extra):
    t = e["text"]
    hidden = t["heads"] * HEAD_DIM
    # InternVL's processor needs a "<video>" token name; no published id is known for it, so the shadow puts it
    # just past the embedding (151674): an image-only study never feeds it (vocabularies.INTERNVL_ADDED)
    beyond = {tok.convert_tokens_to_ids("<video>")} if e["family"] == "internvl" else set()
    over = [i for i in range(t["vocab"], len(tok)) if i not in beyond]
    if over:
        raise ValueError(f"{e['id']}: the tokenizer has {len(tok)} tokens, more than the model's {t['vocab']}")
    return TEXT_CONFIGS[t["arch"]](
        vocab_size=t["vocab"], hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=t["heads"], num_key_value_heads=t["kv_heads"], head_dim=HEAD_DIM,
        max_position_embeddings=8192, tie_word_embeddings=t["tied"], pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **extra)


def _clip(p: dict) -> dict:
    return {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "image_size": p["crop"], "patch_size": p["patch"]}


def _llava(e: dict, tok):
    p = e["processor"]
    ip = T.CLIPImageProcessorPil(size={"shortest_edge": p["size"]}, crop_size={"height": p["crop"], "width": p["crop"]},
                                 do_center_crop=True, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    proc = T.LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=p["patch"],
                            vision_feature_select_strategy=p["feature_strategy"], num_additional_image_tokens=1,
                            chat_template=tok.chat_template)
    cfg = T.LlavaConfig(vision_config=T.CLIPVisionConfig(**_clip(p)), text_config=_text_config(e, tok),
                        image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                        vision_feature_select_strategy=p["feature_strategy"])
    return T.LlavaForConditionalGeneration._from_config(cfg, attn_implementation="sdpa"), proc


def _llava_next(e: dict, tok):
    p = e["processor"]
    ip = T.LlavaNextImageProcessorPil(size={"shortest_edge": p["size"]}, crop_size={"height": p["crop"],
                                      "width": p["crop"]}, image_grid_pinpoints=p["grid_pinpoints"], do_pad=True,
                                      image_mean=CLIP_MEAN, image_std=CLIP_STD)
    proc = T.LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=p["patch"],
                                vision_feature_select_strategy=p["feature_strategy"], num_additional_image_tokens=1,
                                chat_template=tok.chat_template)
    cfg = T.LlavaNextConfig(vision_config=T.CLIPVisionConfig(**_clip(p)), text_config=_text_config(e, tok),
                            image_token_index=tok.convert_tokens_to_ids("<image>"),
                            image_grid_pinpoints=p["grid_pinpoints"], vision_feature_layer=-1,
                            vision_feature_select_strategy=p["feature_strategy"])
    return T.LlavaNextForConditionalGeneration._from_config(cfg, attn_implementation="sdpa"), proc


def _qwen(e: dict, tok):
    p = e["processor"]
    ip = T.Qwen2VLImageProcessorPil(min_pixels=p["min_pixels"], max_pixels=p["max_pixels"], patch_size=p["patch"],
                                    merge_size=p["merge"], temporal_patch_size=p["temporal_patch"])
    qwen25 = e["family"] == "qwen2_5_vl"
    proc_cls = T.Qwen2_5_VLProcessor if qwen25 else T.Qwen2VLProcessor
    proc = families.image_only_processor(proc_cls)(image_processor=ip, tokenizer=tok, video_processor=None,
                                                   chat_template=tok.chat_template)
    rope = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]}  # head_dim 16
    text = _text_config(e, tok, rope_parameters=rope)
    hidden = text.hidden_size
    ids = tok.convert_tokens_to_ids
    special = dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                   vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    if qwen25:
        vis = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=p["patch"],
                   spatial_merge_size=p["merge"], temporal_patch_size=p["temporal_patch"], window_size=112,
                   out_hidden_size=hidden, fullatt_block_indexes=[0])
        cfg = T.Qwen2_5_VLConfig(vision_config=vis, text_config=text.to_dict(), **special)
        return T.Qwen2_5_VLForConditionalGeneration._from_config(cfg, attn_implementation="sdpa"), proc
    vis = dict(depth=1, embed_dim=32, hidden_size=hidden, num_heads=2, patch_size=p["patch"],
               spatial_merge_size=p["merge"], temporal_patch_size=p["temporal_patch"], mlp_ratio=2)
    cfg = T.Qwen2VLConfig(vision_config=vis, text_config=text.to_dict(), **special)
    return T.Qwen2VLForConditionalGeneration._from_config(cfg, attn_implementation="sdpa"), proc


def _internvl(e: dict, tok):
    p = e["processor"]
    ip = T.GotOcr2ImageProcessorPil(size={"height": p["size"], "width": p["size"]},
                                    crop_to_patches=p["crop_to_patches"], min_patches=p["min_patches"],
                                    max_patches=p["max_patches"], image_mean=[0.485, 0.456, 0.406],
                                    image_std=[0.229, 0.224, 0.225])
    proc = families.image_only_processor(T.InternVLProcessor)(image_processor=ip, tokenizer=tok, video_processor=None,
                                                              image_seq_length=p["image_seq_length"],
                                                              chat_template=tok.chat_template)
    vis = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
           "image_size": [p["size"], p["size"]], "patch_size": [e["vision"]["patch"]] * 2}
    cfg = T.InternVLConfig(vision_config=vis, text_config=_text_config(e, tok).to_dict(),
                           image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
                           image_seq_length=p["image_seq_length"], downsample_ratio=p["downsample_ratio"])
    return T.InternVLForConditionalGeneration._from_config(cfg, attn_implementation="sdpa"), proc


BUILDERS = {"llava": _llava, "llava_next": _llava_next, "qwen2_vl": _qwen, "qwen2_5_vl": _qwen, "internvl": _internvl}


def build(checkpoint: str, seed: int = 0):
    """``(model, processor)`` of the checkpoint's shadow, in eval mode (random weights from ``seed``)."""
    e = entry(checkpoint)
    tok = tokenizer(checkpoint)
    torch.manual_seed(seed)
    model, processor = BUILDERS[e["family"]](e, tok)
    return model.eval(), processor


def sources(checkpoint: str) -> list[Path]:
    """The files a shadow is built from (its cache key, with this module's source)."""
    e = entry(checkpoint)
    return [Path(__file__), vocabularies.tokenizer_file(e["vocabulary"]), TEMPLATE_DIR / f"{e['template']}.jinja",
            CHECKPOINTS_FILE]


def save(checkpoint: str, folder: str | Path, seed: int = 0) -> Path:
    """Save the shadow's model and processor to ``folder`` (readable by :func:`headflow.models.loading.load`)."""
    model, processor = build(checkpoint, seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# where each recorded processor setting sits in a checkpoint's preprocessor_config.json
_PROCESSOR_KEYS = {"size": ("size", "shortest_edge"), "crop": ("crop_size", "height"),
                   "grid_pinpoints": ("image_grid_pinpoints",), "min_pixels": ("min_pixels",),
                   "max_pixels": ("max_pixels",), "merge": ("merge_size",), "temporal_patch": ("temporal_patch_size",),
                   "crop_to_patches": ("crop_to_patches",), "min_patches": ("min_patches",),
                   "max_patches": ("max_patches",)}


def local_snapshot(checkpoint: str) -> Path | None:
    """The checkpoint's snapshot in the local Hugging Face cache, if there is one (no download)."""
    try:
        return Path(snapshot_download(checkpoint, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (or no hub library state): nothing to compare
        return None


def snapshot_differences(checkpoint: str, snapshot: Path | None = None) -> dict | None:
    """What a local snapshot of the checkpoint holds that differs from what its shadow uses: the
    chat template (``chat_template.json`` or ``.jinja``) and the recorded processor settings
    (``preprocessor_config.json``), as ``{name: (snapshot's, committed)}``; ``None`` without a snapshot."""
    folder = Path(snapshot) if snapshot is not None else local_snapshot(checkpoint)
    if folder is None or not folder.is_dir():
        return None
    diffs = {}
    jinja, js = folder / "chat_template.jinja", folder / "chat_template.json"
    theirs = jinja.read_text() if jinja.exists() else json.loads(js.read_text())["chat_template"] if js.exists() else None
    if theirs is not None and theirs != template(checkpoint):
        diffs["chat_template"] = (theirs, template(checkpoint))
    pre = folder / "preprocessor_config.json"
    if pre.exists():
        cfg = json.loads(pre.read_text())
        for name, ours in entry(checkpoint)["processor"].items():
            if name not in _PROCESSOR_KEYS:
                continue
            value = cfg
            for key in _PROCESSOR_KEYS[name]:
                value = value.get(key) if isinstance(value, dict) else None
            if value is not None and value != ours:
                diffs[name] = (value, ours)
    return diffs
