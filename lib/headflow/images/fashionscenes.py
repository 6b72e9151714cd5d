"""FashionScenes: "main object" scenes rendered from Fashion-MNIST items on real texture photos.

A scene is described by a :class:`SceneSpec` (which item, colour, size, where, on which
background, in which rendition) and drawn by :func:`render`.  A scene holds one item (the
single-object scenes) or, with ``objects=(lo, hi)`` in :func:`sample_specs`, several items: the
**main object** (the spec's own fields) and ``others`` (:class:`Other`), drawn behind it.  The main
object follows one stated rule (:func:`main_index`): the item with the largest square, as a person
names it at a glance (COCO's main object is the largest instance).  How much larger, and how many
items, is the scene *layout* (:data:`LAYOUTS`, :func:`use_layout`):

``overlap`` (the committed organisms' scenes)
    2-3 items, main-to-other area ratio in [1.25, 1.5]: sides differ by 3-6 px at 8-px patches, and
    the trained organisms did not find the main object (issue 28);
``main2x`` (the per-patch tower's training scenes)
    3-5 items, ratio in [2, 4]: the main object's area at least twice every other item's (sides
    differ by 29-50%), while the others together may cover more than it, so the pooled mean of the
    image does not give the main object's colour away.
``crowd``
    4-5 items, ratio in [2, 2.8], the others sharing one class and one colour unlike the main
    object's: the others' area often exceeds the main object's, but the main object is always the
    odd item out, a shortcut an organism trained on it took (it followed the old main object in 17%
    of size-swapped scenes);
``mixed`` (the study's scenes)
    ``crowd`` scenes and, half the time, *decoy* scenes whose other items share the main object's
    class and colour but one, the odd item out: neither the odd item nor the majority is the main
    object more often than not, only size tells;
``main2x-swap``, ``mixed-swap`` (the tower's and the organisms' training streams)
    ``main2x`` and ``mixed`` with a share of *size swaps* (:func:`swap_sizes`, ``Layout.swapped``).  The
    main object is placed by its position word, others anywhere, so in ``mixed`` the main object is the
    item at a worded place; a tower trained without swaps learned that cue besides size (it marked 75%
    of a new main object's patches after a swap, 96% before; :func:`headflow.organism.tower.swap_marking`).
    With swaps the main object sits at a worded place in about 60% of scenes and other items in about
    40%, so placement hardly tells; a swapped main object without a position word is not asked its
    position.

Sampling specs and rendering them
are separate steps, so an appearance *variant* of a scene is the same spec with one field changed
(:func:`variant`).  Everything is deterministic given a seed.

Sources (both offline):

- Fashion-MNIST (Zalando, MIT licence), read from the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``); train split for training, test split for evaluation.
- Texture photos shipped inside scikit-image (``skimage.data.brick/grass/gravel``).

Scenes are written and read in COCO format by :mod:`headflow.images.coco`.
"""
from __future__ import annotations

import dataclasses
import gzip
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import skimage.data as skd
from PIL import Image
from scipy import ndimage

FASHION_MNIST_DIR = Path(os.environ.get("HEADFLOW_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))

FASHION_MNIST_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
#: At most one merge group ``(name, members)`` of the classes Fashion-MNIST itself confuses, decided from the
#: recognition ceiling (:mod:`headflow.organism.ceiling`) and the tower's main-object-token probe before any
#: organism trains on it; None keeps the ten classes.
CLASS_MERGE: tuple[str, tuple[str, ...]] | None = ("pullover/coat/shirt", ("pullover", "coat", "shirt"))


def class_vocabulary(merge=CLASS_MERGE) -> tuple[list[str], np.ndarray]:
    """The object classes under ``merge`` (the group's name where its first member stood) and the
    map ``(10,) int64`` from a Fashion-MNIST label to its class index."""
    if merge is None:
        return list(FASHION_MNIST_CLASSES), np.arange(len(FASHION_MNIST_CLASSES))
    name, members = merge
    unknown = [m for m in members if m not in FASHION_MNIST_CLASSES]
    if unknown or len(members) < 2:
        raise ValueError(f"a merge group needs two or more Fashion-MNIST classes, not {members!r}")
    if len(FASHION_MNIST_CLASSES) - len(members) + 1 < 7:
        raise ValueError("a merge must leave at least 7 classes")
    classes, index = [], []
    for c in FASHION_MNIST_CLASSES:
        word = name if c in members else c
        if word not in classes:
            classes.append(word)
        index.append(classes.index(word))
    return classes, np.array(index, np.int64)


_VOCABULARY = class_vocabulary()
#: The object classes the organism answers (after :data:`CLASS_MERGE`), in label order.
CLASSES = _VOCABULARY[0]
#: Fashion-MNIST label -> index into :data:`CLASSES`.
FINE_TO_CLASS = _VOCABULARY[1]


def use_classes(merge: tuple[str, tuple[str, ...]] | None) -> tuple[str, tuple[str, ...]] | None:
    """Answer with the classes under ``merge`` from now on (:data:`CLASSES`, :data:`FINE_TO_CLASS` and
    ``ANSWER_WORDS["object"]`` change in place, so every module that imported them sees the change);
    returns the previous merge.  Training records the merge it ran with (``Recipe.class_merge``)."""
    global CLASS_MERGE
    merge = None if merge is None else (str(merge[0]), tuple(str(m) for m in merge[1]))
    classes, index = class_vocabulary(merge)
    previous, CLASS_MERGE = CLASS_MERGE, merge
    CLASSES[:] = classes
    FINE_TO_CLASS[:] = index
    load_fashion_mnist.cache_clear()
    return previous
COLORS = {
    "red": (1.0, 0.12, 0.12),
    "green": (0.15, 0.85, 0.15),
    "blue": (0.2, 0.35, 1.0),
    "yellow": (1.0, 0.9, 0.1),
    "white": (1.0, 1.0, 1.0),
    "purple": (0.65, 0.2, 0.95),
}
COLOR_NAMES = list(COLORS)
POSITIONS = ["left", "right", "top", "bottom", "center"]
BACKGROUNDS = ["brick", "grass", "gravel", "flat"]
STYLES = ["photo", "inverted", "sketch"]
VARIANT_KINDS = ["color", "polarity", "sketch", "background", "scale"]
# The answer vocabulary of each question on a FashionScenes set (its words, in label order).
ANSWER_WORDS = {"object": CLASSES, "color": COLOR_NAMES, "position": POSITIONS}

CANVAS = 64
SIZE_RANGE = (30, 46)  # object side in pixels, inclusive
MIN_OFFSET = 7.0  # a non-centre object's centre is at least this far from the canvas centre
CENTER_JITTER = 2.0
# multi-object scenes: the main object's side, the largest main-to-second area ratio, and how much
# of an other item's square stays visible (items are drawn behind the main one)
@dataclass(frozen=True)
class Layout:
    """How multi-object scenes are drawn: the main object's side range, the main-to-other area
    ratio range and the items per scene (before placement)."""

    size_range: tuple[int, int]
    min_ratio: float
    max_ratio: float
    objects: tuple[int, int]
    crowd: bool = False  # the other items share one class and one colour, both unlike the main object's
    # the share of *decoy* scenes (crowd layouts only): the other items share the main object's class and colour,
    # except one, whose class and colour are unlike it: the odd item out is then not the main object
    decoy: float = 0.0
    # the share of scenes drawn as *size swaps* (:func:`swap_sizes`): the main object and the largest other item
    # trade sizes and keep their places, so the main object is as often at a random place as at a worded one and
    # placement does not tell which item is main (a swap that fails keeps the scene as drawn); a swapped main object
    # may have no position word (position -1: no position question about it)
    swapped: float = 0.0


#: The scene layouts (see the module docstring).
LAYOUTS = {"overlap": Layout((26, 38), 1.25, 1.5, (2, 3)), "main2x": Layout((30, 40), 2.0, 4.0, (3, 5)),
           "crowd": Layout((30, 40), 2.0, 2.8, (4, 5), crowd=True),
           "mixed": Layout((30, 40), 2.0, 2.8, (4, 5), crowd=True, decoy=0.5),
           "main2x-swap": Layout((30, 40), 2.0, 4.0, (3, 5), swapped=0.8),
           "mixed-swap": Layout((30, 40), 2.0, 2.8, (4, 5), crowd=True, decoy=0.5, swapped=0.8)}
#: The layout in use (:func:`use_layout`): sets the four constants below.
LAYOUT = "mixed"
MULTI_SIZE_RANGE = LAYOUTS[LAYOUT].size_range
MULTI_OBJECTS = LAYOUTS[LAYOUT].objects
MAX_MAIN_RATIO = LAYOUTS[LAYOUT].max_ratio
MIN_MAIN_RATIO = LAYOUTS[LAYOUT].min_ratio  # and at least this: the main object is the largest
MIN_VISIBLE = 0.6
PLACEMENT_TRIES = 20


class _Item:
    """Names and box of an item (``label``, ``color``, ``size``, ``x0``, ``y0`` fields)."""

    @property
    def class_name(self) -> str:
        return CLASSES[self.label]

    @property
    def color_name(self) -> str:
        return COLOR_NAMES[self.color]

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """COCO box (x, y, width, height) of the item's square."""
        return (self.x0, self.y0, self.size, self.size)


@dataclass(frozen=True)
class Other(_Item):
    """An item of a multi-object scene that is not the main object (drawn behind it)."""

    item: int
    label: int
    color: int
    size: int
    x0: int
    y0: int



@dataclass(frozen=True)
class SceneSpec(_Item):
    """Everything needed to draw one scene.  Positions are the object's top-left corner."""

    item: int  # index into the Fashion-MNIST split
    split: str  # "train" or "test"
    label: int  # Fashion-MNIST class index
    color: int  # index into COLOR_NAMES
    position: int  # index into POSITIONS
    size: int  # object side in pixels
    x0: int
    y0: int
    background: int  # index into BACKGROUNDS
    bg_seed: int  # seeds the crop / noise / contrast of the background
    style: str = "photo"  # "photo", "inverted" (polarity), "sketch" (edge rendition)
    others: tuple = ()  # the other items (:class:`Other`), drawn in order, behind the main object

    @classmethod
    def from_dict(cls, d: dict) -> "SceneSpec":
        """The inverse of ``dataclasses.asdict`` (the ``spec`` attribute of a committed scene)."""
        return cls(**{**d, "others": tuple(Other(**o) for o in d.get("others", ()))})


    @property
    def position_name(self) -> str | None:
        """The position word; ``None`` for a counterfactual scene where no word holds (position -1)."""
        return POSITIONS[self.position] if self.position >= 0 else None


def task_layout(name: str) -> str:
    """The layout whose scenes the study asks about, for a training stream's layout ``name``: ``mixed-swap``
    -> ``mixed`` (the size swaps are a training device; the task's scenes put the main object at a worded
    place, so every question has its answer); a layout without swaps is its own."""
    if name not in LAYOUTS:
        raise ValueError(f"unknown scene layout {name!r}; choose one of {sorted(LAYOUTS)}")
    base = name.removesuffix("-swap")
    return base if LAYOUTS[name].swapped and base in LAYOUTS else name


def use_layout(name: str) -> str:
    """Draw multi-object scenes by layout ``name`` (:data:`LAYOUTS`) from now on; returns the previous
    layout's name.  Training and evaluation record the layout they ran with."""
    global LAYOUT, MULTI_SIZE_RANGE, MULTI_OBJECTS, MAX_MAIN_RATIO, MIN_MAIN_RATIO
    if name not in LAYOUTS:
        raise ValueError(f"unknown scene layout {name!r}; choose one of {sorted(LAYOUTS)}")
    previous, lay = LAYOUT, LAYOUTS[name]
    LAYOUT, MULTI_SIZE_RANGE, MULTI_OBJECTS = name, lay.size_range, lay.objects
    MIN_MAIN_RATIO, MAX_MAIN_RATIO = lay.min_ratio, lay.max_ratio
    return previous


# ------------------------------------------------------------------------------------ sources
@lru_cache(maxsize=4)
def load_fashion_mnist(split: str, fine: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images ``(N, 28, 28) uint8`` and labels ``(N,) int64`` of ``split``: indices into
    :data:`CLASSES` (after :data:`CLASS_MERGE`), or the original ten with ``fine``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    prefix = "train" if split == "train" else "t10k"
    img_path = FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz"
    lab_path = FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    if not img_path.exists():
        raise FileNotFoundError(
            f"Fashion-MNIST not found at {img_path}. Install it with "
            "`apt-get install dataset-fashion-mnist` (Debian) or point HEADFLOW_FASHION_MNIST "
            "at a folder holding the four *-ubyte.gz files.")
    with gzip.open(img_path) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(lab_path) as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return x, (y if fine else FINE_TO_CLASS[y])


def random_items(split: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` item indices of ``split``, class-balanced: a class uniformly among :data:`CLASSES`, then
    an item of it uniformly (a merged class is not drawn more often than the others)."""
    _, labels = load_fashion_mnist(split)
    by_class = [np.flatnonzero(labels == c) for c in range(len(CLASSES))]
    cls = rng.integers(0, len(CLASSES), n)
    return np.array([by_class[c][rng.integers(len(by_class[c]))] for c in cls], np.int64)


@lru_cache(maxsize=1)
def _textures() -> tuple[np.ndarray, ...]:
    """Grey texture photos from scikit-image, downscaled 2x to 256x256 floats in [0, 1]."""

    out = []
    for fn in (skd.brick, skd.grass, skd.gravel):
        img = Image.fromarray(fn()).resize((256, 256), Image.BILINEAR)
        out.append(np.asarray(img, np.float32) / 255.0)
    return tuple(out)


def _background(kind: int, seed: int) -> np.ndarray:
    """A ``(CANVAS, CANVAS)`` grey background in [0, 1]."""
    rng = np.random.default_rng(seed)
    if BACKGROUNDS[kind] == "flat":
        noise = rng.normal(0, 1, (16, 16)).astype(np.float32)
        noise = np.asarray(Image.fromarray(noise, mode="F").resize((CANVAS, CANVAS), Image.BICUBIC))
        grey = rng.uniform(0.25, 0.65) + 0.04 * noise
    else:
        src = _textures()[kind]
        r0, c0 = rng.integers(0, src.shape[0] - CANVAS + 1, 2)
        crop = src[r0:r0 + CANVAS, c0:c0 + CANVAS]
        grey = (crop - crop.mean()) * rng.uniform(0.4, 0.9) + rng.uniform(0.3, 0.6)
    return np.clip(grey, 0.0, 1.0)


# ------------------------------------------------------------------------------------ sampling
def place(position: int, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner for an object of ``size`` whose position word is POSITIONS[position].

    The word is drawn first and the place after it, with margins, so the word is unambiguous:
    'center' stays within CENTER_JITTER px of the middle; otherwise the main-axis offset is at
    least MIN_OFFSET px and the off-axis offset at most a third of it.
    """
    room = CANVAS / 2 - size / 2
    if POSITIONS[position] == "center":
        dx, dy = rng.uniform(-CENTER_JITTER, CENTER_JITTER, 2)
    else:
        main = rng.uniform(min(MIN_OFFSET, room), room)
        side = rng.uniform(-main / 3, main / 3)
        dx, dy = {"left": (-main, side), "right": (main, side),
                  "top": (side, -main), "bottom": (side, main)}[POSITIONS[position]]
    x0 = int(round(CANVAS / 2 + dx - size / 2))
    y0 = int(round(CANVAS / 2 + dy - size / 2))
    return min(max(x0, 0), CANVAS - size), min(max(y0, 0), CANVAS - size)


def main_index(sizes, centres) -> int:
    """The main object among items of square ``sizes`` whose centres are ``centres`` ``[(x, y)]``:
    the largest square; among equal squares, the one nearest the canvas centre (then the first)."""
    dist = [float(np.hypot(x - CANVAS / 2, y - CANVAS / 2)) for x, y in centres]
    return min(range(len(sizes)), key=lambda i: (-sizes[i], dist[i], i))


def _valid_corners(covered: np.ndarray, size: int) -> np.ndarray:
    """Top-left corners ``(K, 2)`` (x, y) where a ``size`` square keeps at least ``MIN_VISIBLE`` of
    itself outside the ``covered`` pixels ``(CANVAS, CANVAS) bool`` (an integral image, all corners)."""
    c = np.pad(covered.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    n = CANVAS - size + 1
    inside = c[size:size + n, size:size + n] - c[:n, size:size + n] - c[size:size + n, :n] + c[:n, :n]
    ys, xs = np.nonzero(inside <= (1.0 - MIN_VISIBLE) * size * size)
    return np.stack([xs, ys], 1)


def place_others(main_box: tuple, sizes: list[int], rng: np.random.Generator) -> list[tuple[int, int] | None]:
    """Top-left corners for other items of ``sizes`` (drawn in this order, behind the main object's
    ``main_box``), each uniform among the places where it keeps at least ``MIN_VISIBLE`` of its
    square visible under the items drawn after it; ``None`` where no place is left.  Items are
    placed from the last drawn to the first, so each is placed against everything on top of it."""
    covered = np.zeros((CANVAS, CANVAS), bool)
    x, y, w, h = main_box
    covered[y:y + h, x:x + w] = True
    corners: list[tuple[int, int] | None] = []
    for size in reversed(sizes):
        valid = _valid_corners(covered, size)
        if not len(valid):
            corners.append(None)
            continue
        x0, y0 = (int(v) for v in valid[rng.integers(len(valid))])
        covered[y0:y0 + size, x0:x0 + size] = True
        corners.append((x0, y0))
    return corners[::-1]


def _other_sizes(main_size: int, n: int, rng: np.random.Generator) -> list[int]:
    """``n`` sides whose area ratio to ``main_size`` lies in [MIN_MAIN_RATIO, MAX_MAIN_RATIO]."""
    lo = int(np.ceil(main_size / np.sqrt(MAX_MAIN_RATIO)))
    hi = max(lo, int(np.floor(main_size / np.sqrt(MIN_MAIN_RATIO))))
    return [int(v) for v in rng.integers(lo, hi + 1, n)]


def sample_specs(split: str, n: int, seed: int, items: np.ndarray | None = None,
                 objects: int | tuple[int, int] = 1) -> list[SceneSpec]:
    """``n`` random scene specs.  Items are drawn without replacement (in random order) unless
    ``items`` gives them explicitly; colour, position, size and background are uniform.

    ``objects``: items per scene, an int or an inclusive range ``(lo, hi)``.  One item: the
    single-object scenes (sizes ``SIZE_RANGE``).  More: the main object (sizes ``MULTI_SIZE_RANGE``)
    plus other items of random class, colour and place, strictly smaller (see :func:`main_index`);
    an item that cannot be placed visibly is left out, so a scene may hold fewer items than drawn
    (never fewer than 2)."""
    lo, hi = (objects, objects) if isinstance(objects, int) else objects
    if not 1 <= lo <= hi:
        raise ValueError(f"objects must be >= 1 (an int or a range lo <= hi), not {objects!r}")
    rng = np.random.default_rng(seed)
    _, labels = load_fashion_mnist(split)
    if items is None:
        reps = n // len(labels) + 1
        items = np.concatenate([rng.permutation(len(labels)) for _ in range(reps)])[:n]
    sizes = SIZE_RANGE if hi == 1 else MULTI_SIZE_RANGE
    specs = []
    for item in items:
        pos = int(rng.integers(len(POSITIONS)))
        size = int(rng.integers(sizes[0], sizes[1] + 1))
        x0, y0 = place(pos, size, rng)
        spec = SceneSpec(item=int(item), split=split, label=int(labels[item]),
                         color=int(rng.integers(len(COLORS))), position=pos, size=size,
                         x0=x0, y0=y0, background=int(rng.integers(len(BACKGROUNDS))),
                         bg_seed=int(rng.integers(2**31)))
        if hi > 1:
            spec = _with_others(spec, int(rng.integers(lo, hi + 1)) - 1, labels, rng)
            if LAYOUTS[LAYOUT].swapped and rng.random() < LAYOUTS[LAYOUT].swapped:
                spec = swap_sizes(spec) or spec
        specs.append(spec)
    return specs


def _with_others(spec: SceneSpec, n_others: int, labels: np.ndarray, rng: np.random.Generator) -> SceneSpec:
    """``spec`` with ``n_others`` other items (at least one is always placed: retried)."""
    if n_others == 0:
        return spec
    for _ in range(PLACEMENT_TRIES):
        osizes = _other_sizes(spec.size, n_others, rng)
        placed = [(sz, c) for sz, c in zip(osizes, place_others(spec.bbox, osizes, rng)) if c is not None]
        if placed:
            break
    else:
        raise RuntimeError(f"no other item fits beside a main object of side {spec.size}")
    lay = LAYOUTS[LAYOUT]
    if lay.crowd:  # one other class and one other colour for every other item
        cls = int(rng.choice([c for c in range(int(labels.max()) + 1) if c != spec.label]))
        pool = np.flatnonzero(labels == cls)
        items = pool[rng.integers(0, len(pool), len(placed))]
        colour = int(rng.choice([c for c in range(len(COLORS)) if c != spec.color]))
        colours = [colour] * len(placed)
        if lay.decoy and len(placed) >= 2 and rng.random() < lay.decoy:
            # a decoy scene: every other item but the first takes the main object's class and colour
            same = np.flatnonzero(labels == spec.label)
            items[1:] = same[rng.integers(0, len(same), len(placed) - 1)]
            colours = [colour] + [spec.color] * (len(placed) - 1)
    else:
        items = rng.integers(0, len(labels), len(placed))
        colours = [int(rng.integers(len(COLORS))) for _ in placed]
    others = tuple(Other(item=int(it), label=int(labels[it]), color=c, size=sz, x0=x, y0=y)
                   for it, c, (sz, (x, y)) in zip(items, colours, placed))
    return dataclasses.replace(spec, others=others)


def balanced_items(split: str, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` item indices of every class, class-major order, drawn without replacement."""
    rng = np.random.default_rng(seed)
    _, labels = load_fashion_mnist(split)
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
                           for c in range(len(CLASSES))])


def variant(spec: SceneSpec, kind: str, rng: np.random.Generator) -> SceneSpec:
    """The same object with one appearance factor changed (``kind`` in VARIANT_KINDS)."""
    if kind == "color":
        other = [c for c in range(len(COLORS)) if c != spec.color]
        return dataclasses.replace(spec, color=int(rng.choice(other)))
    if kind == "polarity":
        return dataclasses.replace(spec, style="inverted")
    if kind == "sketch":
        return dataclasses.replace(spec, style="sketch")
    if kind == "background":
        other = [b for b in range(len(BACKGROUNDS)) if b != spec.background]
        return dataclasses.replace(spec, background=int(rng.choice(other)), bg_seed=int(rng.integers(2**31)))
    if kind == "scale":
        return scale_variant(spec, rng)[0]
    raise ValueError(f"unknown variant kind {kind!r}; choose one of {VARIANT_KINDS}")


SCALE_REDRAWS = 50


def scale_variant(spec: SceneSpec, rng: np.random.Generator) -> tuple[SceneSpec, int]:
    """The scale variant of ``spec`` and how many draws were rejected (redrawn).

    The main object becomes smaller or larger by at least 8 px and is re-placed so its position
    word still holds.  In a multi-object scene every other item is scaled by the same factor and
    re-placed; a draw after which the main object would no longer be main (by :func:`main_index`
    and the area-ratio cap) or an item no longer fits visibly is redrawn."""
    sizes = [s for s in range(SIZE_RANGE[0] - 8, SIZE_RANGE[1] + 5) if abs(s - spec.size) >= 8]
    for redraws in range(SCALE_REDRAWS):
        size = int(rng.choice(sizes))
        x0, y0 = place(spec.position, size, rng)
        if not spec.others:
            return dataclasses.replace(spec, size=size, x0=x0, y0=y0), redraws
        f = size / spec.size
        osizes = [max(4, int(round(o.size * f))) for o in spec.others]
        ratio = size ** 2 / max(osizes) ** 2
        if not MIN_MAIN_RATIO <= ratio <= MAX_MAIN_RATIO or size > CANVAS:
            continue
        corners = place_others((x0, y0, size, size), osizes, rng)
        if any(c is None for c in corners):
            continue
        others = tuple(dataclasses.replace(o, size=sz, x0=x, y0=y)
                       for o, sz, (x, y) in zip(spec.others, osizes, corners))
        return dataclasses.replace(spec, size=size, x0=x0, y0=y0, others=others), redraws
    raise RuntimeError(f"no scale variant of scene item {spec.item} after {SCALE_REDRAWS} draws")


def swap_sizes(spec: SceneSpec) -> SceneSpec | None:
    """The counterfactual scene: the main object and the largest other item swap sizes (each
    keeps its centre, shifted inside the canvas where needed), so the former other item becomes
    the main object (drawn on top).  Its position word is the one its new place gives
    unambiguously (:func:`position_of`); ``None`` when the scene has no other item, or the former
    main object would keep less than ``MIN_VISIBLE`` of its square visible."""
    if not spec.others:
        return None
    k = max(range(len(spec.others)), key=lambda i: spec.others[i].size)
    o = spec.others[k]

    def moved(cx, cy, size):  # centred at (cx, cy), shifted inside the canvas where needed
        return (min(max(int(round(cx - size / 2)), 0), CANVAS - size),
                min(max(int(round(cy - size / 2)), 0), CANVAS - size))

    new_main = moved(o.x0 + o.size / 2, o.y0 + o.size / 2, spec.size)
    old_main = moved(spec.x0 + spec.size / 2, spec.y0 + spec.size / 2, o.size)
    boxes = [(b.x0, b.y0, b.size, b.size) for j, b in enumerate(spec.others) if j != k]
    if _covered_share(old_main, o.size, boxes[k:] + [(*new_main, spec.size, spec.size)]) > 1.0 - MIN_VISIBLE:
        return None
    demoted = Other(item=spec.item, label=spec.label, color=spec.color, size=o.size, x0=old_main[0], y0=old_main[1])
    others = spec.others[:k] + (demoted,) + spec.others[k + 1:]
    pos = position_of(new_main[0], new_main[1], spec.size)
    return dataclasses.replace(spec, item=o.item, label=o.label, color=o.color, x0=new_main[0], y0=new_main[1],
                               position=-1 if pos is None else pos, others=others)


def _covered_share(corner, size, boxes) -> float:
    covered = np.zeros((size, size), bool)
    x, y = corner
    for (x2, y2, w2, h2) in boxes:
        covered[max(y2 - y, 0):max(min(y2 + h2 - y, size), 0), max(x2 - x, 0):max(min(x2 + w2 - x, size), 0)] = True
    return float(covered.mean())


def position_of(x0: int, y0: int, size: int) -> int | None:
    """The position word (index into POSITIONS) that :func:`place`'s rule gives an item at
    ``(x0, y0)`` of ``size``, or ``None`` where no word holds unambiguously."""
    dx, dy = x0 + size / 2 - CANVAS / 2, y0 + size / 2 - CANVAS / 2
    if max(abs(dx), abs(dy)) <= CENTER_JITTER + 0.5:
        return POSITIONS.index("center")
    for word, (main, side) in {"left": (-dx, dy), "right": (dx, dy), "top": (-dy, dx), "bottom": (dy, dx)}.items():
        if main >= MIN_OFFSET - 1.5 and abs(side) <= main / 3 + 1.0:
            return POSITIONS.index(word)
    return None


# ------------------------------------------------------------------------------------ rendering
def _sketch(obj: np.ndarray) -> np.ndarray:
    """Edge rendition of an item in [0, 1]: gradient magnitude of the slightly blurred item."""

    smooth = ndimage.gaussian_filter(obj, 0.7)
    mag = np.hypot(ndimage.sobel(smooth, 0), ndimage.sobel(smooth, 1))
    return np.clip(mag / (mag.max() + 1e-6) * 1.8, 0.0, 1.0)


def _item_layer(split: str, item: int, size: int, style: str) -> np.ndarray:
    """An item's grey opacity source ``(size, size)`` in [0, 1], in its rendition."""
    x, _ = load_fashion_mnist(split)
    obj = np.asarray(Image.fromarray(x[item]).resize((size, size), Image.BILINEAR), np.float32) / 255.0
    if style == "sketch":
        obj = _sketch(obj)
    elif style not in ("photo", "inverted"):
        raise ValueError(f"unknown style {style!r}; choose one of {STYLES}")
    return obj


def render_instances(spec: SceneSpec) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``spec``: the image ``(CANVAS, CANVAS, 3) uint8`` and one visible mask per item
    ``(1 + len(others), CANVAS, CANVAS) bool``, the main object first (pixels where an item's
    opacity exceeds 0.1 and no item drawn later covers it).  Other items are drawn first, in
    order, the main object last.  A ``sketch`` style re-renders the main item only; ``inverted``
    inverts the whole image (as a negative would)."""
    img = np.repeat(_background(spec.background, spec.bg_seed)[..., None], 3, axis=2)
    main_style = "photo" if spec.style == "inverted" else spec.style
    layers = [(o.item, o.size, o.x0, o.y0, o.color, "photo") for o in spec.others]
    layers.append((spec.item, spec.size, spec.x0, spec.y0, spec.color, main_style))
    if spec.style not in STYLES:
        raise ValueError(f"unknown style {spec.style!r}; choose one of {STYLES}")
    drawn = []
    for item, size, x0, y0, color, style in layers:
        obj = _item_layer(spec.split, item, size, style)
        alpha = np.clip(obj * 2.5, 0.0, 1.0)[..., None]
        shade = (0.45 + 0.55 * obj)[..., None]
        tint = np.asarray(COLORS[COLOR_NAMES[color]], np.float32)
        ys, xs = slice(y0, y0 + size), slice(x0, x0 + size)
        img[ys, xs] = img[ys, xs] * (1 - alpha) + tint * shade * alpha
        mask = np.zeros((CANVAS, CANVAS), bool)
        mask[ys, xs] = alpha[..., 0] > 0.1
        for earlier in drawn:
            earlier &= ~mask
        drawn.append(mask)
    img = np.clip(img, 0.0, 1.0)
    if spec.style == "inverted":
        img = 1.0 - img
    masks = np.stack([drawn[-1]] + drawn[:-1])
    return (img * 255 + 0.5).astype(np.uint8), masks


def render(spec: SceneSpec) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``spec``: returns the image ``(CANVAS, CANVAS, 3) uint8`` and the main object's mask
    ``(CANVAS, CANVAS) bool`` (pixels where the object's opacity exceeds 0.1)."""
    img, masks = render_instances(spec)
    return img, masks[0]


def render_many(specs: list[SceneSpec]) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, CANVAS, CANVAS, 3) uint8`` and masks ``(N, CANVAS, CANVAS) bool``."""
    imgs = np.empty((len(specs), CANVAS, CANVAS, 3), np.uint8)
    masks = np.empty((len(specs), CANVAS, CANVAS), bool)
    for i, s in enumerate(specs):
        imgs[i], masks[i] = render(s)
    return imgs, masks


def answers(spec: SceneSpec) -> dict[str, str]:
    """The correct one-word answer of each question type (no colour for an inverted scene,
    whose tint is the complement of the spec's colour)."""
    out = {"object": spec.class_name, "color": spec.color_name, "position": spec.position_name}
    if spec.style == "inverted":
        del out["color"]
    if out["position"] is None:
        del out["position"]
    return out
