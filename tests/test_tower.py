"""The per-patch vision tower (headflow.organism.tower), the recognition ceiling
(headflow.organism.ceiling) and the scene layouts they train on."""
import json

import numpy as np
import pytest

from headflow.images import fashionscenes as data
from headflow.organism import ceiling, tower


@pytest.fixture
def main2x():
    previous = data.use_layout("main2x")
    yield
    data.use_layout(previous)


def test_patch_targets_follow_the_covering_item():
    masks = np.zeros((2, 64, 64), bool)
    masks[0, :16, :16] = True  # main object: patches (0,0) (0,1) (1,0) (1,1)
    masks[1, 40:, 40:] = True  # another item: the bottom-right 3x3 patches
    masks[1, 0:8, 16:17] = True  # 1/8 of patch (0,2): below min_cover, background
    cls, col, main = tower.patch_targets(masks, [3, 7], [1, 4])
    grid = cls.reshape(8, 8)
    assert (grid[:2, :2] == 3).all() and (grid[5:, 5:] == 7).all() and grid[0, 2] == len(data.CLASSES)
    assert main.reshape(8, 8)[:2, :2].all() and main.sum() == 4
    assert (col.reshape(8, 8)[5:, 5:] == 4).all() and (col[cls == len(data.CLASSES)] == len(data.COLORS)).all()


def test_main2x_layout_makes_the_main_object_at_least_twice_every_other(main2x):
    specs = data.sample_specs("test", 60, seed=5, objects=data.MULTI_OBJECTS)
    assert all(2.0 <= s.size ** 2 / max(o.size for o in s.others) ** 2 <= 4.0 for s in specs)
    assert max(len(s.others) for s in specs) >= 3
    assert any(sum(o.size ** 2 for o in s.others) > s.size ** 2 for s in specs)  # the others may outweigh it
    with pytest.raises(ValueError, match="unknown scene layout"):
        data.use_layout("huge")


def test_a_class_merge_keeps_at_least_seven_classes():
    classes, index = data.class_vocabulary(("top", ("t-shirt", "pullover", "coat", "shirt")))
    assert classes == ["top", "trouser", "dress", "sandal", "sneaker", "bag", "boot"]
    assert [classes[i] for i in index] == ["top", "trouser", "top", "dress", "top", "sandal", "top", "sneaker",
                                           "bag", "boot"]
    with pytest.raises(ValueError, match="at least 7"):
        data.class_vocabulary(("x", ("t-shirt", "pullover", "coat", "shirt", "dress")))
    items = data.random_items("train", 2000, np.random.default_rng(0))
    counts = np.bincount(data.load_fashion_mnist("train")[1][items], minlength=len(data.CLASSES))
    assert counts.min() > 150  # class-balanced


def test_use_classes_changes_every_importer_s_vocabulary_in_place_and_the_recipe_records_it():
    from headflow.images.fashionscenes import ANSWER_WORDS
    from headflow.organism import training

    merge = ("pullover/coat/shirt", ("pullover", "coat", "shirt"))
    before = list(data.CLASSES)
    previous = data.use_classes(merge)
    try:
        assert ANSWER_WORDS["object"] is data.CLASSES and len(data.CLASSES) == 8
        assert data.CLASSES[data.FINE_TO_CLASS[6]] == "pullover/coat/shirt"  # shirt
        assert set(data.load_fashion_mnist("test")[1].tolist()) == set(range(8))  # labels re-mapped, cache cleared
    finally:
        data.use_classes(previous)
    assert data.CLASSES == before and data.load_fashion_mnist("test")[1].max() == len(before) - 1
    assert training.recipe_of("organism").class_merge == merge
    assert training.recipe_from_log({"recipe": {}}).class_merge is None  # logs before the field: the ten classes
    logged = training.recipe_from_log({"recipe": {"class_merge": ["pullover/coat/shirt", ["pullover", "coat", "shirt"]]}})
    assert logged.class_merge == merge  # a JSON log's lists read back as the recipe's tuples
    with pytest.raises(ValueError, match="two or more"):
        training.Recipe(class_merge=("x", ("pullover", "jumper")))


def test_tower_training_resumes_exactly_where_it_stopped(tmp_path):
    fast = dict(steps=4, batch=8, warmup=2, ckpt_every=2, eval_every=4, n_monitor=16, threads=1)
    whole = tower.train_tower(tmp_path / "a", tower.TowerRecipe(**fast))
    # an interrupted run: stop after the checkpoint at step 2, then resume
    half = tower.TowerRecipe(**fast)
    (tmp_path / "b").mkdir()
    import torch
    orig = tower.PatchStream.next
    calls = {"n": 0}

    def stop_after_two(self, n):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return orig(self, n)

    tower.PatchStream.next = stop_after_two
    try:
        with pytest.raises(KeyboardInterrupt):
            tower.train_tower(tmp_path / "b", half)
    finally:
        tower.PatchStream.next = orig
    assert (tmp_path / "b" / ".checkpoint.pt").exists()
    resumed = tower.train_tower(tmp_path / "b", half)
    assert resumed["resumed_at"] == [2] and not (tmp_path / "b" / ".checkpoint.pt").exists()
    from safetensors.torch import load_file
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "b" / "tower_log.json").read_text())["rows"][-1]["step"] == 4
    assert whole["rows"][-1]["n_patches"] == 16 * 64


def test_the_ceiling_reports_a_confusion_matrix_with_intervals(main2x):
    res = ceiling.measure(steps=3, batch=16, n_test=40, threads=1)
    conf = np.array(res["confusion"])
    assert conf.shape == (len(data.CLASSES),) * 2 and conf.sum() == 40
    assert res["layout"] == "main2x" and all(0 <= v["ci"][0] <= v["ci"][1] <= 1 for v in res["per_class"].values()
                                             if v["n"])


def test_the_merge_rule_takes_the_smallest_group_that_lifts_every_class():
    names = [f"c{i}" for i in range(9)]
    conf = np.eye(9) * 90 + 1
    conf[0] = [40, 50, 0, 0, 0, 0, 0, 0, 10, 0][:9]  # c0 is mistaken for c1: below the bar alone
    got = ceiling.choose_merge(conf, names)
    assert got["group"] == ["c0", "c1"] and got["worst"] >= 0.6
    assert ceiling.choose_merge(np.eye(9) * 10, names)["group"] == []  # nothing below the bar: no merge
    overall, per = ceiling.merged_accuracy(conf, [0, 1])
    assert len(per) == 8 and per[-1] == pytest.approx((40 + 50 + 91 + 1) / (100 + 99))  # the merged class last
    table = ceiling.merge_table(conf, names, ["c0", "c1"])
    assert table.loc["c0", "accuracy"].startswith("40.0% [") and table.loc["c0", "merged into"] == "c0/c1"
    assert table.loc["c0", "after the merge"] == table.loc["c1", "after the merge"]
    assert table.loc["c0", "after the merge"].startswith(f"{per[-1]:.1%}") and table.loc["c2", "merged into"] == ""


def test_crowd_layout_others_share_a_class_and_a_colour_unlike_the_main_object():
    previous = data.use_layout("crowd")
    try:
        specs = data.sample_specs("test", 80, seed=4, objects=data.MULTI_OBJECTS)
    finally:
        data.use_layout(previous)
    for s in specs:
        assert len({o.label for o in s.others}) == 1 and len({o.color for o in s.others}) == 1
        assert s.others[0].label != s.label and s.others[0].color != s.color
        assert all(s.size ** 2 >= 2.0 * o.size ** 2 for o in s.others)
    assert np.mean([sum(o.size ** 2 for o in s.others) > s.size ** 2 for s in specs]) > 0.9


def test_mixed_layout_makes_neither_the_odd_item_nor_the_majority_the_main_object():
    """The organisms' scenes: half crowd (the main object the odd item out), half decoy (the main object one of
    the majority, another item the odd one out), so only size tells which item is main."""
    previous = data.use_layout("mixed")
    try:
        specs = data.sample_specs("test", 400, seed=4, objects=data.MULTI_OBJECTS)
    finally:
        data.use_layout(previous)
    decoy = []
    for s in specs:
        assert all(s.size ** 2 >= 2.0 * o.size ** 2 for o in s.others)
        same = [o.label == s.label and o.color == s.color for o in s.others]
        if any(same):  # a decoy scene: all but one other item look like the main object, that one does not
            decoy.append(True)
            assert sum(same) == len(s.others) - 1
            odd = s.others[same.index(False)]
            assert odd.label != s.label and odd.color != s.color
        else:
            decoy.append(False)
            assert len({o.label for o in s.others}) == 1 and s.others[0].label != s.label
    assert 0.4 < np.mean(decoy) < 0.6


def test_per_patch_accuracy_of_a_trained_tower_has_scene_intervals(tmp_path):
    fast = dict(steps=2, batch=8, warmup=1, ckpt_every=2, eval_every=2, n_monitor=8, threads=1)
    tower.train_tower(tmp_path / "t", tower.TowerRecipe(**fast))
    r = tower.per_patch(tmp_path / "t", n=12, n_boot=50)
    for h in ("class", "color", "main", "main_recall"):
        lo, hi = r[h]["ci"]
        assert 0 <= lo <= r[h]["accuracy"] <= hi <= 1 and r[h]["n_patches"] > 0, h
    assert r["class_head"] == "today's classes" and r["main"]["n_patches"] == 12 * tower.GRID ** 2
    previous = data.use_classes(None)
    try:  # a ten-class head (trained without the merge) ...
        tower.train_tower(tmp_path / "ten", tower.TowerRecipe(**fast))
    finally:
        data.use_classes(previous)
    assert data.CLASS_MERGE is not None  # ... read through the study's merge
    assert tower.per_patch(tmp_path / "ten", n=12, n_boot=50)["class_head"].startswith("ten Fashion-MNIST")


def test_swap_layouts_make_placement_uninformative_and_only_size_tells():
    """``mixed-swap`` (the organisms' training stream): a share of scenes are size swaps, so the main object
    sits at a worded place about as often as not, other items keep theirs; the main object stays the largest."""
    previous = data.use_layout("mixed-swap")
    try:
        specs = data.sample_specs("train", 300, seed=6, objects=data.MULTI_OBJECTS)
    finally:
        data.use_layout(previous)
    assert all(s.size ** 2 >= 2.0 * o.size ** 2 for s in specs for o in s.others)
    at_word = np.array([data.position_of(s.x0, s.y0, s.size) == s.position for s in specs])
    assert 0.4 < at_word.mean() < 0.8  # "mixed" puts it there in every scene
    wordless = [s for s in specs if s.position < 0]
    assert wordless and all("position" not in data.answers(s) for s in wordless)
    others_at_word = np.mean([data.position_of(o.x0, o.y0, o.size) is not None for s in specs for o in s.others])
    assert others_at_word > 0.3
    assert data.task_layout("mixed-swap") == "mixed" and data.task_layout("main2x-swap") == "main2x"
    assert data.task_layout("crowd") == "crowd"
    with pytest.raises(ValueError, match="unknown scene layout"):
        data.task_layout("mixed-flip")


def test_swap_marking_follows_the_items_through_the_swap(tmp_path):
    fast = dict(steps=2, batch=8, warmup=1, ckpt_every=2, eval_every=2, n_monitor=8, threads=1)
    tower.train_tower(tmp_path / "t", tower.TowerRecipe(**fast))
    r = tower.swap_marking(tmp_path / "t", n=20, n_boot=50)
    assert r["n_scenes"] + r["n_left_out"] == 20 and r["n_scenes"] > 0
    for g in ("original_main", "original_others", "swapped_new_main", "swapped_old_main", "swapped_others"):
        lo, hi = r[g]["ci"]
        assert 0 <= lo <= r[g]["share"] <= hi <= 1 and r[g]["n_patches"] > 0, g
    # the bookkeeping swap_marking relies on: the former main object replaces the largest other item, in place
    previous = data.use_layout("mixed")
    try:
        s = next(s for s in data.sample_specs("test", 20, seed=3100, objects=data.MULTI_OBJECTS) if data.swap_sizes(s))
    finally:
        data.use_layout(previous)
    k = max(range(len(s.others)), key=lambda i: s.others[i].size)
    w = data.swap_sizes(s)
    assert w.item == s.others[k].item and w.others[k].item == s.item and w.size == s.size
    assert [o.item for j, o in enumerate(w.others) if j != k] == [o.item for j, o in enumerate(s.others) if j != k]
