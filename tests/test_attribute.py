"""Head attribution on Ray: a local 2-worker cluster, a worker SIGKILLed in the middle of a unit,
a retry that resumes inside the unit, exactly N units afterwards, the same values as one process."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from headflow.method import experiment
from headflow.scale import attribute
from headflow.store.runstore import RunStore

PLAN = attribute.Plan(model="tiny:llava", per_class=1, n_reference=4, keep="all", n_masks=200, batch_size=32,
                      part_batches=2)  # 202 masks per unit in 4 parts of 64


@pytest.fixture(scope="module")
def ray_cluster():
    ray = attribute.start_ray(workers=2, threads=1)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def prepared():
    st, _, _ = attribute.prepare(PLAN)
    return st


def _params():
    return {"test": "ray", **{k: v for k, v in vars(PLAN).items()}}


def test_unit_resumes_inside_itself_and_matches_an_uninterrupted_run(prepared, tmp_path):
    """A unit killed after its second part restarts at its third, and the merged values are those
    of an uninterrupted run, bit for bit."""
    st = prepared
    task = st.tasks[0]
    whole = RunStore(tmp_path / "whole", _params())
    experiment.attribution_unit(st.model, task, st.baseline, whole, PLAN.n_masks, PLAN.ablation_rate, PLAN.seed,
                                batch_size=PLAN.batch_size, part_batches=PLAN.part_batches)
    broken = RunStore(tmp_path / "broken", _params())

    class Killed(Exception):
        pass

    def die(key, index):
        if index == 1:
            raise Killed
    with pytest.raises(Killed):
        experiment.attribution_unit(st.model, task, st.baseline, broken, PLAN.n_masks, PLAN.ablation_rate, PLAN.seed,
                                    batch_size=PLAN.batch_size, part_batches=PLAN.part_batches, after_part=die)
    assert not broken.done(task.key) and broken.part_done(task.key, 1) and not broken.part_done(task.key, 2)
    seen = []
    experiment.attribution_unit(st.model, task, st.baseline, broken, PLAN.n_masks, PLAN.ablation_rate, PLAN.seed,
                                batch_size=PLAN.batch_size, part_batches=PLAN.part_batches,
                                after_part=lambda k, i: seen.append(i))
    assert seen == [2, 3]  # resumed at the first missing part
    a, b = whole.load(task.key), broken.load(task.key)
    assert all(np.array_equal(a[k], b[k]) for k in a) and not (broken.root / "parts" / task.key).exists()


def test_ray_workers_survive_a_killed_worker(ray_cluster, prepared, tmp_path):
    import torch

    st = prepared
    tasks = st.tasks
    assert len(tasks) >= 8
    local = RunStore(tmp_path / "local", _params())
    threads = torch.get_num_threads()
    attribute.run_local(st, local, tasks, PLAN, threads=1, progress=False)
    assert torch.get_num_threads() == threads
    shared = RunStore(tmp_path / "ray", _params())
    fault = tmp_path / "fault-once"
    fault.write_text("kill the first worker that finishes a unit's second part")
    stats = attribute.run_ray(st, shared, tasks, PLAN, workers=2, threads=1, fault_file=str(fault), progress=False)
    assert not fault.exists()  # the fault fired
    assert stats["units"] == len(tasks) and len(set(stats["worker_pids"])) == 2
    assert shared.keys() == sorted(t.key for t in tasks)  # exactly N units, none missing, none extra
    assert not list((shared.root / "parts").glob("*/*.npz"))  # no leftover parts
    attempts = [json.loads(line) for line in (shared.root / "_attempts.jsonl").read_text().splitlines()]
    by_key = {}
    for a in attempts:
        by_key.setdefault(a["key"], []).append(a)
    retried = [k for k, v in by_key.items() if len(v) > 1]
    assert len(retried) == 1  # one retry, of the unit whose worker was killed ...
    first, second = by_key[retried[0]]
    assert first["first_part"] == 0 and second["first_part"] == 2 and first["pid"] != second["pid"]  # ... resumed
    for t in tasks:  # the same values as one process with the same threads and batch size
        a, b = local.load(t.key), shared.load(t.key)
        assert a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a), t.key


def test_clear_errors(monkeypatch):
    with pytest.raises(SystemExit, match="cannot reach a Ray head at 127.0.0.1:9"):
        attribute._check_address("127.0.0.1:9")
    with pytest.raises(SystemExit, match="HOST:PORT"):
        attribute._check_address("nowhere")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    with pytest.raises(SystemExit, match="needs ray"):
        attribute.start_ray(1)


def test_cli_refuses_cuda_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")  # CUDA-only machines skip it; CI has none
    r = subprocess.run([sys.executable, "-m", "headflow.attribute", "--model", "tiny:llava", "--device", "cuda"],
                       capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode != 0 and "CUDA was requested" in r.stderr


def test_performance_targets_never_print_a_miss_as_the_bound():
    from headflow.scale import bench

    assert bench.distinct(0.7985, 0.8, pct=True) == ("79.8%", "80.0%")
    assert bench.distinct(0.85, 0.8, pct=True) == ("85%", "80%")
    assert bench.distinct(39.996, 40, pct=False) == ("39.996x", "40.000x")
    assert bench.distinct(40.0, 40, pct=False) == ("40.00x", "40.00x")
