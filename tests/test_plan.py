"""The paper-scale plan is checked without weights, and the `full` sweep validates as a dry run."""
import pytest

from headflow.book import runner as run
from headflow.scale import plan

EXPECTED_IMAGE_TOKENS = {"llava": 576, "llava_next": 2340, "internvl": 13 * 256, "qwen2_vl": 391, "qwen2_5_vl": 391}


@pytest.fixture(scope="module")
def full():
    return plan.results("full")


def test_every_checkpoint_is_built_on_meta_and_matches_its_published_size(full):
    rows = full["checkpoints"]
    assert len(rows) == 10 and len({r["model"] for r in rows}) == 10
    for r in rows:
        assert r["params_within_3pct_of_hub"], (r["model"], r["params_b"], r["hub_params_b"])
        assert r["image_tokens"] == EXPECTED_IMAGE_TOKENS[r["family"]], r
        assert r["gflop_full"] > 5 * r["gflop_suffix"] > 0 and r["memory_gib"] * 2 ** 30 > 2 * r["params_b"] * 1e9
        assert r["heads_total"] == r["layers"] * r["heads"] and r["heads"] % r["kv_heads"] == 0
    llava7 = next(r for r in rows if r["model"] == "llava-hf/llava-1.5-7b-hf")
    assert (llava7["layers"], llava7["heads"]) == (32, 32)
    # a suffix pass of 24 tokens: about 2 FLOPs per language-model weight and token (6.48 B weights
    # outside the embeddings), the answer's logits at one position, and attention to the ~580-token prefix
    expected = 2 * 6.48 * 24 + 2 * 32064 * 4096 / 1e9 + 4 * 32 * 32 * 128 * 24 * 582 / 1e9
    assert llava7["gflop_suffix"] == pytest.approx(expected, rel=0.02)
    assert full["total_h100_hours"] == pytest.approx(sum(r["h100_hours"] for r in rows))


def test_a_wrong_table_entry_is_caught():
    entry = dict(next(e for e in plan.load_table() if e["id"] == "Qwen/Qwen2-VL-7B-Instruct"))
    entry["text"] = {**entry["text"], "intermediate": 11008}  # a wrong number in the table
    p = plan.n_params(plan.meta_model(entry)) / 1e9
    assert abs(p / entry["hub_params_b"] - 1) > plan.TOLERANCE
    with pytest.raises(ValueError, match="unknown family"):
        plan.build_config({**entry, "family": "paligemma"})


def test_full_sweep_validates_every_run_without_weights(tmp_path, capsys):
    run.main(["--profile", "full", "--dry-run", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "dry run: 50 runs validated" in out and "Qwen__Qwen2.5-VL-7B-Instruct" in out
    assert not list(tmp_path.iterdir())  # nothing ran
