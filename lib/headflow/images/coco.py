"""Image sets in COCO format: FashionScenes and real COCO images share one loader.

A set is a folder of image files plus an instances JSON (``images``, ``annotations`` with RLE or
polygon masks, ``categories``).  Each image yields one :class:`Example`: its **main object**, the
instance an annotation marks ``"main": true`` in its ``attributes`` (FashionScenes' stated rule),
else the largest non-crowd instance; its area must be at least ``min_area_share`` (5%) of the
image, measured in the image the model sees: after the set's own resize (``size``: cover-crop to one size) and the
processor's crop (``view``, e.g. LLaVA-1.5's centre square), so an object cropped away is never main.  FashionScenes
annotations carry extra ``attributes`` (colour, position, style, variant links); COCO ones do not.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from headflow.util.paths import DATA_DIR


# COCO's 80 object categories (instances_val2017.json, in category-id order), the label set of the
# paper-scale sweep; the answer words are these names as written.
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)

@dataclass
class Example:
    """One image and its main object.  ``mask`` is ``(H, W) bool`` in the image's own pixels."""

    image_id: int
    path: Path
    class_name: str
    mask: np.ndarray
    bbox: tuple
    attributes: dict = field(default_factory=dict)
    size: tuple[int, int] | None = None  # (width, height) the image is brought to (None: as stored)
    others: np.ndarray | None = field(default=None, repr=False)  # (K, H, W) bool: the other instances' masks
    other_classes: tuple = ()  # their class names, in the same order

    def load_image(self) -> Image.Image:
        image = load_image(self.path)
        if self.size is None:
            return image
        box = _cover_crop(image.height, image.width, self.size)
        return image.resize(tuple(self.size), Image.BICUBIC, box=box)

    @property
    def answers(self) -> dict[str, str]:
        """Correct answers per question type known for this image (object always)."""
        out = {"object": self.class_name}
        for key in ("color", "position"):
            if key in self.attributes:
                out[key] = self.attributes[key]
        return out


def _cover_crop(height: int, width: int, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The centred region (left, top, right, bottom) of an image that, scaled, exactly covers ``size``
    (width, height): the image is scaled to cover the size and the overhang cropped on both sides."""
    W, H = size
    s = max(W / width, H / height)
    cw, ch = W / s, H / s
    left, top = (width - cw) / 2, (height - ch) / 2
    return (left, top, left + cw, top + ch)


def at_size(examples, size) -> list[Example]:
    """Every example brought to one size ``(width, height)``: scaled to cover it and centre-cropped,
    its mask and box alike.  A per-position baseline (``dataset-mean``) needs every image to give
    the same image positions, and families whose token count follows the image's size (LLaVA-NeXT,
    Qwen2-VL, InternVL, Idefics3) give that only for images of one size."""
    W, H = (int(v) for v in size)
    if W <= 0 or H <= 0:
        raise ValueError(f"image_size must be [width, height] in pixels, got {list(size)}")
    out = []
    for e in examples:
        h, w = e.mask.shape
        left, top, right, bottom = _cover_crop(h, w, (W, H))
        m = Image.fromarray(e.mask.astype(np.uint8) * 255).resize((W, H), Image.BILINEAR, box=(left, top, right, bottom))
        s = W / (right - left)
        x, y, bw, bh = e.bbox
        x0, y0 = max((x - left) * s, 0), max((y - top) * s, 0)
        x1, y1 = min((x + bw - left) * s, W), min((y + bh - top) * s, H)
        others = None
        if e.others is not None:
            others = np.stack([np.asarray(Image.fromarray(o.astype(np.uint8) * 255).resize(
                (W, H), Image.BILINEAR, box=(left, top, right, bottom))) >= 128 for o in e.others]) \
                if len(e.others) else np.zeros((0, H, W), bool)
        out.append(replace(e, mask=np.asarray(m) >= 128, bbox=(x0, y0, max(x1 - x0, 0), max(y1 - y0, 0)),
                           size=(W, H), others=others))
    return out


def load_image(path: Path | str) -> Image.Image:
    """Open an image as RGB, or raise a ValueError that names the file and the fix."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file {path} does not exist; check the set's folder and file_name")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{path} is not a readable image ({type(e).__name__}: {e}); replace the file or "
                         "remove its entry from the instances JSON") from e


# ------------------------------------------------------------------------------------ masks
def encode_mask(mask: np.ndarray) -> dict:
    """Compressed RLE of a ``(H, W) bool`` mask, JSON-ready (counts as str)."""

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def decode_segmentation(seg, height: int, width: int) -> np.ndarray:
    """``(H, W) bool`` mask from a COCO segmentation (compressed/uncompressed RLE or polygons)."""

    if isinstance(seg, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = dict(seg, counts=seg["counts"].encode("ascii") if isinstance(seg["counts"], str) else seg["counts"])
    return mask_utils.decode(rle).astype(bool)


# ------------------------------------------------------------------------------------ reading
MIN_AREA_SHARE = 0.05


def _seen_box(height: int, width: int, size, view) -> tuple[float, float, float, float] | None:
    """The region (left, top, right, bottom) of a stored ``height x width`` image that the model
    sees after the cover-crop to ``size`` and the processor's ``view`` (None: the whole image)."""
    fractions = view(*((size[1], size[0]) if size else (height, width))) if view is not None else (0.0, 1.0, 0.0, 1.0)
    if not size and tuple(fractions) == (0.0, 1.0, 0.0, 1.0):
        return None  # the whole stored image
    left, top, right, bottom = _cover_crop(height, width, tuple(size)) if size else (0.0, 0.0, width, height)
    if view is not None:
        t, b, l, r = fractions
        cw, ch = right - left, bottom - top
        left, top, right, bottom = left + l * cw, top + t * ch, left + r * cw, top + b * ch
    return left, top, right, bottom


def _visible_share(mask: np.ndarray, box) -> float:
    left, top, right, bottom = (int(round(v)) for v in box)
    return float(mask[top:bottom, left:right].sum()) / max((bottom - top) * (right - left), 1)


def image_folder(annotation_file: Path) -> Path:
    """Where a set's images are: ``images/`` beside the instances JSON, or COCO's own layout
    (``annotations/instances_val2017.json`` with the images in ``val2017/`` beside ``annotations/``)."""
    beside = annotation_file.parent / "images"
    split = annotation_file.stem.removeprefix("instances_")
    for cand in (beside, annotation_file.parent / split, annotation_file.parent.parent / split):
        if cand.is_dir():
            return cand
    return beside


def load_set(annotation_file: Path | str, image_dir: Path | str | None = None,
             min_area_share: float = MIN_AREA_SHARE, size=None, view=None) -> list[Example]:
    """The main object of every image in a COCO instances file, in ``images`` order.

    Images with no instance reaching ``min_area_share`` of the image area are skipped.
    ``image_dir`` defaults to :func:`image_folder`.  ``size`` ``(width, height)``: bring every image
    to that size (:func:`at_size`); empty or None: as stored.  ``view(height, width)``: the
    fractions ``(top, bottom, left, right)`` of the sized image that the model's processor keeps
    (:func:`headflow.models.families.visible_region`).  With ``size`` or ``view`` the main object is
    the instance with the largest area *in that region*, and its share is of that region.
    """
    annotation_file = Path(annotation_file)
    if not annotation_file.exists():
        raise FileNotFoundError(f"annotation file {annotation_file} does not exist")
    coco = json.loads(annotation_file.read_text())
    missing = {"images", "annotations", "categories"} - set(coco)
    if missing:
        raise ValueError(f"{annotation_file} is not a COCO instances file: it lacks {sorted(missing)}")
    image_dir = Path(image_dir) if image_dir is not None else image_folder(annotation_file)
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        if not ann.get("iscrowd", 0):
            by_image.setdefault(ann["image_id"], []).append(ann)
    out = []
    for img in coco["images"]:
        anns = by_image.get(img["id"], [])
        if not anns:
            continue
        H, W = img["height"], img["width"]
        box = _seen_box(H, W, size, view)
        masks = [decode_segmentation(a["segmentation"], H, W) for a in anns]
        if box is None:  # the image as stored: COCO's own areas
            shares = [a["area"] / (W * H) for a in anns]
        else:  # the image the model sees
            shares = [_visible_share(m, box) for m in masks]
        marked = [i for i, a in enumerate(anns) if a.get("attributes", {}).get("main") is True]
        best = marked[0] if marked else int(np.argmax(shares))
        if shares[best] < min_area_share:
            continue
        main = anns[best]
        rest = [i for i in range(len(anns)) if i != best]
        out.append(Example(image_id=img["id"], path=image_dir / img["file_name"], class_name=cats[main["category_id"]],
                           mask=masks[best], bbox=tuple(main["bbox"]), attributes=dict(main.get("attributes", {})),
                           others=np.stack([masks[i] for i in rest]) if rest else np.zeros((0, H, W), bool),
                           other_classes=tuple(cats[anns[i]["category_id"]] for i in rest)))
    return at_size(out, size) if size else out


# ------------------------------------------------------------------------------------ writing
def write_set(out_dir: Path | str, images: np.ndarray, masks: np.ndarray, class_names: list[str],
              categories: list[str], attributes: list[dict], bboxes: list[tuple],
              annotation_name: str = "instances.json", others: list[list[dict]] | None = None) -> Path:
    """Write ``images (N, H, W, 3) uint8`` as PNGs and their instances as COCO JSON: per image the
    main object (``masks``, ``class_names``, ``attributes``, ``bboxes``) and, with ``others``, the
    other instances of each image (dicts with ``class_name``, ``mask``, ``bbox``, ``attributes``).
    With ``others`` every main annotation is marked ``"main": true`` in its attributes and every
    other one ``"main": false``."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    cat_id = {name: i + 1 for i, name in enumerate(categories)}
    coco = {"info": {"description": "FashionScenes (headflow)", "version": "1"},
            "licenses": [{"id": 1, "name": "MIT (Fashion-MNIST, Zalando); textures: scikit-image data (BSD-3-Clause)"}],
            "categories": [{"id": i, "name": n, "supercategory": "fashion"} for n, i in cat_id.items()],
            "images": [], "annotations": []}
    for i, (img, mask) in enumerate(zip(images, masks)):
        name = f"{i:05d}.png"
        Image.fromarray(img).save(out_dir / "images" / name, optimize=True)
        coco["images"].append({"id": i + 1, "file_name": name, "height": int(img.shape[0]),
                               "width": int(img.shape[1]), "license": 1})
        rows = [(class_names[i], mask, bboxes[i], attributes[i] if others is None else {"main": True, **attributes[i]})]
        for o in (others[i] if others is not None else []):
            rows.append((o["class_name"], o["mask"], o["bbox"], {"main": False, **o.get("attributes", {})}))
        for name_i, mask_i, bbox_i, attrs_i in rows:
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i + 1,
                                        "category_id": cat_id[name_i], "segmentation": encode_mask(mask_i),
                                        "area": int(mask_i.sum()), "bbox": [int(v) for v in bbox_i], "iscrowd": 0,
                                        "attributes": attrs_i})
    path = out_dir / annotation_name
    path.write_text(json.dumps(coco, separators=(",", ":")))
    return path


def resolve_set(name: str) -> Path:
    """An instances JSON from a set name: ``"fashionscenes/eval"`` (under ``data/``), a folder
    holding ``instances.json``, or the path of an instances JSON itself.  (``"mechanics:coco80"``
    is resolved by :func:`headflow.images.mechanics.resolve`.)"""

    for cand in (DATA_DIR / name / "instances.json", Path(name) / "instances.json", Path(name)):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"no image set {name!r}: give 'fashionscenes/eval', 'fashionscenes/variants', a folder "
                            "with instances.json and images/, or the path of a COCO instances JSON")


def class_names(annotation_file: Path | str) -> list[str]:
    """The category names of a COCO instances file, in id order (the candidate answer words)."""
    coco = json.loads(Path(annotation_file).read_text())
    return [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
