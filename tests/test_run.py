import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from headflow.book import runner as run


def _notebook(path, params_src, body):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(params_src, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_declared_parameters_of_every_notebook():
    for p in run.notebooks():
        params = run.declared_parameters(p)
        assert params, p.name
        assert all(isinstance(k, str) for k in params)


def test_profiles_only_name_declared_parameters():
    profiles = yaml.safe_load(run.PROFILE_FILE.read_text())
    assert set(profiles) == set(run.PROFILES)
    names = {p.stem for p in run.notebooks()}
    for profile, per_nb in profiles.items():
        for nb, params in per_nb.items():
            if nb == "_sweep":  # the sweep's own settings (models, image set, workload), not a notebook
                assert {"model", "image_set"} <= set(params), profile
                assert profile != "full" or "workload" in params  # the plan's cost model
                continue
            assert nb in names, f"{profile}: no notebook {nb}"
            run.validate(run.NOTEBOOK_DIR / f"{nb}.ipynb", params)


def test_misspelled_parameter_is_an_error(tmp_path):
    p = _notebook(tmp_path / "00-x.ipynb", "n_masks = 10\nablation_rate = 0.5\nmodel = 'organism'", "")
    with pytest.raises(run.ParameterError, match="no parameter 'n_mask'; did you mean 'n_masks'"):
        run.validate(p, {"n_mask": 5})
    with pytest.raises(run.ParameterError, match="'n_masks' must be int"):
        run.validate(p, {"n_masks": "many"})
    with pytest.raises(run.ParameterError, match="must be bool|must be int"):
        run.validate(p, {"n_masks": True})
    assert run.validate(p, {"ablation_rate": 0.25}) == {"n_masks": 10, "ablation_rate": 0.25, "model": "organism"}
    with pytest.raises(run.ParameterError, match="strictly between 0 and 1"):
        run.validate(p, {"ablation_rate": 1})


def test_parameters_cell_must_be_literals(tmp_path):
    p = _notebook(tmp_path / "00-x.ipynb", "import os\nn = 1", "")
    with pytest.raises(run.ParameterError, match="literal"):
        run.declared_parameters(p)


def test_cli_rejects_a_misspelled_parameter_before_running(tmp_path):
    r = subprocess.run([sys.executable, "-m", "headflow.run", "--profile", "ci", "--out", str(tmp_path),
                        "-p", "00-organism:n_evl=5"], capture_output=True, text=True)
    assert r.returncode != 0
    assert "no parameter 'n_evl'; did you mean 'n_eval'" in r.stderr
    assert not (tmp_path / "00-organism.ipynb").exists()


def test_cli_unknown_notebook(tmp_path):
    r = subprocess.run([sys.executable, "-m", "headflow.run", "--only", "00-organsim", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "did you mean '00-organism'" in r.stderr


def test_execute_writes_provenance(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    body = ("from headflow.book import outputs\n"
            "outputs.save_json('demo', {'n': n, 'twice': 2 * n})\n"
            "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([0, n])\n"
            "outputs.save_figure(fig, 'demo', show=False)\n")
    nb = _notebook(src / "07-demo.ipynb", "n = 3\nseed = 0", body)
    out = tmp_path / "book"
    rec = run.execute(nb, {"n": 5}, out, "ci")
    assert json.loads((out / "results" / "demo.json").read_text()) == {"n": 5, "twice": 10}
    prov = json.loads((out / "_provenance" / "07-demo.json").read_text())
    assert prov == json.loads(json.dumps(rec))
    assert prov["parameters"] == {"n": 5, "seed": 0} and prov["seeds"] == {"seed": 0}
    assert set(prov["outputs"]) == {"results/demo.json", "figures/demo.png"}
    assert prov["outputs"]["results/demo.json"] == run.sha256(out / "results" / "demo.json")
    assert prov["versions"]["torch"] and len(prov["lib_sha256"]) == 64
    executed = nbformat.read(out / "07-demo.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)


def test_a_sweep_key_a_listed_notebook_does_not_declare_is_an_error(tmp_path):
    """The runner used to drop such a key silently (a sweep's image_size never reaching a chapter)."""
    prof = tmp_path / "profiles.yml"
    prof.write_text(yaml.safe_dump({"full": {"_sweep": {"model": ["m/a"], "image_set": "fashionscenes/eval",
                                                        "not_declared": 1},
                                             "01-task-and-models": {"n_images": 4}}}))
    with pytest.raises(run.ParameterError, match=r"\['not_declared'\].*01-task-and-models"):
        run.plan_runs("full", run.notebooks(), tmp_path, {}, prof)
    prof.write_text(yaml.safe_dump({"full": {"_sweep": {"model": ["m/a", "m/b"], "image_set": "fashionscenes/eval"},
                                             "01-task-and-models": {"n_images": 4}}}))
    plans = run.plan_runs("full", run.notebooks(), tmp_path, {}, prof)
    assert [(p.stem, params["model"], out.name) for p, params, out in plans] == [
        ("01-task-and-models", "m/a", "m__a"), ("01-task-and-models", "m/b", "m__b")]


def test_the_full_profile_plans_every_run():
    assert len(run.plan_runs("full", run.notebooks(), Path("/tmp/full"), {})) == 70  # 7 chapters x 10 checkpoints


def test_side_by_side_phases_put_chapter_0_first_90_and_99_last_and_waited_on_chapters_early():
    stems = [p.stem for p in run.notebooks()]
    secs = {s: 100.0 for s in stems} | {"09-sensitivity": 800.0, "04-faithfulness-completeness": 700.0}
    first, middle, last = run.phases(stems, secs)
    assert first == ["00-organism"] and last == ["90-performance", "99-reproducibility"]
    assert sorted(first + middle + last) == sorted(stems)
    # chapter 9 waits on 5-8, so they start before chapter 4 (700 s), even where a warm run's record
    # (full run stores) underrates them
    assert middle.index("05-where-the-heads-are") < middle.index("04-faithfulness-completeness")
    warm = secs | {"09-sensitivity": 50.0, "05-where-the-heads-are": 10.0}
    _, middle_warm, _ = run.phases(stems, warm)
    assert set(middle_warm[:4]) == set(run.AFTER["09-sensitivity"])
    assert max(middle.index(s) for s in run.AFTER["09-sensitivity"]) < middle.index("09-sensitivity")
    assert run.critical_path(["05-where-the-heads-are", "09-sensitivity"], secs)["05-where-the-heads-are"] == 900.0


def test_chapters_side_by_side_each_record_only_what_they_wrote_and_wait_for_what_they_read(tmp_path, monkeypatch):
    """Three demo chapters two at a time: each record lists its own outputs (never the file the chapter
    beside it wrote meanwhile), a chapter that reads another's results starts after it, and the
    chapters beside one another ran with one thread each, a chapter left alone with every core."""
    src = tmp_path / "src"
    src.mkdir()
    body = ("import json, os, time\nimport torch\nfrom headflow.book import outputs\nfrom headflow.util import progress\n"
            "for r in reads:\n    assert (outputs.book_dir() / 'results' / f'{r}.json').exists(), r\n"
            "for _ in progress.bar(range(int(10 * pause))):\n"
            "    if until_alone and torch.get_num_threads() == os.cpu_count():\n        break\n"
            "    time.sleep(0.1)\n"
            "outputs.save_json(name, {'threads': os.environ.get('OMP_NUM_THREADS'), 'at_end': torch.get_num_threads()})\n")
    nbs = [_notebook(src / f"{s}.ipynb", "name = ''\nreads = []\npause = 0.0\nuntil_alone = False", body)
           for s in ("05-a", "06-b", "07-c")]
    monkeypatch.setattr(run, "AFTER", {"07-c": ("05-a",)})
    monkeypatch.setenv("PYTHONPATH", str(run.REPO_ROOT / "lib"))
    out = tmp_path / "book"
    plans = [(nbs[0], {"name": "a", "pause": 120.0, "until_alone": True}, out), (nbs[1], {"name": "b"}, out),
             (nbs[2], {"name": "c", "reads": ["a"]}, out)]
    recs = {r["notebook"]: r for r in run.run_side_by_side(plans, "ci", None, 2)}
    assert {n: sorted(r["outputs"]) for n, r in recs.items()} == {
        "05-a.ipynb": ["results/a.json"], "06-b.ipynb": ["results/b.json"], "07-c.ipynb": ["results/c.json"]}
    # a started beside b with one thread; once b ended it was given every core, at its next progress step
    cores = os.cpu_count()
    assert json.loads((out / "results" / "a.json").read_text()) == {"threads": "1", "at_end": cores}
    assert recs["05-a.ipynb"]["execution"]["jobs"] == 2
    a_done = (out / "_provenance" / "05-a.json").stat().st_mtime
    assert a_done <= (out / "results" / "c.json").stat().st_mtime


def test_a_chapter_follows_the_thread_budget_the_runner_writes(tmp_path, monkeypatch):
    import torch

    from headflow.util import progress, threads

    before = torch.get_num_threads()
    f = tmp_path / "budget"
    monkeypatch.setenv(threads.ENV, str(f))
    try:
        assert threads.follow() is None  # no file yet
        threads.write(f, 1)
        assert threads.follow() == 1 and torch.get_num_threads() == 1
        assert threads.follow() is None  # unchanged since
        threads.write(f, 3)
        for _ in progress.bar(range(2), show=False):  # a progress step follows it
            pass
        assert torch.get_num_threads() == 3
        f.write_text("zero\n")
        assert threads.follow() is None and torch.get_num_threads() == 3  # not a budget: nothing changes
    finally:
        torch.set_num_threads(before)
