"""A new user installs the wheel (not the clone) and ranks heads on images of their own.

The wheel is built from this checkout and installed with ``--no-deps`` into a fresh virtual
environment outside the repository; its dependencies come from ``.venv`` through a ``.pth`` file
(no second torch).  With ``HEADFLOW_DATA`` unset, the working folder outside the clone and
``python -I``, ``headflow.rank_heads`` and ``python -m headflow.rank`` run on the organism (from
the wheel's data files) and two PNGs the test draws, with a question of its own."""
import json
import os
import shutil
import site
import subprocess
import sys
import textwrap

import pytest

from headflow.util.paths import REPO_ROOT


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("install")
    had_build = (REPO_ROOT / "build").exists()
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO_ROOT), "--no-deps", "--no-build-isolation",
                        "-w", str(tmp / "dist"), "-q"], capture_output=True, text=True, cwd=tmp)
    if not had_build:  # setuptools builds in the tree: leave the clone as it was
        shutil.rmtree(REPO_ROOT / "build", ignore_errors=True)
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = next((tmp / "dist").glob("headflow-*.whl"))
    assert wheel.stat().st_size < 25 * 2**20, f"the wheel holds {wheel.stat().st_size / 2**20:.1f} MiB"
    subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True)
    py = tmp / "venv" / "bin" / "python"
    target = subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True,
                            text=True, check=True).stdout.strip()
    # the fresh venv's own pip: pip of .venv with --prefix would uninstall the clone's editable headflow first
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(os.path.join(target, "zz_headflow_deps.pth"), "w") as f:
        f.write(site.getsitepackages()[0] + "\n")
    work = tmp / "user"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("HEADFLOW_DATA", "PYTHONPATH")}
    env.update({"HF_HUB_OFFLINE": "1", "HEADFLOW_CACHE": str(work / "cache"), "TQDM_DISABLE": "1"})
    return py, work, env


def test_the_wheel_ranks_heads_on_the_users_own_images(installed):
    py, work, env = installed
    script = textwrap.dedent("""
        import json, sys
        from PIL import Image, ImageDraw
        import headflow
        assert "site-packages" in headflow.__file__ and "/lib/headflow" not in headflow.__file__, headflow.__file__
        paths = []
        for i, (colour, box) in enumerate([("red", (8, 8, 56, 40)), ("blue", (20, 10, 44, 60))]):
            img = Image.new("RGB", (64, 64), "gray"); ImageDraw.Draw(img).rectangle(box, fill=colour)
            img.save(f"own{i}.png"); paths.append(f"own{i}.png")
        question = "Which piece of clothing do you see here?"
        kw = dict(labels=headflow.CLASSES, n_masks=30, masks_per_head=0, n_boot=50, keep="all",
                  baseline="image-mean", progress=False)
        r = headflow.rank_heads("organism", paths, question, ["bag", "dress"], **kw)
        r.save("saved")
        same = headflow.HeadRanking.load("saved") == r
        print(json.dumps({"columns": list(r.table.columns), "rows": len(r.table), "same": same,
                          "data": str(headflow.util.paths.DATA_DIR)}))
        """)
    (work / "use.py").write_text(script)
    r = subprocess.run([str(py), "-I", "use.py"], cwd=work, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["columns"] == ["layer", "head", "attribution", "ci_low", "ci_high", "rank"] and got["rows"] == 64
    assert got["same"] and str(REPO_ROOT) not in got["data"] and got["data"].endswith("share/headflow")
    for i, answer in enumerate(("bag", "dress")):
        (work / "imgs" / answer).mkdir(parents=True, exist_ok=True)
        (work / f"own{i}.png").rename(work / "imgs" / answer / f"own{i}.png")
    r = subprocess.run([str(py), "-I", "-m", "headflow.rank", "--images", "imgs", "--question", "What is this?",
                        "--answers", "bag,dress,boot", "--out", "cli", "--n-masks", "30", "--masks-per-head", "0",
                        "--keep", "all", "--baseline", "zero"], cwd=work, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {p.name for p in (work / "cli").iterdir()} >= {"heads.csv", "heads.png", "ranking.json", "provenance.json"}
