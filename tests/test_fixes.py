"""Every bad answer becomes a fix (bot/fixes.py) over the real dialogue pipeline: the bundled
MiniLM embedder, the calibrated thresholds and selector, the sample FAQ, SQLite in a temp dir.

Listing finds a rated-down answer, a hand-off the bot could not answer and a question it asked
back on, never a hand-off the visitor asked for; the right answer written once is a curated FAQ
entry that paraphrases are then answered from directly (the existing direct-answer path with its
calibrated threshold, no rule of its own); resolved conversations are drafted, paraphrases of an
FAQ entry or of a fix left out.
"""
from __future__ import annotations

import pytest
from sqlalchemy import select, update

from bot.core.store.models import Conversation, Document, Fix
from web_fixtures import SAMPLE_FAQ, ScriptedGenerator

GIFT = "Yes. Gift wrapping costs $4 per item; choose it at checkout."


@pytest.fixture
def comps(tmp_path, minilm):
    from bot.components import Components
    from bot.core.settings import Settings

    # The serving defaults on an FAQ site: the FAQ matcher decides (tests/conftest.py turns it off
    # for the tiny parts of other tests).
    settings = Settings(data_dir=tmp_path / "var", generator={"backend": "extractive"},
                        index={"reload_interval_s": 0.0}, dialogue={"faq_matcher": "default"})
    c = Components(settings, parts={"embedder": minilm, "generator": ScriptedGenerator()})
    c.knowledge.ingest("default", [SAMPLE_FAQ])
    yield c
    c.db.dispose()


@pytest.fixture
def fixes(comps):
    from bot.fixes import Fixes

    return Fixes(comps.db, comps.knowledge, comps.embedder)


def ask(comps, message: str, cid: str | None = None) -> tuple[str, dict, str]:
    """(conversation id, the meta event's data, the reply text) of one turn through the dialogue."""
    cid = cid or comps.conversations.create(comps.db.bot_id("default"), "visitor-1")
    events = list(comps.dialogue("default").respond(cid, message))
    meta = next(e.data for e in events if e.type == "meta")
    text = "".join(e.data["text"] for e in events if e.type == "token")
    return cid, meta, text


def test_listing_finds_rated_down_not_answered_and_asked_back_not_requested(comps, fixes):
    store = comps.conversations
    down, meta_down, _ = ask(comps, "Is a broken zipper covered by the warranty?")
    assert meta_down["decision"] == "answer"
    store.add_feedback(down, meta_down["message_id"], -1, "it is a Columbia jacket")
    up, meta_up, _ = ask(comps, "Do you sell my personal data?")
    store.add_feedback(up, meta_up["message_id"], 1)
    gift, meta_gift, _ = ask(comps, "Do you offer gift wrapping?")
    assert meta_gift["decision"] == "handoff"
    vague, meta_vague, _ = ask(comps, "how long")
    assert meta_vague["decision"] == "clarify"
    person, meta_person, _ = ask(comps, "talk to a person please")
    assert meta_person["decision"] == "handoff"

    bad = {b.message_id: b for b in fixes.bad_answers("default")}
    assert set(bad) == {meta_down["message_id"], meta_gift["message_id"], meta_vague["message_id"]}
    rated = bad[meta_down["message_id"]]
    assert (rated.kind, rated.reason, rated.conversation_id) == ("rated_down", "it is a Columbia jacket", down)
    assert rated.question == "Is a broken zipper covered by the warranty?"
    assert "zipper" in rated.reply.lower() and rated.sources
    not_answered = bad[meta_gift["message_id"]]
    # low_confidence from the retrieval confidence, not_in_knowledge from the FAQ matcher (when on)
    assert not_answered.kind == "not_answered" and not_answered.reason in ("low_confidence", "not_in_knowledge")
    assert not_answered.question == "Do you offer gift wrapping?"
    # What it retrieved: the candidates it saw, with their text and confidence.
    assert len(not_answered.retrieved) == 3
    assert all(r["doc_id"] and r["text"] and 0 <= r["confidence"] <= 1 for r in not_answered.retrieved)
    asked = bad[meta_vague["message_id"]]
    assert (asked.kind, asked.question, asked.conversation_id) == ("asked_back", "how long", vague)
    assert asked.reply.startswith("I'm not sure I understood")


def test_a_written_fix_is_a_curated_entry_paraphrases_are_answered_from(comps, fixes):
    cid, meta, _ = ask(comps, "Do you offer gift wrapping?")
    [bad] = [b for b in fixes.bad_answers("default") if b.message_id == meta["message_id"]]
    fix = fixes.write("default", bad.question, GIFT, message_id=bad.message_id, created_by="alice")
    assert fix["status"] == "approved" and fix["kind"] == "not_answered" and fix["conversation_id"] == cid
    assert fix["document"] == f"curated/fix-{fix['id']}"
    with comps.db.session() as s:
        doc = s.scalar(select(Document).where(Document.external_id == fix["document"]))
        assert doc.meta["doc_type"] == "faq" and doc.meta["curated"] is True
        assert s.get(Fix, fix["id"]).document_id == doc.id
    assert fixes.bad_answers("default") == []  # a fixed answer is not listed again

    # Visitors' paraphrases, through the real dialogue (retrieval, the calibrated policy and
    # selector): replied with the entry's own answer, verbatim and cited, no generation.
    for question in ("Do you offer gift wrapping?", "can you wrap my order as a present?"):
        new, meta, text = ask(comps, question)
        assert (meta["decision"], meta["model"]) == ("answer", "extractive"), question
        # the fix's answer opens with "Yes": shown after the question it answers
        assert text.strip() == f"**Do you offer gift wrapping?** {GIFT} [1]"
        [reply] = [m for m in comps.conversations.history(new) if m["role"] == "bot"]
        assert reply["sources"][0]["doc_id"] == fix["document"]

    # Withdrawn, the entry leaves the knowledge base and the bot no longer replies with it.
    fixes.dismiss("default", fix["id"])
    assert fix["document"] not in {d["id"] for d in comps.knowledge.documents("default")}
    _, meta, text = ask(comps, "can you wrap my order as a present?")
    assert GIFT not in text


def test_bad_input_is_a_clear_error(fixes):
    from bot.core.errors import NotFound, SupportbotError

    with pytest.raises(SupportbotError, match="answer is empty"):
        fixes.write("default", "Do you offer gift wrapping?", "   ")
    with pytest.raises(NotFound):
        fixes.write("default", "Do you offer gift wrapping?", GIFT, message_id=999999)
    with pytest.raises(NotFound):
        fixes.approve("default", 424242)


def resolved(comps, *turns: tuple[str, str]) -> str:
    """A conversation an agent resolved: (role, text) turns, then status resolved."""
    store = comps.conversations
    cid = store.create(comps.db.bot_id("default"), "visitor-2")
    for role, text in turns:
        store.add_message(cid, role, text)
    with comps.db.session() as s:
        s.execute(update(Conversation).where(Conversation.id == cid).values(status="resolved"))
    return cid


def test_drafts_from_resolved_conversations_skip_what_is_covered(comps, fixes, minilm):
    from bot.fixes import DUPLICATE_COSINE

    gift = resolved(comps, ("user", "Do you offer gift wrapping?"), ("bot", "I'm sorry, I can't answer that."),
                    ("user", "talk to a person"), ("human", "Yes, gift wrapping is $4 per item."),
                    ("human", "Choose it at checkout."))
    resolved(comps, ("user", "can you gift wrap my order?"), ("human", "Yes, for $4."))  # same as the first
    zipper = resolved(comps, ("user", "my zipper broke, is that covered?"), ("human", "Yes, under the warranty."))
    resolved(comps, ("user", "hello"), ("bot", "Hi!"))  # no agent reply: nothing to draft
    # By the retriever's embedder the paraphrases are this close, different questions far apart.
    v = minilm.embed(["my zipper broke, is that covered?", "Is a broken zipper covered by the warranty?",
                      "can you gift wrap my order?", "Do you offer gift wrapping?", "Do gift cards expire?"])
    assert v[0] @ v[1] >= DUPLICATE_COSINE and v[2] @ v[3] >= DUPLICATE_COSINE
    assert v[3] @ v[4] < DUPLICATE_COSINE  # the FAQ's nearest entry to the new question

    report = fixes.draft_from_resolved("default")
    assert report.seen == 3
    [draft_id] = report.drafted
    draft = fixes.get("default", draft_id)
    assert (draft["status"], draft["kind"], draft["conversation_id"]) == ("draft", "resolved", gift)
    # The question the hand-off was about, not the request for a person; the agent's whole reply.
    assert draft["question"] == "Do you offer gift wrapping?"
    assert draft["answer"] == "Yes, gift wrapping is $4 per item.\nChoose it at checkout."
    covered = {d["question"]: d["of"] for d in report.duplicates}
    assert covered["can you gift wrap my order?"] == f"fix {draft_id}"
    assert covered["my zipper broke, is that covered?"].startswith("faq:")  # the sample FAQ's entry
    assert zipper not in {d["conversation_id"] for d in fixes.list("default", status="draft")}
    assert fixes.draft_from_resolved("default").seen == 0  # nothing is offered twice

    # Approved with an edit, the draft is published; nothing is published before.
    assert "curated/fix" not in str([d["id"] for d in comps.knowledge.documents("default")])
    fix = fixes.approve("default", draft_id, answer=GIFT)
    assert fix["status"] == "approved" and fix["answer"] == GIFT
    _, meta, text = ask(comps, "can you wrap my order as a present?")
    assert meta["decision"] == "answer" and text.strip() == f"**{fix['question']}** {fix['answer']} [1]"
