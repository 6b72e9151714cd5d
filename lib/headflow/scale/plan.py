"""The paper-scale plan (profile ``full``), checked without weights.

``data/checkpoints.yml`` holds, for the ten checkpoints of the paper-scale sweep, the architecture
numbers from each checkpoint's ``config.json``.  For each, this module

- builds the model from those numbers on the ``meta`` device (no weights, no download) and checks
  its parameter count against the count the model page lists (within 3%), reporting how far both
  are from the size in the name (Qwen2-VL-7B has 8.3 B parameters);
- counts image tokens at the study's image size (640 x 480, the commonest COCO val2017 size) with
  the family's own processor logic (LLaVA-NeXT's anyres feature count, Qwen2-VL's ``smart_resize``,
  InternVL's tiling);
- counts FLOPs with torch's ``FlopCounterMode`` on the meta model: a *full forward* (vision tower
  plus the language model over the whole prompt) and a *suffix pass* of the fast path (the language
  model over the text after the image, plus its attention to the cached prefix, counted as
  ``4 x layers x heads x head_dim x suffix x prefix``, which the meta run over the suffix alone misses);
- estimates memory: bf16 weights + the fast path's prefix cache (clean and ablated keys and values:
  ``4 x layers x kv_heads x head_dim x prefix x 2 bytes``) + the suffix batch's activations
  (``batch x suffix x (hidden + intermediate) x 2 bytes``, one layer's worth);
- and turns the profile's workload (images x masks per image) into H100 hours at a stated model-FLOP
  utilisation (``mfu``) of the H100's dense bf16 peak (989 TFLOP/s).

    python -m headflow.plan --profile full      # prints the table, writes book/results/plan_full.json
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from types import SimpleNamespace

import torch
import transformers as T
import yaml
from huggingface_hub import snapshot_download
from torch.utils.flop_counter import FlopCounterMode
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from headflow.book import realpath
from headflow.book.runner import PROFILE_FILE
from headflow.images.coco import COCO_CLASSES
from headflow.method import attribution
from headflow.scale import passes
from headflow.util.paths import DATA_DIR, REPO_ROOT

CHECKPOINTS = DATA_DIR / "checkpoints.yml"
IMAGE_SIZE = (480, 640)  # (height, width)
H100_BF16_TFLOPS = 989.0
TOLERANCE = 0.03


def load_table(path: Path = CHECKPOINTS) -> list[dict]:
    return yaml.safe_load(Path(path).read_text())["checkpoints"]


# ------------------------------------------------------------------------------------ configs
def _text_config(t: dict):
    common = dict(vocab_size=t["vocab"], hidden_size=t["hidden"], intermediate_size=t["intermediate"],
                  num_hidden_layers=t["layers"], num_attention_heads=t["heads"], num_key_value_heads=t["kv_heads"],
                  max_position_embeddings=32768, tie_word_embeddings=t["tied"])
    cls = {"llama": T.LlamaConfig, "mistral": T.MistralConfig, "qwen2": T.Qwen2Config}.get(t["arch"])
    if cls is None:
        raise ValueError(f"no text architecture {t['arch']!r} in the plan; add it to headflow.scale.plan._text_config")
    return cls(**common)


def build_config(entry: dict):
    """A transformers config for ``entry`` of the checkpoint table (the stock class of its family)."""

    t, v, fam = entry["text"], entry["vision"], entry["family"]
    text = _text_config(t)
    if fam in ("llava", "llava_next"):
        vis = T.CLIPVisionConfig(hidden_size=v["hidden"], intermediate_size=v["intermediate"],
                                 num_hidden_layers=v["layers"], num_attention_heads=v["heads"],
                                 image_size=v["image"], patch_size=v["patch"])
        kw = dict(vision_config=vis, text_config=text, image_token_id=32000, vision_feature_layer=-2,
                  tie_word_embeddings=t["tied"])
        if fam == "llava":
            return T.LlavaConfig(**kw)
        return T.LlavaNextConfig(**kw, image_grid_pinpoints=LLAVA_NEXT_PINPOINTS)
    if fam == "internvl":
        vis = T.InternVLVisionConfig(hidden_size=v["hidden"], intermediate_size=v["intermediate"],
                                     num_hidden_layers=v["layers"], num_attention_heads=v["heads"],
                                     image_size=[v["image"]] * 2, patch_size=[v["patch"]] * 2)
        return T.InternVLConfig(vision_config=vis, text_config=text, downsample_ratio=0.5,
                                tie_word_embeddings=t["tied"])
    if fam in ("qwen2_vl", "qwen2_5_vl"):
        text_kw = text.to_dict()
        text_kw["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}
        if fam == "qwen2_vl":
            vis = dict(depth=v["layers"], embed_dim=v["hidden"], num_heads=v["heads"],
                       mlp_ratio=v["intermediate"] // v["hidden"], hidden_size=t["hidden"], patch_size=v["patch"],
                       spatial_merge_size=2, temporal_patch_size=2)
            return T.Qwen2VLConfig(vision_config=vis, text_config=text_kw, tie_word_embeddings=t["tied"])
        vis = dict(depth=v["layers"], hidden_size=v["hidden"], intermediate_size=v["intermediate"], num_heads=v["heads"],
                   out_hidden_size=t["hidden"], patch_size=v["patch"], spatial_merge_size=2, temporal_patch_size=2,
                   window_size=112, fullatt_block_indexes=[7, 15, 23, 31])
        return T.Qwen2_5_VLConfig(vision_config=vis, text_config=text_kw, tie_word_embeddings=t["tied"])
    raise ValueError(f"unknown family {fam!r} in the checkpoint table; known: llava, llava_next, internvl, qwen2_vl, "
                     "qwen2_5_vl")


LLAVA_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def meta_model(entry: dict):
    """The model of ``entry`` on the meta device (no memory, no weights)."""

    with torch.device("meta"):
        return T.AutoModelForImageTextToText.from_config(build_config(entry))


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) parameters counted once


# ------------------------------------------------------------------------------------ image tokens
def image_tokens(entry: dict, height: int, width: int) -> int:
    """Image tokens of one ``height x width`` image, by the family's processor logic (default settings
    of the checkpoints' processors)."""
    fam, v = entry["family"], entry["vision"]
    if fam == "llava":
        return (v["image"] // v["patch"]) ** 2  # resized and centre-cropped to the tower's size
    if fam == "llava_next":
        fake = SimpleNamespace(image_processor=SimpleNamespace(image_grid_pinpoints=LLAVA_NEXT_PINPOINTS),
                               patch_size=v["patch"], num_additional_image_tokens=1)
        fake._get_unpadded_features = lambda *a: LlavaNextProcessor._get_unpadded_features(fake, *a)
        n = LlavaNextProcessor._get_number_of_features(fake, height, width, v["image"], v["image"])
        return n - 1  # vision_feature_select_strategy "default" drops the CLS feature
    if fam == "internvl":
        p = entry.get("processor", {})  # the released processor's call tiles (tiles_at_call, data/checkpoints.yml)
        ip = GotOcr2ImageProcessorPil(crop_to_patches=p.get("tiles_at_call", p.get("crop_to_patches", True)),
                                      min_patches=p.get("min_patches", 1), max_patches=p.get("max_patches", 12),
                                      size={"height": v["image"], "width": v["image"]})
        tiles = ip.get_number_of_image_patches(height, width, {})
        return tiles * ((v["image"] // v["patch"]) // 2) ** 2  # pixel shuffle: 2x2 patches per token
    if fam in ("qwen2_vl", "qwen2_5_vl"):
        factor = v["patch"] * 2
        h, w = smart_resize(height, width, factor=factor, min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
        return (h // factor) * (w // factor)
    raise ValueError(f"unknown family {fam!r}")


# ------------------------------------------------------------------------------------ FLOPs, memory
def _lm_flops(model, n_tokens: int, mrope: bool) -> int:
    lm = model.model.language_model
    ids = torch.zeros(1, n_tokens, dtype=torch.long, device="meta")
    kw = {}
    if mrope:
        kw["position_ids"] = torch.arange(n_tokens, device="meta")[None, None].expand(3, 1, -1)
    with FlopCounterMode(display=False) as fc:
        h = lm(input_ids=ids, **kw).last_hidden_state
        model.lm_head(h[:, -1:])
    return fc.get_total_flops()


def _vision_flops(model, entry: dict, n_image: int) -> int:
    """The vision tower and projector for one image: measured per tile/view and scaled."""

    fam, v = entry["family"], entry["vision"]
    if fam in ("qwen2_vl", "qwen2_5_vl"):
        return qwen_vision_flops(entry, n_image * 4)  # 2x2 patches merged into each image token
    with FlopCounterMode(display=False) as fc:
        size = v["image"]
        model.model.vision_tower(torch.zeros(1, 3, size, size, device="meta"))
    per_view = (size // v["patch"]) ** 2 if fam != "internvl" else ((size // v["patch"]) // 2) ** 2
    return int(fc.get_total_flops() * n_image / per_view)  # views: LLaVA-NeXT base + grid, InternVL tiles


def qwen_vision_flops(entry: dict, n: int) -> int:
    """Qwen2-VL / Qwen2.5-VL vision encoder over ``n`` patches, counted analytically (its rotary
    positions are computed from ``grid_thw`` on the CPU, which a meta-device run cannot mix in):
    patch embedding, per layer QKV + output projections ``8 n d^2``, attention ``4 n c d`` (c: the
    context, all patches or Qwen2.5-VL's 8x8-patch windows outside its 4 full-attention layers),
    the MLP (``4 n d I``, SwiGLU ``6 n d I``), and the 2x2 merger."""
    v, t = entry["vision"], entry["text"]
    d, inter, layers = v["hidden"], v["intermediate"], v["layers"]
    total = 2 * n * (3 * 2 * v["patch"] ** 2) * d  # conv3d patch embedding (temporal patch 2)
    for layer in range(layers):
        windowed = entry["family"] == "qwen2_5_vl" and layer not in (7, 15, 23, 31)
        ctx = min(n, 64) if windowed else n
        mlp = 6 * n * d * inter if entry["family"] == "qwen2_5_vl" else 4 * n * d * inter
        total += 8 * n * d * d + 4 * n * ctx * d + mlp
    merged = n // 4
    total += 2 * merged * (4 * d) * (4 * d) + 2 * merged * (4 * d) * t["hidden"]
    return int(total)


def flops(model, entry: dict, n_image: int, n_text: int, n_suffix: int) -> dict:
    """FLOPs of a full forward and of one suffix pass (see the module docstring)."""
    mrope = entry["family"] in ("qwen2_vl", "qwen2_5_vl")
    t = entry["text"]
    head_dim = t["hidden"] // t["heads"]
    prefix = n_image + (n_text - n_suffix)
    lm_full = _lm_flops(model, n_image + n_text, mrope)
    lm_suffix = _lm_flops(model, n_suffix, mrope) + 4 * t["layers"] * t["heads"] * head_dim * n_suffix * prefix
    vision = _vision_flops(model, entry, n_image)
    return {"full": lm_full + vision, "suffix": lm_suffix, "vision": vision, "prefix_tokens": prefix}


def memory_gib(entry: dict, params: int, prefix: int, n_suffix: int, batch: int, chapter: str = "") -> float:
    """Peak accelerator memory of a chapter in bf16: weights + the fast path's prefix cache + one
    batch's activations (a suffix batch, and its ``(batch, vocab)`` final logits in float32);
    chapter 4 adds attribution patching's backward over the whole prompt (every layer's
    activations kept), chapter 7 a batch of full forwards with per-row knockouts (no KV cache)."""
    t = entry["text"]
    head_dim = t["hidden"] // t["heads"]
    width = t["hidden"] + t["intermediate"]
    weights = 2 * params
    cache = 4 * t["layers"] * t["kv_heads"] * head_dim * prefix * 2
    acts = batch * n_suffix * width * 2 + batch * t["vocab"] * 4
    tokens = prefix + n_suffix
    if chapter == "04-faithfulness-completeness":
        acts = max(acts, t["layers"] * tokens * (4 * t["hidden"] + t["intermediate"]) * 2)
    if chapter == "07-token-flow":
        acts = max(acts, batch * tokens * width * 2 + batch * t["vocab"] * 4)
    return (weights + cache + acts) / 2 ** 30


# ------------------------------------------------------------------------------------ the plan
def plan(profile: dict, table: list[dict] | None = None, image_size=IMAGE_SIZE) -> list[dict]:
    """One record per checkpoint of the sweep ``profile["_sweep"]["model"]``."""
    table = load_table() if table is None else table
    sweep = profile.get("_sweep") or {}
    ids = sweep.get("model") or []
    by_id = {e["id"]: e for e in table}
    missing = [m for m in ids if m not in by_id]
    if missing:
        raise ValueError(f"the sweep names checkpoints that data/checkpoints.yml lacks: {missing}")
    work = sweep["workload"]
    n_text, n_suffix, batch, mfu = work["text_tokens"], work["suffix_tokens"], work["batch"], work["mfu"]
    images, masks = work["images"], work["masks_per_image"]
    rows = []
    for mid in ids:
        e = by_id[mid]
        model = meta_model(e)
        p = n_params(model)
        n_img = image_tokens(e, *image_size)
        f = flops(model, e, n_img, n_text, n_suffix)
        total = images * (f["full"] + masks * f["suffix"])  # one prefix pass + the masks' suffix passes
        hours = total / (H100_BF16_TFLOPS * 1e12 * mfu) / 3600
        t = e["text"]
        chapters = chapter_costs(profile, e, p, f, n_img, n_suffix, batch, mfu)
        ch3 = profile.get("03-head-attribution") or {}
        masks = attribution.mask_count(t["layers"] * t["heads"], ch3.get("n_masks", masks), ch3.get("masks_per_head", 0))
        rows.append({"model": mid, "family": e["family"], "layers": t["layers"], "heads": t["heads"],
                     "masks": masks, "fit": attribution.choose(attribution.n_train_of(masks), t["layers"] * t["heads"]),
                     "chapters": chapters, "chapters_h100_hours": sum(c["h100_hours"] for c in chapters.values()),
                     "peak_memory_gib": max(c["peak_memory_gib"] for c in chapters.values()),
                     "kv_heads": t["kv_heads"], "heads_total": t["layers"] * t["heads"], "image_tokens": n_img,
                     "params_b": p / 1e9, "hub_params_b": e["hub_params_b"], "name_size_b": e["name_size_b"],
                     "params_within_3pct_of_hub": abs(p / 1e9 / e["hub_params_b"] - 1) <= TOLERANCE,
                     "params_vs_name": p / 1e9 / e["name_size_b"] - 1,
                     "gflop_full": f["full"] / 1e9, "gflop_suffix": f["suffix"] / 1e9,
                     "flop_ratio_full_over_suffix": f["full"] / f["suffix"],
                     "memory_gib": memory_gib(e, p, f["prefix_tokens"], n_suffix, batch), "h100_hours": hours})
    local = [compare_local(by_id[m]) for m in ids]
    for r, c in zip(rows, local):
        r["local_config"] = c
    return rows


def price_rank_heads(checkpoint: str, n_images: int, masks_per_head: float = 4.0, n_masks: int = 0,
                     text_tokens: int = 30, suffix_tokens: int = 24, batch: int = 64, mfu: float = 0.35,
                     image_size=IMAGE_SIZE) -> dict:
    """A dry run of :func:`headflow.rank_heads` on a checkpoint of ``data/checkpoints.yml``, before
    anything is downloaded: the passes it makes (per image one full forward for the prefix, then one
    suffix pass per mask), their FLOPs (:func:`headflow.scale.plan.flops` on the meta model), the peak
    memory in bf16 (:func:`headflow.scale.plan.memory_gib`) and the H100 hours at ``mfu`` of the bf16 peak."""
    by_id = {e["id"]: e for e in load_table()}
    if checkpoint not in by_id:
        raise ValueError(f"no architecture numbers for {checkpoint!r} in data/checkpoints.yml; known: {sorted(by_id)}")
    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, not {n_images}")
    e = by_id[checkpoint]
    model = meta_model(e)
    p = n_params(model)
    n_img = image_tokens(e, *image_size)
    f = flops(model, e, n_img, text_tokens, suffix_tokens)
    H = e["text"]["layers"] * e["text"]["heads"]
    masks = attribution.mask_count(H, n_masks, masks_per_head)
    total = n_images * (f["full"] + (masks + 2) * f["suffix"])  # + y_clean and y_none
    return {"model": checkpoint, "heads": H, "masks_per_image": masks, "images": n_images,
            "full_passes": n_images, "suffix_passes": n_images * (masks + 2), "image_tokens": n_img,
            "tflop": total / 1e12, "peak_memory_gib": memory_gib(e, p, f["prefix_tokens"], suffix_tokens, batch),
            "h100_hours": total / (H100_BF16_TFLOPS * 1e12 * mfu) / 3600, "mfu": mfu}


CHAPTER_MASKS = {"07-token-flow": "fit_masks", "08-object-background": "fit_masks"}


def chapter_costs(profile: dict, entry: dict, params: int, f: dict, n_img: int, n_suffix: int, batch: int,
                  mfu: float) -> dict:
    """Per chapter of the profile: passes (:mod:`headflow.scale.passes`, the counts the library's
    calls make), peak memory and H100 hours at ``mfu`` (a gradient pass counted as 3 forwards)."""
    t = entry["text"]
    H, n_classes = t["layers"] * t["heads"], len(COCO_CLASSES)
    out = {}
    computed: dict[tuple, tuple[int, str]] = {}  # shared store key -> (images per class computed, by which chapter)
    for name, p in profile.items():
        if name.startswith("_"):
            continue
        p = dict(p or {})
        key = CHAPTER_MASKS.get(name, "n_masks")
        if key in p:
            p["n_masks"] = attribution.mask_count(H, p[key], p.get("masks_per_head", 0))
        n_images = p.get("per_class", 0) * n_classes
        c = passes.chapter(name, H, t["layers"], p, n_images, n_classes)
        shared, reads = passes.shared_attribution(name, p), None
        if shared is not None:  # units another chapter already computed are read, not counted again
            skey, per_class = shared
            done, by = computed.get(skey, (0, None))
            read = min(per_class, done) * n_classes
            if read:
                c = passes.Passes(*(a - b for a, b in zip(c.as_dict().values(),
                                                          passes.attribution_unit(p["n_masks"]).times(read).as_dict().values())))
                reads = {"units": read, "computed_by": by}
            if per_class > done:
                computed[skey] = (per_class, name)
        total = (c.forward_passes + 3 * c.gradient_passes) * f["full"] + c.suffix_passes * f["suffix"]
        out[name] = {**c.as_dict(), "masks": p.get("n_masks"), "images": n_images, "reads_shared_units": reads,
                     "peak_memory_gib": memory_gib(entry, params, f["prefix_tokens"], n_suffix, batch, name),
                     "h100_hours": total / (H100_BF16_TFLOPS * 1e12 * mfu) / 3600}
    return out


def compare_local(entry: dict) -> str:
    """If a local copy of the checkpoint is in the Hugging Face cache, compare its config's numbers
    with the table's; otherwise say none was found."""
    try:
        folder = Path(snapshot_download(entry["id"], local_files_only=True))
    except Exception:  # noqa: BLE001 - no local copy (the normal case here)
        return "no local copy"
    cfg = json.loads((folder / "config.json").read_text())
    text = cfg.get("text_config", cfg)
    pairs = {"layers": "num_hidden_layers", "hidden": "hidden_size", "heads": "num_attention_heads",
             "kv_heads": "num_key_value_heads", "intermediate": "intermediate_size", "vocab": "vocab_size"}
    bad = {k: (entry["text"][k], text.get(v)) for k, v in pairs.items() if text.get(v) not in (None, entry["text"][k])}
    return "matches the local config.json" if not bad else f"differs from the local config.json: {bad}"


def table_text(rows: list[dict]) -> str:
    head = f"{'model':36s} {'LxH':>7s} {'kv':>3s} {'img':>5s} {'params B':>8s} {'hub B':>6s} {'GFLOP full':>10s} " \
           f"{'GFLOP sfx':>9s} {'ratio':>6s} {'GiB':>6s} {'H100 h':>7s}"
    lines = [head]
    for r in rows:
        lines.append(f"{r['model']:36s} {r['layers']:>3d}x{r['heads']:<3d} {r['kv_heads']:>3d} {r['image_tokens']:>5d} "
                     f"{r['params_b']:>8.2f} {r['hub_params_b']:>6.2f} {r['gflop_full']:>10.0f} {r['gflop_suffix']:>9.0f} "
                     f"{r['flop_ratio_full_over_suffix']:>6.1f} {r['memory_gib']:>6.1f} {r['h100_hours']:>7.1f}")
    return "\n".join(lines)


def results(profile: str = "full") -> dict:
    """The plan of a sweep profile of ``notebooks/profiles.yml`` as ``book/results/plan_<profile>.json``
    holds it: one record per checkpoint and the total H100 hours."""

    profiles = yaml.safe_load(PROFILE_FILE.read_text())
    if profile not in profiles or "_sweep" not in (profiles[profile] or {}):
        raise ValueError(f"profile {profile!r} has no _sweep section in {PROFILE_FILE}")
    prof = profiles[profile]
    rows = plan(prof)
    if not all(math.isfinite(r["h100_hours"]) for r in rows):
        raise ValueError("a plan row is not finite")
    return {"profile": profile, "image_size": list(IMAGE_SIZE), "workload": prof["_sweep"]["workload"],
            "h100_bf16_tflops": H100_BF16_TFLOPS, "total_h100_hours": sum(r["h100_hours"] for r in rows),
            "total_chapters_h100_hours": sum(r["chapters_h100_hours"] for r in rows),
            "rules": {"masks": "max(n_masks, masks_per_head x heads) (headflow.method.attribution.mask_count)",
                      "fit": f"OLS from {attribution.MIN_ROWS_PER_PARAMETER} training masks per parameter, "
                             "cross-validated ridge below",
                      "images": "per_class x 80 COCO classes, every asked image counted (an upper bound: only "
                                "correctly answered ones are analysed)",
                      "h100_hours": "(forward + 3 x gradient) x full-forward FLOPs + suffix x suffix FLOPs, at mfu",
                      "shared": "a run-store unit that several chapters share (same masks, rate and question) is counted "
                                "once, where it is first computed; reads_shared_units names the chapter that computes it",
                      "chapter 4": "the adaptive design is priced by its upper bound (every k up to k_max and the grid, "
                                   "passes.judge_adaptive)"},
            "checkpoints": rows}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Validate a sweep profile's plan without weights.")
    ap.add_argument("--profile", default="full")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "book" / "results")
    a = ap.parse_args(argv)
    try:
        res = results(a.profile)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(table_text(res["checkpoints"]))
    w = res["workload"]
    print(f"\n{w['images']} images x {w['masks_per_image']} masks per checkpoint, MFU {w['mfu']:.0%}: "
          f"{res['total_h100_hours']:.1f} H100-hours for the sweep")
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"plan_{a.profile}.json"
    path.write_text(json.dumps(res, indent=1, default=float))
    print(f"wrote {path}")
    if a.profile == "full" and (a.out / "realpath.json").exists():  # its records carry the plan's fields
        print(f"updated {realpath.add_plan(a.out)}")


if __name__ == "__main__":
    main()
