"""A run store is keyed by everything that determines it: changing one weight, one image or one
module that computes y gives a different store (a miss); changing nothing gives the same (a hit)."""
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from headflow.images import coco
from headflow.method import study
from headflow.store import fingerprint


@pytest.fixture
def model_and_images(tmp_path, tiny_llava):
    model, processor = tiny_llava
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    examples = coco.load_set(coco.resolve_set("fashionscenes/eval"))[:3]
    images = []
    for e in examples:
        images.append(tmp_path / e.path.name)
        shutil.copy(e.path, images[-1])
    return folder, images


def _store(folder, images, tmp_path):
    meta = {"model": str(folder), "fingerprint": fingerprint.fingerprint(str(folder), images)}
    return study.store_for(SimpleNamespace(meta=meta), "attribution", n_masks=10, seed=0)


@pytest.fixture(autouse=True)
def _run_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "RUN_DIR", tmp_path / "runs")


def test_unchanged_inputs_hit(model_and_images, tmp_path):
    folder, images = model_and_images
    _store(folder, images, tmp_path).save("img000001", y=np.zeros(3))
    assert _store(folder, images, tmp_path).done("img000001")


def test_one_changed_weight_misses(model_and_images, tmp_path):
    folder, images = model_and_images
    _store(folder, images, tmp_path).save("img000001", y=np.zeros(3))
    weights = load_file(folder / "model.safetensors")
    name = next(k for k in weights if "language_model" in k and k.endswith("weight"))
    weights[name].view(-1)[0] += 1e-3
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    assert not _store(folder, images, tmp_path).done("img000001")


def test_one_changed_reference_image_misses(model_and_images, tmp_path):
    folder, images = model_and_images
    _store(folder, images, tmp_path).save("img000001", y=np.zeros(3))
    px = np.array(Image.open(images[-1]))
    px[0, 0] = 255 - px[0, 0]
    Image.fromarray(px).save(images[-1])
    assert not _store(folder, images, tmp_path).done("img000001")


def _planted_package(tmp_path):
    pkg = tmp_path / "src" / "headflow"
    for rel in ("__init__.py", "mechanism/__init__.py", "mechanism/y.py", "findings/__init__.py", "findings/page.py"):
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text("def y(x):\n    return x\n")
    return pkg


def test_one_changed_compute_module_misses(model_and_images, tmp_path, monkeypatch):
    """A module of a computing layer (here a new one, found by walking the package) is in the key."""
    folder, images = model_and_images
    pkg = _planted_package(tmp_path)
    monkeypatch.setattr(fingerprint, "PACKAGE_DIR", pkg)
    assert "headflow.mechanism.y" in fingerprint.compute_modules()
    _store(folder, images, tmp_path).save("img000001", y=np.zeros(3))
    assert _store(folder, images, tmp_path).done("img000001")
    (pkg / "mechanism" / "y.py").write_text("def y(x):\n    return 2 * x\n")
    assert not _store(folder, images, tmp_path).done("img000001")


def test_a_changed_finding_or_figure_hits(model_and_images, tmp_path, monkeypatch):
    """Modules above the method (findings, figures) do not key the attribution store."""
    folder, images = model_and_images
    pkg = _planted_package(tmp_path)
    monkeypatch.setattr(fingerprint, "PACKAGE_DIR", pkg)
    _store(folder, images, tmp_path).save("img000001", y=np.zeros(3))
    (pkg / "findings" / "page.py").write_text("def y(x):\n    return 3 * x\n")
    assert _store(folder, images, tmp_path).done("img000001")


def test_compute_modules_cover_y_and_leave_out_figures():
    names = set(fingerprint.compute_modules())
    assert {"headflow.mechanism.interventions", "headflow.mechanism.prefix_reuse", "headflow.method.experiment",
            "headflow.task.prompt", "headflow.mechanism.tokens", "headflow.method.attribution",
            "headflow.models.loading", "headflow.images.coco"} <= names
    assert not {m for m in names if m.startswith(("headflow.book", "headflow.findings", "headflow.scale"))}


def test_a_finding_that_stores_its_own_results_keys_them_by_its_code(tmp_path, monkeypatch):
    """``store_for(computed_by=...)`` (chapter 7's knockout store) adds that module's source."""
    pkg = _planted_package(tmp_path)
    monkeypatch.setattr(fingerprint, "PACKAGE_DIR", pkg)
    st = SimpleNamespace(meta={"model": "m"})
    s1 = study.store_for(st, "knockout", computed_by="headflow.findings.page", window=1)
    s1.save("u", y=np.zeros(1))
    assert study.store_for(st, "knockout", computed_by="headflow.findings.page", window=1).done("u")
    (pkg / "findings" / "page.py").write_text("def y(x):\n    return 4 * x\n")
    assert not study.store_for(st, "knockout", computed_by="headflow.findings.page", window=1).done("u")


def test_chapters_that_choose_other_images_share_one_store(model_and_images, tmp_path):
    """Only the images a study chooses differ (per_class, offset, keep): one store, so a unit that two
    chapters analyse is computed once; anything that changes a unit's contents is another store."""
    folder, images = model_and_images
    meta = {"model": str(folder), "n_reference": 50, "fingerprint": fingerprint.fingerprint(str(folder), images)}
    a = study.store_for(SimpleNamespace(meta={**meta, "per_class": 10, "offset": 0, "keep": "correct"}), "attribution",
                        n_masks=10, seed=0)
    b = study.store_for(SimpleNamespace(meta={**meta, "per_class": 4, "offset": 2, "keep": "all"}), "attribution",
                        n_masks=10, seed=0)
    c = study.store_for(SimpleNamespace(meta={**meta, "n_reference": 20, "per_class": 10}), "attribution",
                        n_masks=10, seed=0)
    assert a.root == b.root and a.root != c.root
