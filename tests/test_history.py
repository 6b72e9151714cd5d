"""headflow.book.history: verdicts before (from git) and now, on a small repository."""
import json
import subprocess

from headflow.book import history


def _git(root, *args):
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"})


def _status(verdict, finding):
    return {"status": {"chapter": "c", "paper": "p", "model": "m", "finding": finding, "verdict": verdict}}


def test_verdicts_before_come_from_the_commit_and_now_from_the_results(tmp_path):
    results = tmp_path / "book" / "results"
    results.mkdir(parents=True)
    _git(tmp_path, "init", "-q")
    (results / "attribution.json").write_text(json.dumps(_status("reproduced", "k 24")))
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-q", "-m", "before")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    (results / "attribution.json").write_text(json.dumps(_status("partly", "k 5")))
    (results / "task.json").write_text(json.dumps(_status("done", "46%")))  # a chapter with no results then
    got = history.rows(tmp_path / "book", commit, root=tmp_path)
    by = {r["chapter"]: r for r in got["rows"]}
    a = by["4. Claim: attribution needs fewer heads than the baselines"]
    assert got["git_history"] and a["before"] == "reproduced" and a["now"] == "partly" and a["changed"]
    assert a["finding_before"] == "k 24" and "fold splits" in a["reason"]
    t = by["1. Task, prompt and token groups"]
    assert t["before"] is None and t["now"] == "done" and not t["changed"]
    assert history.statuses_at("0" * 40, root=tmp_path) is None
    assert not history.rows(tmp_path / "book", "0" * 40, root=tmp_path)["git_history"]


def test_refreshing_realpath_with_the_plan_keeps_its_provenance_hash(tmp_path):
    """realpath.json rewritten by the plan (realpath.add_plan) had a stale sha256 in its provenance."""
    import json
    import shutil

    from headflow.book import realpath
    from headflow.util.hashing import sha256
    from headflow.util.paths import REPO_ROOT

    results, prov = tmp_path / "results", tmp_path / "_provenance"
    results.mkdir()
    prov.mkdir()
    shutil.copy(REPO_ROOT / "book" / "results" / "realpath.json", results)
    shutil.copy(REPO_ROOT / "book" / "results" / "plan_full.json", results)
    data = json.loads((results / "realpath.json").read_text())
    data["records"][0]["masks"] = -1  # the plan's fields are stale
    (results / "realpath.json").write_text(json.dumps(data))
    (prov / "realpath.json").write_text(json.dumps({"outputs": {"results/realpath.json": "stale"}}))
    path = realpath.add_plan(results)
    record = json.loads((prov / "realpath.json").read_text())
    assert record["outputs"]["results/realpath.json"] == sha256(path)
    assert json.loads(path.read_text())["records"][0]["masks"] > 0
