"""The committed book (``book/*.ipynb``, ``book/_provenance``) is what one clean build made.

These read the files in git, nothing is executed: a notebook edited without rebuilding the book,
a chapter re-run alone at another commit, or a build from a modified tree fails here."""
import json

import pytest

from headflow.book import audit
from headflow.book import runner as run
from headflow.util.paths import REPO_ROOT

BOOK = REPO_ROOT / "book"
CHAPTERS = [p.stem for p in run.notebooks()]


@pytest.mark.parametrize("name", CHAPTERS)
def test_committed_chapter_keeps_no_warning_or_stderr_and_shows_its_source_code(name):
    executed = BOOK / f"{name}.ipynb"
    assert executed.exists(), f"{executed} is missing: run `make book`"
    assert audit.kept_noise(executed) == []
    assert audit.stale_code(executed, REPO_ROOT / "notebooks" / f"{name}.ipynb") == []


def test_committed_book_ran_at_one_clean_commit_computing_nothing_twice():
    records = [json.loads((BOOK / "_provenance" / f"{name}.json").read_text()) for name in CHAPTERS]
    assert {r["profile"] for r in records} == {"default"}
    assert audit.provenance_split(records, require_clean=True) == []
    assert audit.repeated_units(records) == []
