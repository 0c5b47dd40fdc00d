"""Retrieval evaluation: metrics by hand, the content-hash KB cache, queries and dialogues, bad input."""
from __future__ import annotations

import json

import pytest

from bot.core.errors import SupportbotError
from bot.core.settings import Settings
from retrieval.embedder import HashingEmbedder
from bot.eval_kb import evaluate_retrieval, prepare_kb
from retrieval.evaluate import rank_metrics

KB = [
    {"id": "h:0:faq:0", "title": "ALLENBELL", "question": "Is there free parking?",
     "answer": "Yes, parking at the Allenbell is free.", "text": "Is there free parking?\nYes, parking at the Allenbell is free.",
     "metadata": {"entity_name": "ALLENBELL", "domain": "hotel", "doc_type": "faq"}},
    {"id": "h:1:faq:0", "title": "HOBSONS HOUSE", "question": "Is there free parking?",
     "answer": "Parking at Hobsons House costs 5 pounds.", "text": "Is there free parking?\nParking at Hobsons House costs 5 pounds.",
     "metadata": {"entity_name": "HOBSONS HOUSE", "domain": "hotel", "doc_type": "faq"}},
    {"id": "h:0:faq:1", "title": "ALLENBELL", "question": "Are pets allowed?",
     "answer": "No pets at the Allenbell.", "text": "Are pets allowed?\nNo pets at the Allenbell.",
     "metadata": {"entity_name": "ALLENBELL", "domain": "hotel", "doc_type": "faq"}},
    {"id": "h:1:faq:1", "title": "HOBSONS HOUSE", "question": "Are pets allowed?",
     "answer": "Dogs are welcome at Hobsons House.", "text": "Are pets allowed?\nDogs are welcome at Hobsons House.",
     "metadata": {"entity_name": "HOBSONS HOUSE", "domain": "hotel", "doc_type": "faq"}},
]


class CountingEmbedder(HashingEmbedder):
    def __init__(self):
        super().__init__(128)
        self.texts = 0

    def embed(self, texts):
        self.texts += len(texts)
        return super().embed(texts)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def kb_file(tmp_path):
    return write_jsonl(tmp_path / "kb.jsonl", KB)


@pytest.fixture()
def settings(tmp_path):
    return Settings(data_dir=tmp_path / "var")


def test_rank_metrics_by_hand():
    m = rank_metrics([0, 2, None, 7])
    assert m["n"] == 4
    assert m["recall@1"] == 0.25 and m["recall@5"] == 0.5 and m["recall@10"] == 0.75
    assert m["mrr"] == pytest.approx(round((1 + 1 / 3 + 1 / 8) / 4, 4))
    assert rank_metrics([]) == {"recall@1": 0.0, "recall@5": 0.0, "recall@10": 0.0, "mrr": 0.0, "n": 0}


def test_second_run_reuses_the_ingested_kb(kb_file, settings):
    emb = CountingEmbedder()
    first = prepare_kb(kb_file, settings, progress=False, embedder=emb)
    assert first.ingest["cached"] is False and first.ingest["documents"] == 4 and emb.texts == 4
    second = prepare_kb(kb_file, settings, progress=False, embedder=emb)
    assert second.ingest["cached"] is True and emb.texts == 4  # nothing embedded again
    assert second.data_dir == first.data_dir
    # A changed file is a different knowledge base: ingested into its own dir.
    write_jsonl(kb_file, KB[:3])
    third = prepare_kb(kb_file, settings, progress=False, embedder=emb)
    assert third.data_dir != first.data_dir and third.ingest["documents"] == 3


def test_queries_file(kb_file, settings, tmp_path):
    queries = write_jsonl(tmp_path / "q.jsonl", [
        {"query": "Are pets allowed at the Allenbell?", "gold_doc_ids": ["h:0:faq:1"]},
        {"query": "free parking at Hobsons House?", "gold_doc_ids": ["h:1:faq:0"]},
        {"query": "Is there a spa?", "gold_doc_ids": ["h:9:faq:9"]},  # gold not in the KB: a miss
    ])
    kb = prepare_kb(kb_file, settings, progress=False, embedder=HashingEmbedder(128))
    r = evaluate_retrieval(kb_file, queries_path=queries, settings=settings, progress=False, prepared=kb)
    assert r["n"] == 3
    assert r["recall@1"] == pytest.approx(round(2 / 3, 4)) and r["recall@10"] == pytest.approx(round(2 / 3, 4))
    for baseline in ("dense", "bm25"):
        assert r[baseline]["n"] == 3 and 0 <= r[baseline]["recall@10"] <= r["recall@10"]
    assert r["latency_ms_p95"] >= r["latency_ms_p50"] > 0
    assert r["chunks"] == 4 and r["ingest_cached"] is False
    assert json.loads(json.dumps(r)) == r  # one JSON object


def test_dialogues_use_the_conversation_and_only_target_turns(kb_file, settings, tmp_path):
    dialogues = write_jsonl(tmp_path / "d.jsonl", [
        {"id": "1", "dialogue": "a", "target": False,
         "turns": [{"role": "user", "text": "I need a hotel in the north."}]},
        {"id": "2", "dialogue": "a", "target": True, "gold_doc_ids": ["h:1:faq:1"],
         "turns": [{"role": "user", "text": "I need a hotel in the north."},
                   {"role": "agent", "text": "Hobsons House is in the north."},
                   {"role": "user", "text": "Are pets allowed?"}]},
        {"id": "3", "dialogue": "b", "target": True, "gold_doc_ids": ["h:0:faq:0"],
         "turns": [{"role": "user", "text": "Tell me about the Allenbell."},
                   {"role": "agent", "text": "It is a guesthouse in the east."},
                   {"role": "user", "text": "Is there free parking?"}]},
    ])
    kb = prepare_kb(kb_file, settings, progress=False, embedder=HashingEmbedder(128))
    r = evaluate_retrieval(kb_file, dialogues_path=dialogues, settings=settings, progress=False, prepared=kb)
    assert r["n"] == 2
    # The same question has one answer per hotel: only the conversation tells them apart.
    assert r["recall@1"] == 1.0 and r["mrr"] == 1.0
    assert r["dense"]["query"] == "last 3 turns + query"


def test_bad_input_is_a_clear_error(kb_file, settings, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "ok", "gold_doc_ids": []}\n{not json\n')
    kb = prepare_kb(kb_file, settings, progress=False, embedder=HashingEmbedder(128))
    with pytest.raises(SupportbotError, match="bad.jsonl:2: not JSON"):
        evaluate_retrieval(kb_file, queries_path=bad, settings=settings, progress=False, prepared=kb)
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{"question": "no query key"}])
    with pytest.raises(SupportbotError, match="wrong.jsonl:1: expected"):
        evaluate_retrieval(kb_file, queries_path=wrong, settings=settings, progress=False, prepared=kb)
    with pytest.raises(SupportbotError, match="exactly one"):
        evaluate_retrieval(kb_file, queries_path=wrong, dialogues_path=wrong, settings=settings, prepared=kb)
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(SupportbotError, match="no queries"):
        evaluate_retrieval(kb_file, queries_path=empty, settings=settings, progress=False, prepared=kb)
    with pytest.raises(SupportbotError, match="missing.jsonl"):
        prepare_kb(tmp_path / "missing.jsonl", settings, progress=False, embedder=HashingEmbedder(128))
