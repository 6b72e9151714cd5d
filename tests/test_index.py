"""The book's status table is generated from book/results, and verdict rules apply as stated."""
import pytest

from headflow.book import index
from headflow.findings import verdicts
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


def test_faithfulness_rule_uses_the_paired_intervals():
    def res(wins):
        methods = ["single_head", "attention_weight", "attention_weight_text", "attribution_patching", "random"]
        paired = {m: {n: {"attribution_needs_fewer": w} for n, w in zip(methods, ws)}
                  for m, ws in zip(("faithfulness", "completeness"), wins)}
        k = {m: {n: {"k": 5, "ci": [3, 7]} for n in ["attribution"] + methods} for m in paired}
        k["completeness"]["random"] = {"k": None, "ci": [40, None]}
        return {"model": "m", "paired_vs_attribution": paired, "k_at_0.8_heldout": k}
    assert verdicts.faithfulness(res([[True] * 5, [True] * 5]))["verdict"] == verdicts.REPRODUCED
    assert verdicts.faithfulness(res([[True] * 5, [False] * 5]))["verdict"] == verdicts.PARTLY
    st = verdicts.faithfulness(res([[True] * 2 + [False] * 3, [False] * 5]))
    assert st["verdict"] == verdicts.NOT and ">all" in st["finding"]
