"""A run store is keyed by everything that determines it: changing one weight, one image or one
module that computes y gives a different store (a miss); changing nothing gives the same (a hit)."""
import shutil
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from headflow import coco, fingerprint, study


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


def test_one_changed_compute_module_misses(model_and_images, tmp_path, monkeypatch):
    folder, images = model_and_images
    mod = tmp_path / "pkg_compute_y.py"
    mod.write_text("def y(x):\n    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(fingerprint, "COMPUTE_MODULES", fingerprint.COMPUTE_MODULES + ("pkg_compute_y",))
    _store(folder, images, tmp_path).save("img000001", y=np.zeros(3))
    assert _store(folder, images, tmp_path).done("img000001")
    mod.write_text("def y(x):\n    return 2 * x\n")
    assert not _store(folder, images, tmp_path).done("img000001")
    sys.modules.pop("pkg_compute_y", None)


def test_compute_modules_cover_y_and_leave_out_plots():
    names = set(fingerprint.COMPUTE_MODULES)
    assert {"headflow.interventions", "headflow.prefix_reuse", "headflow.experiment", "headflow.task",
            "headflow.tokens", "headflow.attribution"} <= names
    assert "headflow.plots" not in names and "headflow.verdicts" not in names


def test_versions_are_part_of_the_key():
    fp = fingerprint.versions()
    assert fp["torch"] and fp["transformers"]
