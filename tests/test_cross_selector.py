"""The cross-encoder selector on a tiny BERT built from a config: pool, scores, thresholds,
ordering, loading (adapter on a base, wrong files) and the dialogue manager's use of it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bot.cross_selector import (
    BUNDLED_CROSS, DETECTOR, META, PAIR_VERSION, CrossSelector, pair_text, pool, read_meta,
)
from bot.core.errors import ConfigError
from retrieval.types import Hit

WORDS = ("is there free parking at the hotel guests said breakfast served pool opens nine staff "
         "were friendly room quiet clean entity review faq acme inn other cafe | : 1 2 3 ? .").split()


def hit(i: int, text: str, entity: str = "Acme Inn", doc_type: str = "review", confidence=0.5) -> Hit:
    return Hit(chunk_id=i, doc_id=f"d{i}", title=entity, text=text, score=1.0 - i / 10,
               confidence=confidence, metadata={"entity_name": entity, "doc_type": doc_type})


HITS = [hit(0, "is there free parking ?", doc_type="faq"), hit(1, "guests said parking is free ."),
        hit(2, "the pool opens at nine .", entity="Other Cafe"), hit(3, "the staff were friendly .", entity="Third"),
        hit(4, "the room was quiet .")]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A 2-layer BERT (hidden 32) with random weights and a word-level vocabulary, saved as a folder."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-bert")
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tok = BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, num_labels=1)
    BertForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_cross(path, base, *, bias=0.7, detect=0.5, select=0.5, k=10, entities=2, embedder="hashing-v1-64"):
    """A LoRA adapter for ``base`` (random low-rank updates, classifier bias set to ``bias``) and its
    selector.json."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, task_type="SEQ_CLS", init_lora_weights=False,
                                             target_modules=["query", "value"], modules_to_save=["classifier"]))
    with torch.no_grad():
        model.base_model.model.classifier.modules_to_save["default"].bias.fill_(bias)
    model.save_pretrained(path)
    (path / META).write_text(json.dumps({
        "kind": "cross", "pair_version": PAIR_VERSION, "base": str(base), "embedder": embedder, "k": k,
        "entities": entities, "max_length": 64, "select_threshold": select, "detect_threshold": detect}))
    return path


def test_pool_keeps_the_first_entities_within_k():
    assert pool(HITS, k=10, entities=2) == [(0, 0), (1, 0), (2, 1), (4, 0)]
    assert pool(HITS, k=3, entities=1) == [(0, 0), (1, 0)]
    assert pool([], k=10, entities=2) == []
    assert pair_text(HITS[2], 1) == "entity 2: Other Cafe | review | the pool opens at nine ."


def test_scores_are_the_models_logits_on_the_pool(tiny_base, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    sel = CrossSelector.load(write_cross(tmp_path / "s", tiny_base))
    p = sel.probabilities("is there free parking ?", HITS)
    assert p.shape == (5,) and p[3] == 0.0  # the third entity is outside the pool
    # the same pairs through the base model with the adapter's weights, one pair at a time
    tok = AutoTokenizer.from_pretrained(tiny_base)
    texts = [pair_text(HITS[i], r) for i, r in pool(HITS, 10, 2)]
    with torch.no_grad():
        want = [float(sel.model(**tok("is there free parking ?", t, return_tensors="pt")).logits[0, 0]) for t in texts]
    np.testing.assert_allclose(p[[0, 1, 2, 4]], 1 / (1 + np.exp(-np.array(want))), atol=1e-5)
    # the adapter is applied: a base without it scores differently
    base = AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=1).eval()
    with torch.no_grad():
        plain = float(base(**tok("is there free parking ?", texts[0], return_tensors="pt")).logits[0, 0])
    assert abs(plain - want[0]) > 1e-3


def test_adapter_head_moves_every_score(tiny_base, tmp_path):
    low = CrossSelector.load(write_cross(tmp_path / "low", tiny_base, bias=-8.0))
    high = CrossSelector.load(write_cross(tmp_path / "high", tiny_base, bias=8.0))
    q = "is the room quiet ?"
    assert low.probabilities(q, HITS)[[0, 1, 2, 4]].max() < 0.05
    assert high.probabilities(q, HITS)[[0, 1, 2, 4]].min() > 0.95
    # detection: nothing selected when no passage is likely, the pool when all are
    assert low.select(q, HITS, 8).passages == [] and low.select(q, HITS, 8).needs_knowledge is False
    chosen = high.select(q, HITS, 8)
    assert [h.chunk_id for h in chosen.passages] == [0, 1, 2, 4] and chosen.needs_knowledge is True


def test_choose_applies_thresholds_cap_and_retriever_order(tiny_base, tmp_path):
    sel = CrossSelector.load(write_cross(tmp_path / "s", tiny_base, detect=0.6, select=0.3))
    p = np.array([0.2, 0.9, 0.35, 0.0, 0.7], np.float32)
    assert sel.choose(p, max_sources=8) == [1, 2, 4]  # >= 0.3, in the retriever's order
    assert sel.choose(p, max_sources=2) == [1, 4]  # the two most likely, in the retriever's order
    assert sel.choose(np.array([0.55, 0.4], np.float32), 8) == []  # best below the detect threshold
    sel.select_threshold = 0.95
    assert sel.choose(p, 8) == [1]  # detected, none above the select threshold: the best one
    assert sel.choose(np.zeros(0, np.float32), 8) == []
    assert sel.select("anything", [], 8).passages == []


def test_detector_decides_whether_passages_are_scored(tiny_base, tmp_path):
    from retrieval.embedder import HashingEmbedder

    emb = HashingEmbedder(64)
    q = "is the room quiet ?"
    # a detector that says "needs no knowledge" to everything: nothing, however likely the passages
    never = write_cross(tmp_path / "never", tiny_base, bias=8.0, embedder=emb.model_id)
    np.savez(never / DETECTOR, w=np.zeros(64, np.float32), b=np.float32(-5.0), threshold=np.float32(0.5))
    sel = CrossSelector.load(never, embedder=emb)
    assert sel.needs_knowledge(q) is False and sel.select(q, HITS, 8).passages == []
    # one that says "needs knowledge": the best passage even when none reaches the thresholds
    always = write_cross(tmp_path / "always", tiny_base, bias=-8.0, embedder=emb.model_id)
    w = emb.embed([q])[0] * 10.0  # P(knowledge) = sigmoid(10 cos - 5): high for q itself only
    np.savez(always / DETECTOR, w=w, b=np.float32(-5.0), threshold=np.float32(0.5))
    sel = CrossSelector.load(always, embedder=emb)
    assert sel.needs_knowledge(q) is True and sel.needs_knowledge("zebra crossing") is False
    p = sel.probabilities(q, HITS)
    assert [h.chunk_id for h in sel.select(q, HITS, 8).passages] == [int(np.argmax(p))]
    with pytest.raises(ConfigError, match="trained on embedder"):
        CrossSelector.load(always, embedder=HashingEmbedder(32))
    with pytest.raises(ConfigError, match="trained on embedder"):
        CrossSelector.load(always)


def test_loading_errors_name_the_problem(tiny_base, tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        CrossSelector.load(tmp_path / "missing")
    good = write_cross(tmp_path / "s", tiny_base)
    meta = json.loads((good / META).read_text())
    (good / META).write_text(json.dumps({**meta, "kind": "mlp"}))
    with pytest.raises(ConfigError, match="not a cross selector"):
        CrossSelector.load(good)
    (good / META).write_text(json.dumps({k: v for k, v in meta.items() if k != "detect_threshold"}))
    with pytest.raises(ConfigError, match="missing detect_threshold"):
        CrossSelector.load(good)
    (good / META).write_text(json.dumps({**meta, "base": str(tmp_path / "nowhere")}))
    with pytest.raises(ConfigError, match="no config.json"):
        CrossSelector.load(good)
    (good / META).write_text(json.dumps(meta))
    (good / "adapter_config.json").unlink()
    with pytest.raises(ConfigError, match="no adapter_config.json"):
        CrossSelector.load(good)


def test_build_selector_dispatches_folders_and_auto_checks_the_embedder(tiny_base, tmp_path, minilm):
    from bot.core.settings import DialogueSettings
    from bot.mlp_selector import BUNDLED, LearnedSelector
    from bot.selection import PoolKindSelector, RuleSelector, build_selector
    from retrieval.embedder import HashingEmbedder

    path = write_cross(tmp_path / "s", tiny_base, embedder="hashing-v1-64")
    assert isinstance(build_selector(DialogueSettings(selector=str(path)), HashingEmbedder(64)), CrossSelector)
    with pytest.raises(ConfigError, match="trained on embedder"):
        np.savez(path / DETECTOR, w=np.zeros(64, np.float32), b=np.float32(0.0), threshold=np.float32(0.5))
        build_selector(DialogueSettings(selector=str(path)), HashingEmbedder(32))
    # the bundled MLP is for MiniLM: with another embedder, "auto" is the rule
    assert isinstance(build_selector(DialogueSettings(selector="auto"), HashingEmbedder(64)), RuleSelector)
    # For the MiniLM embedder, "auto" is a cross-encoder per kind of knowledge base: the
    # mixture-trained support one (pair detector) for entity pools, the DSTC11 one for flat pools
    # (the FAQ matcher decides where the top hit is an FAQ entry); the MLP stays one name away.
    # The real embedder, not a stand-in with its model id: the selectors are shared per process
    # by that id (CrossSelector.shared), so a stand-in would be every later test's embedder.
    with np.load(BUNDLED["dstc11"]) as data:
        assert minilm.model_id == json.loads(str(data["meta"]))["embedder"]
    auto = build_selector(DialogueSettings(selector="auto"), minilm)
    assert isinstance(auto, PoolKindSelector) and auto.judges and auto.pool == 50
    entity, flat = auto.by_kind["entity"], auto.by_kind["flat"]
    assert entity.pair_detector is not None and flat.detector is not None
    assert entity is build_selector(DialogueSettings(selector="support"), minilm), "one copy of the weights"
    assert isinstance(build_selector(DialogueSettings(selector="dstc11"), minilm), LearnedSelector)


def test_pool_kind_selector_routes_each_turn_by_the_pool_kind():
    from bot.selection import PoolKindSelector, Selection

    class Named:
        judges = True

        def __init__(self, name, pool):
            self.name, self.pool, self.seen = name, pool, []

        def select(self, message, hits, k, turns=()):
            self.seen.append(message)
            return Selection(list(hits)[:1], True, [0.9])

    entity, flat = Named("entity", 50), Named("flat", 30)
    sel = PoolKindSelector({"entity": entity, "flat": flat})
    assert sel.pool == 50 and sel.judges
    hotel = Hit(1, "h#1", "Parking", "Parking is free.", 1.0, 0.8, metadata={"entity_name": "Alpha Hotel"})
    faq = Hit(2, "faq#1", "Returns", "Returns within 30 days.", 1.0, 0.8)
    assert sel.select("is parking free?", [hotel], 3).passages == [hotel]
    assert sel.select("can I return it?", [faq], 3).passages == [faq]
    assert entity.seen == ["is parking free?"] and flat.seen == ["can I return it?"]
    with pytest.raises(ValueError, match="'entity' and a 'flat'"):
        PoolKindSelector({"flat": flat})


def test_bundled_cross_selector_is_complete():
    path = BUNDLED_CROSS["dstc11-cross"]
    meta = read_meta(path)
    assert meta["base"] == "default" and meta["embedder"].startswith("all-MiniLM-L6-v2@")
    assert 0 < meta["detect_threshold"] < 1 and 0 < meta["select_threshold"] < 1
    assert (path / "adapter_config.json").is_file()
    with np.load(path / DETECTOR) as data:
        assert data["w"].shape == (384,) and 0 < float(data["threshold"]) < 1
    assert (path / "adapter_model.safetensors").stat().st_size < 5_000_000  # an adapter, not a model


@pytest.mark.parametrize("detect, answer_at, clarify_at, action, n_sources", [
    (0.0, 1.1, 0.0, "answer", 3),  # retrieval alone would ask back; the selector selects: answer
    (1.01, 0.0, 0.0, "clarify", 0),  # retrieval alone would answer; the selector selects nothing
    (0.0, 1.1, 1.1, "handoff", 0),  # below clarify_threshold nothing is close: a hand-off, whatever it selects
    (1.01, 1.1, 1.1, "handoff", 0),  # retrieval hands off and the selector selects nothing: still a hand-off
])
def test_pipeline_lets_the_selector_decide(tiny_base, tmp_path, settings, detect, answer_at, clarify_at,
                                                   action, n_sources):
    from pathlib import Path

    from bot.components import Components
    from retrieval.embedder import HashingEmbedder

    comps = Components(settings, parts={"embedder": HashingEmbedder(64)})
    comps.knowledge.ingest("default", [Path(__file__).resolve().parent.parent / "samples" / "faq"], progress=False)
    path = write_cross(tmp_path / "s", tiny_base, detect=detect, select=0.0, k=25, entities=3)
    settings.dialogue = settings.dialogue.model_copy(update={
        "selector": str(path), "answer_threshold": answer_at, "clarify_threshold": clarify_at,
        "max_sources": 3, "candidates": 4})
    pipeline = comps.pipeline("default", with_generator=False)
    assert isinstance(pipeline.selector, CrossSelector)
    hits = pipeline.retrieve("How long does a refund take?", [])
    assert len(hits) > 4  # the selector's pool (k 25), not the policy's 4 candidates
    plan = pipeline.plan("How long does a refund take?", hits)
    assert plan.decision.action == action and len(plan.sources) == n_sources
    # a request for a person is handed off whatever the selector says
    assert pipeline.plan("can I talk to a human please", hits).decision.action == "handoff"
