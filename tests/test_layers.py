"""Where the heads are: normalisation, layer shares, top heads by cut-off, bootstrap, probes."""
from types import SimpleNamespace

import numpy as np
import pytest

from headflow.findings import layers
from headflow.method import stats


def _fit(attr):
    return SimpleNamespace(attribution=np.asarray(attr, float).ravel())


def test_normalised_attribution_divides_by_the_image_effect_and_leaves_out_non_positive():
    fits = {"a": _fit([[2.0, 0.0], [0.0, 2.0]]), "b": _fit([[1.0, 1.0], [1.0, 1.0]])}
    runs = {"a": {"y_clean": 5.0, "y_none": 1.0}, "b": {"y_clean": 1.0, "y_none": 1.3}}
    maps, left = layers.normalised_attribution(fits, runs, 2, 2)
    assert left == ["b"] and list(maps) == ["a"]
    np.testing.assert_allclose(maps["a"], [[0.5, 0.0], [0.0, 0.5]])


def test_class_equal_mean_weights_classes_not_images():
    maps = {"a1": np.ones((1, 2)), "a2": np.ones((1, 2)), "a3": np.ones((1, 2)), "b1": np.zeros((1, 2))}
    classes = {"a1": "A", "a2": "A", "a3": "A", "b1": "B"}
    np.testing.assert_allclose(stats.class_equal_mean(maps, classes), 0.5)


def test_layer_share_uses_the_positive_part_and_refuses_an_empty_map():
    m = np.array([[3.0, -5.0], [1.0, 0.0]])
    np.testing.assert_allclose(layers.layer_share(m), [0.75, 0.25])
    with pytest.raises(ValueError, match="no head has positive attribution"):
        layers.layer_share(-np.ones((2, 2)))


def test_top_per_layer_counts_the_largest_heads():
    m = np.zeros((4, 5))
    m[0, 0], m[2, 3], m[3, 1] = 3, 2, 1
    assert layers.top_per_layer(m, 0.1).tolist() == [1, 0, 1, 0]  # round(0.1 * 20) = 2 heads
    assert layers.top_per_layer(m, 0.01).sum() == 1  # at least one head


def test_summary_point_estimates_lie_in_their_intervals_and_contrast_is_signed():
    rng = np.random.default_rng(0)
    early = {f"e{i}": np.abs(rng.normal(0, 0.05, (4, 4))) + np.array([[1.0], [0], [0], [0]]) for i in range(12)}
    late = {f"l{i}": np.abs(rng.normal(0, 0.05, (4, 4))) + np.array([[0], [0], [0], [1.0]]) for i in range(12)}
    cls = {k: f"c{int(k[1:]) % 3}" for k in list(early) + list(late)}
    a = layers.summarise(early, cls, [0.1, 0.25], n_boot=200, seed=0)
    b = layers.summarise(late, cls, [0.1, 0.25], n_boot=200, seed=0)
    for r in (a, b):
        lo, hi = np.asarray(r["share_per_layer_ci"]).T
        assert np.all(lo - 1e-12 <= r["share_per_layer"]) and np.all(r["share_per_layer"] <= hi + 1e-12)
    assert a["by_cutoff"]["0.25"]["layer0_share"] == 1.0 and b["by_cutoff"]["0.25"]["late_share"] == 1.0
    c = layers.contrast(a, b, "layer0_attribution_share")
    assert c["difference"] > 0.5 and c["excludes_zero"]


def test_probe_reads_a_planted_class_and_not_noise():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 25)
    X = rng.normal(size=(100, 16))
    planted = X.copy()
    planted[np.arange(100), y] += 4.0
    assert layers.probe_accuracy(planted, y) > 0.9
    assert layers.probe_accuracy(X, y) < 0.5


def test_split_half_overlap_is_one_for_a_shared_map_and_near_chance_for_noise():
    rng = np.random.default_rng(0)
    shared = rng.normal(size=(8, 8))
    classes = {f"i{j}": f"c{j % 4}" for j in range(24)}
    same = {k: shared + 1e-3 * rng.normal(size=(8, 8)) for k in classes}
    got = layers.split_half_overlap(same, classes, k=6, n_splits=20, seed=0)
    assert got["overlap"] == 1.0 and got["ci"] == [1.0, 1.0] and got["chance"] == 6 / 64
    assert got["images_per_half"] == 12 and got["classes"] == 4
    noise = {k: rng.normal(size=(8, 8)) for k in classes}
    got = layers.split_half_overlap(noise, classes, k=6, n_splits=200, seed=0)
    assert got["ci"][0] <= got["overlap"] <= got["ci"][1] and abs(got["overlap"] - 6 / 64) < 0.08
    assert layers.split_half_overlap({"a": shared, "b": shared}, {"a": "x", "b": "y"}, 6, 5, 0) is None


def test_count_stats_match_a_direct_count():
    rng = np.random.default_rng(1)
    classes = {f"i{j}": f"c{j % 3}" for j in range(9)}
    maps = {k: rng.normal(size=(4, 5)) for k in classes}
    got = layers.count_stats(maps, classes, k=7, n_boot=30, seed=0)
    m = layers.class_equal_mean(maps, classes)
    top = np.argsort(-m.ravel(), kind="stable")[:7]
    layer_of = top // 5
    assert got["per_layer"].tolist() == [int((layer_of == i).sum()) for i in range(4)]
    assert got["late_share"] == (layer_of >= 2).mean() and got["layer0_share"] == (layer_of == 0).mean()
    assert got["late_share_ci"][0] <= got["late_share_ci"][1] and got["mean_layer_ci"][0] <= got["mean_layer_ci"][1]


def test_holm_matches_its_step_down_definition():
    p = {"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.5}
    got = stats.holm(p)
    # sorted: a 0.01*4=0.04, c 0.03*3=0.09, b 0.04*2=0.08 -> max(0.09, 0.08)=0.09, d 0.5*1 -> 0.5
    assert got == pytest.approx({"a": 0.04, "c": 0.09, "b": 0.09, "d": 0.5})
    assert stats.holm({"x": 0.6, "y": 0.7}) == pytest.approx({"x": 1.0, "y": 1.0})
    assert stats.holm({}) == {}


def test_bootstrap_p_counts_draws_against_the_alternative():
    d = np.array([-1.0, 0.0, 1.0, 2.0, 3.0])
    assert stats.bootstrap_p(d, 0, "greater") == 0.4 and stats.bootstrap_p(d, 0, "less") == 0.8
    assert stats.bootstrap_p(d, 0) == 0.8 and stats.bootstrap_p([np.inf, np.inf], 0, "greater") == 0.0
    with pytest.raises(ValueError, match="unknown alternative"):
        stats.bootstrap_p(d, 0, "bigger")


def test_one_image_classes_vary_in_the_bootstrap_pooled_into_one_stratum():
    """Chapter 5's resampling: a class with one image would never vary within itself; pooled with the other
    one-image classes it does, and the point estimate (classes weighted equally) is unchanged."""
    from headflow.findings import layers as lay

    maps = {"a1": np.ones((2, 2)), "a2": np.ones((2, 2)), "a3": np.ones((2, 2)),  # one class, no spread
            "b": np.zeros((2, 2)), "c": np.full((2, 2), 10.0)}  # two one-image classes
    classes = {"a1": "A", "a2": "A", "a3": "A", "b": "B", "c": "C"}
    draws = lay.bootstrap_maps(maps, classes, 400, 0)
    lo, hi = lay.ci(draws)[:, 0, 0]
    assert hi - lo > 1.0  # was 0: every draw equal to the point estimate
    assert np.isclose(draws.mean(), (1 + 0 + 10) / 3, atol=0.5)
    assert [(len(m), w) for m, w in lay.strata([np.zeros((3, 1)), np.zeros((1, 1)), np.zeros((1, 1))])] == [(3, 1), (2, 2)]
