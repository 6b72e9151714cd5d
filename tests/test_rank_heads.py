"""The one call a researcher makes with their own images and question (headflow.rank_heads), its
saved form and its command line."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import headflow
from headflow.images import coco
from headflow.method import heads

QUESTION = "Which garment is the largest in this picture?"  # not one of the study's questions


@pytest.fixture(scope="module")
def own_images(tmp_path_factory):
    """Six organism scenes as a user would have them: two PNG files, two PIL images, two arrays."""
    ex = coco.load_set(coco.resolve_set("fashionscenes/eval"))
    chosen = [e for e in ex if e.class_name == "trouser"][:3] + [e for e in ex if e.class_name == "bag"][:3]
    folder = tmp_path_factory.mktemp("own")
    out = []
    for i, e in enumerate(chosen):
        img = e.load_image()
        if i % 3 == 0:
            p = folder / f"{i}.png"
            img.save(p)
            out.append(str(p))
        elif i % 3 == 1:
            out.append(img)
        else:
            out.append(np.asarray(img))
    return out, [e.class_name for e in chosen]


def test_rank_heads_on_own_images_and_question_saves_and_loads(own_images, tmp_path):
    images, answers = own_images
    kw = dict(labels=headflow.CLASSES, n_masks=40, masks_per_head=0, n_boot=100, progress=False,
              store_dir=tmp_path / "store", keep="all", baseline="image-mean")
    r = headflow.rank_heads("organism", images, QUESTION, answers, **kw)
    assert list(r.table.columns) == ["layer", "head", "attribution", "ci_low", "ci_high", "rank"]
    assert len(r.table) == 64 and r.table["rank"].tolist() == list(range(1, 65))
    assert (r.table["attribution"].diff().dropna() <= 0).all()
    assert r.per_image.shape == (6, 64) and set(r.images["role"]) == {"analysed"}
    assert {"heldout_r", "heldout_r2", "regression", "said", "correct"} <= set(r.images.columns)
    assert r.params["n_masks"] == 40 and r.params["question"] == QUESTION
    assert heads.HeadRanking.load(r.save(tmp_path / "saved")) == r
    again = headflow.rank_heads("organism", images, QUESTION, answers, **kw)  # read back from the run store
    assert again == r
    assert len(r.top(5)) == 5 and r.order()[0] == r.top(1)[0][0] * 8 + r.top(1)[0][1]


def test_the_reference_follows_the_rule_and_is_never_analysed(own_images, tmp_path):
    images, answers = own_images
    r = headflow.rank_heads("organism", images, QUESTION, answers, labels=headflow.CLASSES, n_masks=30,
                            masks_per_head=0, n_boot=50, progress=False, store_dir=tmp_path, keep="all")
    roles = r.images.groupby("role").size().to_dict()
    assert roles == {"analysed": 4, "reference": 2}  # the last image of each answer (rule: a quarter, at least 1)
    assert "last" in r.params["reference_rule"]


def test_errors_name_the_fix(own_images, tmp_path):
    images, answers = own_images
    with pytest.raises(ValueError, match="baseline='image-mean'"):
        headflow.rank_heads("organism", images[:2], QUESTION, ["trouser", "bag"], labels=headflow.CLASSES,
                            store_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="keep='all'"):
        headflow.rank_heads("tiny:llava", images[:2], QUESTION, ["trouser", "bag"], labels=headflow.CLASSES,
                            store_dir=tmp_path, progress=False, baseline="zero", n_masks=20, masks_per_head=0)
    with pytest.raises(ValueError, match="2 images but 1 answers"):
        headflow.rank_heads("organism", images[:2], QUESTION, ["bag"], store_dir=tmp_path)
    with pytest.raises(ValueError, match="fewer than two answers"):
        headflow.rank_heads("organism", images[:2], QUESTION, ["bag", "bag"], store_dir=tmp_path)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        heads.as_images([np.zeros((4, 4))], ["bag"], tmp_path)


def test_the_command_line(own_images, tmp_path):
    images, answers = own_images
    for i, (img, a) in enumerate(zip(images, answers)):
        (tmp_path / "imgs" / a).mkdir(parents=True, exist_ok=True)
        pil = Image.open(img) if isinstance(img, str) else img if isinstance(img, Image.Image) else Image.fromarray(img)
        pil.save(tmp_path / "imgs" / a / f"{i}.png")
    r = subprocess.run([sys.executable, "-m", "headflow.rank", "--images", str(tmp_path / "imgs"), "--question",
                        QUESTION, "--answers", ",".join(headflow.CLASSES), "--out", str(tmp_path / "out"),
                        "--n-masks", "30", "--masks-per-head", "0", "--keep", "all"],
                       capture_output=True, text=True, env={**__import__("os").environ,
                                                            "HEADFLOW_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("heads.csv", "images.csv", "per_image.npy", "ranking.json", "heads.png", "provenance.json"):
        assert (tmp_path / "out" / name).exists(), name
    loaded = heads.HeadRanking.load(tmp_path / "out")
    assert loaded.per_image.shape == (4, 64)  # two of six set apart as the dataset-mean reference


def test_the_siblings_curves_ablation_and_knockout(own_images, tmp_path):
    images, answers = own_images
    kw = dict(labels=headflow.CLASSES, progress=False, store_dir=tmp_path, keep="all", baseline="image-mean")
    r = headflow.rank_heads("organism", images[:2] + images[3:5], QUESTION, answers[:2] + answers[3:5], n_masks=30,
                            masks_per_head=0, n_boot=50, **kw)
    held_i, held_a = [images[2], images[5]], [answers[2], answers[5]]
    curves = headflow.faithfulness_curves(r, "organism", held_i, QUESTION, held_a, ks=[0, 4, 64], n_boot=50, **kw)
    assert curves["k"].tolist() == [0, 4, 64]
    assert curves["faithfulness"].iloc[-1] == pytest.approx(1.0) and curves["completeness"].iloc[-1] == pytest.approx(1.0)
    assert curves["faithfulness"].iloc[0] == pytest.approx(0.0) and curves["completeness"].iloc[0] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="not found on"):
        headflow.faithfulness_curves(r, "organism", images[:1] + held_i[:1], QUESTION, [answers[0], held_a[0]], **kw)
    ab = headflow.ablate_heads("organism", held_i, QUESTION, held_a, r.top(64), **kw)
    assert np.allclose(ab["y_ablated"], ab["y_none"]) and np.allclose(ab["share_lost"].dropna(), 1.0)
    none = headflow.ablate_heads("organism", held_i, QUESTION, held_a, [], **kw)
    assert np.allclose(none["y_ablated"], none["y_clean"], atol=1e-4)
    ko = headflow.knockout("organism", held_i, QUESTION, held_a, source="image", receiver="final", **kw)
    assert set(ko.columns) >= {"y_clean", "y_knocked", "share_lost"} and len(ko) == 2
    empty = headflow.knockout("organism", held_i, QUESTION, held_a, layers=[], **kw)
    assert np.allclose(empty["y_knocked"], empty["y_clean"], atol=1e-4)
    with pytest.raises(ValueError, match="does not exist"):
        headflow.ablate_heads("organism", held_i, QUESTION, held_a, [(9, 0)], **kw)


def test_a_dry_run_prices_a_call_on_a_large_model():
    got = headflow.price_rank_heads("llava-hf/llava-1.5-7b-hf", n_images=100)
    assert got["masks_per_image"] == 4 * 1024 and got["suffix_passes"] == 100 * (4096 + 2)
    assert got["full_passes"] == 100 and got["image_tokens"] == 576 and 0 < got["h100_hours"] < 1
    assert got["peak_memory_gib"] > 13  # 7 B parameters in bf16
    with pytest.raises(ValueError, match="no architecture numbers"):
        headflow.price_rank_heads("someone/unknown", 10)
