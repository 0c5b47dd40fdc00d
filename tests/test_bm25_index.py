"""BM25 index: ranking, id restriction, normalised scores, save/load round trip."""
from __future__ import annotations

import numpy as np
import pytest

from bot.core.errors import ConfigError
from retrieval.bm25_index import Analyzer, BM25Index

DOCS = {
    101: "Is there free parking? Yes, parking is free for guests.",
    102: "The WiFi is free in all rooms.",
    103: "Pets are not allowed at this property.",
    104: "Breakfast is served from 7 to 10 in the dining room.",
    105: "Parking costs 10 pounds a night.",
}


@pytest.fixture()
def index() -> BM25Index:
    return BM25Index().build(list(DOCS), list(DOCS.values()))


def test_analyzer_stems_and_drops_stopwords():
    assert Analyzer()("The rooms are parked") == ["room", "park"]
    assert Analyzer(stemmer="", stopwords=False)("The rooms") == ["the", "rooms"]


def test_search_ranks_by_term_overlap(index):
    scores, ids = index.search("free parking", k=3)
    assert ids[0] == 101  # both words, twice
    assert set(ids[1:]) == {102, 105}  # one word each
    assert np.all(np.diff(scores) <= 0) and np.all(scores > 0)
    # Stemming: "rooms" in the query matches "room"/"rooms" in documents.
    _, ids = index.search("dining rooms", k=1)
    assert ids[0] == 104


def test_search_restricted_to_allowed_ids(index):
    _, ids = index.search("free parking", k=5, allowed_ids=np.array([102, 105, 999]))
    assert set(ids) <= {102, 105} and 105 in ids
    _, ids = index.search("free parking", k=5, allowed_ids=[])
    assert len(ids) == 0


def test_no_match_returns_empty(index):
    scores, ids = index.search("zebra giraffe", k=5)
    assert len(scores) == len(ids) == 0
    assert index.search("the a of", k=5)[1].size == 0  # only stopwords


def test_normalised_scores_are_in_unit_interval_and_order_preserving(index):
    raw, raw_ids = index.search("free parking pets", k=5)
    norm, norm_ids = index.normalised_search("free parking pets", k=5)
    assert list(raw_ids) == list(norm_ids)
    assert np.all((norm > 0) & (norm <= 1.0 + 1e-6))
    np.testing.assert_allclose(norm / norm[0], raw / raw[0], rtol=1e-5)


def test_save_load_round_trip(index, tmp_path):
    index.save(tmp_path / "lex")
    loaded = BM25Index.load(tmp_path / "lex")
    assert len(loaded) == len(DOCS)
    for q in ["free parking", "pets", "breakfast time"]:
        a, b = index.search(q, 5), loaded.search(q, 5)
        np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
        assert list(a[1]) == list(b[1])
    assert not list((tmp_path / "lex").rglob("*.pkl"))


def test_empty_index_saves_loads_and_searches(tmp_path):
    empty = BM25Index().build([], [])
    assert len(empty.search("anything", 3)[1]) == 0
    empty.save(tmp_path / "e")
    assert len(BM25Index.load(tmp_path / "e")) == 0


def test_text_without_terms_keeps_ids_aligned():
    index = BM25Index().build([1, 2, 3], ["!!!", "parking here", "the"])
    _, ids = index.search("parking", 3)
    assert list(ids) == [2]


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="2 ids for 1 texts"):
        BM25Index().build([1, 2], ["x"])
    with pytest.raises(ValueError, match="unique"):
        BM25Index().build([1, 1], ["x", "y"])
    with pytest.raises(ConfigError, match=str(tmp_path / "missing")):
        BM25Index.load(tmp_path / "missing")
