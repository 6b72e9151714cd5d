"""The reference set of the dataset-mean baseline: class-stratified and disjoint from the analysed images."""
from dataclasses import dataclass

import pytest

from headflow.images import coco
from headflow.images import fashionscenes as data
from headflow.method import reference
from headflow.method.study import pick_per_class


@dataclass
class Ex:
    image_id: int
    class_name: str


def _set(counts: dict[str, int], interleave: bool = True) -> list[Ex]:
    """A set in file order: classes interleaved (or in blocks, as the committed set is stored)."""
    rows = [(c, i) for c, n in counts.items() for i in range(n)]
    if interleave:
        rows.sort(key=lambda r: (r[1], r[0]))
    return [Ex(k, c) for k, (c, _) in enumerate(rows)]


def test_pool_sizes_follow_the_rule():
    assert [reference.pool_size(n) for n in (0, 1, 2, 3, 4, 8, 12, 40, 400)] == [0, 0, 1, 1, 1, 2, 3, 10, 10]


@pytest.mark.parametrize("interleave", [True, False])
def test_reference_is_balanced_and_disjoint_from_what_chapters_analyse(interleave):
    exs = _set({f"c{i}": 40 for i in range(10)}, interleave)
    analysable, pools = reference.split(exs)
    ref = reference.choose(pools, 50)
    assert ref.per_class == {f"c{i}": 5 for i in range(10)} and ref.left_out == [] and len(ref.examples) == 50
    chosen = pick_per_class(analysable, 30)  # every image a chapter can analyse
    assert len(chosen) == 300 and not {e.image_id for e in chosen} & {e.image_id for e in ref.examples}
    # the pool is the last quarter of each class in file order
    for c, pool in pools.items():
        assert [e.image_id for e in pool] == [e.image_id for e in exs if e.class_name == c][-10:]


def test_small_classes_are_left_out_and_named():
    exs = _set({"big": 40, "mid": 8, "tiny": 1, "pair": 2})
    analysable, pools = reference.split(exs)
    ref = reference.choose(pools, 30)  # 3 classes with a pool: 10 each asked, the largest pool is 10
    assert ref.per_image_class == 10 and ref.per_class == {"big": 10} and ref.left_out == ["mid", "pair", "tiny"]
    ref = reference.choose(pools, 3)  # one each: every class with a pool
    assert ref.per_class == {"big": 1, "mid": 1, "pair": 1} and ref.left_out == ["tiny"]
    assert "file order" in ref.record()["rule"] and ref.record()["left_out"] == ["tiny"]
    ref = reference.choose(pools, 2)  # fewer than the classes: the two largest pools
    assert ref.per_class == {"big": 1, "mid": 1} and ref.left_out == ["pair", "tiny"]
    assert [e.class_name for e in analysable].count("tiny") == 1 and [e.class_name for e in analysable].count("pair") == 1


def test_more_classes_than_n_reference_take_one_each_from_the_largest_pools():
    exs = _set({**{f"k{i}": 3 for i in range(78)}, "big": 12, "mid": 8})  # COCO-like: 80 classes
    _, pools = reference.split(exs)
    ref = reference.choose(pools, 50)
    assert ref.per_image_class == 1 and len(ref.examples) == 50 and set(ref.per_class.values()) == {1}
    assert {"big", "mid"} <= set(ref.per_class) and len(ref.left_out) == 30
    first_seen = list(dict.fromkeys(e.class_name for e in exs if e.class_name.startswith("k")))
    assert set(ref.per_class) == {"big", "mid", *first_seen[:48]}  # ties: file order


def test_no_pool_is_a_clear_error():
    _, pools = reference.split(_set({"a": 1, "b": 1}))
    with pytest.raises(ValueError, match="no class of this image set has two or more images"):
        reference.choose(pools, 10)
    with pytest.raises(ValueError, match="n_reference must be at least 1"):
        reference.choose(pools, 0)


def test_committed_evaluation_set_reserves_a_quarter_of_each_class():
    exs = coco.load_set(coco.resolve_set("fashionscenes/eval"))  # 38-40 per class pass min_area_share
    analysable, pools = reference.split(exs)
    counts = {c: sum(e.class_name == c for e in exs) for c in pools}
    assert len(pools) == len(data.CLASSES) and all(len(pools[c]) == min(10, n // 4) for c, n in counts.items())
    assert all(n - len(pools[c]) >= 27 for c, n in counts.items())  # the most any chapter analyses is 10 per class
    assert reference.choose(pools, 50).per_class == {c: 50 // len(pools) for c in pools}
