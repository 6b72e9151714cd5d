"""The committed evaluation set: FashionScenes from the Fashion-MNIST *test* split, in COCO format.

``python -m headflow.evalset`` (``make data``) writes, deterministically from a seed:

- ``data/fashionscenes/eval/``: ``per_class`` scenes of each of the 10 classes;
- ``data/fashionscenes/variants/``: for the first ``variants_per_class`` scenes of each class,
  one rendition per appearance kind (colour, polarity, sketch, background, scale) of the *same*
  object, each annotation naming the eval image it varies (``variant_of``) and how
  (``variant_kind``);
- ``data/README.md``: sources, licences and the sha256 of every file under ``data/``.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from headflow.images import coco
from headflow.images import fashionscenes as data
from headflow.util.hashing import sha256

DATA_DIR = Path("data")


def spec_attributes(spec: data.SceneSpec, **extra) -> dict:
    """COCO ``attributes`` of a scene: the answers plus everything needed to redraw it."""
    attrs = {k: v for k, v in data.answers(spec).items() if k != "object"}
    attrs.update(style=spec.style, background=data.BACKGROUNDS[spec.background], size=spec.size,
                 spec=dataclasses.asdict(spec), **extra)
    return attrs


def _write(out_dir: Path, specs: list[data.SceneSpec], extras: list[dict]) -> Path:
    images, masks = data.render_many(specs)
    return coco.write_set(out_dir, images, masks, [s.class_name for s in specs], data.CLASSES,
                          [spec_attributes(s, **e) for s, e in zip(specs, extras)], [s.bbox for s in specs])


def build(root: Path, per_class: int = 40, variants_per_class: int = 10, seed: int = 0) -> None:
    """Write the evaluation and variant sets under ``root`` (e.g. ``data/fashionscenes``)."""
    items = data.balanced_items("test", per_class, seed)
    specs = data.sample_specs("test", len(items), seed + 1, items=items)
    _write(root / "eval", specs, [{} for _ in specs])
    rng = np.random.default_rng(seed + 2)
    var_specs, extras = [], []
    for c in range(len(data.CLASSES)):
        for j in range(variants_per_class):
            idx = c * per_class + j
            for kind in data.VARIANT_KINDS:
                var_specs.append(data.variant(specs[idx], kind, rng))
                extras.append({"variant_of": idx + 1, "variant_kind": kind})
    _write(root / "variants", var_specs, extras)


README_HEAD = """# Data

Everything here is made in this repository, offline, deterministically.

| folder | what | made by | licence |
|---|---|---|---|
| `fashionscenes/eval/` | {n_eval} scenes ({per_class} per class, 10 classes) from Fashion-MNIST **test** items, COCO format (PNG + `instances.json` with RLE masks and attributes) | `make data` (`python -m headflow.evalset`, seed {seed}) | MIT (see below) |
| `fashionscenes/variants/` | {n_var} appearance variants (colour, polarity, sketch, background, scale) of the first {vpc} scenes of each class; each annotation names the scene it varies (`variant_of`, `variant_kind`) | same | MIT (see below) |
| `models/organism/` | the default model organism: transformers `LlavaForConditionalGeneration` + `LlavaProcessor`; vision tower from `organism-scratch`, language model pretrained on a text-only retrieval task, projector aligned into the frozen language model, then both trained on the image questions; `training_log.json` | `make organism` (`python -m headflow.organism`) | MIT (this repository) |
| `checkpoints.yml` | architecture numbers of the ten checkpoints of the paper-scale sweep (profile `full`), from their config.json on the Hugging Face hub, with the parameter count each model page lists; read by `python -m headflow.plan` | by hand, checked by `tests/test_plan.py` | (facts about published models) |
| `templates/` | the chat templates of the ten checkpoints (public copies of each checkpoint's `chat_template.json`), with their sources and sha256 in `checkpoints.yml` | by hand, checked by `tests/test_vocabularies.py` | (the checkpoints' published text) |
| `models/organism-scratch/` | the organism trained from scratch (vision tower, then the whole LLaVA, no text pretraining), kept for contrast; `training_log.json` | `make organism-scratch` (`python -m headflow.organism --scratch`) | MIT (this repository) |

## Sources
- **Fashion-MNIST** (Xiao, Rasul, Vollgraf 2017, Zalando Research), MIT licence, read from the
  Debian package `dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist`). Train split
  for training the organism, test split for everything evaluated.
- **Texture photos** `brick`, `grass`, `gravel` shipped inside scikit-image (`skimage.data`),
  BSD-3-Clause (scikit-image), used as backgrounds (random crops, contrast and brightness).

Scenes: a Fashion-MNIST item resized to 30-46 px, tinted with one of six colours, alpha-composited
at a position whose word (left/right/top/bottom/center) is unambiguous, on a 64x64 crop of a
texture or a flat grey. Mask = object opacity > 0.1. Inverted (polarity) variants carry no colour
answer, since inversion changes the tint.

## sha256 of every file
```
"""


def write_readme(data_dir: Path, per_class: int, variants_per_class: int, seed: int) -> None:
    files = sorted(p for p in data_dir.rglob("*") if p.is_file() and p.name != "README.md")
    lines = [f"{sha256(p)}  {p.relative_to(data_dir).as_posix()}" for p in files]
    head = README_HEAD.format(n_eval=10 * per_class, per_class=per_class, n_var=10 * variants_per_class * 5,
                              vpc=variants_per_class, seed=seed)
    (data_dir / "README.md").write_text(head + "\n".join(lines) + "\n```\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Write the committed FashionScenes evaluation set (COCO format).")
    ap.add_argument("--data-dir", type=Path, default=DATA_DIR)
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--variants-per-class", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--readme-only", action="store_true", help="only rewrite data/README.md (after training)")
    a = ap.parse_args(argv)
    if not a.readme_only:
        build(a.data_dir / "fashionscenes", a.per_class, a.variants_per_class, a.seed)
    write_readme(a.data_dir, a.per_class, a.variants_per_class, a.seed)


if __name__ == "__main__":
    main()
