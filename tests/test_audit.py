"""headflow.book.audit: the checks of an executed book, on small notebooks and records; and the
runner's quiet execution (no progress bar kept, computed units recorded) on a real kernel."""
import json
from pathlib import Path

import nbformat

from headflow.book import audit
from headflow.book import runner as run


def _write(path, cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def _code(source, outputs=(), tags=()):
    c = nbformat.v4.new_code_cell(source)
    c.outputs = [nbformat.from_dict(o) for o in outputs]
    c.metadata["tags"] = list(tags)
    return c


STDERR = {"output_type": "stream", "name": "stderr", "text": "units:  50%|#####     | 1/2\r"}
WARN = {"output_type": "stream", "name": "stdout", "text": "x.py:5: UserWarning: Converting a tensor\n"}
BAR = {"output_type": "display_data", "metadata": {},
       "data": {"text/plain": "units:  50%", audit.WIDGET: {"model_id": "x", "version_major": 2, "version_minor": 0}}}
PLAIN = {"output_type": "stream", "name": "stdout", "text": "accuracy 0.41 (a warning-free line)\n"}


def test_kept_noise_names_stderr_and_warnings_only(tmp_path):
    clean = _write(tmp_path / "a.ipynb", [_code("print(1)", [PLAIN])])
    assert audit.kept_noise(clean) == []
    noisy = _write(tmp_path / "b.ipynb", [_code("print(1)", [PLAIN]), _code("f()", [STDERR]), _code("g()", [WARN]),
                                          _code("h()", [BAR])])
    problems = audit.kept_noise(noisy)
    assert len(problems) == 3 and "cell 1: stderr" in problems[0] and "cell 2: a warning" in problems[1]
    assert "cell 3: a widget" in problems[2]


def test_stale_code_ignores_the_injected_parameters_only(tmp_path):
    src = _write(tmp_path / "src.ipynb", [_code("n = 1", tags=["parameters"]), _code("print(n)")])
    same = _write(tmp_path / "same.ipynb", [_code("n = 1", tags=["parameters"]),
                                            _code("n = 5", tags=["injected-parameters"]), _code("print(n)")])
    assert audit.stale_code(same, src) == []
    edited = _write(tmp_path / "edited.ipynb", [_code("n = 1", tags=["parameters"]), _code("print(n + 1)")])
    assert audit.stale_code(edited, src) == ["edited.ipynb: code cell 2 differs from the source notebook"]
    fewer = _write(tmp_path / "fewer.ipynb", [_code("n = 1", tags=["parameters"])])
    assert "1 code cells executed, the source notebook has 2" in audit.stale_code(fewer, src)[0]


def _record(name, commit="c1", lib="l1", modified=False, stores=()):
    return {"notebook": name, "git": {"commit": commit, "lib_or_notebooks_modified": modified}, "lib_sha256": lib,
            "run_stores": list(stores)}


def test_provenance_split_finds_other_commits_hashes_and_modified_trees():
    one = [_record("01.ipynb"), _record("02.ipynb")]
    assert audit.provenance_split(one) == []
    split = audit.provenance_split([_record("01.ipynb"), _record("02.ipynb", commit="c2", lib="l2", modified=True)])
    assert len(split) == 3 and "2 commits" in split[0] and "2 lib/ hashes" in split[1] and "modified" in split[2]
    assert "02.ipynb" in split[0] and "02.ipynb" in split[2]
    assert audit.provenance_split([_record("01.ipynb", modified=True)], require_clean=False) == []


def _store(key, units, **params):
    keyed = {"kind": "attribution", "model": "organism", "n_masks": 60, "per_class": 1,
             "fingerprint": {"model_sha256": "m", "images_sha256": "i1", "code_sha256": "c"}, **params}
    return {"key": key, "keyed_by": keyed, "computed": list(units)}


def test_repeated_units_across_chapters_and_across_store_keys_for_the_same_computation():
    a = _record("03.ipynb", stores=[_store("attribution-aaa", ["img1", "img2"])])
    b = _record("04.ipynb", stores=[_store("attribution-bbb", ["img3"], per_class=2,
                                           fingerprint={"model_sha256": "m", "images_sha256": "i2",
                                                        "code_sha256": "c"})])
    assert audit.repeated_units([a, b]) == []
    # the same image under a store that differs only in which images the study chose: one computation twice
    c = _record("05.ipynb", stores=[_store("attribution-ccc", ["img1"], per_class=4)])
    rep = audit.repeated_units([a, b, c])
    assert len(rep) == 1 and "'img1'" in rep[0] and "03.ipynb:attribution-aaa" in rep[0] and "05.ipynb" in rep[0]
    # other masks: another computation
    d = _record("05.ipynb", stores=[_store("attribution-ddd", ["img1"], n_masks=400)])
    assert audit.repeated_units([a, d]) == []


def test_executed_chapter_keeps_no_progress_bar_and_records_each_computed_unit(tmp_path, monkeypatch):
    for k in run.QUIET_ENV:
        monkeypatch.delenv(k, raising=False)
    src = tmp_path / "src"
    src.mkdir()
    store = tmp_path / "store"
    nb = _write(src / "07-demo.ipynb", [
        _code(f"n = 2\nstore = {str(store)!r}", tags=["parameters"]),
        _code("import numpy as np\nfrom headflow.store.runstore import RunStore\nfrom headflow.util import progress\n"
              "s = RunStore(store, {'kind': 'demo', 'n': n})\n"
              "for i in progress.bar(range(n), desc='units'):\n"
              "    if not s.done(f'u{i}'):\n        s.save(f'u{i}', y=np.zeros(1))\n"
              "print('done', len(s.keys()))")])
    out = tmp_path / "book"
    first = run.execute(nb, {"n": 3}, out, "ci")
    executed = out / "07-demo.ipynb"
    assert audit.kept_noise(executed) == [] and audit.stale_code(executed, nb) == []
    assert any("done 3" in "".join(o.get("text", "")) for c in json.loads(executed.read_text())["cells"]
               for o in c.get("outputs", []))
    [s] = first["run_stores"]
    assert s["units_hit"] == 0 and s["computed"] == ["u0", "u1", "u2"] and s["units_computed"] == 3
    monkeypatch.chdir(tmp_path)  # make book gives a relative --out; the kernel runs elsewhere (notebooks/)
    again = run.execute(nb, {"n": 3}, Path("book"), "ci")
    assert again["run_stores"][0]["units_hit"] == 3 and again["run_stores"][0]["computed"] == []
    assert audit.repeated_units([first, again]) == []
