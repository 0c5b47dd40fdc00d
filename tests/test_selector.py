"""The learned selector: loading checks, feature layout, and selection by a hand-set network."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bot.core.errors import ConfigError
from bot.mlp_selector import BUNDLED, FEATURE_VERSION, N_SCALAR, LearnedSelector, features
from retrieval.embedder import HashingEmbedder
from retrieval.types import Hit

DIM = 64


def hit(i: int, text: str, entity: str = "Acme", doc_type: str = "review") -> Hit:
    return Hit(chunk_id=i, doc_id=f"d{i}", title=entity, text=text, score=1.0 - i / 10, confidence=0.5,
               metadata={"entity_name": entity, "doc_type": doc_type})


def write_selector(path, embedder, threshold=0.5, k=10):
    """A network whose output is sigmoid(10 * (cos - 0.5)): it keeps passages with cos >= 0.5."""
    n_in = 2 * DIM + N_SCALAR
    w1 = np.zeros((n_in, 2), np.float32)
    w1[2 * DIM + 0, 0] = 1.0  # the cosine feature -> hidden unit 0
    np.savez(
        path, w1=w1, b1=np.zeros(2, np.float32), w2=np.array([10.0, 0.0], np.float32), b2=np.float32(-5.0),
        meta=np.array(json.dumps({"feature_version": FEATURE_VERSION, "embedder": embedder.model_id,
                                  "threshold": threshold, "k": k})),
    )
    return path


def test_features_layout():
    emb = HashingEmbedder(DIM)
    hits = [hit(0, "free parking at the hotel"), hit(1, "breakfast is served", entity="Other", doc_type="faq")]
    q = emb.embed(["is parking free"])[0]
    v = emb.embed([h.text for h in hits])
    x = features(q, v, hits, k=10)
    assert x.shape == (2, 2 * DIM + N_SCALAR) and x.dtype == np.float32
    cos = v @ q
    np.testing.assert_allclose(x[:, 2 * DIM], cos, rtol=1e-6)
    np.testing.assert_allclose(x[:, 2 * DIM + 2], [0.0, 0.1])  # rank / k
    assert list(x[:, 2 * DIM + 4]) == [0.0, 1.0]  # is FAQ
    assert list(x[:, 2 * DIM + 5]) == [1.0, 0.0]  # same entity as the top hit


def test_selects_by_probability_and_keeps_retriever_order(tmp_path):
    emb = HashingEmbedder(DIM)
    sel = LearnedSelector.load(str(write_selector(tmp_path / "s.npz", emb)), emb)
    hits = [hit(0, "the pool opens at nine"), hit(1, "parking is free for guests"),
            hit(2, "guests said parking is free and easy"), hit(3, "the staff were friendly")]
    chosen = sel.select("parking is free for guests", hits, 4)
    assert [h.chunk_id for h in chosen.passages] == [1, 2] and chosen.needs_knowledge is None
    p = sel.probabilities("parking is free for guests", hits)
    assert p[1] > 0.99 and p[0] < 0.5 and p[3] < 0.5
    assert [h.chunk_id for h in sel.select("parking is free for guests", hits, 1).passages] == [1]
    # nothing above the threshold: still the best one, so an answer is never groundless
    assert [h.chunk_id for h in sel.select("zebra", hits[:1], 4).passages] == [0]
    assert sel.select("anything", [], 4).passages == []


def test_load_refuses_another_embedder_and_bad_files(tmp_path):
    path = write_selector(tmp_path / "s.npz", HashingEmbedder(DIM))
    with pytest.raises(ConfigError, match="trained on embedder 'hashing-v1-64'"):
        LearnedSelector.load(str(path), HashingEmbedder(128))
    with pytest.raises(ConfigError, match="cannot read"):
        LearnedSelector.load(str(tmp_path / "missing.npz"), HashingEmbedder(DIM))


def test_bundled_selector_is_readable():
    path = BUNDLED["dstc11"]
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        assert data["w1"].shape[0] == 2 * 384 + N_SCALAR
    assert meta["feature_version"] == FEATURE_VERSION and 0 < meta["threshold"] < 1


def test_auto_uses_the_bundled_selector_only_for_its_embedder(tmp_path):
    from bot.core.settings import DialogueSettings
    from bot.selection import RuleSelector, build_selector

    def build(name, emb):
        return build_selector(DialogueSettings(selector=name), emb)

    assert isinstance(build("", HashingEmbedder(DIM)), RuleSelector)
    assert isinstance(build("auto", HashingEmbedder(DIM)), RuleSelector)  # trained for MiniLM, not this one
    assert isinstance(build("auto", None), RuleSelector)
    path = write_selector(tmp_path / "s.npz", HashingEmbedder(DIM))
    assert isinstance(build(str(path), HashingEmbedder(DIM)), LearnedSelector)
    with pytest.raises(ConfigError):
        build(str(path), HashingEmbedder(32))


def test_stored_vectors_from_the_snapshot_give_the_same_selection(settings, tmp_path):
    from pathlib import Path

    from bot.components import Components
    from retrieval.snapshot import StoredVectors

    emb = HashingEmbedder(DIM)
    comps = Components(settings, parts={"embedder": emb})
    comps.knowledge.ingest("default", [Path(__file__).resolve().parent.parent / "samples" / "faq"],
                           progress=False)
    retriever = comps.retriever("default")
    hits = retriever.search("How long does a refund take?", k=8)
    stored = StoredVectors(comps.live("default").get)
    vecs = stored([h.chunk_id for h in hits])
    # the vectors the knowledge base stored for those chunks (what the selector was trained on)
    from sqlalchemy import select

    from bot.core.store.models import Chunk

    with comps.db.session() as s:
        blobs = dict(s.execute(select(Chunk.id, Chunk.embedding)).all())
    expected = np.vstack([np.frombuffer(blobs[h.chunk_id], dtype=np.float32) for h in hits])
    np.testing.assert_allclose(vecs, expected, atol=1e-6)
    assert stored([10**9]) is None
    sel = LearnedSelector.load(str(write_selector(tmp_path / "s.npz", emb, threshold=0.3)), emb)
    sel.stored_vectors = stored
    q = emb.embed(["How long does a refund take?"])[0]
    np.testing.assert_allclose(sel.probabilities("How long does a refund take?", hits),
                               1 / (1 + np.exp(-(10 * np.maximum(expected @ q, 0) - 5))), atol=1e-5)
