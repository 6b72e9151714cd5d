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


def test_the_plan_prices_every_chapter_and_sizes_masks_by_heads(full):
    from headflow.method import attribution
    from headflow.scale import passes

    chapters = {"01-task-and-models", "02-single-head-ablation", "03-head-attribution", "04-faithfulness-completeness",
                "05-where-the-heads-are", "07-token-flow", "08-object-background"}
    for r in full["checkpoints"]:
        H = r["heads_total"]
        assert r["masks"] == max(2000, 4 * H) and r["fit"] == "ols", r  # 3.2 training masks per head
        assert set(r["chapters"]) == chapters
        for c in r["chapters"].values():
            assert c["peak_memory_gib"] * 2 ** 30 > 2 * r["params_b"] * 1e9 and c["h100_hours"] >= 0
        # chapter 4 per image under the full profile's adaptive design (k_max 128): the bound of
        # judge_adaptive for 13 rankings and 20 random ones, far under every k for every ranking
        ch4 = r["chapters"]["04-faithfulness-completeness"]
        adaptive = passes.judge_adaptive(H, 13, 20, 0, 128).suffix_passes
        every_k = passes.judge(H, 13, 20, 0).suffix_passes
        assert ch4["images"] * adaptive <= ch4["suffix_passes"] < ch4["images"] * every_k
        # a run-store unit that chapters share is counted once: chapter 3 computes, 4, 5, 7 and 8 read
        assert r["chapters"]["03-head-attribution"]["reads_shared_units"] is None
        for name in ("04-faithfulness-completeness", "05-where-the-heads-are", "07-token-flow", "08-object-background"):
            assert r["chapters"][name]["reads_shared_units"]["computed_by"] == "03-head-attribution", name
        per = passes.chapter("05-where-the-heads-are", H, r["layers"], {"per_class": 5, "n_masks": r["masks"],
                                                                         "n_probe_per_class": 5, "n_reference": 100},
                             ch4["images"], 80)
        assert r["chapters"]["05-where-the-heads-are"]["suffix_passes"] == \
            per.suffix_passes - ch4["images"] * passes.attribution_unit(r["masks"]).suffix_passes
    llava13 = next(r for r in full["checkpoints"] if r["model"] == "llava-hf/llava-1.5-13b-hf")
    assert llava13["masks"] == 6400 and attribution.choose(attribution.n_train_of(2000), 1600) == "ridge"
    # every chapter is priced, not chapter 3's attribution alone (the sweep's workload row)
    assert full["total_chapters_h100_hours"] == pytest.approx(
        sum(c["h100_hours"] for r in full["checkpoints"] for c in r["chapters"].values()))
    assert full["total_chapters_h100_hours"] > 3 * full["total_h100_hours"]
    from headflow.book import realpath

    by_model = {r["model"]: r for r in full["checkpoints"]}
    for rec in realpath.load()["records"]:  # the committed real-path records carry the plan's fields
        p = by_model[rec["model"]]
        assert (rec["masks"], rec["fit"]) == (p["masks"], p["fit"])
        assert rec["peak_memory_gib"] == pytest.approx(p["peak_memory_gib"])


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
    assert "dry run: 70 runs validated" in out and "Qwen__Qwen2.5-VL-7B-Instruct" in out
    assert not list(tmp_path.iterdir())  # nothing ran


def test_pass_formulas_match_the_instrumented_library_calls(organism_model, monkeypatch, tmp_path):
    """Every per-image formula of headflow.scale.passes equals what headflow.method.cost.count sees
    when the chapter's own library calls run on the organism."""
    import numpy as np

    from headflow.findings import flow, positions, redundancy
    from headflow.method import attribution, cost, crossfit, experiment, rankings, study
    from headflow.scale import passes

    monkeypatch.setattr(study.models, "load", lambda *a, **k: organism_model)
    monkeypatch.setattr(study, "RUN_DIR", tmp_path / "runs")
    st = study.setup("organism", "fashionscenes/eval", "object", per_class=1, n_reference=3)
    H, L = st.n_layers * st.n_heads, st.n_layers
    _, joint = redundancy.single_and_joint(st)
    t = next(x for x in st.tasks if joint[x.key] > 0)  # random sets run on images with a positive effect

    def seen(fn):
        with cost.count(st.model) as n:
            fn()
        return passes.Passes(n.full_passes, n.suffix_passes, n.gradient_passes)

    st1 = st.__class__(**{**st.__dict__, "tasks": [t]})
    got = seen(lambda: redundancy.random_sets(st1, *redundancy.single_and_joint(st1), 3, 0))
    assert got == passes.redundancy(H, 3), (got, passes.redundancy(H, 3))
    store = study.store_for(st, "attribution", n_masks=40, ablation_rate=0.5, seed=0)
    assert seen(lambda: experiment.attribution_unit(st.model, t, st.baseline, store, 40, 0.5, 0)) == \
        passes.attribution_unit(40)
    assert seen(lambda: [rankings.single_head(st.model, t, st.baseline), rankings.attention_weight(st.model, t, "final"),
                         rankings.attention_weight(st.model, t, "text"),
                         rankings.attribution_patching(st.model, t, st.baseline)]) == passes.baseline_rankings(H)
    order = attribution.ranking(np.arange(H)[::-1].astype(float))
    orders = {f"m{i}": order for i in range(3)} | {f"random/{i}": order for i in range(2)}
    ks = {n: (list(range(H + 1)) if not n.startswith("random/") else __import__("headflow").method.metrics.k_grid(H, 6))
          for n in orders}
    judged = seen(lambda: crossfit.judge(st, t, orders, ks))  # each distinct mask once: the formula is a bound
    assert judged.forward_passes == passes.judge(H, 3, 2, 6).forward_passes and \
        0 < judged.suffix_passes <= passes.judge(H, 3, 2, 6).suffix_passes
    plan_ = flow.chapter_plan(L, {"all heads": None, "top heads": [0, 1], "random 1": [2, 3]}, window=1,
                              sensitivity_window=3)
    assert seen(lambda: flow.run_image(st, t, plan_)) == passes.knockouts(L, 1, 3, len(flow.FLOWS), 3)
    assert seen(lambda: [positions.group_effects(st, [t], {"all heads": None, "top heads": [0, 1]}, 2, 0),
                         positions.token_attribution(st, t, [0, 1], 30, 0.5, 0)]) == passes.groups_and_tokens(2, 30)


@pytest.mark.slow
def test_fast_path_memory_does_not_grow_with_the_masks():
    """A real-vocabulary shadow (Qwen2-VL-2B's 151,936 words): the peak memory an attribution call
    adds (a subprocess's ru_maxrss after the call minus before it) grows by less than 300 MB from 200
    to 3,000 masks: the fast path keeps y per mask, not the vocabulary's logits (the parent commit
    kept 0.6 MB per mask: +1.7 GB).  The margin covers the CPU allocator's noise (a call adds
    70-260 MB at batch 16-128, not monotonically)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    probe = Path(__file__).with_name("memory_probe.py")

    def added(n_masks):
        r = subprocess.run([sys.executable, str(probe), "Qwen/Qwen2-VL-2B-Instruct", str(n_masks), "64"],
                           capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=True)
        got = json.loads(r.stdout.strip().splitlines()[-1])
        return got["peak"] - got["loaded"]

    few, many = added(200), added(3000)
    assert many - few < 300 * 2 ** 20, (few / 2 ** 20, many / 2 ** 20)


def test_the_gpu_rehearsal_runs_its_code_path_on_the_cpu(tmp_path, monkeypatch):
    """`make rehearse-gpu`'s chapters 1-4 and bench, on a tiny model of the same build (the GPU run
    itself needs a GPU; without one its CLI says so)."""
    import torch

    from headflow.scale import rehearse

    r = rehearse.rehearse("cpu", "float32", rehearse.TINY, n_masks=40, bench_masks=32)
    assert set(r["steps"]) == {"build", "01 clean answers", "baseline", "02 single heads and joint",
                               "03 attribution runs", "03 fits", "04 baseline rankings", "04 judge one image"}
    assert max(r["bench"]["max_abs_logit_diff_vs_batched"].values()) < 1e-3 and r["bench"]["image_tokens"] == 576
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        rehearse.main(["--out", str(tmp_path / "x.json")])
    # the full-size build is LLaVA-1.5-7B's: 7.06 B parameters on the meta device
    model, _ = rehearse.build(rehearse.LLAVA_15_7B, "meta", torch.bfloat16)
    assert abs(sum(p.numel() for p in model.parameters()) / 1e9 - 7.06) < 0.03
