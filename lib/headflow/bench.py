"""Benchmark: masks per second of four ways to run many head-ablation masks, side by side.

    python -m headflow.bench [--quick] [--out book/results/performance.json]

(a) naive: one full forward per mask (batch 1); (b) batched full forward (one mask per row);
(c) the fast path (:mod:`headflow.prefix_reuse`): the image prefix once per image, amortised
over 1,000 masks, each mask rerunning only the text after the image; (d) nnsight, ablating the
same number of heads' outputs (a different, cheaper intervention) in one trace.  On the organism
and on a random model of LLaVA-1.5 geometry scaled to a CPU (576 image tokens, 32 layers,
narrow width).  Also: the suffix pass's achieved GFLOP/s as a fraction of a torch matmul peak
measured in the same run.  All ratios come from one process, one run.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from . import interventions as iv
from .attribution import sample_masks
from .models import REPO_ROOT
from .prefix_reuse import PrefixReuse
from .task import build_prompt, question_text

AMORTISE = 1000  # masks per image over which the prefix pass is amortised


def _time(fn, reps: int = 3) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def matmul_peak(n: int = 2048, dtype=torch.float32) -> float:
    """GFLOP/s of one large torch matmul (median of 3)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / _time(lambda: torch.mm(a, b)) / 1e9


def llava15_geometry():
    """A random LLaVA of LLaVA-1.5's geometry on the text side (336 px, patch 14 -> 576 image
    tokens, 32 layers, 8 heads), narrow (width 256) so it runs on a CPU; organism tokenizer."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from . import organism

    try:
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # pragma: no cover
        from transformers import CLIPImageProcessor as ImageProcessor
    tok = organism.build_tokenizer()
    ip = ImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_center_crop=True)
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=organism.CHAT_TEMPLATE)
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                                     num_attention_heads=2, image_size=336, patch_size=14),
                      text_config=LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=688,
                                              num_hidden_layers=32, num_attention_heads=8, num_key_value_heads=8,
                                              max_position_embeddings=1024),
                      image_token_id=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration._from_config(cfg, attn_implementation="sdpa").eval()
    return model, proc


def suffix_flops(model, P: int, S: int) -> float:
    """FLOPs of one mask's suffix pass (text model only, final-position logits)."""
    c = model.config.get_text_config()
    d, f, L, V = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    hd = d // c.num_attention_heads
    kv = c.num_key_value_heads * hd
    proj = 2 * S * (d * d * 2 + d * kv * 2)  # q, o, k, v
    mlp = 2 * S * 3 * d * f
    attn = 2 * 2 * c.num_attention_heads * S * (P + (S + 1) / 2) * hd
    return L * (proj + mlp + attn) + 2 * d * V


def full_flops(model, Ltot: int) -> float:
    """FLOPs of one full forward (text model only): a "suffix" with no prefix."""
    return suffix_flops(model, 0, Ltot)


def _image(processor, size):
    rng = np.random.default_rng(0)
    from PIL import Image

    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def nnsight_masks_per_second(model, inputs, keep: torch.Tensor) -> float | None:
    """nnsight: scale each head's slice of the o_proj input by the mask, in one trace."""
    try:
        from nnsight import NNsight
    except ImportError:
        return None
    n_layers, n_heads = iv.text_layers_and_heads(model)
    B = keep.shape[0]
    big = {k: v.expand(B, *v.shape[1:]) for k, v in inputs.items()}
    before = model.config.get_text_config()._attn_implementation
    model.set_attn_implementation({"text_config": "sdpa"})
    nn_model = NNsight(model)

    def run():
        with torch.inference_mode(), nn_model.trace(**big, logits_to_keep=1):
            for l in range(n_layers):
                o = nn_model.model.language_model.layers[l].self_attn.o_proj
                x = o.input
                m = keep[:, l].to(x.dtype)
                o.input = (x.view(*x.shape[:-1], n_heads, -1) * m[:, None, :, None]).view(x.shape)
    try:
        t = _time(run, reps=2)
    finally:
        model.set_attn_implementation({"text_config": before})
    return B / t


def bench_model(name: str, model, processor, image_size: int, n_naive: int, batch: int, n_fast: int,
                fast_batch: int | None = None) -> dict:
    """Masks per second of the four methods on one model; ``batch`` rows for the batched full
    forward and nnsight, ``fast_batch`` (default ``batch``) masks per suffix pass."""
    iv.install(model, "sdpa")
    n_layers, n_heads = iv.text_layers_and_heads(model)
    inputs = processor(images=[_image(processor, image_size)], text=[build_prompt(processor, question_text("object"))],
                       return_tensors="pt")
    Ltot = inputs["input_ids"].shape[1]
    img = iv.image_mask(model, inputs["input_ids"])
    baseline = iv.Baseline("image-mean")
    keep = sample_masks(max(n_fast, batch, n_naive, 10), n_layers, n_heads, 0.5, seed=0)

    def naive():
        for i in range(n_naive):
            with torch.inference_mode(), iv.intervene(model, ablation=iv.HeadAblation(keep[i:i + 1], img, baseline)):
                model(**inputs, logits_to_keep=1)

    big = {k: v.expand(batch, *v.shape[1:]) for k, v in inputs.items()}

    def batched():
        with torch.inference_mode(), iv.intervene(model, ablation=iv.HeadAblation(keep[:batch],
                                                                                 img.expand(batch, -1), baseline)):
            model(**big, logits_to_keep=1)

    t_naive = _time(naive, reps=1) / n_naive
    t_batched = _time(batched, reps=2) / batch
    t_prefix = _time(lambda: PrefixReuse(model, inputs, baseline), reps=3)
    reuse = PrefixReuse(model, inputs, baseline)
    t_suffix = _time(lambda: reuse.final_logits(keep[:n_fast], batch_size=fast_batch or batch), reps=3) / n_fast
    t_fast = t_suffix + t_prefix / AMORTISE
    nns = nnsight_masks_per_second(model, inputs, keep[:batch])
    P, S = reuse.P, Ltot - reuse.P
    return {"model": name, "n_layers": n_layers, "n_heads": n_heads, "prompt_tokens": Ltot, "image_tokens": int(img.sum()),
            "suffix_tokens": S, "batch": batch, "fast_batch": fast_batch or batch,
            "masks_per_s": {"naive": 1 / t_naive, "batched_full": 1 / t_batched, "fast": 1 / t_fast,
                            "fast_suffix_only": 1 / t_suffix, "nnsight": nns},
            "prefix_pass_s": t_prefix,
            "speedup": t_naive / t_fast, "vs_batched": t_batched / t_fast,
            "vs_nnsight": (1 / nns) / t_fast if nns else None,
            "suffix_gflops_per_s": suffix_flops(model, P, S) / t_suffix / 1e9,
            "full_forward_gflop": full_flops(model, Ltot) / 1e9, "suffix_gflop": suffix_flops(model, P, S) / 1e9}


def run_all(quick: bool = False) -> dict:
    """Every measurement, in one process: returns what ``book/results/performance.json`` holds."""
    from . import models

    torch.manual_seed(0)
    peak = matmul_peak()
    org, org_proc = models.load("organism")
    results = {"organism": bench_model("organism", org, org_proc, 64, n_naive=8 if quick else 32, batch=64,
                                       n_fast=128 if quick else 512, fast_batch=128)}
    big, big_proc = llava15_geometry()
    results["llava15_geometry"] = bench_model("llava15_geometry", big, big_proc, 336, n_naive=2 if quick else 6,
                                              batch=16 if quick else 32, n_fast=32 if quick else 128)
    frac = results["llava15_geometry"]["suffix_gflops_per_s"] / peak
    return {"organism": {"speedup": results["organism"]["speedup"], "vs_nnsight": results["organism"]["vs_nnsight"]},
            "llava15_geometry": {"speedup": results["llava15_geometry"]["speedup"],
                                 "vs_nnsight": results["llava15_geometry"]["vs_nnsight"]},
            "fraction_of_matmul_peak": frac, "matmul_peak_gflops": peak, "details": results,
            "machine": {"processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                        "torch": torch.__version__, "device": "cpu"}, "quick": quick}


def table(out: dict) -> str:
    """The four methods side by side, as text."""
    lines = [f"matmul peak {out['matmul_peak_gflops']:.0f} GFLOP/s ({out['machine']['threads']} threads)",
             f"{'model':18s} {'naive':>9s} {'batched':>9s} {'fast':>9s} {'nnsight':>9s}  {'x naive':>8s} {'x nnsight':>9s}"]
    for name, r in out["details"].items():
        m = r["masks_per_s"]
        nn = f"{m['nnsight']:9.1f}" if m["nnsight"] else "      n/a"
        vs = f"{r['vs_nnsight']:9.1f}" if r["vs_nnsight"] else "      n/a"
        lines.append(f"{name:18s} {m['naive']:9.1f} {m['batched_full']:9.1f} {m['fast']:9.1f} {nn}  "
                     f"{r['speedup']:8.1f} {vs}")
    g = out["details"]["llava15_geometry"]["suffix_gflops_per_s"]
    lines.append(f"suffix pass at LLaVA-1.5 geometry: {g:.0f} GFLOP/s = "
                 f"{out['fraction_of_matmul_peak']:.0%} of the matmul peak")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer masks (a smoke run)")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "book" / "results" / "performance.json")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = run_all(a.quick)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1))
    print(table(out))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()


def profile_fast_path(model, processor, image_size: int = 64, n_masks: int = 256, batch: int = 128) -> dict:
    """Where the fast path's time goes (cProfile of the suffix passes): shares of the total in
    the linear layers (projections, MLP, LM head), in the attention over [prefix | suffix]
    (:func:`headflow.prefix_reuse.prefix_attention`), and everything else (norms, RoPE, Python)."""
    import cProfile
    import pstats

    iv.install(model, "sdpa")
    n_layers, n_heads = iv.text_layers_and_heads(model)
    inputs = processor(images=[_image(processor, image_size)], text=[build_prompt(processor, question_text("object"))],
                       return_tensors="pt")
    reuse = PrefixReuse(model, inputs, iv.Baseline("image-mean"))
    keep = sample_masks(n_masks, n_layers, n_heads, 0.5, seed=0)
    reuse.final_logits(keep[:batch], batch_size=batch)  # warm-up
    prof = cProfile.Profile()
    prof.enable()
    reuse.final_logits(keep, batch_size=batch)
    prof.disable()
    stats = pstats.Stats(prof).stats
    total = sum(v[2] for v in stats.values())  # tottime over every function = wall time profiled
    linear = sum(v[2] for k, v in stats.items() if k[2] == "<built-in method torch._C._nn.linear>")
    attention = sum(v[3] for k, v in stats.items() if k[2] == "prefix_attention")
    return {"linear": linear / total, "attention": attention / total, "other": 1 - (linear + attention) / total,
            "seconds": total, "n_masks": n_masks, "batch": batch}
