"""A COCO-format *mechanics* image set: FashionScenes scenes at the study's image size, labelled
with COCO's category names, the label set holding all 80 categories.

Random-weight shadow models (:mod:`headflow.models.shadow`) answer nothing, so their chapters test
code paths, not findings; what those paths need from a COCO image set is its shape: 80 answer
words in a real vocabulary (shared first tokens, several-token names), images of the full
profile's size (640x480: LLaVA-NeXT's 2,340 image tokens, Qwen's 391), an object mask per image.
Scenes are rendered and scaled here, on first use, into ``.cache`` (nothing is committed).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from headflow.images import coco
from headflow.images import fashionscenes as scenes
from headflow.util.paths import CACHE_DIR

PREFIX = "mechanics:"
CACHE = CACHE_DIR / "mechanics"
# classes whose answers are hard in real vocabularies (shared first tokens, prefixes, several tokens)
HARD = ("car", "carrot", "skis", "skateboard", "baseball bat", "toilet", "tv", "dog")


def build(out_dir: Path, classes=HARD, per_class: int = 1, size=(640, 480), seed: int = 0) -> Path:
    """Write ``per_class`` scenes per class of ``classes`` at ``size`` (width, height), class by class in
    turn; categories: COCO's 80."""
    classes = [c for _ in range(per_class) for c in classes]
    specs = scenes.sample_specs("test", len(classes), seed=seed)
    images, masks = scenes.render_many(specs)
    big = np.stack([np.asarray(Image.fromarray(im).resize(size, Image.BILINEAR)) for im in images])
    big_masks = np.stack([np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127
                          for m in masks])
    boxes = []
    for m in big_masks:
        ys, xs = np.nonzero(m)
        boxes.append((xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1))
    return coco.write_set(out_dir, big, big_masks, list(classes), list(coco.COCO_CLASSES),
                          [{} for _ in classes], boxes)


SETS = {"coco80": 1, "coco80x3": 3}  # name -> scenes per class (x3: enough for chapter 5's probes)


def resolve(name: str) -> Path:
    """``"mechanics:coco80"`` (one scene per class) or ``"mechanics:coco80x3"`` (three) -> its
    instances file, built on first use (keyed by this module and the scene renderer)."""
    set_name = name.removeprefix(PREFIX)
    if not name.startswith(PREFIX) or set_name not in SETS:
        raise ValueError(f"unknown mechanics set {name!r}; choose one of {[PREFIX + s for s in SETS]}")
    key = hashlib.sha256(Path(__file__).read_bytes() + Path(scenes.__file__).read_bytes()).hexdigest()[:10]
    folder = CACHE / f"{set_name}-{key}"
    if not (folder / "instances.json").exists():
        build(folder, per_class=SETS[set_name])
    return folder / "instances.json"
