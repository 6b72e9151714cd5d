"""FashionScenes: "main object" scenes rendered from Fashion-MNIST items on real texture photos.

A scene is described by a :class:`SceneSpec` (which item, colour, size, where, on which
background, in which rendition) and drawn by :func:`render`.  Sampling specs and rendering them
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

CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
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


@dataclass(frozen=True)
class SceneSpec:
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

    @property
    def class_name(self) -> str:
        return CLASSES[self.label]

    @property
    def color_name(self) -> str:
        return COLOR_NAMES[self.color]

    @property
    def position_name(self) -> str:
        return POSITIONS[self.position]

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """COCO box (x, y, width, height) of the object's square."""
        return (self.x0, self.y0, self.size, self.size)


# ------------------------------------------------------------------------------------ sources
@lru_cache(maxsize=2)
def load_fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images ``(N, 28, 28) uint8`` and labels ``(N,) int64`` of ``split``."""
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
    return x, y


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


def sample_specs(split: str, n: int, seed: int, items: np.ndarray | None = None) -> list[SceneSpec]:
    """``n`` random scene specs.  Items are drawn without replacement (in random order) unless
    ``items`` gives them explicitly; colour, position, size and background are uniform."""
    rng = np.random.default_rng(seed)
    _, labels = load_fashion_mnist(split)
    if items is None:
        reps = n // len(labels) + 1
        items = np.concatenate([rng.permutation(len(labels)) for _ in range(reps)])[:n]
    specs = []
    for item in items:
        pos = int(rng.integers(len(POSITIONS)))
        size = int(rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1))
        x0, y0 = place(pos, size, rng)
        specs.append(SceneSpec(item=int(item), split=split, label=int(labels[item]),
                               color=int(rng.integers(len(COLORS))), position=pos, size=size,
                               x0=x0, y0=y0, background=int(rng.integers(len(BACKGROUNDS))),
                               bg_seed=int(rng.integers(2**31))))
    return specs


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
        # smaller or larger by at least 8 px, re-placed so the position word still holds
        sizes = [s for s in range(SIZE_RANGE[0] - 8, SIZE_RANGE[1] + 5) if abs(s - spec.size) >= 8]
        size = int(rng.choice(sizes))
        x0, y0 = place(spec.position, size, rng)
        return dataclasses.replace(spec, size=size, x0=x0, y0=y0)
    raise ValueError(f"unknown variant kind {kind!r}; choose one of {VARIANT_KINDS}")


# ------------------------------------------------------------------------------------ rendering
def _sketch(obj: np.ndarray) -> np.ndarray:
    """Edge rendition of an item in [0, 1]: gradient magnitude of the slightly blurred item."""

    smooth = ndimage.gaussian_filter(obj, 0.7)
    mag = np.hypot(ndimage.sobel(smooth, 0), ndimage.sobel(smooth, 1))
    return np.clip(mag / (mag.max() + 1e-6) * 1.8, 0.0, 1.0)


def render(spec: SceneSpec) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``spec``: returns the image ``(CANVAS, CANVAS, 3) uint8`` and the object mask
    ``(CANVAS, CANVAS) bool`` (pixels where the object's opacity exceeds 0.1)."""
    x, _ = load_fashion_mnist(spec.split)
    obj = np.asarray(Image.fromarray(x[spec.item]).resize((spec.size, spec.size), Image.BILINEAR),
                     np.float32) / 255.0
    if spec.style == "sketch":
        obj = _sketch(obj)
    elif spec.style not in ("photo", "inverted"):
        raise ValueError(f"unknown style {spec.style!r}; choose one of {STYLES}")
    bg = np.repeat(_background(spec.background, spec.bg_seed)[..., None], 3, axis=2)
    alpha = np.clip(obj * 2.5, 0.0, 1.0)[..., None]
    shade = (0.45 + 0.55 * obj)[..., None]
    color = np.asarray(COLORS[spec.color_name], np.float32)
    ys, xs = slice(spec.y0, spec.y0 + spec.size), slice(spec.x0, spec.x0 + spec.size)
    bg[ys, xs] = bg[ys, xs] * (1 - alpha) + color * shade * alpha
    img = np.clip(bg, 0.0, 1.0)
    if spec.style == "inverted":
        img = 1.0 - img
    mask = np.zeros((CANVAS, CANVAS), bool)
    mask[ys, xs] = alpha[..., 0] > 0.1
    return (img * 255 + 0.5).astype(np.uint8), mask


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
    return out
