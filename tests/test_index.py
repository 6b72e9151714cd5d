"""The book's status table is generated from book/results, and verdict rules apply as stated."""
import re

import numpy as np
import pytest

from headflow.book import index
from headflow.findings import verdicts
from headflow.models import loading
from headflow.util.paths import REPO_ROOT

BOOK = REPO_ROOT / "book"


def test_committed_index_table_is_the_generated_one():
    text = (BOOK / "index.md").read_text()
    assert index.render(text, BOOK) == text, "book/index.md is stale: run `python -m headflow.run` (or index.write)"


def test_every_executed_chapter_has_a_status_in_the_table():
    table = index.table(BOOK)
    for name, doc, _ in index.CHAPTERS:
        if doc and (BOOK / "results" / f"{name}.json").exists():
            row = next(line for line in table.splitlines() if f"<{doc}>" in line)
            assert "not yet run" not in row, row


def test_the_index_says_what_the_organism_can_do_before_the_verdicts_one_line_per_chapter():
    text = index.table(BOOK)
    assert text.index("### What the organism can and cannot do") < text.index("### Verdicts") < text.index("| chapter |")
    assert "bars" in text.split("### Verdicts")[0]  # chapter 0's bars in words, with the numbers
    rows = [line for line in text.split("### Verdicts")[1].splitlines() if line.startswith("| {doc}")]
    assert len(rows) == len([c for c in index.CHAPTERS if (BOOK / f"{c[1]}.ipynb").exists()])
    for row in rows:
        cells = [c for c in row.split(" | ")]
        assert len(cells) == 3 and len(index.key_number({"finding": cells[1]})) <= index.KEY_MAX + 20, row
    # a long finding is cut to one short line; a rule's own key is used as it is
    assert len(index.key_number({"finding": "x" * 500})) == index.KEY_MAX
    assert index.key_number({"finding": "long; details", "key": "k = 5"}) == "k = 5"
    assert index.key_number({"finding": "a (b, c) d; e"}) == "a d"

    # the chapters the organism's competence lets decide are named in chapter order (a rule, not the
    # order of the competence table)
    named = re.search(r"verdicts of chapters ([0-9, ]+) can be read", text)
    if named:
        ch = [int(c) for c in named.group(1).split(", ")]
        assert ch == sorted(ch), named.group(0)


def test_a_key_number_is_the_first_clause_outside_parentheses():
    # a "; " inside a parenthesis does not end the clause (chapter 3's finding once showed an open parenthesis)
    f = "held-out r = 0.99 [0.98, 0.99] (mean within class, then over 8 classes; 95% interval), R^2 0.98 (rate 0.5); x"
    assert index.first_clause(f) == "held-out r = 0.99 [0.98, 0.99], R^2 0.98"
    assert index.first_clause("a (b (c; d) e) f; g") == "a f"
    assert "(" not in index.key_number(index._status(BOOK / "results", "head_attribution"))


def _timing(diff_role, diff_final, answer_role, answer_final, image_onset=1):
    one = lambda d, a: {"difference": d, "answer": a, "image_onset": image_onset, "question_onset": 0}  # noqa: E731
    return {"role": one(diff_role, answer_role), "final": one(diff_final, answer_final)}


def test_chapter_7_key_number_reads_the_decisive_questions_first():
    res = {"timing": {"object": _timing(None, None, "undetermined", "undetermined", image_onset=None),
                      "color": _timing(1, 2, "yes", "yes"),
                      "position": _timing(0, None, "undetermined", "undetermined")}}
    key = verdicts.knockout_key(res)
    assert key == ("question before image at role, final: color yes (+1, +2 layers); position undetermined "
                   "(+0, ? layers); object undetermined (no image onset)")
    res["timing"]["color"] = _timing(1, -1, "yes", "no (later)")
    assert "color yes, no (later) (+1, -1 layers)" in verdicts.knockout_key(res)
    st = {"chapter": "7-token-flow", "finding": "object: final undetermined; ..."}
    assert index.key_number(st, res).startswith("question before image at role, final: color")
    assert index.key_number(st) == "object: final undetermined"  # no results: the finding's first clause
    # the committed index's chapter 7 row opens with the questions its verdict reads
    row = next(r for r in index.table(BOOK).splitlines() if "<07-token-flow>" in r)
    assert "| question before image at role, final: color" in row, row


def test_render_needs_the_markers():
    with pytest.raises(ValueError, match="status markers"):
        index.render("# no markers here", BOOK)


def test_where_heads_rule_is_against_uniform_placement():
    def d(value, hi, p=0.5):
        return {"first_third_share": {"value": value, "ci": [value - 0.05, hi], "uniform": 0.375, "layers": 3,
                                      "p_below_uniform": p},
                "mean_relative_depth": {"value": 0.5, "ci": [0.45, 0.55]}}

    def res(obj, col, pos=(0.9, 0.95)):
        return {"model": "m", "question": "object",
                "by_organism": {"m": {"object": d(*obj), "color": d(*col), "position": d(*pos)}}}
    assert verdicts.where_heads_status(res((0.2, 0.37), (0.9, 0.95)))["verdict"] == verdicts.REPRODUCED
    # the upper end, not the point estimate, must clear uniform
    assert verdicts.where_heads_status(res((0.3, 0.38), (0.9, 0.95)))["verdict"] == verdicts.PARTLY
    assert verdicts.where_heads_status(res((0.5, 0.6), (0.2, 0.3, 0.001)))["verdict"] == verdicts.PARTLY
    assert verdicts.where_heads_status(res((0.5, 0.6), (0.9, 0.95)))["verdict"] == verdicts.NOT
    # the secondary questions are one family: two p of 0.02 are 0.04 after Holm, above 0.025
    both = verdicts.where_heads_status(res((0.5, 0.6), (0.3, 0.37, 0.02), (0.3, 0.37, 0.02)))
    assert both["verdict"] == verdicts.NOT and any("Holm p 0.040" in line for line in both["lines"])
    one = verdicts.where_heads_status(res((0.5, 0.6), (0.3, 0.37, 0.01), (0.3, 0.37, 0.5)))
    assert one["verdict"] == verdicts.PARTLY


def test_faithfulness_rule_reads_the_primary_contrast_and_returns_each_outcome():
    methods = ["single_head", "attention_weight", "attention_weight_text", "attribution_patching", "random"]

    def res(wins, primary_ci=((2, 9), (2, 9))):
        paired = {m: {n: {"attribution_needs_fewer": w, "median_difference": 4.0, "ci": [-3, 9], "p_holm": 0.5}
                      for n, w in zip(methods, ws)} for m, ws in zip(("faithfulness", "completeness"), wins)}
        for m, ci in zip(paired, primary_ci):
            paired[m]["single_head"]["ci"] = list(ci)
        k = {m: {n: {"k": 5, "ci": [3, 7]} for n in ["attribution"] + methods} for m in paired}
        k["completeness"]["random"] = {"k": None, "ci": [40, None]}
        return {"model": "m", "paired_vs_attribution": paired, "k_at_0.8_heldout": k}
    assert verdicts.faithfulness(res([[True] * 5, [True] * 5]))["verdict"] == verdicts.REPRODUCED
    # the primary contrast on one metric only: partly, whatever the secondary comparisons say
    assert verdicts.faithfulness(res([[True] + [False] * 4, [False] * 5]))["verdict"] == verdicts.PARTLY
    # every secondary comparison won, the primary contrast on neither metric: never partly
    tie = res([[False] + [True] * 4, [False] + [True] * 4], ((-3, 4), (-2, 5)))
    st = verdicts.faithfulness(tie)
    assert st["verdict"] == verdicts.INCONCLUSIVE and "[-3, +4] heads (undetermined)" in st["finding"]
    st = verdicts.faithfulness(res([[False] * 5, [False] * 5], ((-6, 0), (-3, 4))))
    assert st["verdict"] == verdicts.NOT and ">all" in st["finding"]


def test_the_organism_bars_of_issue_28_can_fail_and_pass():
    def res(acc, follows=(0.9, (0.85, 0.93), 0.03, (0.01, 0.06), 300), taught=0.99, kept=1.0, pooled=0.3,
            tokens=0.82, per_class=0.7, ablated=(0.11, (0.09, 0.13), 0.1)):
        m = "organism"
        fm, fm_ci, fo, fo_ci, n = follows
        return {"model": m, "accuracy": {m: {"object": acc, "color": 0.97, "position": 0.95}},
                "per_class_object": {m: {"bag": per_class, "boot": 0.9}},
                "counterfactual_follows_main": {m: {"object": {"n": n, "follows_main": fm, "follows_main_ci": fm_ci,
                                                               "follows_old": fo, "follows_old_ci": fo_ci}}},
                "tower_probes": {"pooled": {"accuracy": {"object": pooled, "color": pooled, "position": pooled}},
                                 "main_object_tokens": {"accuracy": {"object": tokens}}},
                "all_heads_ablated": {m: {"object": {"accuracy": ablated[0], "ci": ablated[1], "chance": ablated[2]}}},
                "text_retrieval_after_stage": {"text": {"all": taught}, "kept": kept}}
    met = lambda r: {k: v["met"] for k, v in verdicts.organism_checks(r).items()}  # noqa: E731
    assert all(met(res(0.85)).values())
    assert not met(res(0.79))["accuracy object"]
    assert not met(res(0.85, per_class=0.55))["object class bag"]
    assert not met(res(0.85, follows=(0.9, (0.85, 0.93), 0.03, (0.01, 0.06), 150)))["follows the new main object (object)"]
    assert not met(res(0.85, follows=(0.9, (0.78, 0.93), 0.03, (0.01, 0.06), 300)))["follows the new main object (object)"]
    assert not met(res(0.85, follows=(0.9, (0.85, 0.93), 0.08, (0.05, 0.12), 300)))["follows the old main object (object)"]
    assert not met(res(0.85, pooled=0.75))["pooled probe object"]
    assert not met(res(0.85, tokens=0.95))["object vs main-object-token probe"]
    assert not met(res(0.85, ablated=(0.3, (0.27, 0.33), 0.1)))["every head ablated (object)"]
    assert not met(res(0.85, taught=0.5, kept=1.03))["text task kept"]  # kept at chance is not kept


def test_the_validation_rule_does_not_count_a_demonstration_built_to_hold():
    def planting(prec, lo):
        return {"attribution": {"precision": prec, "per_planting": [{"ci": [lo, 1.0]}]}, "random_expectation": 0.1,
                "single_head": {"precision": 0.0}}
    red = {"redundant_by_rule": True, "attribution_ranks": {"A": 1, "B": 2}, "single_head_ranks": {"A": 60, "B": 61},
           "single_over_joint": {"A": -0.01, "B": -0.01}, "joint_effect": 3.7}
    res = {"planted_flow": {"4": planting(0.5, 0.05)}, "planted_pairs": {"4": planting(0.5, 0.05)},
           "redundancy_in_network": red}
    assert verdicts.validation(res)["verdict"] == "not validated"  # only (b) holds, and it holds by construction
    res["planted_pairs"]["4"] = planting(1.0, 0.8)
    assert verdicts.validation(res)["verdict"] == "not validated"  # (c) without the planted flow (a): not partly
    res["planted_flow"] = {"4": planting(0.95, 0.7), "8": planting(0.5, 0.05)}
    assert verdicts.validation(res)["verdict"] == "partly"
    res["planted_flow"]["8"] = planting(0.95, 0.7)
    assert verdicts.validation(res)["verdict"] == "validated"


def test_the_competence_gate_fires_on_a_missed_bar_and_keeps_the_rule_s_outcome():
    checks = {name: {"met": True} for needs in verdicts.COMPETENCE_NEEDS.values() for name in needs}
    st = verdicts.status("4-faithfulness-completeness", "Sec. 4", "organism", "k ...", verdicts.REPRODUCED)
    assert verdicts.gate(st, checks)["verdict"] == verdicts.REPRODUCED
    checks["follows the old main object (object)"] = {"met": False}
    gated = verdicts.gate(st, checks)
    assert gated["verdict"] == "not testable on this organism (bar follows the old main object (object) missed)"
    assert gated["verdict_if_competent"] == verdicts.REPRODUCED and gated["finding"] == "k ..."
    # chapter 6 needs the class only; a bar never measured counts as missed
    six = verdicts.status("6-semantics", "Sec. 5", "organism", "", verdicts.PARTLY)
    assert verdicts.gate(six, checks)["verdict"] == verdicts.PARTLY
    assert "accuracy object (not measured)" in verdicts.gate(six, {})["verdict"]
    # a real checkpoint has no chapter-0 bars: the verdict stands, and says so
    real = verdicts.gate(st, None)
    assert real["verdict"] == verdicts.REPRODUCED and real["competence"]["missed"] is None
    assert {r["chapter"] for r in verdicts.competence_table()} == set(verdicts.COMPETENCE_NEEDS)


def test_too_few_images_make_a_verdict_inconclusive():
    st = verdicts.status("2-single-head-ablation", "Fig. 1A", "organism", "", verdicts.REPRODUCED)
    many = {f"c{i}": 12 for i in range(8)}
    assert verdicts.enough_images(st, many)["verdict"] == verdicts.REPRODUCED
    few = verdicts.enough_images(st, {**many, "coat": 2})
    assert few["verdict"] == "inconclusive (too few images: fewer than 10 images in 1 class(es): coat 2)"
    assert few["verdict_if_enough_images"] == verdicts.REPRODUCED
    assert "7 classes analysed" in verdicts.enough_images(st, {f"c{i}": 12 for i in range(7)})["verdict"]
    # the two gates in order: competence first, then images
    checks = {name: {"met": True} for name in verdicts.COMPETENCE_NEEDS["2-single-head-ablation"]}
    assert verdicts.final(st, checks, {**many, "coat": 2})["verdict"].startswith("inconclusive (too few images")
    checks["accuracy object"] = {"met": False}
    assert verdicts.final(st, checks, {**many, "coat": 2})["verdict"].startswith("not testable on this organism")


def test_chapters_2_and_3_read_intervals_of_the_verdict_s_statistic_and_return_each_outcome():
    iv = lambda v, lo, hi: {"value": v, "ci": [lo, hi], "images_per_class": {"a": 10, "b": 10}}  # noqa: E731

    def two(share, margin):
        return {"model": "m", "n_images": 20, "superadditivity_k": 40, "superadditive_factor": 1.5,
                "images_per_class": {"a": 10, "b": 10}, "max_single_share": share, "joint_share": iv(0.9, 0.8, 1.0),
                "singles_share": iv(0.3, 0.2, 0.4), "superadditive_margin": margin}
    assert verdicts.single_head(two(iv(0.1, 0.05, 0.15), iv(0.4, 0.1, 0.6)))["verdict"] == verdicts.REPRODUCED
    assert verdicts.single_head(two(iv(0.1, 0.05, 0.15), iv(0.1, -0.1, 0.3)))["verdict"] == verdicts.PARTLY
    assert verdicts.single_head(two(iv(0.3, 0.25, 0.35), iv(-0.3, -0.5, -0.1)))["verdict"] == verdicts.NOT
    assert verdicts.single_head(two(iv(0.2, 0.15, 0.25), iv(0.0, -0.1, 0.1)))["verdict"] == verdicts.INCONCLUSIVE

    def three(r):
        return {"model": "m", "n_masks": 100, "ablation_rate": 0.5, "fit": {"pearson_r": r, "r2_median": 0.5}}
    assert verdicts.head_attribution(three(iv(0.9, 0.85, 0.93)))["verdict"] == verdicts.REPRODUCED
    assert verdicts.head_attribution(three(iv(0.8, 0.7, 0.85)))["verdict"] == verdicts.PARTLY
    assert verdicts.head_attribution(three(iv(0.4, 0.3, 0.5)))["verdict"] == verdicts.NOT
    assert verdicts.head_attribution(three(iv(0.6, 0.5, 0.7)))["verdict"] == verdicts.INCONCLUSIVE
    assert verdicts.head_attribution(three(None))["verdict"] == verdicts.INCONCLUSIVE  # no class with two images


def test_class_mean_and_aggregate_intervals_weight_classes_equally():
    from headflow.method import metrics

    v = [1.0, 1.0, 1.0, 0.0, 0.0, np.nan, 5.0]
    c = ["a", "a", "a", "b", "b", "b", "c"]
    r = metrics.class_mean(v, c, 200, 0)
    assert r["value"] == 0.5 and r["images_per_class"] == {"a": 3, "b": 2} and r["classes_left_out"] == {"c": 1}
    assert r["ci"][0] <= 0.5 <= r["ci"][1]
    with pytest.raises(ValueError, match="one number per image"):
        metrics.class_mean([[1.0]], ["a"], 10, 0)
    with pytest.raises(ValueError, match="no class has 2 images"):
        metrics.class_mean([1.0, 2.0], ["a", "b"], 10, 0)
    assert metrics.class_mean([1.0, 2.0], ["a", "b"], 10, 0, none_if_empty=True) is None
    a = metrics.aggregate_ci([1.0, 3.0, 2.0, 2.0], [2.0, 2.0, 4.0, 4.0], ["a", "a", "b", "b"], 100, 0)
    assert a["value"] == 0.75 and a["images_per_class"] == {"a": 2, "b": 2}  # (4/4 + 4/8) / 2
    agg = metrics.aggregate([1.0, 3.0, 2.0, 2.0, 1.0], [2.0, 2.0, 4.0, 4.0, -1.0], ["a", "a", "b", "b", "b"])
    assert agg["images_per_class"] == {"a": 2, "b": 2}  # the image of non-positive effect does not enter


def test_chapter_2_summary_by_the_aggregation_rule_and_with_too_few_images():
    import pandas as pd

    from headflow.findings import redundancy

    class T:
        def __init__(self, key, c):
            self.key, self.class_name = key, c

    class St:
        n_images = 6
        tasks = [T(f"i{j}", "ab"[j % 2]) for j in range(6)]
    rng = np.random.default_rng(0)
    single = {t.key: rng.uniform(0, 0.2, (2, 4)) for t in St.tasks}
    joint = {t.key: 2.0 for t in St.tasks}
    red = pd.DataFrame([{"image": t.key, "k": k, "sum_of_singles": 0.1 * k, "joint": 0.2 * k}
                        for t in St.tasks for k in (1, 4, 8)])
    res = redundancy.summary_json("m", St, single, joint, red, n_boot=50)
    # the largest random set below all heads (k = 4): joint 0.8, singles 0.4 of the effect, margin 0.8 - 0.6
    assert res["superadditive_margin"]["value"] == pytest.approx(0.2) and res["images_per_class"] == {"a": 3, "b": 3}
    assert verdicts.single_head(res)["verdict"] in (verdicts.REPRODUCED, verdicts.PARTLY)
    St.tasks = [T(f"i{j}", "abcdef"[j]) for j in range(6)]  # one image per class: no class has two
    res = redundancy.summary_json("m", St, single, joint, red, n_boot=50)
    assert res["max_single_share"] is None
    assert verdicts.single_head(res)["verdict"].startswith("inconclusive (too few images")


def test_organism_checks_for_the_gate_come_from_chapter_0_of_the_same_model(tmp_path, monkeypatch):
    import json

    from headflow.book import outputs

    (tmp_path / "results").mkdir()
    checks = {"accuracy object": {"met": True, "value": 0.9, "bar": 0.8}}
    (tmp_path / "results" / "organism.json").write_text(json.dumps({"model": "organism", "status": {"checks": checks}}))
    assert outputs.organism_checks("organism", tmp_path) == checks
    assert outputs.organism_checks("organism-scratch", tmp_path) is None  # not measured: the gate says so
    st = verdicts.status("6-semantics", "Sec. 5", "organism-scratch", "", verdicts.PARTLY)
    assert verdicts.final(st, outputs.organism_checks("organism-scratch", tmp_path), None)["verdict"] == verdicts.PARTLY


def test_a_chapter_opening_states_the_rule_the_code_applies_and_what_competence_allows(monkeypatch):
    from headflow.book import outputs

    for chapter, fn in verdicts.RULES.items():
        text = verdicts.rule_text(chapter)
        assert len(text) > 80 and ":func:" not in text and "``" not in text and not text.startswith("Chapter"), chapter
        plain = re.sub(r" \(= [^)]*\)", "", text)  # without the constants' values it adds
        assert " ".join(plain.split()[-4:]) in " ".join(fn.__doc__.split()).replace("``", "`"), chapter
    assert "`SINGLE_SHARE_MAX` (= 0.2)" in verdicts.rule_text("2-single-head-ablation")
    assert "`SUPERADDITIVE_FACTOR` (1.5)" in verdicts.rule_text("2-single-head-ablation")  # its value stated already
    with pytest.raises(ValueError, match="no verdict rule for chapter"):
        verdicts.rule_text("12-nothing")
    met = {n: {"met": True} for n in verdicts.COMPETENCE_NEEDS["7-token-flow"]}
    assert "meets them all" in verdicts.competence_text("7-token-flow", met)
    missed = dict(met, **{"accuracy color": {"met": False}})
    assert "misses accuracy color" in verdicts.competence_text("7-token-flow", missed)
    assert "not measured" in verdicts.competence_text("7-token-flow", None)
    assert "none of chapter 0's bars" in verdicts.competence_text("91-validation", met)
    shown = []
    monkeypatch.setattr(outputs, "display", shown.append)
    monkeypatch.setattr(outputs, "organism_checks", lambda model: missed if model == "organism" else None)
    outputs.opening("7-token-flow", "organism")
    assert "verdicts.knockout" in shown[0].data and verdicts.rule_text("7-token-flow") in shown[0].data
    assert "misses accuracy color" in shown[0].data


def test_every_chapter_opens_with_its_claim_then_its_rule_and_competence():
    """Issue 33: the title names the claim, the opening cell (right after the parameters) states the rule the
    verdict function applies and what the organism allows; no prose restates a rule (it could drift)."""
    import nbformat

    docs = {doc: title for _, doc, title in index.CHAPTERS}
    for chapter in verdicts.RULES:
        doc = next(d for d in docs if d.startswith(chapter.split("-")[0].zfill(2) + "-"))
        nb = nbformat.read(REPO_ROOT / "notebooks" / f"{doc}.ipynb", 4)
        assert nb.cells[0].source.startswith("# " + docs[doc]), doc
        p = next(i for i, c in enumerate(nb.cells) if "parameters" in (c.metadata.get("tags") or []))
        assert f'outputs.opening("{chapter}", model)' in nb.cells[p + 1].source, doc
        prose = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        assert "Verdict rule" not in prose and "stated before the numbers" not in prose, doc


def test_the_index_names_the_committed_organisms_and_no_retired_one():
    """The index's own text (outside the generated table) names every committed organism and none retired."""
    text = (BOOK / "index.md").read_text()
    static = text.split("<!-- status:begin")[0] + text.split("<!-- status:end -->")[1]
    for name in loading.ORGANISMS:
        assert f"`{name}`" in static, name
    assert "organism-single" not in static
