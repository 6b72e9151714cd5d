"""The committed evaluation set: FashionScenes from the Fashion-MNIST *test* split, in COCO format.

``python -m headflow.evalset`` (``make data``) writes, deterministically from a seed:

- ``data/fashionscenes/eval/``: multi-object scenes of the study's layout
  (:data:`headflow.images.fashionscenes.LAYOUT`), ``per_class`` of each class
  (:data:`headflow.images.fashionscenes.CLASSES`) *as the main object*; every item is a COCO instance, the
  main one marked (``"main": true``), each with its mask, colour and position;
- ``data/fashionscenes/variants/``: for the first ``variants_per_class`` scenes of each class,
  one rendition per appearance kind (colour, polarity, sketch, background, scale) of the *same*
  main object, each annotation naming the eval image it varies (``variant_of``) and how
  (``variant_kind``); a scale draw that would change which item is main is redrawn, and the
  number of redraws is recorded (``redraws``);
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


def other_instances(spec: data.SceneSpec, masks) -> list[dict]:
    """COCO instances of a scene's other items (``masks[1:]`` from ``render_instances``)."""
    return [{"class_name": o.class_name, "mask": m, "bbox": o.bbox,
             "attributes": {"color": o.color_name, "size": o.size,
                            "position": data.POSITIONS[p] if (p := data.position_of(o.x0, o.y0, o.size)) is not None
                            else None}}
            for o, m in zip(spec.others, masks[1:])]


def _write(out_dir: Path, specs: list[data.SceneSpec], extras: list[dict]) -> Path:
    multi = any(s.others for s in specs)
    drawn = [data.render_instances(s) for s in specs]
    images = np.stack([d[0] for d in drawn])
    masks = np.stack([d[1][0] for d in drawn])
    others = [other_instances(s, d[1]) for s, d in zip(specs, drawn)] if multi else None
    return coco.write_set(out_dir, images, masks, [s.class_name for s in specs], data.CLASSES,
                          [spec_attributes(s, **e) for s, e in zip(specs, extras)], [s.bbox for s in specs],
                          others=others)


def build(root: Path, per_class: int = 40, variants_per_class: int = 4, seed: int = 0) -> dict:
    """Write the evaluation and variant sets under ``root`` (e.g. ``data/fashionscenes``); returns the scale
    variants' redraw count.  The variant set is kept small (the repository stays under 64 MiB): variants
    of the first ``variants_per_class`` eval scenes of each class.  (The counterfactual size-swapped scenes
    are drawn where they are used: chapter 0.)"""
    items = data.balanced_items("test", per_class, seed)
    specs = data.sample_specs("test", len(items), seed + 1, items=items, objects=data.MULTI_OBJECTS)
    _write(root / "eval", specs, [{} for _ in specs])
    rng = np.random.default_rng(seed + 2)
    var_specs, extras, redraws = [], [], 0
    for c in range(len(data.CLASSES)):
        for j in range(variants_per_class):
            idx = c * per_class + j
            for kind in data.VARIANT_KINDS:
                extra = {"variant_of": idx + 1, "variant_kind": kind}
                if kind == "scale":
                    v, n = data.scale_variant(specs[idx], rng)
                    redraws += n
                    extra["redraws"] = n
                else:
                    v = data.variant(specs[idx], kind, rng)
                var_specs.append(v)
                extras.append(extra)
    _write(root / "variants", var_specs, extras)
    return {"scale_redraws": redraws, "scale_variants": len(data.CLASSES) * variants_per_class}


README_HEAD = """# Data

Everything here is made in this repository, offline, deterministically.

| folder | what | made by | licence |
|---|---|---|---|
| `fashionscenes/eval/` | {n_eval} multi-object scenes (layout `{layout}`: a main object and {others} smaller items; {per_class} per class *of the main object*, {n_classes} classes: {classes}) from Fashion-MNIST **test** items, COCO format (PNG + `instances.json` with an RLE mask, colour and position per item; the main object marked `"main": true`) | `make data` (`python -m headflow.evalset`, seed {seed}) | MIT (see below) |
| `fashionscenes/variants/` | {n_var} appearance variants (colour, polarity, sketch, background, scale) of the main object of the first {vpc} scenes of each class; each annotation names the scene it varies (`variant_of`, `variant_kind`); a scale draw that would change which item is main is redrawn (`redraws`) | same | MIT (see below) |
| `models/vision-tower/` | the vision tower the three organisms share: a stock CLIP vision model trained *per patch* (class, colour and main-object heads on every patch token) on a stream of multi-object scenes with a share of size swaps (`headflow.organism.tower`), frozen in the organisms, stored once; each organism's folder names it with its sha256 in `shared_weights.json`; every checkpoint is float16 (`headflow.models.organism_store`) | `make tower` | MIT (this repository) |
| `models/organism/` | the default model organism: transformers `LlavaForConditionalGeneration` + `LlavaProcessor`; language model pretrained on in-context retrieval (text only), projector aligned into the frozen language model, then both trained on the three image questions (object, colour, position of the main object; the answer and its end token) with the language model at half the projector's rate and text batches replayed; `training_log.json` | `make organism` (`python -m headflow.organism --recipe organism`) | MIT (this repository) |
| `models/organism-seed2/` | the default's recipe with another seed (the noise floor of every contrast) | `make organism-seed2` | MIT (this repository) |
| `models/organism-scratch/` | the default's scenes, tower and schedule without the text stage: the language model never saw text | `make organism-scratch` | MIT (this repository) |
| `checkpoints.yml` | architecture numbers of the ten checkpoints of the paper-scale sweep (profile `full`), from their config.json on the Hugging Face hub, with the parameter count each model page lists; read by `python -m headflow.plan` | by hand, checked by `tests/test_plan.py` | (facts about published models) |
| `templates/` | the chat templates of the ten checkpoints (public copies of each checkpoint's `chat_template.json`), with their sources and sha256 in `checkpoints.yml` | by hand, checked by `tests/test_vocabularies.py` | (the checkpoints' published text) |

## Sources
- **Fashion-MNIST** (Xiao, Rasul, Vollgraf 2017, Zalando Research), MIT licence, read from the
  Debian package `dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist`). Train split
  for training the tower and the organisms, test split for everything evaluated.
- **Texture photos** `brick`, `grass`, `gravel` shipped inside scikit-image (`skimage.data`),
  BSD-3-Clause (scikit-image), used as backgrounds (random crops, contrast and brightness).

Scenes (`headflow.images.fashionscenes`): Fashion-MNIST items tinted with one of six colours,
alpha-composited on a 64x64 crop of a texture or a flat grey. The main object (30-40 px, drawn on top)
sits at a place whose word (left/right/top/bottom/center) is unambiguous; the other items are smaller
(the main object's area is 2-2.8 times each other's) and at least 60% visible. Half the scenes are
*crowd* scenes (the others share one class and one colour, unlike the main object's), half *decoy*
scenes (the others share the main object's class and colour, except one odd item out), so only size
tells which item is main. The classes pullover, coat and shirt are one class (`{merged}`), the ones
Fashion-MNIST itself confuses. Mask = visible item opacity > 0.1. Inverted (polarity) variants carry no
colour answer, since inversion changes the tint.

## sha256 of every file
```
"""


def write_readme(data_dir: Path, per_class: int, variants_per_class: int, seed: int) -> None:
    files = sorted(p for p in data_dir.rglob("*") if p.is_file() and p.name != "README.md")
    lines = [f"{sha256(p)}  {p.relative_to(data_dir).as_posix()}" for p in files]
    k = len(data.CLASSES)
    lo, hi = data.MULTI_OBJECTS
    head = README_HEAD.format(n_eval=k * per_class, per_class=per_class, n_var=k * variants_per_class * 5,
                              vpc=variants_per_class, seed=seed, layout=data.LAYOUT, others=f"{lo - 1}-{hi - 1}",
                              n_classes=k, classes=", ".join(data.CLASSES),
                              merged=data.CLASS_MERGE[0] if data.CLASS_MERGE else "none")
    (data_dir / "README.md").write_text(head + "\n".join(lines) + "\n```\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Write the committed FashionScenes evaluation set (COCO format).")
    ap.add_argument("--data-dir", type=Path, default=DATA_DIR)
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--variants-per-class", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--readme-only", action="store_true", help="only rewrite data/README.md (after training)")
    a = ap.parse_args(argv)
    if not a.readme_only:
        print(build(a.data_dir / "fashionscenes", a.per_class, a.variants_per_class, seed=a.seed))
    write_readme(a.data_dir, a.per_class, a.variants_per_class, a.seed)


if __name__ == "__main__":
    main()
