"""The one aggregation rule over images, its bootstrap, k at 0.8 and paired differences."""
from types import SimpleNamespace

import numpy as np
import pytest

from headflow.method import metrics
from headflow.method.study import Study


def test_ratio_of_sums_within_class_then_equal_class_weight():
    num = np.array([1.0, 3.0, 2.0, 2.0, 5.0])
    eff = np.array([2.0, 2.0, 4.0, 4.0, 10.0])
    cls = ["a", "a", "b", "b", "c"]
    agg = metrics.aggregate(num, eff, cls)  # a: 4/4 = 1, b: 4/8 = .5, c has one image: left out
    assert agg["value"] == pytest.approx(0.75)
    assert agg["classes_left_out"] == ["c"] and agg["n_images_used"] == 4


def test_non_positive_effects_are_left_out_and_counted():
    num = np.array([1.0, 1.0, 100.0, 1.0])
    eff = np.array([2.0, 2.0, -0.3, 2.0])
    agg = metrics.aggregate(num, eff, ["a", "a", "a", "a"])
    assert agg["value"] == pytest.approx(0.5) and agg["images_left_out"] == [2]
    with pytest.raises(ValueError, match="no class has 2 images"):
        metrics.aggregate(num[:1], eff[:1], ["a"])


def test_bootstrap_draws_are_of_the_same_statistic():
    rng = np.random.default_rng(0)
    num = rng.random((30, 4))
    eff = 1 + rng.random(30)
    cls = [f"c{i % 5}" for i in range(30)]
    point = metrics.aggregate(num, eff, cls)["value"]
    draws = metrics.bootstrap_aggregate(num, eff, cls, 500, seed=1)
    lo, hi = np.quantile(draws, [0.025, 0.975], axis=0)
    assert np.all(lo <= point) and np.all(point <= hi)
    # with one image per resample the bootstrap collapses onto the point: not the case here
    assert np.all(hi - lo > 0)


def test_k_at_draws_every_k_and_never():
    ks = list(range(6))
    curves = np.array([[0, 0.2, 0.79, 0.7988, 0.81, 1.0], [0, 0.1, 0.2, 0.3, 0.4, 0.5]])
    k = metrics.k_at_draws(curves, ks)
    assert k[0] == 4 and np.isinf(k[1])
    assert metrics.interval(np.array([1, 2, 3, np.inf] * 10))[1] is None


def test_paired_difference_treats_two_nevers_as_equal():
    d = metrics.paired_k_difference(np.array([5.0, np.inf, np.inf]), np.array([3.0, 2.0, np.inf]))
    assert d[0] == 2 and np.isinf(d[1]) and d[2] == 0


def test_study_images_per_class_counts_the_analysed_images_by_class():
    tasks = [SimpleNamespace(class_name=c) for c in ["coat", "bag", "coat", "dress", "coat"]]
    st = Study(model_name="m", model=None, processor=None, words=[], question="object", tasks=tasks, n_images=9,
               clean_accuracy=0.5, baseline=None, baseline_kind="dataset-mean", target="logit", n_layers=1, n_heads=1)
    assert st.images_per_class == {"bag": 1, "coat": 3, "dress": 1}
    assert list(st.images_per_class) == ["bag", "coat", "dress"]
    st.tasks = []
    assert st.images_per_class == {}
