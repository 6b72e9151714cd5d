"""The organism's vision tower: a stock CLIP vision model trained *per patch* on multi-object scenes.

Every patch token of the tower's last layer (the layer the projector reads) predicts, through three
linear heads, what covers its patch (:func:`patch_targets`):

``class``
    the object class of the item covering the patch, or background (``len(CLASSES)``);
``color``
    that item's colour, or background (``len(COLORS)``);
``main``
    whether the covering item is the scene's main object.

There is no pooled-feature head: nothing asks the tower to put the main object's class into the
mean of its tokens, so a language-model head has to *find* the main object's tokens to answer.
Training draws fresh scenes every step (:class:`PatchStream`, Fashion-MNIST train split), so no
fixed set is memorised, and checkpoints every ``ckpt_every`` steps: an interrupted run resumes
where it stopped (same stream, same optimiser state).  ``python -m headflow.organism.tower``
(``make tower``) writes ``data/models/vision-tower/{model.safetensors,tower_log.json}``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file

from headflow.images import fashionscenes as data
from headflow.models.llava_builder import PATCH, LlavaArch, build_model, build_processor, to_pixels
from headflow.models.organism_store import STORED_DTYPE
from headflow.util import progress

GRID = data.CANVAS // PATCH  # patches per side (8: 64 image tokens)
HEADS = ("class", "color", "main")


@dataclass
class TowerRecipe:
    """Size (the vision fields of :class:`headflow.models.llava_builder.LlavaArch`) and schedule of the
    per-patch tower."""

    seed: int = 0
    steps: int = 3000  # the committed tower (data/models/vision-tower/tower_log.json)
    batch: int = 128
    lr: float = 2e-3
    warmup: int = 150
    weight_decay: float = 0.05
    min_cover: float = 0.25  # a patch belongs to the item covering the largest share of it, if >= this
    layout: str = "main2x-swap"  # the scene layout (headflow.images.fashionscenes.LAYOUTS)
    objects: tuple = data.LAYOUTS["main2x-swap"].objects
    main_weight: float = 1.0  # weight of the "main object" head's loss
    bf16: bool = True
    threads: int = 2
    ckpt_every: int = 250
    eval_every: int = 500
    n_monitor: int = 500
    arch: dict = field(default_factory=lambda: {k: v for k, v in asdict(LlavaArch()).items()
                                                if k.startswith("vision_") or k == "seed"})

    def __post_init__(self):
        self.objects = tuple(self.objects)
        if not 0 < self.min_cover <= 1:
            raise ValueError(f"min_cover must lie in (0, 1], not {self.min_cover}")


def patch_targets(masks: np.ndarray, labels, colors, min_cover: float = 0.25) -> tuple[np.ndarray, ...]:
    """Per-patch targets of one scene from its visible item masks ``(n_items, H, W) bool`` (the main
    object first, as :func:`headflow.images.fashionscenes.render_instances` returns them) and the
    items' class and colour indices.  Returns three ``(GRID * GRID,) int64`` arrays in token order
    (row-major): class (``len(CLASSES)`` = background), colour (``len(COLORS)`` = background) and
    main (1 where the main object is the covering item).  A patch is covered by the item with the
    largest share of it, if that share is at least ``min_cover``; else it is background."""
    item = patch_items(masks, min_cover)
    on = item >= 0
    cls = np.full(GRID * GRID, len(data.CLASSES), np.int64)
    col = np.full(GRID * GRID, len(data.COLORS), np.int64)
    cls[on] = np.asarray(labels)[item[on]]
    col[on] = np.asarray(colors)[item[on]]
    main = (item == 0).astype(np.int64)
    return cls, col, main


def patch_items(masks: np.ndarray, min_cover: float = 0.25) -> np.ndarray:
    """``(GRID * GRID,) int64``: the index of the item covering each patch (in the order of ``masks``
    ``(n_items, H, W) bool``, the main object first), or -1 for background (no item covers ``min_cover``)."""
    n, h, w = masks.shape
    cover = masks.reshape(n, GRID, h // GRID, GRID, w // GRID).mean((2, 4)).reshape(n, GRID * GRID)
    return np.where(cover.max(0) >= min_cover, cover.argmax(0), -1).astype(np.int64)


def render_with_targets(specs, min_cover: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, H, W, 3) uint8`` and targets ``(N, 3, GRID * GRID) int64`` (class, colour, main)."""
    images = np.empty((len(specs), data.CANVAS, data.CANVAS, 3), np.uint8)
    targets = np.empty((len(specs), 3, GRID * GRID), np.int64)
    for i, s in enumerate(specs):
        images[i], masks = data.render_instances(s)
        targets[i] = patch_targets(masks, [s.label] + [o.label for o in s.others],
                                   [s.color] + [o.color for o in s.others], min_cover)
    return images, targets


class PatchStream:
    """Endless seeded batches of fresh train-split scenes with their per-patch targets; its state
    (:meth:`state`, :meth:`restore`) travels with a checkpoint."""

    def __init__(self, seed: int, objects, min_cover: float):
        self.rng = np.random.default_rng(seed)
        self.n_items = len(data.load_fashion_mnist("train")[1])
        self.objects, self.min_cover = tuple(objects), min_cover

    def next(self, n: int):
        items = self.rng.integers(0, self.n_items, n)
        specs = data.sample_specs("train", n, int(self.rng.integers(2**31)), items=items, objects=self.objects)
        return render_with_targets(specs, self.min_cover)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def restore(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def new_tower(recipe: TowerRecipe):
    """A freshly initialised CLIP vision tower of the recipe's size (the organism's, by construction)."""
    arch = LlavaArch(**recipe.arch)
    return build_model(build_processor(), arch).model.vision_tower


def tower_features(tower, images_u8: np.ndarray) -> torch.Tensor:
    """``(B, GRID * GRID, d)``: the last layer's patch tokens (the layer the projector reads)."""
    return tower(to_pixels(images_u8), output_hidden_states=True).hidden_states[-1][:, 1:]


def make_heads(recipe: TowerRecipe) -> torch.nn.ModuleDict:
    d = recipe.arch["vision_hidden"]
    return torch.nn.ModuleDict({"class": torch.nn.Linear(d, len(data.CLASSES) + 1),
                                "color": torch.nn.Linear(d, len(data.COLORS) + 1),
                                "main": torch.nn.Linear(d, 2)})


def _loss(heads, feats, targets: torch.Tensor, main_weight: float) -> torch.Tensor:
    f = feats.float()
    return sum((main_weight if name == "main" else 1.0)
               * F.cross_entropy(heads[name](f).flatten(0, 1), targets[:, j].flatten())
               for j, name in enumerate(HEADS))


@torch.inference_mode()
def patch_accuracy(tower, heads, images: np.ndarray, targets: np.ndarray, batch: int = 250) -> dict:
    """Per-patch accuracy of the three heads: ``class`` and ``color`` on object patches, ``main``
    on all patches (and ``main_recall``: main-object patches marked as main), with counts."""
    preds = {h: [] for h in HEADS}
    for s in range(0, len(images), batch):
        f = tower_features(tower, images[s:s + batch]).float()
        for h in HEADS:
            preds[h].append(heads[h](f).argmax(-1).numpy())
    p = {h: np.concatenate(v) for h, v in preds.items()}
    obj = targets[:, 0] < len(data.CLASSES)
    main = targets[:, 2] == 1
    return {"class": float((p["class"][obj] == targets[:, 0][obj]).mean()),
            "color": float((p["color"][obj] == targets[:, 1][obj]).mean()),
            "main": float((p["main"] == targets[:, 2]).mean()),
            "main_recall": float((p["main"][main] == 1).mean()),
            "n_object_patches": int(obj.sum()), "n_patches": int(obj.size)}


def load_trained(folder: Path | str):
    """The trained tower of ``folder`` (``model.safetensors``), its per-patch heads
    (``patch_heads.safetensors``) and its :class:`TowerRecipe` (``tower_log.json``), for evaluation."""
    folder = Path(folder)
    recipe = TowerRecipe(**json.loads((folder / "tower_log.json").read_text())["recipe"])
    tower = new_tower(recipe)
    tower.load_state_dict(load_file(folder / "model.safetensors"))
    state = load_file(folder / "patch_heads.safetensors")
    d = recipe.arch["vision_hidden"]
    heads = torch.nn.ModuleDict({h: torch.nn.Linear(d, state[f"{h}.weight"].shape[0]) for h in HEADS})
    heads.load_state_dict(state)
    return tower.eval(), heads.eval(), recipe


@torch.inference_mode()
def per_patch(folder: Path | str, n: int = 1000, seed: int = 3000, objects=None, n_boot: int = 1000,
              batch: int = 250) -> dict:
    """Chapter 0's per-patch accuracy of the trained tower in ``folder`` on ``n`` held-out test-split scenes
    (seed ``seed``; ``objects`` per scene, default the tower's layout's): ``class`` (object patches; a head
    trained on the ten Fashion-MNIST classes is read through today's
    :data:`headflow.images.fashionscenes.FINE_TO_CLASS`), ``color`` (object patches) and ``main`` (every patch;
    ``main_recall`` on the main
    object's patches), each ``{"accuracy", "ci", "n_patches"}``; 95% intervals resample scenes (patches of
    one scene are not independent)."""
    tower, heads, recipe = load_trained(folder)
    specs = data.sample_specs("test", n, seed=seed, objects=tuple(objects or recipe.objects))
    images, targets = render_with_targets(specs, recipe.min_cover)
    fine = heads["class"].out_features - 1 == len(data.FASHION_MNIST_CLASSES) != len(data.CLASSES)
    to_class = np.append(data.FINE_TO_CLASS, len(data.CLASSES)) if fine else None  # background stays background
    hits = {h: [] for h in ("class", "color", "main", "main_recall")}
    counts = {h: [] for h in hits}
    for s in range(0, n, batch):
        f = tower_features(tower, images[s:s + batch]).float()
        t = targets[s:s + batch]
        p = {h: heads[h](f).argmax(-1).numpy() for h in HEADS}
        if to_class is not None:
            p["class"] = to_class[p["class"]]
        obj, main = t[:, 0] < len(data.CLASSES), t[:, 2] == 1
        for h, pred, truth, where in (("class", p["class"], t[:, 0], obj), ("color", p["color"], t[:, 1], obj),
                                      ("main", p["main"], t[:, 2], np.ones_like(obj)),
                                      ("main_recall", p["main"], t[:, 2], main)):
            hits[h].append(((pred == truth) & where).sum(1))
            counts[h].append(where.sum(1))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, (n_boot, n))
    out = {"n_scenes": n, "seed": seed, "objects": list(objects or recipe.objects), "n_boot": n_boot,
           "class_head": "ten Fashion-MNIST classes, read through the merge" if fine else "today's classes"}
    for h in hits:
        k, m = np.concatenate(hits[h]), np.concatenate(counts[h])
        boot = k[draws].sum(1) / np.maximum(m[draws].sum(1), 1)
        out[h] = {"accuracy": float(k.sum() / m.sum()), "ci": [float(np.quantile(boot, 0.025)),
                                                               float(np.quantile(boot, 0.975))],
                  "n_patches": int(m.sum())}
    return out


@torch.inference_mode()
def swap_marking(folder: Path | str, layout: str = "mixed", n: int = 600, seed: int = 3100, n_boot: int = 1000,
                 batch: int = 250) -> dict:
    """Does the tower's ``main`` head follow size, or the main object's usual place?  On ``n`` test-split scenes
    of ``layout`` (seed ``seed``) and their size swaps (:func:`headflow.images.fashionscenes.swap_sizes`: the
    main object and the largest other item trade sizes and keep their places), the share of patches the head
    marks main: ``original_main`` (the main object's patches), ``original_others``, ``swapped_new_main`` (the
    former other item, now main), ``swapped_old_main`` (the former main object, now smaller) and
    ``swapped_others`` (the remaining items); each ``{"share", "ci", "n_patches"}``, 95% intervals resampling
    scenes.  A tower that reads size marks the new main object as it marked the old one, and the old one as
    any other item."""
    tower, heads, recipe = load_trained(folder)
    previous = data.use_layout(layout)
    try:
        specs = data.sample_specs("test", n, seed=seed, objects=data.MULTI_OBJECTS)
    finally:
        data.use_layout(previous)
    pairs = [(s, data.swap_sizes(s)) for s in specs]
    pairs = [(s, w) for s, w in pairs if w is not None]
    groups = {g: ([], []) for g in ("original_main", "original_others", "swapped_new_main", "swapped_old_main",
                                    "swapped_others")}
    for version in ("original", "swapped"):
        scenes = [p[0] if version == "original" else p[1] for p in pairs]
        for s0 in range(0, len(scenes), batch):
            chunk = scenes[s0:s0 + batch]
            rendered = [data.render_instances(s) for s in chunk]
            marked = heads["main"](tower_features(tower, np.stack([r[0] for r in rendered])).float()).argmax(-1).numpy()
            for (orig, _), (_, masks), m in zip(pairs[s0:s0 + batch], rendered, marked):
                item = patch_items(masks, recipe.min_cover)
                if version == "original":
                    where = {"original_main": item == 0, "original_others": item > 0}
                else:  # the swapped scene's others keep the original's order; the former main replaced the largest
                    k = 1 + max(range(len(orig.others)), key=lambda i: orig.others[i].size)
                    where = {"swapped_new_main": item == 0, "swapped_old_main": item == k,
                             "swapped_others": (item > 0) & (item != k)}
                for g, w in where.items():
                    groups[g][0].append(int((m[w] == 1).sum()))
                    groups[g][1].append(int(w.sum()))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(pairs), (n_boot, len(pairs)))
    out = {"layout": layout, "n_scenes": len(pairs), "n_left_out": n - len(pairs), "seed": seed, "n_boot": n_boot,
           "tower_layout": recipe.layout}
    for g, (k, m) in groups.items():
        k, m = np.asarray(k), np.asarray(m)
        boot = k[draws].sum(1) / np.maximum(m[draws].sum(1), 1)
        out[g] = {"share": float(k.sum() / max(m.sum(), 1)), "n_patches": int(m.sum()),
                  "ci": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))]}
    return out


def _lr(recipe: TowerRecipe, step: int) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    return recipe.lr * min(1.0, (step + 1) / recipe.warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / recipe.steps)))


def train_tower(out: Path, recipe: TowerRecipe, resume: bool = True) -> dict:
    """Train the tower and write ``out/model.safetensors`` (float16, the keys of
    ``model.vision_tower``) and ``out/tower_log.json``.  Checkpoints go to ``out/.checkpoint.pt``
    every ``ckpt_every`` steps; with ``resume`` a run picks up from it (if its recipe matches)."""
    previous = data.use_layout(recipe.layout)
    try:
        return _train(Path(out), recipe, resume)
    finally:
        data.use_layout(previous)


def _train(out: Path, recipe: TowerRecipe, resume: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    torch.set_num_threads(recipe.threads)
    tower, heads = new_tower(recipe), make_heads(recipe)
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.lr, betas=(0.9, 0.98), weight_decay=recipe.weight_decay)
    stream = PatchStream(recipe.seed + 1, recipe.objects, recipe.min_cover)
    mon_specs = data.sample_specs("test", recipe.n_monitor, seed=2000, objects=recipe.objects)
    mon_images, mon_targets = render_with_targets(mon_specs, recipe.min_cover)
    log = {"recipe": asdict(recipe), "rows": [], "seconds": 0.0,
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "python": platform.python_version()},
           "machine": {"processor": platform.processor() or platform.machine(), "threads": recipe.threads},
           "monitor": {"split": "test", "seed": 2000, "n": recipe.n_monitor, "checkpoint_selected": False}}
    ckpt, start = out / ".checkpoint.pt", 0
    if resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        if state["log"]["recipe"] == log["recipe"]:
            tower.load_state_dict(state["tower"])
            heads.load_state_dict(state["heads"])
            opt.load_state_dict(state["opt"])
            stream.restore(state["stream"])
            torch.set_rng_state(state["torch_rng"])
            log, start = state["log"], state["step"]
            log.setdefault("resumed_at", []).append(start)
            progress.write(f"[tower] resumed at step {start}")
        else:
            progress.write("[tower] checkpoint from another recipe: starting afresh")
    t0 = time.perf_counter() - log["seconds"]
    tower.train()
    bar = progress.bar(range(start, recipe.steps), desc="vision tower (per patch)", mininterval=5,
                       initial=start, total=recipe.steps)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr(recipe, step)
        images, targets = stream.next(recipe.batch)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16):
            feats = tower_features(tower, images)
        loss = _loss(heads, feats, torch.from_numpy(targets), recipe.main_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        done = step + 1
        if done % recipe.eval_every == 0 or done == recipe.steps:
            tower.eval()
            acc = patch_accuracy(tower, heads, mon_images, mon_targets)
            tower.train()
            row = {"step": done, "minutes": round((time.perf_counter() - t0) / 60, 2), "loss": round(loss.item(), 4),
                   **{k: round(v, 4) if isinstance(v, float) else v for k, v in acc.items()}}
            log["rows"].append(row)
            bar.set_postfix(loss=f"{loss.item():.3f}", cls=f"{acc['class']:.3f}")
            progress.write(f"[tower] {row}")
        if done % recipe.ckpt_every == 0 and done < recipe.steps:
            log["seconds"] = time.perf_counter() - t0
            torch.save({"tower": tower.state_dict(), "heads": heads.state_dict(), "opt": opt.state_dict(),
                        "stream": stream.state(), "torch_rng": torch.get_rng_state(), "log": log, "step": done},
                       ckpt.with_suffix(".tmp"))
            os.replace(ckpt.with_suffix(".tmp"), ckpt)
    log["seconds"] = time.perf_counter() - t0
    log["minutes"] = round(log["seconds"] / 60, 2)
    tower.eval()
    save_file({k: v.detach().to(STORED_DTYPE).contiguous() for k, v in tower.state_dict().items()},
              out / "model.safetensors")
    save_file({k: v.detach().float().contiguous() for k, v in heads.state_dict().items()}, out / "patch_heads.safetensors")
    (out / "tower_log.json").write_text(json.dumps(log, indent=1) + "\n")
    ckpt.unlink(missing_ok=True)
    return log


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Train the organisms' vision tower per patch (make tower).")
    ap.add_argument("--out", type=Path, default=Path("data/models/vision-tower"))
    ap.add_argument("--no-resume", action="store_true")
    for f in TowerRecipe.__dataclass_fields__.values():
        if type(f.default) in (int, float):
            ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None)
    ap.add_argument("--layout", default=TowerRecipe.layout, choices=sorted(data.LAYOUTS))
    args = vars(ap.parse_args(argv))
    out, no_resume = args.pop("out"), args.pop("no_resume")
    recipe = TowerRecipe(**{k: v for k, v in args.items() if v is not None})
    log = train_tower(out, recipe, resume=not no_resume)
    print(json.dumps(log["rows"][-1]), f"wall {log['minutes']} min")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
