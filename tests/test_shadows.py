"""Shadow models of the ten paper-scale checkpoints: each keeps its checkpoint's vocabulary, template,
processor as released and head counts; the chapters run on them through the runner; realpath.json
is what they resolve to."""
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from headflow.book import realpath
from headflow.mechanism import tokens
from headflow.models import families, shadow
from headflow.task.prompt import build_prompt, question_text
from headflow.util.paths import REPO_ROOT

CHECKPOINTS = list(shadow.checkpoints())
# image tokens at 640x480 with each processor as released in this transformers: LLaVA-1.5 crops to
# 336 px (576); LLaVA-NeXT anyres (2,340); Qwen 391 plus the two boundary markers of the image span;
# InternVL3-hf: the processor's own default tiles (12 tiles + thumbnail x 256 = 3,328; InternVLProcessor
# sets crop_to_patches=True at call time, whatever its image processor's attribute says)
SPAN = {"llava": 576, "llava_next": 2340, "qwen2_vl": 393, "qwen2_5_vl": 393, "internvl": 3328}
ONE_PER_FAMILY = ["llava-hf/llava-1.5-7b-hf", "llava-hf/llava-v1.6-mistral-7b-hf", "OpenGVLab/InternVL3-2B-hf",
                  "Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct"]
FIVE = ["01-task-and-models", "02-single-head-ablation", "03-head-attribution", "04-faithfulness-completeness",
        "05-where-the-heads-are"]


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_shadow_keeps_what_the_study_touches(checkpoint):
    e = shadow.entry(checkpoint)
    model, processor = shadow.build(checkpoint)
    cfg = model.config.get_text_config()
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size) == (
        e["text"]["heads"], e["text"]["kv_heads"], e["text"]["vocab"])
    assert cfg.num_hidden_layers == shadow.TEXT_LAYERS and families.family_of(model).name == e["family"]
    assert processor.chat_template == (shadow.TEMPLATE_DIR / f"{e['template']}.jinja").read_text()
    prompt = build_prompt(processor, question_text("object"))
    inputs = processor(images=[Image.new("RGB", (640, 480), "gray")], text=[prompt], return_tensors="pt")
    assert int(families.image_span(model, inputs["input_ids"]).sum()) == SPAN[e["family"]]
    with torch.inference_mode():
        logits = model(**inputs, logits_to_keep=1).logits
    assert logits.shape[-1] == e["text"]["vocab"] and torch.isfinite(logits).all()


def test_role_tokens_of_the_mistral_template_resolve():
    """LLaVA-NeXT-Mistral's template has no generation-prompt branch; token groups used to fail
    there ("cannot find the generation prompt")."""
    model, processor = shadow.build("llava-hf/llava-v1.6-mistral-7b-hf")
    q = question_text("object")
    inputs = processor(images=[Image.new("RGB", (640, 480))], text=[build_prompt(processor, q)], return_tensors="pt")
    g = tokens.resolve(processor, model.config, q, inputs)
    role = processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0, g["role"]].tolist())
    assert "".join(role).replace("▁", " ").strip() == "[/INST]" and g.sizes["image"] == 2340


def test_realpath_record_of_llava_is_regenerated_exactly():
    committed = {r["model"]: r for r in realpath.load(REPO_ROOT / "book")["records"]}
    assert set(committed) == set(CHECKPOINTS)
    got = json.loads(json.dumps(realpath.resolve("llava-hf/llava-1.5-7b-hf")))
    want = dict(committed["llava-hf/llava-1.5-7b-hf"])
    want.pop("mechanics_chapters_passed")
    planned = {k: want.pop(k) for k in ("masks", "fit", "peak_memory_gib")}  # from the plan (test_plan checks them)
    assert got == want and planned["fit"] == "ols"
    assert got["classes_scored"] == 80 and got["role_tokens"] == ["▁A", "SS", "IST", "ANT", ":"]
    assert ["car", "carrot"] in got["first_token_collisions_resolved"]
    for c, rec in committed.items():  # chapters 1-3 on all ten, 4-5 on one per family
        assert rec["mechanics_chapters_passed"] == (FIVE if c in ONE_PER_FAMILY else FIVE[:3]), c


def test_chapters_run_on_a_shadow_through_the_runner(tmp_path):
    """The runner's shadows profile on LLaVA-1.5-7B's shadow (the committed realpath.json comes from
    all ten): chapters 1-5 execute, and realpath.json records it."""
    r = subprocess.run([sys.executable, "-m", "headflow.run", "--profile", "shadows", "--out", str(tmp_path / "runs"),
                        "--results", str(tmp_path / "results"), "--sweep-model", "shadow:llava-hf/llava-1.5-7b-hf"],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got = json.loads((tmp_path / "results" / "realpath.json").read_text())["records"]
    assert [x["model"] for x in got] == ["llava-hf/llava-1.5-7b-hf"]
    assert got[0]["mechanics_chapters_passed"] == FIVE and got[0]["classes_scored"] == 80


def test_full_dry_run_resolves_every_checkpoint_through_its_shadow():
    r = subprocess.run([sys.executable, "-m", "headflow.run", "--profile", "full", "--out", "/tmp/full-dry",
                        "--dry-run"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    for c in CHECKPOINTS:
        assert f"[headflow.run] {c}: " in r.stdout and "80 classes scored" in r.stdout, c


def test_a_local_snapshot_is_compared_with_the_committed_template_and_processor(tmp_path):
    c = "llava-hf/llava-1.5-7b-hf"
    assert shadow.snapshot_differences(c, tmp_path / "missing") is None
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": shadow.template(c)}))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 336},
                                                                   "crop_size": {"height": 336, "width": 336}}))
    assert shadow.snapshot_differences(c, tmp_path) == {}
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"crop_size": {"height": 224, "width": 224}}))
    got = shadow.snapshot_differences(c, tmp_path)
    assert set(got) == {"chat_template", "crop"} and got["crop"] == (224, 336)
