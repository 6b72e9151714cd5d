"""The book's status table is generated from book/results, and verdict rules apply as stated."""
import pytest

from headflow import index, models, verdicts

BOOK = models.REPO_ROOT / "book"


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


def test_where_heads_rule_covers_every_cutoff():
    def res(late):
        by_cut = {str(c): {"late_share": v} for c, v in late.items()}
        return {"model": "m", "by_organism": {"m": {"by_cutoff": by_cut, "late_from_layer": 4,
                                                      "share_per_layer": [0.1] * 8}}}
    assert verdicts.where_heads_status(res({0.05: 0.7, 0.1: 0.6}))["verdict"] == verdicts.REPRODUCED
    assert verdicts.where_heads_status(res({0.05: 0.7, 0.1: 0.3}))["verdict"] == verdicts.PARTLY
    assert verdicts.where_heads_status(res({0.05: 0.45, 0.1: 0.4}))["verdict"] == verdicts.PARTLY
    assert verdicts.where_heads_status(res({0.05: 0.2, 0.1: 0.5}))["verdict"] == verdicts.NOT


def test_faithfulness_rule_counts_never_reaching_as_all_heads_plus_one():
    res = {"model": "m", "n_heads_total": 64,
           "k_at_0.8": {"faithfulness": {"attribution": 8, "single_head": None},
                        "completeness": {"attribution": None, "single_head": 30}}}
    st = verdicts.faithfulness(res)
    assert st["verdict"] == verdicts.PARTLY and ">64" in st["finding"]
