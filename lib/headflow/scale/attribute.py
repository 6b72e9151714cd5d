"""Head attribution outside the notebooks: one process, or a pool of Ray workers.

    python -m headflow.attribute --model organism --per-class 10 --n-masks 1000 --backend ray --workers 2
    python -m headflow.attribute ... --backend ray --address HEAD_IP:6379 --gpus-per-worker 1 --device cuda

The unit of work is one (model, image) attribution run (:func:`headflow.method.experiment.attribution_unit`),
written to the same run store the chapters read (:func:`headflow.method.study.store_for`), so a notebook run
afterwards with the same parameters finds every unit done.  With ``--backend ray`` a pool of actors,
each holding one loaded model and declaring its resources (``num_cpus`` = threads, ``num_gpus``),
takes the units one at a time; a unit writes its masks in parts and resumes at its first missing
part, and an actor that dies (a killed process, a lost node) is restarted and its unit retried, so
every unit ends up stored exactly once.  Merging is idempotent: a finished unit is never redone.

On SLURM: start a Ray head in the first task of an allocation and workers in the others (see the
README), then run this with ``--address``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from headflow.mechanism import interventions as iv
from headflow.method import experiment, study
from headflow.models import loading as models
from headflow.store.runstore import RunStore
from headflow.util.progress import bar

BACKENDS = ("local", "ray")


@dataclass
class Plan:
    """What identifies a chapter's attribution run (the parameters of chapter 3)."""

    model: str = "organism"
    image_set: str = "fashionscenes/eval"
    question: str = "object"
    per_class: int = 10
    n_reference: int = 50
    baseline: str = "dataset-mean"
    target: str = "logit"
    keep: str = "correct"
    image_size: list = field(default_factory=list)
    n_masks: int = 1000
    ablation_rate: float = 0.5
    seed: int = 0
    batch_size: int = 128
    part_batches: int = 4
    device: str | None = None
    dtype: str | None = None


def prepare(plan: Plan):
    """The study (model loaded, correct images chosen, baseline built), its run store and the
    units not yet done."""
    st = study.setup(plan.model, plan.image_set, plan.question, per_class=plan.per_class,
                     n_reference=plan.n_reference, baseline=plan.baseline, target=plan.target, keep=plan.keep,
                     image_size=plan.image_size, device=plan.device, dtype=plan.dtype)
    store = study.store_for(st, "attribution", n_masks=plan.n_masks, ablation_rate=plan.ablation_rate, seed=plan.seed)
    return st, store, [t for t in st.tasks if not store.done(t.key)]


def _attempt_log(store, key: str, first_part: int):
    with open(store.root / "_attempts.jsonl", "a") as f:
        f.write(json.dumps({"key": key, "pid": os.getpid(), "first_part": first_part, "time": time.time()}) + "\n")


def _fault_hook(fault_file: str | None):
    """A one-shot fault for tests: after a unit's second part is written, the process that first
    removes ``fault_file`` kills itself with SIGKILL (in the middle of the unit)."""
    if not fault_file:
        return None

    def hook(key: str, index: int):
        if index >= 1:
            try:
                os.unlink(fault_file)
            except FileNotFoundError:
                return
            os.kill(os.getpid(), signal.SIGKILL)
    return hook


def _run_unit(model, task, baseline, store, plan: Plan, after_part=None) -> str:
    first = 0
    while store.part_done(task.key, first):
        first += 1
    if not store.done(task.key):
        _attempt_log(store, task.key, first)
    experiment.attribution_unit(model, task, baseline, store, plan.n_masks, plan.ablation_rate, plan.seed,
                                plan.target, plan.batch_size, plan.part_batches, after_part=after_part)
    return task.key


def run_local(st, store, tasks, plan: Plan, threads: int | None = None, progress: bool = True) -> dict:
    """Every unit in this process (``threads`` torch threads; None: as set)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        for task in bar(tasks, desc="units (local)", show=progress):
            _run_unit(st.model, task, st.baseline, store, plan)
        return {"backend": "local", "units": len(tasks), "seconds": time.perf_counter() - t0}
    finally:
        torch.set_num_threads(before)


class _Worker:
    """A Ray actor: one loaded model; runs units into the shared run store."""

    def __init__(self, plan: dict, store_root: str, store_params: dict, threads: int, fault_file: str | None = None):
        torch.set_num_threads(threads)
        self.plan = Plan(**plan)
        self.model, _ = models.load(self.plan.model, device=self.plan.device, dtype=self.plan.dtype)
        iv.install(self.model, "sdpa")
        self.baseline = None  # fetched by the first unit (and again by a restarted actor's first unit)
        self.store = RunStore(store_root, store_params)
        self.after_part = _fault_hook(fault_file)

    def ready(self) -> int:
        return os.getpid()

    def run(self, task, baseline: list) -> str:
        """One unit; ``baseline``: ``[ObjectRef]`` of the ablation baseline (a reference nested in a list is not
        resolved by Ray, so the actor fetches the object once)."""
        if self.baseline is None:
            import ray

            self.baseline = ray.get(baseline[0])
        return _run_unit(self.model, task, self.baseline, self.store, self.plan, self.after_part)


def _check_address(address: str) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"--address must be HOST:PORT of a Ray head (e.g. 10.0.0.1:6379), got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise SystemExit(f"cannot reach a Ray head at {address} ({e}); start one there (`ray start --head "
                         f"--port {port}`) or leave out --address for a local cluster") from None


def start_ray(workers: int, threads: int = 1, address: str | None = None):
    """Connect to the Ray cluster at ``address``, or start a local one sized for ``workers``
    actors of ``threads`` CPUs (dashboard and usage stats off, a small object store)."""
    if not address:
        # a local cluster with token authentication asked for explicitly: Ray's default, without the warning it
        # prints when left to choose; set before Ray reads its configuration
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        import ray
    except ImportError:
        raise SystemExit("the Ray backend needs ray: `pip install 'ray>=2.9'` (the set-up installs it), or use "
                         "--backend local") from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return ray
    if address:
        _check_address(address)
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=workers * threads, include_dashboard=False, object_store_memory=128 * 1024 ** 2,
                 log_to_driver=False, configure_logging=False)
    return ray


def run_ray(st, store, tasks, plan: Plan, workers: int = 2, threads: int = 1, gpus_per_worker: float = 0,
            address: str | None = None, fault_file: str | None = None, progress: bool = True,
            max_retries: int = 3) -> dict:
    """Every unit on a pool of ``workers`` Ray actors (each ``threads`` CPUs and
    ``gpus_per_worker`` GPUs); an actor that dies is restarted and its unit retried (up to
    ``max_retries`` times).  Returns the wall time of the units (after every actor is ready)."""
    ray = start_ray(workers, threads, address)
    from ray.util import ActorPool

    Worker = ray.remote(num_cpus=threads, num_gpus=gpus_per_worker, max_restarts=max_retries,
                        max_task_retries=max_retries)(_Worker)
    # the baseline once in the object store, handed to every unit (not to the constructor: a restarted actor
    # would depend on a constructor argument in the object store, which Ray warns against)
    baseline = [ray.put(st.baseline)]
    actors = [Worker.remote(asdict(plan), str(store.root), json.loads((store.root / "params.json").read_text()),
                            threads, fault_file) for _ in range(workers)]
    pids = ray.get([a.ready.remote() for a in actors])
    t0 = time.perf_counter()
    done = list(bar(ActorPool(actors).map_unordered(lambda a, t: a.run.remote(t, baseline), tasks), total=len(tasks),
                     desc=f"units (ray, {workers} workers)", show=progress))
    seconds = time.perf_counter() - t0
    for a in actors:
        ray.kill(a)
    return {"backend": "ray", "workers": workers, "threads": threads, "units": len(done), "seconds": seconds,
            "worker_pids": pids}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Head attribution of a chapter's images, on one process or on Ray.")
    for name, default in asdict(Plan()).items():
        flag = "--" + name.replace("_", "-")
        if name == "image_size":
            ap.add_argument(flag, type=int, nargs=2, default=[], metavar=("WIDTH", "HEIGHT"))
        else:
            ap.add_argument(flag, type=type(default) if default is not None else str, default=default)
    ap.add_argument("--backend", choices=BACKENDS, default="local")
    ap.add_argument("--workers", type=int, default=2, help="Ray actors (one model each)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (and Ray CPUs) per worker")
    ap.add_argument("--gpus-per-worker", type=float, default=0)
    ap.add_argument("--address", default=None, help="HOST:PORT of a running Ray head (default: a local cluster)")
    a = ap.parse_args(argv)
    plan = Plan(**{k: getattr(a, k) for k in asdict(Plan())})
    if (plan.device or "").startswith("cuda") or a.gpus_per_worker:
        if not torch.cuda.is_available():
            raise SystemExit("CUDA was requested (--device cuda or --gpus-per-worker) but torch sees no CUDA device "
                             f"(torch {torch.__version__}); install a CUDA build of torch or use --device cpu")
    if a.backend == "ray":
        start_ray(a.workers, a.threads, a.address)  # fail early on a missing ray or an unreachable head
    st, store, tasks = prepare(plan)
    print(f"{len(st.tasks)} units, {len(tasks)} to do, into {store.root}")
    if a.backend == "local":
        stats = run_local(st, store, tasks, plan, a.threads)
    else:
        stats = run_ray(st, store, tasks, plan, a.workers, a.threads, a.gpus_per_worker, a.address)
    print(json.dumps(stats))
    missing = [t.key for t in st.tasks if not store.done(t.key)]
    if missing:
        raise SystemExit(f"{len(missing)} units missing after the run: {missing[:5]}")
    print(f"all {len(st.tasks)} units stored in {Path(store.root)}")


if __name__ == "__main__":
    main()


def scaling_efficiency(model: str = "organism", n_units: int = 8, n_masks: int = 1000, workers: int = 2,
                       batch_size: int = 128, root: str | Path | None = None) -> dict:
    """Throughput (units per second) of ``n_units`` default-size units on 1 and on ``workers``
    Ray workers of one thread each, into fresh run stores; efficiency = throughput(workers) /
    (workers x throughput(1)).  Timed from when every actor is ready (model loaded)."""

    plan = Plan(model=model, per_class=2, n_masks=n_masks, batch_size=batch_size)
    st, store, _ = prepare(plan)
    tasks = st.tasks[:n_units]
    if len(tasks) < n_units:
        raise ValueError(f"only {len(tasks)} units available; lower n_units or raise per_class")
    params = json.loads((store.root / "params.json").read_text())
    out = {"n_units": n_units, "n_masks": n_masks, "batch_size": batch_size, "threads_per_worker": 1}
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        for w in (1, workers):
            s = run_ray(st, RunStore(Path(tmp) / f"w{w}", params), tasks, plan, workers=w, threads=1, progress=False)
            out[f"units_per_s_{w}_worker{'s' if w > 1 else ''}"] = n_units / s["seconds"]
            start_ray(w).shutdown()  # a fresh cluster of the right size for the next count
    out["efficiency"] = out[f"units_per_s_{workers}_workers"] / (workers * out["units_per_s_1_worker"])
    return out
