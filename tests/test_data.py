import dataclasses
import json

import numpy as np
import pytest

from headflow.images import coco
from headflow.images import fashionscenes as data
from headflow.organism import evalset
from headflow.util.paths import REPO_ROOT


def test_specs_and_images_are_deterministic():
    a = data.sample_specs("test", 20, seed=3)
    b = data.sample_specs("test", 20, seed=3)
    c = data.sample_specs("test", 20, seed=4)
    assert a == b and a != c
    ia, ma = data.render_many(a)
    ib, mb = data.render_many(b)
    assert np.array_equal(ia, ib) and np.array_equal(ma, mb)
    assert ia.shape == (20, 64, 64, 3) and ia.dtype == np.uint8 and ma.dtype == bool


def test_position_words_match_geometry():
    for s in data.sample_specs("test", 300, seed=1):
        cx, cy = s.x0 + s.size / 2 - 32, s.y0 + s.size / 2 - 32
        word = s.position_name
        if word == "center":
            assert max(abs(cx), abs(cy)) <= data.CENTER_JITTER + 0.5
        else:
            main, side = {"left": (-cx, cy), "right": (cx, cy), "top": (-cy, cx), "bottom": (cy, cx)}[word]
            assert main >= 5.5 and abs(side) <= main / 3 + 1.0, (word, cx, cy)


def test_mask_is_inside_bbox_and_object_changes_pixels():
    spec = data.sample_specs("test", 1, seed=5)[0]
    img, mask = data.render(spec)
    x, y, w, h = spec.bbox
    assert mask.sum() > 50
    assert not mask[:y].any() and not mask[y + h:].any() and not mask[:, :x].any() and not mask[:, x + w:].any()
    # outside the object's square the image is the background alone; inside the mask it is not
    bg = (data._background(spec.background, spec.bg_seed) * 255 + 0.5).astype(np.uint8)
    outside = np.ones_like(mask)
    outside[y:y + h, x:x + w] = False
    assert np.array_equal(img[outside][:, 0], bg[outside])
    assert np.abs(img[mask].astype(int) - bg[mask][:, None]).max() > 40


def test_variants_keep_the_object_and_change_one_factor():
    rng = np.random.default_rng(0)
    spec = data.sample_specs("test", 1, seed=2)[0]
    for kind in data.VARIANT_KINDS:
        v = data.variant(spec, kind, rng)
        assert v.item == spec.item and v.label == spec.label and v.position == spec.position
        changed = {f.name for f in dataclasses.fields(spec) if getattr(spec, f.name) != getattr(v, f.name)}
        expected = {"color": {"color"}, "polarity": {"style"}, "sketch": {"style"},
                    "background": {"background", "bg_seed"}, "scale": {"size", "x0", "y0"}}[kind]
        assert changed and changed <= expected, (kind, changed)
        assert not np.array_equal(data.render(v)[0], data.render(spec)[0])
    with pytest.raises(ValueError, match="unknown variant kind"):
        data.variant(spec, "texture", rng)


def test_balanced_items_cover_every_class():
    items = data.balanced_items("test", 5, seed=0)
    _, labels = data.load_fashion_mnist("test")
    assert np.bincount(labels[items], minlength=len(data.CLASSES)).tolist() == [5] * len(data.CLASSES)
    fine = data.load_fashion_mnist("test", fine=True)[1][items]
    merged = [data.FASHION_MNIST_CLASSES.index(m) for m in data.CLASS_MERGE[1]] if data.CLASS_MERGE else []
    assert set(np.unique(fine)) >= set(range(10)) - set(merged), "a class left out of the balanced draw"


def test_missing_fashion_mnist_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path)
    data.load_fashion_mnist.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
            data.load_fashion_mnist("test")
    finally:
        data.load_fashion_mnist.cache_clear()


def test_coco_round_trip(tmp_path):
    specs = data.sample_specs("test", 6, seed=9)
    images, masks = data.render_many(specs)
    path = coco.write_set(tmp_path, images, masks, [s.class_name for s in specs], data.CLASSES,
                          [evalset.spec_attributes(s) for s in specs], [s.bbox for s in specs])
    back = coco.load_set(path)
    assert len(back) == 6
    for s, img, m, ex in zip(specs, images, masks, back):
        assert ex.class_name == s.class_name
        assert np.array_equal(ex.mask, m)
        assert np.array_equal(np.asarray(ex.load_image()), img)
        assert ex.answers == {"object": s.class_name, "color": s.color_name, "position": s.position_name}
        assert data.SceneSpec.from_dict(ex.attributes["spec"]) == s


def test_coco_polygons_and_main_object_selection(tmp_path):
    (tmp_path / "images").mkdir()
    from PIL import Image
    Image.new("RGB", (40, 20)).save(tmp_path / "images" / "a.png")
    ann = {"images": [{"id": 7, "file_name": "a.png", "width": 40, "height": 20}],
           "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
           "annotations": [
               {"id": 1, "image_id": 7, "category_id": 1, "area": 16, "bbox": [0, 0, 4, 4], "iscrowd": 0,
                "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]},
               {"id": 2, "image_id": 7, "category_id": 2, "area": 100, "bbox": [10, 5, 10, 10], "iscrowd": 0,
                "segmentation": [[10, 5, 20, 5, 20, 15, 10, 15]]}]}
    (tmp_path / "instances.json").write_text(json.dumps(ann))
    (ex,) = coco.load_set(tmp_path / "instances.json")
    assert ex.class_name == "dog" and ex.mask.shape == (20, 40)
    assert ex.mask[10, 15] and not ex.mask[2, 2]
    assert coco.load_set(tmp_path / "instances.json", min_area_share=0.5) == []


def test_corrupt_image_gives_a_clear_error(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="broken.png is not a readable image"):
        coco.load_image(bad)


def test_not_a_coco_file(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{}")
    with pytest.raises(ValueError, match="not a COCO instances file"):
        coco.load_set(p)


def test_committed_evaluation_set():
    ev = coco.load_set(coco.resolve_set("fashionscenes/eval"))
    var = coco.load_set(coco.resolve_set("fashionscenes/variants"))
    counts = {c: sum(e.class_name == c for e in ev) for c in data.CLASSES}
    assert min(counts.values()) >= 30, counts
    kinds = {e.attributes["variant_kind"] for e in var}
    assert kinds == set(data.VARIANT_KINDS)
    ids = {e.image_id: e for e in ev}
    for v in var[:25]:
        assert ids[v.attributes["variant_of"]].class_name == v.class_name
    # the committed images are exactly what the generator draws
    specs = [data.SceneSpec.from_dict(e.attributes["spec"]) for e in ev[:5]]
    for s, e in zip(specs, ev[:5]):
        assert np.array_equal(data.render(s)[0], np.asarray(e.load_image()))


def test_data_readme_hashes_every_file():
    root = REPO_ROOT / "data"
    text = (root / "README.md").read_text()
    listed = dict(line.split("  ")[::-1] for line in text.split("```")[1].strip().splitlines())
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != "README.md")
    assert sorted(listed) == files
    for name in files[::37] + [f for f in files if f.endswith(".json")]:
        assert evalset.sha256(root / name) == listed[name], name


def test_the_main_object_is_the_largest_in_the_image_the_model_sees(tmp_path):
    """A portrait image: a tall object along the top edge has the largest COCO area, but after the
    cover-crop to 640 x 480 and LLaVA-1.5's centre square, a smaller central object is what the
    model sees most of; COCO's own layout (annotations/instances_val2017.json, val2017/) is found."""
    import json as _json

    from PIL import Image as _Image

    from headflow.images import coco as _coco

    W, H = 480, 640
    top = np.zeros((H, W), bool)
    top[:150, :] = True  # 23% of the image, almost all of it cropped away at 640 x 480
    centre = np.zeros((H, W), bool)
    centre[250:390, 170:310] = True  # 6.4%, all visible
    (tmp_path / "val2017").mkdir()
    (tmp_path / "annotations").mkdir()
    _Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "val2017" / "a.jpg")
    anns = [{"id": i + 1, "image_id": 1, "category_id": i + 1, "iscrowd": 0, "area": float(m.sum()),
             "bbox": [0, 0, 1, 1], "segmentation": _coco.encode_mask(m)} for i, m in enumerate([top, centre])]
    f = tmp_path / "annotations" / "instances_val2017.json"
    f.write_text(_json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": W, "height": H}], "annotations": anns,
                              "categories": [{"id": 1, "name": "kite"}, {"id": 2, "name": "dog"}]}))
    assert _coco.load_set(f)[0].class_name == "kite"  # as stored
    assert _coco.load_set(f)[0].path == tmp_path / "val2017" / "a.jpg"
    square = lambda h, w: (0.0, 1.0, (w - h) / 2 / w, (w + h) / 2 / w)  # noqa: E731 - LLaVA-1.5's centre crop
    seen = _coco.load_set(f, size=(640, 480), view=square)
    assert seen[0].class_name == "dog" and seen[0].size == (640, 480)


# ------------------------------------------------------------------------------------ multi-object scenes
def _visible_fractions(spec) -> list[float]:
    """Per other item, the share of its square that no item drawn after it covers (slow, obvious)."""
    boxes = [(o.x0, o.y0, o.size, o.size) for o in spec.others] + [spec.bbox]
    out = []
    for i, (x, y, w, h) in enumerate(boxes[:-1]):
        canvas = np.zeros((64, 64), bool)
        for (x2, y2, w2, h2) in boxes[i + 1:]:
            canvas[y2:y2 + h2, x2:x2 + w2] = True
        out.append(1 - canvas[y:y + h, x:x + w].mean())
    return out


def test_multi_object_scenes_follow_the_main_object_rule():
    specs = data.sample_specs("test", 300, seed=21, objects=(2, 3))
    counts = np.bincount([1 + len(s.others) for s in specs], minlength=4)
    assert counts[1] == 0 and counts[2] > 50 and counts[3] > 50, counts
    for s in specs:
        sizes = [s.size] + [o.size for o in s.others]
        centres = [(s.x0 + s.size / 2, s.y0 + s.size / 2)] + [(o.x0 + o.size / 2, o.y0 + o.size / 2) for o in s.others]
        assert data.main_index(sizes, centres) == 0
        ratio = s.size ** 2 / max(o.size for o in s.others) ** 2
        assert data.MIN_MAIN_RATIO <= ratio <= data.MAX_MAIN_RATIO, ratio
        # every other item keeps >= 60% of its square visible under what is drawn after it
        assert min(_visible_fractions(s)) >= data.MIN_VISIBLE
        assert s.position_name in data.POSITIONS
    # the rule's tie-break: equal squares -> the one nearer the centre
    assert data.main_index([30, 30], [(5, 5), (30, 33)]) == 1


def test_multi_object_masks_are_visible_pixels_and_the_main_object_is_on_top():
    spec = data.sample_specs("test", 1, seed=4, objects=3)[0]
    img, masks = data.render_instances(spec)
    assert masks.shape == (1 + len(spec.others), 64, 64)
    assert not (masks[:, None] & masks[None]).any(axis=(2, 3))[~np.eye(len(masks), dtype=bool)].any()
    _, mask0 = data.render(dataclasses.replace(spec, others=()))
    assert np.array_equal(mask0, masks[0])  # nothing covers the main object


def test_coco_round_trip_with_other_instances(tmp_path):
    specs = data.sample_specs("test", 5, seed=8, objects=(2, 3))
    path = evalset._write(tmp_path, specs, [{} for _ in specs])
    back = coco.load_set(path)
    assert [e.class_name for e in back] == [s.class_name for s in specs]
    for s, e in zip(specs, back):
        _, masks = data.render_instances(s)
        assert np.array_equal(e.mask, masks[0]) and e.attributes["main"] is True
        assert e.others.shape == (len(s.others), 64, 64) and np.array_equal(e.others, masks[1:])
        assert e.other_classes == tuple(o.class_name for o in s.others)
        assert data.SceneSpec.from_dict(e.attributes["spec"]) == s
    # the marked main object wins even where another instance has the larger mask
    raw = json.loads(path.read_text())
    for a in raw["annotations"]:
        if not a["attributes"]["main"]:
            a["area"] = 4096
    path.write_text(json.dumps(raw))
    assert [e.class_name for e in coco.load_set(path)] == [s.class_name for s in specs]


def test_scale_variants_keep_the_main_object_main():
    rng = np.random.default_rng(3)
    for s in data.sample_specs("test", 30, seed=6, objects=(2, 3)):
        v, redraws = data.scale_variant(s, rng)
        assert abs(v.size - s.size) >= 8 and redraws >= 0 and v.position == s.position
        assert [o.label for o in v.others] == [o.label for o in s.others]
        ratio = v.size ** 2 / max(o.size for o in v.others) ** 2
        assert data.MIN_MAIN_RATIO <= ratio <= data.MAX_MAIN_RATIO


def test_swapped_scene_makes_the_other_item_main():
    n_swapped = 0
    for s in data.sample_specs("test", 40, seed=7, objects=(2, 3)):
        w = data.swap_sizes(s)
        if w is None:
            continue
        n_swapped += 1
        big = max(s.others, key=lambda o: o.size)
        assert (w.item, w.label, w.color, w.size) == (big.item, big.label, big.color, s.size)
        assert max(o.size for o in w.others) == big.size and s.item in [o.item for o in w.others]
        assert w.position_name is None or w.position == data.position_of(w.x0, w.y0, w.size)
    assert n_swapped >= 25
    assert data.swap_sizes(data.sample_specs("test", 1, seed=7)[0]) is None
