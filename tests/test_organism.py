import json

import torch

from headflow import data, evaluate, models, organism
from headflow.task import question_text

from conftest import TINY


def test_checkpoint_size_and_shape():
    files = list(models.ORGANISM_DIR.glob("*.safetensors"))
    assert files and sum(f.stat().st_size for f in files) <= 40 * 2**20
    cfg = json.loads((models.ORGANISM_DIR / "config.json").read_text())
    text = cfg["text_config"]
    assert text["num_hidden_layers"] >= 6 and text["num_hidden_layers"] * text["num_attention_heads"] >= 64


def test_training_log_meets_the_bars():
    log = json.loads((models.ORGANISM_DIR / "training_log.json").read_text())
    final = log["final"]
    assert final["n_eval"] >= 3000 and final["split"] == "test"
    assert final["object"] >= 0.75 and final["color"] >= 0.95 and final["position"] >= 0.90, final
    assert log["wall_minutes"] <= 60


def test_committed_chapter0_result_matches_the_training_log():
    res = json.loads((models.REPO_ROOT / "book" / "results" / "organism.json").read_text())
    log = json.loads((models.ORGANISM_DIR / "training_log.json").read_text())
    assert res["n_eval"] == log["final"]["n_eval"] and res["eval_seed"] == 1000 + log["recipe"]["seed"]
    for q in ("object", "color", "position"):
        assert abs(res["accuracy"][q] - log["final"][q]) <= 0.005, q


def test_fresh_evaluation_agrees_with_fast_training_path(organism_model):
    """The processor path (chapters) and the training-time fast path give the same logits."""
    model, processor = organism_model
    specs = data.sample_specs("test", 24, seed=1000)
    images, _ = data.render_many(specs)
    slow = evaluate.final_logits(model, processor, images, question_text("color"))
    prompts = organism.PromptCache(processor, images[0])
    fast = organism.final_logits(model, prompts, images, [1] * len(images), bf16=False)
    assert torch.allclose(slow, fast, atol=1e-4)


def test_training_loop_runs_and_saves(tmp_path):
    recipe = organism.Recipe(**{**TINY.__dict__, "vision_steps": 2, "llava_steps": 2, "vision_batch": 8,
                                "llava_batch": 8, "eval_every": 2, "n_eval_during": 20, "n_eval_final": 30})
    log = organism.train(tmp_path, recipe)
    assert set(log["final"]) >= {"object", "color", "position"}
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "training_log.json").exists()
    m, p = models.load(str(tmp_path))
    assert models.n_heads(m) == (2, 4)
