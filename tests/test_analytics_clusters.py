"""Unanswered questions are grouped by meaning (bot/analytics.py): the bundled MiniLM embedder and
agglomerative clustering under ``CLUSTER_DISTANCE``, scored by purity against known groups.

Purity (the share of questions in their group's most common true intent) alone is maximal with one
group per question, so the inverse (the share of each intent's questions in its most common
group) is asserted too.
"""
from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

import pytest

from bot.analytics import CLUSTER_DISTANCE, Analytics, Filters, purity
from bot.core.store import Database
from bot.core.store.models import Conversation, Message

pytestmark = pytest.mark.slow
STACKFAQ = Path(__file__).resolve().parents[2] / "shared" / "data" / "stackfaq" / "queries_dev.jsonl"

# Paraphrases written for this test, for fictional companies: (intent, question).
PARAPHRASES = [
    ("tandem-bikes-rental", "Can I rent a tandem bike from Pedalo Rentals?"),
    ("tandem-bikes-rental", "Do you have two-person bicycles for hire?"),
    ("tandem-bikes-rental", "Is it possible to hire a tandem for the weekend?"),
    ("tandem-bikes-rental", "Tandem bicycle rental available?"),
    ("helmet-included", "Does the bike rental come with a helmet?"),
    ("helmet-included", "Are helmets included when I rent a bike?"),
    ("helmet-included", "Do I need to bring my own helmet or do you provide one?"),
    ("helmet-included", "helmet provided with the rental?"),
    ("glasses-insurance", "Does Lumen Optics cover broken glasses under warranty?"),
    ("glasses-insurance", "My spectacles snapped, is the damage covered?"),
    ("glasses-insurance", "Will you repair my glasses for free if the frame breaks?"),
    ("glasses-insurance", "Is accidental breakage of eyeglasses included in the warranty?"),
    ("eye-test-booking", "How do I book an eye test?"),
    ("eye-test-booking", "Can I make an appointment for an eye examination online?"),
    ("eye-test-booking", "I want to schedule a sight test, how?"),
    ("eye-test-booking", "Where can I reserve a slot for an eye exam?"),
    ("sourdough-gluten", "Is the Crumb & Co sourdough gluten free?"),
    ("sourdough-gluten", "Does your sourdough bread contain gluten?"),
    ("sourdough-gluten", "Can people with coeliac disease eat your sourdough?"),
    ("sourdough-gluten", "gluten in the sourdough loaf?"),
    ("cake-delivery", "Do you deliver birthday cakes?"),
    ("cake-delivery", "Can you bring a cake to my house for a party?"),
    ("cake-delivery", "Is home delivery available for celebration cakes?"),
    ("cake-delivery", "Could a birthday cake be delivered to my address?"),
    ("kennel-vaccination", "Which vaccinations does my dog need to stay at Pawsome Kennels?"),
    ("kennel-vaccination", "What jabs are required before boarding my dog?"),
    ("kennel-vaccination", "Does my puppy have to be vaccinated to board with you?"),
    ("kennel-vaccination", "vaccines needed for dog boarding?"),
    ("cat-boarding-price", "How much does it cost to board a cat per night?"),
    ("cat-boarding-price", "What is your nightly price for cat boarding?"),
    ("cat-boarding-price", "Cat stay cost per day?"),
    ("cat-boarding-price", "What do you charge to look after my cat overnight?"),
]


def labelled(analytics: Analytics, texts, truth) -> tuple[float, float, int]:
    labels = analytics.cluster(texts)
    return purity(labels, truth), purity(truth, labels), int(labels.max()) + 1


def test_paraphrases_of_fictional_companies_are_grouped(minilm):
    truth = [intent for intent, _ in PARAPHRASES]
    score, inverse, groups = labelled(Analytics(None, minilm), [q for _, q in PARAPHRASES], truth)
    print(f"\nfictional paraphrases: {len(PARAPHRASES)} questions, 8 intents -> {groups} groups, "
          f"purity {score:.3f}, inverse purity {inverse:.3f}")
    assert score >= 0.9 and inverse >= 0.75 and groups <= 14


def test_unanswered_groups_from_the_store(tmp_path, minilm):
    """End to end: stored visitor questions the bot asked back on, grouped on the page's report."""
    db = Database(f"sqlite:///{tmp_path / 'store.db'}")
    db.migrate()
    bot = db.bot_id("shops")
    chosen = [p for p in PARAPHRASES if p[0] in ("helmet-included", "cake-delivery", "cat-boarding-price")]
    at = dt.datetime(2024, 5, 1, 9)
    with db.session() as s:
        for i, (_, question) in enumerate(chosen):
            cid = str(uuid.uuid4())
            s.add(Conversation(id=cid, bot_id=bot, visitor_id="v", status="bot", meta={},
                               created_at=at + dt.timedelta(minutes=i)))
            s.flush()
            s.add(Message(conversation_id=cid, role="user", text=question, created_at=at + dt.timedelta(minutes=i)))
            s.flush()
            s.add(Message(conversation_id=cid, role="bot", text="?", decision="clarify",
                          created_at=at + dt.timedelta(minutes=i, seconds=1)))
    groups = Analytics(db, minilm).report(Filters.parse("2024-05-01", "2024-05-01")).groups
    db.dispose()
    intent = {q: i for i, q in chosen}
    assert [g.size for g in groups][:3] == [4, 4, 4]
    for g in groups[:3]:
        assert len({intent[q] for q in g.questions}) == 1 and len(g.conversations) == 4
        assert intent[g.question] == intent[g.questions[0]]


@pytest.mark.skipif(not STACKFAQ.is_file(), reason="../shared/data/stackfaq is not in this checkout")
def test_stackfaq_paraphrases_purity(minilm):
    """StackFAQ's dev queries, each labelled with its thread (gold ids ``stackfaq:<thread>:<n>``)."""
    rows = [json.loads(line) for line in STACKFAQ.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [r["query"] for r in rows]
    truth = [r["gold_doc_ids"][0].split(":")[1] for r in rows]
    score, inverse, groups = labelled(Analytics(None, minilm), texts, truth)
    print(f"\nStackFAQ dev: {len(texts)} questions, {len(set(truth))} threads -> {groups} groups at "
          f"cosine distance {CLUSTER_DISTANCE}: purity {score:.3f}, inverse purity {inverse:.3f}")
    # Measured: 135 groups, purity 0.914, inverse purity 0.945.
    assert score >= 0.88 and inverse >= 0.9
