"""KnowledgeBase: ingest, re-upload, delete, bad input and bot isolation, on SQLite and PostgreSQL."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from bot.components import Components
from bot.core.errors import NotFound
from bot.core.store.models import Chunk, Document
from retrieval.embedder import HashingEmbedder

REPO = Path(__file__).resolve().parent.parent
SAMPLE_FAQ = REPO / "samples" / "faq"


def make_components(settings, **parts) -> Components:
    return Components(settings, parts={"embedder": HashingEmbedder(dim=128), **parts})


def counts(db) -> tuple[int, int]:
    with db.session() as s:
        return (
            s.scalar(select(func.count(Document.id))),
            s.scalar(select(func.count(Chunk.id))),
        )


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def comps(settings):
    return make_components(settings)


def test_sample_faq_ingests_and_answers(comps):
    report = comps.knowledge.ingest("default", [SAMPLE_FAQ])
    assert report.errors == []
    assert report.chunks >= 30, "44 FAQ entries, one chunk each"
    hits = comps.retriever().search("How long does a refund take?", k=5)
    assert hits, "a sample-FAQ question finds passages"
    assert any("refund" in h.text.lower() for h in hits[:3])
    assert all(0.0 <= h.confidence <= 1.0 for h in hits)


def test_reupload_replaces_and_unchanged_is_skipped(comps, tmp_path):
    doc = write(tmp_path / "shipping.md", "# Shipping\n\n## How fast?\n\nWe ship in 2 days.\n")
    first = comps.knowledge.ingest("default", [doc])
    assert first.added == ["shipping.md"]
    n_docs, n_chunks = counts(comps.db)

    again = comps.knowledge.ingest("default", [doc])
    assert again.unchanged == ["shipping.md"] and again.chunks == 0
    assert counts(comps.db) == (n_docs, n_chunks)

    write(doc, "# Shipping\n\n## How fast?\n\nWe ship in 5 days by sea freight.\n")
    changed = comps.knowledge.ingest("default", [doc])
    assert changed.replaced == ["shipping.md"]
    assert counts(comps.db)[0] == n_docs, "no duplicate document"
    hits = comps.retriever().search("sea freight shipping days", k=10)
    texts = " ".join(h.text for h in hits)
    assert "5 days" in texts and "2 days" not in texts, "old chunks are gone from the index"


def test_delete_removes_vectors_and_lexical_entries(comps, tmp_path):
    a = write(tmp_path / "a.md", "# Gift cards\n\nGift cards never expire and work online.\n")
    b = write(tmp_path / "b.md", "# Warranty\n\nTents carry a lifetime warranty.\n")
    comps.knowledge.ingest("default", [a, b])
    assert {h.doc_id for h in comps.retriever().search("gift cards expire", k=5)} >= {"a.md"}
    comps.knowledge.delete("default", "a.md")
    snap = comps.live("default").get()
    assert all(info.doc_id != "a.md" for info in snap.catalog.values())
    assert len(snap.dense) == len(snap.catalog)
    hits = comps.retriever().search("gift cards expire", k=5)
    assert all(h.doc_id != "a.md" for h in hits)
    with pytest.raises(NotFound):
        comps.knowledge.delete("default", "a.md")


@pytest.mark.parametrize(
    "name, data",
    [
        ("notes.exe", b"MZ\x90\x00"),
        ("empty.md", b""),
        ("broken.pdf", b"%PDF-1.4\nthis is not a pdf body"),
        ("broken.docx", b"PK\x03\x04 not really a zip"),
        ("latin.txt", "caf\xe9 cr\xe8me".encode("utf-16")),
    ],
)
def test_bad_file_is_reported_by_name_and_loses_nothing(comps, tmp_path, name, data):
    good = write(tmp_path / "good.md", "# Returns\n\nReturns are free within 30 days.\n")
    comps.knowledge.ingest("default", [good])
    before = counts(comps.db)
    version = comps.snapshots.latest_version("default")
    bad = tmp_path / name
    bad.write_bytes(data)
    report = comps.knowledge.ingest("default", [bad])
    if report.errors:  # some encodings are decodable; then the file must simply be ingested once
        assert name in report.errors[0]
        assert counts(comps.db) == before
        assert comps.snapshots.latest_version("default") == version
    hits = comps.retriever().search("returns free within 30 days", k=3)
    assert hits and hits[0].doc_id == "good.md"


def test_oversized_file_is_refused(settings, tmp_path):
    settings.ingest.max_file_mb = 0.001
    comps = make_components(settings)
    big = write(tmp_path / "big.txt", "word " * 2000)
    report = comps.knowledge.ingest("default", [big])
    assert report.errors and "big.txt" in report.errors[0]
    assert counts(comps.db) == (0, 0)


def test_bots_are_isolated(comps, tmp_path):
    a = write(tmp_path / "alpha.md", "# Alpha\n\nThe alpha product ships with a blue charger.\n")
    b = write(tmp_path / "beta.md", "# Beta\n\nThe beta product ships with a red charger.\n")
    comps.knowledge.ingest("shop-a", [a])
    comps.knowledge.ingest("shop-b", [b])
    hits_a = comps.retriever("shop-a").search("charger colour", k=10)
    hits_b = comps.retriever("shop-b").search("charger colour", k=10)
    assert {h.doc_id for h in hits_a} == {"alpha.md"}
    assert {h.doc_id for h in hits_b} == {"beta.md"}
    assert [d["id"] for d in comps.knowledge.documents("shop-a")] == ["alpha.md"]


def test_reindex_rebuilds_from_database(settings, tmp_path):
    comps = make_components(settings)
    comps.knowledge.ingest("default", [SAMPLE_FAQ])
    v1 = comps.snapshots.latest_version("default")
    # Another embedder: every chunk is re-embedded and the index rebuilt from the rows.
    other = make_components(settings, embedder=HashingEmbedder(dim=64))
    v2 = other.knowledge.reindex("default")
    assert v2 > v1
    snap = other.snapshots.load("default")
    assert len(snap.dense) == counts(other.db)[1]
    vec = HashingEmbedder(dim=64).embed(["refund"])
    assert vec.shape == (1, 64)
    scores, ids = snap.dense.search(vec, 3)
    assert np.all(ids[0] >= 0)


def test_postgres_store(pg_database, settings, tmp_path):
    comps = make_components(settings, db=pg_database)
    report = comps.knowledge.ingest("default", [SAMPLE_FAQ])
    assert not report.errors and report.chunks >= 30
    again = comps.knowledge.ingest("default", [SAMPLE_FAQ])
    assert len(again.unchanged) == len(report.added)
    docs, chunks = counts(pg_database)
    assert docs == len(report.added) and chunks >= docs
    hits = comps.retriever().search("How long does a refund take?", k=3)
    assert hits


def test_row_removed_from_csv_leaves_the_knowledge_base(comps, tmp_path):
    faq = write(
        tmp_path / "faq.csv",
        "question,answer\nDo you ship abroad?,Yes to 40 countries.\nCan I pay by cheque?,No.\n",
    )
    first = comps.knowledge.ingest("default", [faq])
    assert len(first.added) == 2
    write(faq, "question,answer\nDo you ship abroad?,Yes to 40 countries.\n")
    second = comps.knowledge.ingest("default", [faq])
    assert second.removed == 1 and len(second.unchanged) == 1
    assert counts(comps.db)[0] == 1
    hits = comps.retriever().search("pay by cheque", k=5)
    assert all("cheque" not in h.text for h in hits)
