import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from headflow.images import coco
from headflow.mechanism import interventions as iv
from headflow.method import attribution, experiment, metrics, rankings
from headflow.store.runstore import RunStore
from headflow.task.prompt import question_text


def test_masks_follow_the_rate_and_seed():
    a = attribution.sample_masks(2000, 8, 8, 0.3, seed=1)
    assert a.shape == (2000, 8, 8) and a.dtype == torch.bool
    assert abs((~a).float().mean().item() - 0.3) < 0.01
    assert torch.equal(a, attribution.sample_masks(2000, 8, 8, 0.3, seed=1))
    with pytest.raises(ValueError, match="ablation_rate"):
        attribution.sample_masks(100, 2, 2, 1.5, seed=0)


@pytest.mark.parametrize("method", attribution.REGRESSIONS)
def test_fit_recovers_a_linear_model(method):
    rng = np.random.default_rng(0)
    keep = attribution.sample_masks(800, 4, 4, 0.5, seed=2).numpy()
    true = np.zeros(16)
    true[[3, 7, 12]] = [2.0, 1.0, 0.5]  # logit lost when these heads are ablated
    y = 5.0 - (~keep).reshape(800, -1) @ true + rng.normal(0, 0.05, 800)
    f = attribution.fit(keep, y, method, alpha=1e-3)
    assert f.heldout_r > 0.99 and f.heldout_r2 > 0.98 and f.n_heldout == 160
    assert np.allclose(f.attribution, true, atol=0.05)
    assert list(attribution.ranking(f.attribution)[:3]) == [3, 7, 12]
    lo, hi = attribution.bootstrap(keep, y, n_boot=50, method=method)
    assert (lo[[3, 7, 12]] <= true[[3, 7, 12]] + 0.02).all() and (hi[[3, 7, 12]] >= true[[3, 7, 12]] - 0.02).all()


def test_fit_on_noise_is_poor():
    keep = attribution.sample_masks(500, 4, 4, 0.5, seed=3).numpy()
    y = np.random.default_rng(1).normal(size=500)
    assert attribution.fit(keep, y).heldout_r2 < 0.1


def test_metrics():
    assert metrics.faithfulness(np.array([1.0, 3.0]), 3.0, 1.0).tolist() == [0.0, 1.0]
    assert metrics.completeness(np.array([1.0, 3.0]), 3.0, 1.0).tolist() == [1.0, 0.0]
    assert metrics.k_at([0.1, 0.5, 0.85, 0.9], [0, 1, 2, 4]) == 2
    assert metrics.k_at([0.1, 0.5], [0, 1]) is None
    only, abl = metrics.topk_masks(np.array([3, 0, 2, 1]), [0, 2, 4], 2, 2)
    assert only.shape == (3, 2, 2)
    flat_only, flat_abl = only.view(3, -1), abl.view(3, -1)
    assert flat_only[0].sum() == 0 and flat_abl[0].all()
    assert flat_only[1].nonzero().flatten().tolist() == [0, 3] and (flat_abl[1] == ~flat_only[1]).all()
    assert flat_only[2].all() and not flat_abl[2].any()


def test_bad_run_store_reuse(tmp_path):
    RunStore(tmp_path, {"n_masks": 10})
    with pytest.raises(ValueError, match="other parameters"):
        RunStore(tmp_path, {"n_masks": 20})


@pytest.fixture(scope="module")
def tasks(tiny_llava):
    model, processor = tiny_llava
    set_file = coco.resolve_set("fashionscenes/eval")
    exs = coco.load_set(set_file)[::40][:4]
    return experiment.prepare(processor, exs, coco.class_names(set_file), question_text("object"))


@pytest.mark.parametrize("planted", [False, True])
def test_attribution_patching_is_the_gradient(tiny_llava, tasks, planted):
    """The linear estimate equals a finite difference along (baseline - clean) for each head; in a
    planted model (heads not kept held at the baseline) the held heads score 0 and the kept ones
    match the finite difference taken with the held heads at the baseline."""
    model, processor = tiny_llava
    iv.install(model, "sdpa")
    task = tasks[0]
    baseline = iv.Baseline("image-mean")
    n_layers, n_heads = iv.text_layers_and_heads(model)
    keep = torch.ones(n_layers, n_heads, dtype=torch.bool)
    if planted:
        keep[0, 0] = keep[1, 0] = keep[1, 2] = False
    est = rankings.attribution_patching(model, task, baseline, keep=keep if planted else None)
    assert (est[~keep.numpy()] == 0).all()
    img = iv.image_mask(model, task.inputs["input_ids"])
    cap = iv.Capture(image=img, kv=True)
    with torch.inference_mode(), iv.intervene(model, capture=cap):
        model(**task.inputs)
    eps = 1e-2
    for l, h in [(0, 1), (1, 3)]:
        ys = []
        for sign in (1, -1):
            keys, values = [], []
            for ll in range(n_layers):
                k, v = cap.keys[ll].clone(), cap.values[ll].clone()  # (1, H, n_img, D), no GQA here
                bk, bv = baseline.image_kv(ll, cap.keys[ll], cap.values[ll], torch.ones_like(img[:, :k.shape[2]]))
                held = ~keep[ll]
                k[:, held], v[:, held] = bk[:, held], bv[:, held]
                if ll == l:
                    k[:, h] += sign * eps * (bk[:, h] - k[:, h])
                    v[:, h] += sign * eps * (bv[:, h] - v[:, h])
                keys.append(k)
                values.append(v)
            moved = iv.Baseline("dataset-mean", keys=keys, values=values)
            with torch.inference_mode(), iv.intervene(model, ablation=iv.HeadAblation(
                    torch.zeros(1, n_layers, n_heads, dtype=torch.bool), img, moved)):
                ys.append(float(model(**task.inputs).logits[0, -1, task.target_id]))
        fd = -(ys[0] - ys[1]) / (2 * eps)
        assert abs(fd - est[l, h]) < 1e-3 + 1e-2 * abs(fd), (l, h, fd, est[l, h])
    assert np.abs(est).max() > 1e-4


def test_single_head_and_attention_weight_shapes(tiny_llava, tasks):
    model, _ = tiny_llava
    s = rankings.single_head(model, tasks[0], iv.Baseline("zero"))
    a = rankings.attention_weight(model, tasks[0], "final")
    t = rankings.attention_weight(model, tasks[0], "text")
    assert s.shape == a.shape == t.shape == (2, 4)
    assert (a > 0).all() and (a <= 1).all() and np.abs(s).max() > 0
    with pytest.raises(ValueError, match="unknown query group"):
        rankings.attention_weight(model, tasks[0], "image")


CHILD = r"""
import sys, torch
sys.path.insert(0, {tests!r})
from conftest import TINY
from headflow.images import coco
from headflow.mechanism import interventions as iv
from headflow.method import experiment
from headflow.models import llava_builder
from headflow.store.runstore import RunStore
from headflow.task.prompt import question_text
torch.manual_seed(0)
processor = llava_builder.build_processor()
model = llava_builder.build_model(processor, TINY).eval()
set_file = coco.resolve_set("fashionscenes/eval")
tasks = experiment.prepare(processor, coco.load_set(set_file)[::40][:6], coco.class_names(set_file), question_text("object"))
store = RunStore({root!r}, {{"n_masks": 600}})
experiment.run_attribution(model, tasks, iv.Baseline("zero"), store, 600, 0.5, seed=0, progress=False)
"""


def test_run_store_survives_kill_9(tmp_path):
    tests = os.path.dirname(__file__)
    crashed, clean = tmp_path / "crashed", tmp_path / "clean"
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(tests=tests, root=str(crashed))])
    t0 = time.time()
    while len(list(crashed.glob("*.npz"))) < 2 and time.time() - t0 < 300 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(list(crashed.glob("*.npz")))
    assert 1 <= n_before < 6, f"the child finished {n_before} of 6 images before the kill"
    for args in ((crashed,), (clean,)):  # resume the crashed run; do a clean run elsewhere
        subprocess.run([sys.executable, "-c", CHILD.format(tests=tests, root=str(args[0]))], check=True)
    a, b = RunStore(crashed, {"n_masks": 600}), RunStore(clean, {"n_masks": 600})
    assert a.keys() == b.keys() and len(a.keys()) == 6
    assert not list(crashed.glob(".*"))  # no temporary leftovers
    for k in a.keys():
        ra, rb = experiment.load_run(a, k), experiment.load_run(b, k)
        assert ra["keep"].shape == (600, 2, 4)
        for name in ("keep", "y", "y_clean", "y_none"):
            assert np.array_equal(ra[name], rb[name]), (k, name)


def test_ols_refuses_an_under_determined_fit_and_auto_uses_ridge():
    """1,600 heads and 2,000 masks (a fifth held out) leave 1,600 training rows for 1,601
    parameters: OLS would interpolate the noise.  Here 8 x 8 heads and 60 masks (48 rows, 65 parameters)."""
    rng = np.random.default_rng(0)
    keep = attribution.sample_masks(60, 8, 8, 0.5, seed=4).numpy()
    true = np.zeros(64)
    true[[5, 20, 41]] = [2.0, 1.5, 1.0]
    y = 3.0 - (~keep).reshape(60, -1) @ true + rng.normal(0, 0.2, 60)
    with pytest.raises(ValueError, match="under-determined.*48 training masks for 65 parameters.*mask_count"):
        attribution.fit(keep, y, "ols")
    f = attribution.fit(keep, y)  # auto
    assert f.method == "ridge" and f.alpha is not None and f.n_train == 48
    assert set(attribution.ranking(f.attribution)[:3].tolist()) == {5, 20, 41}
    lo, hi = attribution.bootstrap(keep, y, n_boot=20)  # auto there too
    assert lo.shape == (64,) and (hi >= lo).all()


def test_auto_uses_ols_from_two_rows_per_parameter():
    assert attribution.choose(130, 64) == "ols" and attribution.choose(129, 64) == "ridge"
    keep = attribution.sample_masks(200, 8, 8, 0.5, seed=5).numpy()  # 160 training rows >= 2 x 65
    y = np.random.default_rng(2).normal(size=200)
    assert attribution.fit(keep, y).method == "ols" and attribution.fit(keep, y).alpha is None
    assert attribution.n_train_of(200) == 160
    # the full profile's rule: 4 masks per head, so a 13B's 1,600 heads get 6,400 masks (5,120 rows, OLS)
    assert attribution.mask_count(1600, 2000, 4) == 6400 and attribution.mask_count(64, 2000, 4) == 2000
    assert attribution.choose(attribution.n_train_of(attribution.mask_count(1600, 2000, 4)), 1600) == "ols"


def test_several_targets_from_one_set_of_passes_equal_each_target_alone(tiny_llava, tmp_path):
    """Chapter 6's two targets (and the logit difference) from one run: each store holds exactly what a run
    for its target alone writes, bit for bit, and the passes are those of one target."""
    from headflow.method import cost

    model, processor = tiny_llava
    iv.install(model, "sdpa")
    set_file = coco.resolve_set("fashionscenes/eval")
    prep = lambda: experiment.prepare(processor, coco.load_set(set_file)[:2], coco.class_names(set_file),  # noqa: E731
                                      question_text("object"))
    names = ["logit", "answer-kl", "logit-diff"]
    base = iv.Baseline("zero")
    stores = {n: RunStore(tmp_path / f"multi-{n}", {"target": n}) for n in names}
    with cost.count(model) as c_multi:
        multi = experiment.run_attribution(model, prep(), base, stores, 30, 0.5, 0, batch_size=8, progress=False)
    for n in names:
        with cost.count(model) as c_one:
            alone = experiment.run_attribution(model, prep(), base, RunStore(tmp_path / f"alone-{n}", {"target": n}),
                                               30, 0.5, 0, n, batch_size=8, progress=False)
        for key, r in alone.items():
            for field in ("y", "y_clean", "y_none", "keep"):
                assert np.array_equal(r[field], multi[n][key][field]), (n, field)
        if n == "answer-kl":  # (its clean answer distribution costs one pass per image; the others need none)
            assert c_multi.as_dict() == c_one.as_dict()  # three targets for the passes of one
    key = next(iter(multi["logit"]))
    assert not np.allclose(multi["logit"][key]["y"], multi["answer-kl"][key]["y"])  # the targets differ


def test_two_processes_sharing_a_run_store_compute_each_unit_once(tmp_path):
    """Chapters executed side by side may need the same units: each unit is claimed while it runs, so
    the second process waits and reads it; both end with every unit, computed once, as a run alone."""
    tests = os.path.dirname(__file__)
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    logs = [tmp_path / f"log{i}.jsonl" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", CHILD.format(tests=tests, root=str(shared))],
                              env={**os.environ, "HEADFLOW_STORE_LOG": str(log)}) for log in logs]
    assert [p.wait() for p in procs] == [0, 0]
    computed = [json.loads(line)["computed"] for log in logs for line in log.read_text().splitlines()
                if "computed" in json.loads(line)]
    assert sorted(computed) == sorted(set(computed)) and len(computed) == 6  # every unit once, by one of them
    subprocess.run([sys.executable, "-c", CHILD.format(tests=tests, root=str(alone))], check=True)
    a, b = RunStore(shared, {"n_masks": 600}), RunStore(alone, {"n_masks": 600})
    assert a.keys() == b.keys() and len(a.keys()) == 6 and not list(shared.glob(".*"))
    for k in a.keys():
        ra, rb = experiment.load_run(a, k), experiment.load_run(b, k)
        for name in ("keep", "y", "y_clean", "y_none"):
            assert np.array_equal(ra[name], rb[name]), (k, name)


def test_opening_a_store_keeps_a_live_writers_temporary_file_and_drops_a_dead_ones(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        tmp_path.mkdir(exist_ok=True)
        for pid in (live.pid, dead.pid):
            (tmp_path / f".u1.{pid}.tmp.npz").write_bytes(b"")
        (tmp_path / ".u2.tmp.npz").write_bytes(b"")  # an older name, no writer recorded
        RunStore(tmp_path, {"n": 1})
        assert sorted(p.name for p in tmp_path.glob(".*.tmp.npz")) == [f".u1.{live.pid}.tmp.npz"]
    finally:
        live.kill()
        live.wait()
