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
