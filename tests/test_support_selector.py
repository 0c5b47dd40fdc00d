"""The bundled default knowledge selector (``support``, bot/selectors/support-minilm-cross): the
folder is complete and says what it was fitted and tuned on; with the real bundled MiniLM it ranks
an FAQ entry that answers a visitor's question above unrelated ones, selects it, and judges
"thanks, bye" as needing no knowledge."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from bot.cross_selector import BUNDLED_CROSS, DETECTOR, CrossSelector, detect_text, pool_kind, read_meta
from retrieval.types import Hit

PATH = BUNDLED_CROSS["support"]
SAMPLE_CSV = Path(__file__).resolve().parent.parent / "samples" / "faq" / "faq.csv"


def test_bundled_support_selector_is_complete():
    assert PATH.name == "support-minilm-cross" and "dstc11-cross" in BUNDLED_CROSS
    meta = read_meta(PATH)
    assert meta["kind"] == "cross" and meta["base"] == "default"
    assert meta["embedder"].startswith("all-MiniLM-L6-v2@")
    det = meta["detector"]
    assert det["kind"] == "pair" and "{agent}" in det["template"] and 0 < det["threshold"] < 1
    for key in ("select_threshold", "detect_threshold", "ground_threshold"):
        assert 0 <= meta[key] < 1, key
    assert meta["ground_threshold"] <= meta["select_threshold"]
    # a fusion with the retriever's score and thresholds per pool kind (bot.cross_selector.pool_kind)
    assert set(meta["profiles"]) == {"entity", "flat"}
    for kind, prof in meta["profiles"].items():
        assert 0 <= prof["ground_threshold"] <= prof["select_threshold"] < 1, kind
        assert prof["fusion"]["cross"] > 0 and prof["fusion"]["retriever"] > 0, kind
    assert (PATH / "adapter_config.json").is_file()
    assert (PATH / "adapter_model.safetensors").stat().st_size < 5_000_000  # an adapter, not a model
    assert not (PATH / DETECTOR).exists()  # the detector is the cross-encoder itself
    # held-out parts, for evaluations that report on what was not fitted on
    held = meta["held_out"]
    threads = held["stackfaq_threads"]
    assert 30 <= len(threads) <= 50 and len(set(threads)) == len(threads)
    assert all(isinstance(t, int) and 0 <= t < 125 for t in threads)
    assert set(threads).isdisjoint(meta["tuned_on"]["stackfaq_threads"])
    companies = set(held["faq_companies"])
    fitted = set(meta["fitted_on"]["faq_companies"]) | set(meta["tuned_on"]["faq_companies"])
    assert companies and fitted and companies.isdisjoint(fitted)
    assert meta["mixture"]["fit_selection_instances"] and meta["mixture"]["fit_detection_examples"]


def faq_hits() -> list[Hit]:
    """The sample FAQ's CSV entries as the retriever returns FAQ chunks (question, answer), all
    under one title (one FAQ page, so one entity: every candidate is in the pool as "entity 1")
    and with the same retriever score (a close match: the fused score of a typical top hit), so
    that the order comes from the cross-encoder alone."""
    with open(SAMPLE_CSV, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [Hit(chunk_id=i, doc_id=f"faq.csv#{i}", title="Northwind Outfitters FAQ", text=f"{r['question']}\n{r['answer']}",
                score=1.0, confidence=0.5,
                metadata={"question": r["question"], "answer": r["answer"], "heading": r["question"]})
            for i, r in enumerate(rows)]


@pytest.fixture(scope="module")
def selector():
    return CrossSelector.load(PATH, threads=1)


# (visitor question, the entry that answers it, unrelated entries), tried with the answer first
# and last so that the retriever's order does not give it away.
CASES = [
    ("my tent zip broke, is that covered?", "Is a broken zipper covered by the warranty?",
     ["Do gift cards expire?"]),
    ("is there an expiry date on a gift card I got for my birthday", "Do gift cards expire?",
     ["How do I make a warranty claim?"]),
    ("what cookies does your site set", "Which cookies do you use?", ["Do you repair gear?"]),
]


@pytest.mark.parametrize("question, entry, others", CASES)
def test_ranks_and_selects_the_entry_that_answers(selector, question, entry, others):
    by_question = {h.question: h for h in faq_hits()}
    assert pool_kind(list(by_question.values())) == "flat"
    for order in ([entry, *others], [*others, entry]):  # the answer first, then last
        hits = [by_question[q] for q in order]
        p = selector.probabilities(question, hits)
        assert hits[int(np.argmax(p))].question == entry, dict(zip(order, p.round(3)))
        chosen = selector.select(question, hits, 8)
        assert chosen.needs_knowledge is True
        best = max(zip(chosen.scores, chosen.passages), key=lambda t: t[0])[1]
        assert best.question == entry


def test_thanks_bye_needs_no_knowledge(selector):
    hits = faq_hits()
    assert selector.needs_knowledge("thanks, bye") is False
    assert selector.select("thanks, bye", hits, 8).passages == []
    agent = [{"role": "user", "text": "do gift cards expire"},
             {"role": "agent", "text": "No, our gift cards never expire. Anything else?"}]
    assert selector.needs_knowledge("no that's all, thanks!", agent) is False
    assert selector.needs_knowledge("can I pay for my order with a gift card?") is True
    assert detect_text(agent, "agent said: {agent}") == "agent said: No, our gift cards never expire. Anything else?"
    assert detect_text([], "agent said: {agent}") == "agent said: -"


def test_selector_json_figures_are_recorded():
    meta = json.loads((PATH / "selector.json").read_text())
    held = meta["held_out_figures"]
    assert held["stackfaq_held_out"]["queries"] > 100
    assert "faq_held_out" in held and "latency_50_candidates_1_thread" in meta
