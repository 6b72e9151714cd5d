"""A GPU rehearsal of the paper-scale path, without a download: ``make rehearse-gpu``.

    python -m headflow.scale.rehearse --device cuda --dtype bfloat16   # book/results/performance_gpu.json

A full-size random-weight LLaVA-1.5-7B (32 layers x 32 heads, hidden 4096, MLP 11,008, a
CLIP-L/14-336 vision tower: 576 image tokens; vocabulary 32,064) is built from its configuration
directly on the device, in the given precision, and goes through chapters 1-4's *library calls*
(not the notebooks) on two synthetic images: clean answers (chapter 1), single-head and joint
ablations (2), a random-mask attribution run and its fit (3), the baseline rankings and one
cross-fitted judgement (4); then the bench's side-by-side timing of the fast path and batched
full forwards at that width.  Per chapter it records seconds and peak accelerator memory
(``torch.cuda.max_memory_allocated``).  It needs only ``lib/`` (the organism's word-level
tokenizer and template, no checkpoint, no image set) and runs on transformers 5.17 or later.
Random weights: the answers are noise; the figures are time and memory, not findings.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

from headflow.findings import redundancy
from headflow.images.coco import Example
from headflow.images.fashionscenes import ANSWER_WORDS
from headflow.mechanism import evaluate
from headflow.mechanism import interventions as iv
from headflow.method import crossfit, experiment, study
from headflow.models import llava_builder
from headflow.scale import bench
from headflow.store.runstore import RunStore
from headflow.task.prompt import question_text
from headflow.util.paths import REPO_ROOT

LLAVA_15_7B = dict(hidden=4096, intermediate=11008, layers=32, heads=32, vocab=32064,
                   vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                               image_size=336, patch_size=14))
TINY = dict(hidden=64, intermediate=128, layers=2, heads=4, vocab=32064,
            vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                        image_size=336, patch_size=14))


def build(size: dict, device: str, dtype: torch.dtype):
    """The random LLaVA of ``size`` on ``device`` in ``dtype`` and its processor (336 px, patch 14)."""
    tok = llava_builder.build_tokenizer()
    ip = bench.ImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                              do_center_crop=True, image_mean=llava_builder.IMAGE_MEAN, image_std=llava_builder.IMAGE_STD)
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=llava_builder.CHAT_TEMPLATE)
    text = LlamaConfig(vocab_size=max(size["vocab"], len(tok)), hidden_size=size["hidden"],
                       intermediate_size=size["intermediate"], num_hidden_layers=size["layers"],
                       num_attention_heads=size["heads"], num_key_value_heads=size["heads"],
                       max_position_embeddings=4096, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id)
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(**size["vision"]), text_config=text,
                      image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(cfg, attn_implementation="sdpa", dtype=dtype)
    model.generation_config.max_new_tokens = 1
    model.generation_config.do_sample = False
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.eval(), proc


def images(folder: Path, n: int = 2) -> list[Example]:
    """``n`` synthetic 640 x 480 images (seeded noise) as examples of two classes."""
    rng = np.random.default_rng(0)
    words = ANSWER_WORDS["object"]
    out = []
    for i in range(n):
        path = folder / f"rehearsal-{i}.png"
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(path)
        out.append(Example(image_id=i + 1, path=path, class_name=words[i % len(words)],
                           mask=np.ones((480, 640), bool), bbox=(0, 0, 640, 480)))
    return out


class Stopwatch:
    """Seconds and peak accelerator memory of each named step."""

    def __init__(self, device: str):
        self.device, self.rows = device, {}

    def __call__(self, name: str, fn):
        cuda = self.device.startswith("cuda")
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        self.rows[name] = {"seconds": time.perf_counter() - t,
                           "peak_memory_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None}
        return out


def rehearse(device: str = "cuda", dtype: str = "bfloat16", size: dict = LLAVA_15_7B, n_masks: int = 512,
             bench_masks: int = 256) -> dict:
    """Chapters 1-4's library calls and the fast-path bench on the random model (see the module docstring)."""
    tdtype = getattr(torch, dtype)
    watch = Stopwatch(device)
    model, proc = watch("build", lambda: build(size, device, tdtype))
    iv.install(model, "sdpa")
    words, q = list(ANSWER_WORDS["object"]), question_text("object")
    with tempfile.TemporaryDirectory() as tmp:
        exs = images(Path(tmp))
        watch("01 clean answers", lambda: evaluate.evaluate(model, proc, [e.load_image() for e in exs], words,
                                                            [words.index(e.class_name) for e in exs], q, batch_size=2))
        tasks = experiment.prepare(proc, exs, words, q)
        base = watch("baseline", lambda: experiment.reference_baseline(model, tasks, "dataset-mean"))
        L, H = iv.text_layers_and_heads(model)
        st = study.Study("rehearsal", model, proc, words, q, tasks, len(tasks), 0.0, base, "dataset-mean", "logit",
                         L, H, {"image_set": "rehearsal", "image_size": [640, 480]})
        single, joint = watch("02 single heads and joint", lambda: redundancy.single_and_joint(st))
        store = RunStore(Path(tmp) / "runs", {"rehearsal": True})
        runs = watch("03 attribution runs", lambda: experiment.run_attribution(model, tasks, base, store, n_masks, 0.5,
                                                                               0, progress=False))
        fits = watch("03 fits", lambda: study.fits(runs))
        watch("04 baseline rankings", lambda: crossfit.method_scores(st, fits, runs, 64))
        order = np.argsort(-fits[tasks[0].key].attribution)
        watch("04 judge one image", lambda: crossfit.judge(st, tasks[0], {"attribution": order},
                                                           {"attribution": list(range(L * H + 1))}))
    speed = bench.measure("rehearsal", model, proc, 336, 3, [8, 16], bench_masks, 64, None, naive=False, device=device)
    card = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu"
    return {"device": device, "card": card, "dtype": dtype, "torch": torch.__version__,
            "transformers": transformers.__version__, "model": {k: v for k, v in size.items() if k != "vision"},
            "params_b": sum(p.numel() for p in model.parameters()) / 1e9, "n_masks": n_masks,
            "steps": watch.rows, "bench": speed,
            "peak_memory_gib": max((r["peak_memory_gib"] or 0) for r in watch.rows.values())}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="GPU rehearsal: a full-size random LLaVA-1.5-7B through chapters 1-4.")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--masks", type=int, default=512)
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "book" / "results" / "performance_gpu.json")
    a = ap.parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("the rehearsal needs a CUDA device and torch sees none; run it on a machine with a GPU "
                         "(make rehearse-gpu), or pass --device cpu for a smoke run of the code path")
    res = rehearse(a.device, a.dtype, LLAVA_15_7B, a.masks)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1, default=float))
    for name, r in res["steps"].items():
        print(f"{name:28s} {r['seconds']:8.1f} s  {r['peak_memory_gib'] or 0:6.1f} GiB")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
