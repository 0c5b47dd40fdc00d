"""DialogueManager end to end over real parts: the sample FAQ ingested with the hashing embedder,
the hybrid retriever, the dialogue store (SQLite and PostgreSQL), and either the tiny real GPT
or a scripted generator where a test needs to control the reply (citations, failures)."""
from __future__ import annotations

from pathlib import Path

import pytest

from bot.components import Components
from bot.dialogue import DialogueManager
from bot.generators.base import GenerationStream
from bot.generators.extractive_generator import ExtractiveGenerator
from bot.pipeline import TurnPipeline
from bot.selection import RuleSelector, Selection, build_selector
from bot.core.errors import NotFound, SupportbotError
from bot.core.events import text as joined_text
from bot.generators.extractive_generator import unwrap
from bot.policy import ANSWER, CLARIFY, HANDOFF, Decision, decide, direct_source, wants_human, with_selection
from bot.core.settings import DialogueSettings
from retrieval.embedder import HashingEmbedder
from retrieval.types import Hit

SAMPLE_FAQ = Path(__file__).resolve().parent.parent / "samples" / "faq"
REFUND_Q = "How long does a refund take?"


class ScriptedGenerator:
    """Yields fixed pieces (optionally failing after some); records the prompts it was given."""

    model_id = "scripted-v1"
    tokenizer = None

    def __init__(self, pieces=("Refunds take ", "5 to 7 days ", "[1]."), fail_after: int | None = None):
        self.pieces = list(pieces)
        self.fail_after = fail_after
        self.prompts: list[list[dict]] = []
        self.closed = 0

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def stream(self, messages, **params):
        self.prompts.append(messages)

        def pieces(handle):
            handle.usage["prompt_tokens"] = sum(self.count_tokens(m["content"]) for m in messages)
            try:
                for i, piece in enumerate(self.pieces):
                    if self.fail_after is not None and i == self.fail_after:
                        raise RuntimeError("backend exploded")
                    handle.usage["completion_tokens"] += self.count_tokens(piece)
                    yield piece
            except GeneratorExit:
                self.closed += 1
                raise

        return GenerationStream(pieces, self.model_id)


class SpyRetriever:
    """The real retriever, recording what it was asked."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[dict] = []

    def search(self, query, k=5, filters=None, turns=()):
        self.calls.append({"query": query, "k": k, "turns": list(turns)})
        return self.inner.search(query, k=k, filters=filters, turns=turns)


def dialogue_settings(**kw) -> DialogueSettings:
    # Thresholds are set per test: the calibrated defaults belong to the real embedder.
    # Direct FAQ replies off unless a test turns them on: most tests check the generator's path.
    base = {"answer_threshold": 0.0, "clarify_threshold": 0.0, "direct_answer_threshold": 1.1}
    return DialogueSettings(**{**base, **kw})


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def comps(request, settings):
    overrides = {"embedder": HashingEmbedder(dim=256)}
    if request.param == "postgres":
        overrides["db"] = request.getfixturevalue("pg_database")
    c = Components(settings, parts=overrides)
    report = c.knowledge.ingest("default", [SAMPLE_FAQ], progress=False)
    assert report.errors == []
    return c


@pytest.fixture
def sqlite_comps(settings):
    c = Components(settings, parts={"embedder": HashingEmbedder(dim=256)})
    c.knowledge.ingest("default", [SAMPLE_FAQ], progress=False)
    return c


def manager(comps, generator, retriever=None, **kw) -> DialogueManager:
    settings = dialogue_settings(**kw)
    pipeline = TurnPipeline(retriever or comps.retriever("default"), build_selector(settings, comps.embedder),
                            generator, ExtractiveGenerator(), settings)
    return DialogueManager(comps.conversations, pipeline, settings)


def new_conversation(comps) -> str:
    return comps.conversations.create(comps.db.bot_id("default"), "visitor")


def test_answer_streams_in_order_and_stores_everything(comps):
    gen = ScriptedGenerator()
    dm = manager(comps, gen)
    cid = new_conversation(comps)
    events = list(dm.respond(cid, REFUND_Q))
    assert [e.type for e in events] == ["meta", "token", "token", "token", "sources", "done"]
    meta, done = events[0].data, events[-1].data
    assert meta["decision"] == ANSWER and meta["conversation_id"] == cid and meta["model"] == "scripted-v1"
    assert joined_text(events) == "Refunds take 5 to 7 days [1]."

    # the prompt ended with the visitor's message, after the numbered sources
    prompt = gen.prompts[0]
    assert prompt[-1]["role"] == "user" and prompt[-1]["content"].startswith("Sources:\n[1] ")
    assert prompt[-1]["content"].endswith(f"\n\nQuestion: {REFUND_Q}")

    hist = comps.conversations.history(cid)
    assert [m["role"] for m in hist] == ["user", "bot"]
    bot = hist[1]
    assert bot["id"] == meta["message_id"] == done["message_id"]
    assert bot["text"] == "Refunds take 5 to 7 days [1]." and bot["complete"] is True
    assert bot["decision"] == ANSWER and bot["model_id"] == "scripted-v1"
    assert bot["latency_ms"] > 0 and bot["ttft_ms"] is not None and bot["ttft_ms"] <= bot["latency_ms"]
    assert bot["completion_tokens"] == 7 and bot["prompt_tokens"] > 0
    assert bot["sources"] == events[-2].data["sources"]
    assert bot["scores"] and all({"chunk_id", "score", "confidence"} <= set(s) for s in bot["scores"])


def test_citations_map_to_real_documents(sqlite_comps):
    comps = sqlite_comps
    gen = ScriptedGenerator(pieces=("See ", "[2] and [2]", " but not [9]."))
    dm = manager(comps, gen, max_sources=3, select_margin=1.0, select_same_entity=False)
    cid = new_conversation(comps)
    events = list(dm.respond(cid, "How do I return an item and get a refund?"))
    sources = events[-2].data["sources"]
    assert [s["n"] for s in sources] == [2], "only the cited source, under its prompt number"
    # [2] in the prompt is the same passage the sources event names
    prompt_lines = gen.prompts[0][-1]["content"].split("\n")
    line2 = next(line for line in prompt_lines if line.startswith("[2] "))
    chunk = next(h for h in comps.retriever().search("How do I return an item and get a refund?", k=20)
                 if h.chunk_id == sources[0]["chunk_id"])
    assert chunk.text.split("\n")[0] in line2
    docs = {d["id"] for d in comps.knowledge.documents("default")}
    assert sources[0]["doc_id"] in docs and sources[0]["source"]


def test_uncited_answer_lists_every_source_it_was_grounded_in(sqlite_comps):
    gen = ScriptedGenerator(pieces=("Refunds take a few days.",))
    dm = manager(sqlite_comps, gen, max_sources=2, select_margin=1.0, select_same_entity=False)
    events = list(dm.respond(new_conversation(sqlite_comps), REFUND_Q))
    assert [s["n"] for s in events[-2].data["sources"]] == [1, 2]


def test_handoff_when_retrieval_finds_nothing(settings):
    comps = Components(settings, parts={"embedder": HashingEmbedder(dim=256)})  # nothing ingested
    gen = ScriptedGenerator()
    dm = manager(comps, gen)
    cid = new_conversation(comps)
    events = list(dm.respond(cid, REFUND_Q))
    assert [e.type for e in events] == ["meta", "handoff", "done"]
    assert events[0].data["decision"] == HANDOFF and events[1].data["reason"] == "no_knowledge"
    assert "member of our team" in events[1].data["message"]
    assert gen.prompts == [], "nothing is generated, so nothing can be invented"
    assert comps.conversations.get(cid)["status"] == "waiting"
    assert [h["reason"] for h in comps.conversations.handoffs(cid)] == ["no_knowledge"]
    assert comps.conversations.history(cid)[1]["text"] == events[1].data["message"]


def test_low_confidence_hands_off(sqlite_comps):
    gen = ScriptedGenerator()
    dm = manager(sqlite_comps, gen, answer_threshold=1.01, clarify_threshold=1.01)
    cid = new_conversation(sqlite_comps)
    events = list(dm.respond(cid, "What's the weather in Paris tomorrow?"))
    assert [e.type for e in events] == ["meta", "handoff", "done"]
    assert events[1].data["reason"] == "low_confidence" and gen.prompts == []
    assert sqlite_comps.conversations.handoffs(cid)[0]["reason"] == "low_confidence"


def test_visitor_asking_for_a_person_is_handed_off(sqlite_comps):
    dm = manager(sqlite_comps, ScriptedGenerator())
    cid = new_conversation(sqlite_comps)
    events = list(dm.respond(cid, "Can I talk to a real person please?"))
    assert events[1].type == "handoff" and events[1].data["reason"] == "requested"
    assert sqlite_comps.conversations.get(cid)["status"] == "waiting"


def test_clarify_offers_topics_without_generating(sqlite_comps):
    gen = ScriptedGenerator()
    dm = manager(sqlite_comps, gen, answer_threshold=1.01, clarify_threshold=0.0)
    cid = new_conversation(sqlite_comps)
    events = list(dm.respond(cid, "refund"))
    assert [e.type for e in events] == ["meta", "token", "sources", "done"]
    assert events[0].data["decision"] == CLARIFY and gen.prompts == []
    offered = events[2].data["sources"]
    assert 1 <= len(offered) <= 3  # dialogue.clarify_topics
    assert events[1].data["text"].startswith("I'm not sure I understood. Are you asking about \u201c")
    assert sqlite_comps.conversations.get(cid)["status"] == "bot"
    # Each offered topic carries the words it is offered with (the widget's buttons send them),
    # and they are what the question names; the stored message keeps them for a reload.
    topics = [s["topic"] for s in offered]
    assert all(topics) and all(f"\u201c{t}\u201d" in events[1].data["text"] for t in topics)
    assert [s["topic"] for s in sqlite_comps.conversations.history(cid)[1]["sources"]] == topics


def test_choosing_an_offered_topic_gets_that_entrys_own_answer(sqlite_comps):
    gen = ScriptedGenerator()
    spy = SpyRetriever(sqlite_comps.retriever("default"))
    # Nothing is confident enough to answer by itself: only the visitor's choice makes an answer.
    dm = manager(sqlite_comps, gen, retriever=spy, answer_threshold=1.01, clarify_threshold=0.0)
    cid = new_conversation(sqlite_comps)
    offered = [e for e in dm.respond(cid, "refund") if e.type == "sources"][0].data["sources"]
    topic = offered[-1]
    events = list(dm.respond(cid, topic["topic"].upper()))  # typed, or sent by the widget's button
    assert events[0].data["decision"] == ANSWER and events[0].data["model"] == "extractive"
    assert gen.prompts == []  # the entry's own answer, no model
    shown = [e for e in events if e.type == "sources"][0].data["sources"]
    assert [s["chunk_id"] for s in shown] == [topic["chunk_id"]]
    entry = next(h for h in spy.inner.search(topic["topic"], k=10) if h.chunk_id == topic["chunk_id"])
    reply = "".join(e.data["text"] for e in events if e.type == "token")
    assert " ".join(entry.faq_answer.split(".")[0].split()) in " ".join(reply.split())
    assert spy.calls[-1]["turns"] == []  # the entry is found by its own words, not the history

    # Not after a clarifying question: the same words are planned as any message (asked back).
    again = list(dm.respond(new_conversation(sqlite_comps), topic["topic"]))
    assert again[0].data["decision"] == CLARIFY


def test_generation_error_ends_with_error_event_and_partial_reply_stored(sqlite_comps):
    gen = ScriptedGenerator(pieces=("Refunds ", "take ", "days"), fail_after=2)
    dm = manager(sqlite_comps, gen)
    cid = new_conversation(sqlite_comps)
    events = list(dm.respond(cid, REFUND_Q))
    assert [e.type for e in events] == ["meta", "token", "token", "error"]
    assert "backend exploded" not in events[-1].data["message"], "no internals to the visitor"
    bot = sqlite_comps.conversations.history(cid)[1]
    assert bot["text"] == "Refunds take " and bot["complete"] is False


def test_client_going_away_stops_generation_and_keeps_the_partial_reply(sqlite_comps):
    gen = ScriptedGenerator(pieces=("one ", "two ", "three "))
    dm = manager(sqlite_comps, gen)
    cid = new_conversation(sqlite_comps)
    stream = dm.respond(cid, REFUND_Q)
    assert next(stream).type == "meta"
    assert next(stream).data["text"] == "one "
    stream.close()  # what the web server does when the visitor disconnects
    assert gen.closed == 1
    bot = sqlite_comps.conversations.history(cid)[1]
    assert bot["text"] == "one " and bot["complete"] is False


def test_conversation_is_used_for_retrieval_and_history_is_trimmed(sqlite_comps):
    comps = sqlite_comps
    gen = ScriptedGenerator(pieces=("ok",))
    spy = SpyRetriever(comps.retriever("default"))
    dm = manager(comps, gen, retriever=spy, history_tokens=6)
    cid = new_conversation(comps)
    list(dm.respond(cid, "I want to return a jacket I bought last month"))
    list(dm.respond(cid, "how long does the refund take?"))
    assert spy.calls[0]["turns"] == []
    assert spy.calls[1]["turns"] == [
        {"role": "user", "text": "I want to return a jacket I bought last month"},
        {"role": "agent", "text": "ok"},
    ]
    # 6 tokens (the scripted generator counts words): the 10-word first message is dropped,
    # the one-word reply is kept
    second = gen.prompts[1]
    assert [m["role"] for m in second] == ["system", "assistant", "user"]
    assert second[1]["content"] == "ok"
    assert second[2]["content"].endswith("\n\nQuestion: how long does the refund take?")


def test_bad_requests_raise_before_anything_is_stored(sqlite_comps):
    dm = manager(sqlite_comps, ScriptedGenerator())
    cid = new_conversation(sqlite_comps)
    with pytest.raises(NotFound):
        dm.respond("no-such-conversation", "hi")
    with pytest.raises(SupportbotError, match="empty"):
        dm.respond(cid, "   ")
    with pytest.raises(SupportbotError, match="too long"):
        dm.respond(cid, "x" * 5000)
    assert sqlite_comps.conversations.history(cid) == []


def test_broken_retriever_hands_off_instead_of_crashing(sqlite_comps):
    class Broken:
        def search(self, *a, **kw):
            raise OSError("index file vanished")

    dm = manager(sqlite_comps, ScriptedGenerator(), retriever=Broken())
    cid = new_conversation(sqlite_comps)
    events = list(dm.respond(cid, REFUND_Q))
    assert [e.type for e in events] == ["meta", "handoff", "done"]
    assert events[1].data["reason"] == "retrieval_error"


def test_components_wire_the_served_generator_into_the_dialogue(settings):
    settings.dialogue.answer_threshold = 0.0
    settings.dialogue.direct_answer_threshold = 1.1
    gen = ScriptedGenerator()
    comps = Components(settings, parts={"embedder": HashingEmbedder(dim=256), "generator": gen})
    comps.knowledge.ingest("default", [SAMPLE_FAQ], progress=False)
    assert isinstance(comps.selector(), RuleSelector), "auto: the bundled MLP is for MiniLM only"
    events = list(comps.dialogue().respond(new_conversation(comps), REFUND_Q))
    assert len(gen.prompts) == 1 and events[0].data["model"] == "scripted-v1"
    assert events[0].type == "meta" and events[-1].type == "done"
    assert joined_text(events).endswith("[1].")


def test_confident_faq_match_is_answered_with_its_own_answer(comps):
    gen = ScriptedGenerator()
    dm = manager(comps, gen, direct_answer_threshold=0.0)
    cid = new_conversation(comps)
    top = comps.retriever("default").search(REFUND_Q, k=5)[0]
    assert top.metadata.get("answer"), "the sample FAQ's top hit for this question is an FAQ entry"
    events = list(dm.respond(cid, REFUND_Q))
    assert [e.type for e in events][0] == "meta" and [e.type for e in events][-2:] == ["sources", "done"]
    assert events[0].data["decision"] == ANSWER and events[0].data["model"] == "extractive"
    reply = joined_text(events)
    assert reply == f"{unwrap(top.metadata['answer'].strip())} [1]"
    assert gen.prompts == [], "the generator was not asked"
    sources = events[-2].data["sources"]
    assert [(s["n"], s["chunk_id"]) for s in sources] == [(1, top.chunk_id)]
    bot = comps.conversations.history(cid)[1]
    assert bot["text"] == reply and bot["model_id"] == "extractive" and bot["complete"] is True
    assert bot["sources"] == sources and bot["completion_tokens"] > 0


def test_faq_match_below_the_threshold_is_generated(sqlite_comps):
    gen = ScriptedGenerator()
    dm = manager(sqlite_comps, gen, direct_answer_threshold=1.0)
    events = list(dm.respond(new_conversation(sqlite_comps), REFUND_Q))
    assert events[0].data["model"] == "scripted-v1" and joined_text(events) == "Refunds take 5 to 7 days [1]."
    assert len(gen.prompts) == 1


def test_a_looping_or_source_listing_reply_is_cut_and_stored_as_shown(sqlite_comps):
    gen = ScriptedGenerator(pieces=("Refunds take 5 days [1].", "\nRefunds take 5 days [1].", "\nRefunds"))
    dm = manager(sqlite_comps, gen)
    cid = new_conversation(sqlite_comps)
    events = list(dm.respond(cid, REFUND_Q))
    assert joined_text(events) == "Refunds take 5 days [1].\n"
    assert sqlite_comps.conversations.history(cid)[1]["text"] == "Refunds take 5 days [1].\n"
    assert gen.closed == 1, "generation stopped at the repeat"

    # a new line starting a source header ends the reply (the default dialogue.stop), and the
    # backend is stopped there
    gen = ScriptedGenerator(pieces=("Refunds take 5 days [1].", "\n", "[2] Shipping", ": rates", " more"))
    cid = new_conversation(sqlite_comps)
    events = list(manager(sqlite_comps, gen).respond(cid, REFUND_Q))
    assert joined_text(events) == "Refunds take 5 days [1]."
    assert sqlite_comps.conversations.history(cid)[1]["text"] == "Refunds take 5 days [1]."
    assert gen.closed == 1


# ---- the policy alone -----------------------------------------------------------------------


def test_direct_source_needs_an_answer_decision_a_confident_top_hit_and_an_faq_entry():
    faq = Hit(chunk_id=1, doc_id="f", title="Billing", text="Do you take PayPal?\nYes, we do.", score=2.0,
              confidence=0.95, metadata={"question": "Do you take PayPal?", "answer": "Yes, we do."})
    page = Hit(chunk_id=2, doc_id="p", title="Billing", text="We accept cards.", score=1.0, confidence=0.97,
               metadata={})
    s = DialogueSettings(direct_answer_threshold=0.9)
    answer = Decision(ANSWER, "confident", 0.95)
    assert direct_source(answer, [faq, page], s) is faq
    assert direct_source(answer, [page, faq], s) is None, "only the top hit, and only an FAQ entry"
    assert direct_source(Decision(CLARIFY, "ambiguous", 0.95), [faq], s) is None
    assert direct_source(answer, [faq], DialogueSettings(direct_answer_threshold=0.96)) is None
    assert direct_source(answer, [], s) is None
    # behind a selector that scores: its most likely FAQ entry at P >= the threshold, and only when
    # no other kind of passage is needed with it
    other = Hit(chunk_id=3, doc_id="g", title="Billing", text="Can I pay later?\nNo.", score=1.5,
                confidence=0.5, metadata={"question": "Can I pay later?", "answer": "No."})
    assert direct_source(answer, [page, faq], s, Selection([faq], True, [0.95])) is faq
    assert direct_source(answer, [faq, other], s, Selection([faq, other], True, [0.5, 0.93])) is other
    assert direct_source(answer, [faq, other], s, Selection([faq, other], True, [0.5, 0.6])) is None
    assert direct_source(answer, [faq, page], s, Selection([faq, page], True, [0.99, 0.9])) is None
    assert direct_source(answer, [faq, page], s, Selection([], True, [])) is None
    # a selector that does not judge (the MLP) leaves it to the retrieval confidence of the top hit
    assert direct_source(answer, [faq, page], s, Selection([faq, page], None, [0.1, 0.2])) is faq


def test_a_selector_that_judges_knowledge_decides():
    answer, ask, low = (Decision(ANSWER, "confident", 0.9), Decision(CLARIFY, "ambiguous", 0.2),
                        Decision(HANDOFF, "low_confidence", 0.01))
    grounded = Selection([hit(1, 1.0, 0.9)], True, [0.9])
    assert with_selection(ask, grounded).action == ANSWER
    assert with_selection(low, grounded) == low, "below clarify_threshold nothing is close: it stays a hand-off"
    assert with_selection(answer, Selection([], True, [])) == Decision(HANDOFF, "not_in_knowledge", 0.9)
    assert with_selection(answer, Selection([], False)).action == CLARIFY
    assert with_selection(low, Selection([], False)).action == HANDOFF
    for kept in (Decision(HANDOFF, "requested", 0.9), Decision(HANDOFF, "no_knowledge", 0.0)):
        assert with_selection(kept, grounded) == kept
    assert with_selection(ask, Selection([hit(1, 1.0, 0.9)])) == ask, "the rule does not judge"


def test_a_named_entity_lets_the_selector_answer_past_a_low_confidence():
    low = Decision(HANDOFF, "low_confidence", 0.01)
    named = hit(2, 0.5, 0.01, "Acme Inn")
    assert with_selection(low, Selection([named], True, [0.9]), entity_named=True) == Decision(ANSWER, "selected", 0.01)
    assert with_selection(low, Selection([], True, []), entity_named=True) == low, "grounded nothing: hand-off"
    assert with_selection(low, Selection([], False), entity_named=True) == low
    assert with_selection(Decision(HANDOFF, "requested", 0.9), Selection([named], True, [0.9]), entity_named=True).reason == "requested"


def test_past_a_low_confidence_only_the_named_entitys_passages_ground_the_answer():
    """"Is the room clean?" about the hotel the visitor named: the top hits are other hotels'
    reviews on cleanliness, so the retrieval confidence is low; the selector is asked anyway,
    over the named hotel's passages only."""
    from dataclasses import replace

    class Recording:
        judges, pool = True, 0

        def __init__(self, grounds=True):
            self.seen, self.grounds = [], grounds

        def select(self, message, hits, k, turns=()):
            self.seen.append([h.chunk_id for h in hits])
            return Selection(list(hits)[:1], True, [0.9]) if self.grounds else Selection([], True, [])

    other = replace(hit(1, 1.0, 0.01, "Other Inn"), text="The rooms were spotless.")
    named = replace(hit(2, 0.5, 0.005, "Acme Inn"), text="Our room at the Acme was clean.", in_entity=True)
    settings = dialogue_settings(answer_threshold=0.35, clarify_threshold=0.075)
    selector = Recording()
    pipeline = TurnPipeline(None, selector, None, ExtractiveGenerator(), settings)
    plan = pipeline.plan("is the room clean?", [other, named])
    assert plan.decision == Decision(ANSWER, "selected", 0.01) and plan.sources == [named]
    assert selector.seen == [[2]], "only the named hotel's passages were read"
    # the conversation names no entity of the base: nothing is close, hand-off, selector not asked
    plan = pipeline.plan("is the room clean?", [other, replace(named, in_entity=False)])
    assert plan.decision.reason == "low_confidence" and plan.sources == [] and selector.seen == [[2]]
    # named, but the selector grounds nothing there: the hand-off stands
    pipeline = TurnPipeline(None, Recording(grounds=False), None, ExtractiveGenerator(), settings)
    plan = pipeline.plan("is the room clean?", [other, named])
    assert plan.decision.action == HANDOFF and plan.decision.reason == "low_confidence"


def test_an_entity_conversation_does_not_answer_a_message_that_alone_matches_nothing():
    """After a hotel is named its passages come first whatever the question: "how do I reverse a
    linked list?" is retrieved with high confidence in the conversation, with none alone."""
    from dataclasses import replace

    class TwoWay:  # what the hybrid retriever returns with the conversation and without it
        def __init__(self, with_turns, alone):
            self.with_turns, self.alone, self.calls = with_turns, alone, []

        def search(self, query, k=5, filters=None, turns=()):
            self.calls.append(bool(turns))
            return list(self.with_turns if turns else self.alone)[:k]

    class Grounds:
        judges, pool = True, 0

        def select(self, message, hits, k, turns=()):
            return Selection(list(hits)[:1], True, [0.9])

    review = replace(hit(1, 1.0, 0.6, "Acme Inn"), text="The staff were lovely.", in_entity=True)
    turns = [{"role": "user", "text": "Tell me about the Acme Inn."}]
    settings = dialogue_settings(answer_threshold=0.35, clarify_threshold=0.075, entity_alone_floor=0.02)
    for alone_conf, action in ((0.001, HANDOFF), (0.3, ANSWER)):
        retriever = TwoWay([review], [replace(review, confidence=alone_conf, in_entity=False)])
        pipeline = TurnPipeline(retriever, Grounds(), None, ExtractiveGenerator(), settings)
        plan = pipeline.plan("how do I reverse a linked list?", [review], turns)
        assert plan.decision.action == action and retriever.calls == [False]
        if action == HANDOFF:
            assert plan.decision.reason == "off_topic" and plan.sources == []
    # no conversation before (the confidence itself decides), a flat knowledge base, or the floor
    # off: the message is not retrieved a second time
    faq = Hit(chunk_id=2, doc_id="f", title="Returns", text="Can I return it?\nYes.", score=1.0, confidence=0.6)
    for hits, t, s in (([review], [], settings), ([faq], turns, settings),
                       ([review], turns, dialogue_settings(answer_threshold=0.35, entity_alone_floor=0.0))):
        retriever = TwoWay(hits, [])
        plan = TurnPipeline(retriever, Grounds(), None, ExtractiveGenerator(), s).plan("anything?", hits, t)
        assert plan.decision.action == ANSWER and retriever.calls == []


def hit(i, score, conf, entity="A") -> Hit:
    return Hit(chunk_id=i, doc_id=f"d{i}", title=entity, text=f"t{i}", score=score, confidence=conf,
               metadata={"entity_name": entity})


def test_decide_thresholds():
    s = DialogueSettings(answer_threshold=0.6, clarify_threshold=0.3)
    assert decide("q", [hit(1, 2.0, 0.7)], s).action == ANSWER
    assert decide("q", [hit(1, 2.0, 0.45)], s).action == CLARIFY
    assert decide("q", [hit(1, 2.0, 0.1)], s).action == HANDOFF
    assert decide("q", [], s).reason == "no_knowledge"
    assert decide("please transfer me to an agent", [hit(1, 2.0, 0.99)], s).reason == "requested"


def test_rule_selector_margin_entity_and_cap():
    hits = [hit(1, 3.0, 0.9), hit(2, 2.8, 0.8), hit(3, 2.6, 0.7, entity="B"), hit(4, 1.0, 0.2),
            hit(5, 0.0, 0.1)]
    s = DialogueSettings(select_margin=0.3, select_same_entity=True, max_sources=4)
    # spread 3.0, floor 3.0 - 0.9 = 2.1: hits 1-3 qualify, 3 is another entity
    def chosen(settings, k=None):
        selection = RuleSelector(settings).select("q", hits, settings.max_sources if k is None else k)
        assert selection.needs_knowledge is None, "the rule does not judge whether a turn needs knowledge"
        return [h.chunk_id for h in selection.passages]

    assert chosen(s) == [1, 2]
    s2 = DialogueSettings(select_margin=0.3, select_same_entity=False, max_sources=2)
    assert chosen(s2) == [1, 2]
    s3 = DialogueSettings(select_margin=1.0, select_same_entity=False, max_sources=10,
                          select_min_confidence=0.15)
    assert chosen(s3) == [1, 2, 3, 4]
    assert chosen(s3, k=3) == [1, 2, 3]
    assert RuleSelector(s).select("q", [], 4).passages == []


def test_wants_human():
    assert wants_human("Can I speak with a human?")
    assert wants_human("connect me to a live agent")
    assert not wants_human("How do I contact the carrier about my parcel?")


def test_real_tiny_gpt_streams_and_its_usage_is_stored(sqlite_comps, tiny_lm_dir, settings):
    from bot.generators import build_generator

    gen_settings = settings.generator.model_copy(
        update={"backend": "hf", "model": str(tiny_lm_dir), "max_new_tokens": 12, "device": "cpu"}
    )
    gen = build_generator(gen_settings, settings.data_dir).load()
    dm = manager(sqlite_comps, gen, history_tokens=64)
    cid = new_conversation(sqlite_comps)
    events = list(dm.respond(cid, REFUND_Q))
    types = [e.type for e in events]
    assert types[0] == "meta" and types[-2:] == ["sources", "done"] and "token" in types
    assert set(types[1:-2]) == {"token"}
    bot = sqlite_comps.conversations.history(cid)[1]
    assert bot["text"] == joined_text(events) and bot["complete"] is True
    assert 1 <= bot["completion_tokens"] <= 12
    # the prompt tokens are the chat-templated prompt, counted by the model's own tokenizer
    rendered = gen.tokenizer.apply_chat_template(
        dm.pipeline.prompt(REFUND_Q, dm.pipeline.plan(REFUND_Q, dm.pipeline.retrieve(REFUND_Q, [])).sources, []),
        tokenize=False, add_generation_prompt=True,
    )
    assert bot["prompt_tokens"] == len(gen.tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert bot["model_id"] == gen.model_id


def test_chat_cli_streams_answers_with_sources(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from bot.cli import main

    monkeypatch.setenv("SUPPORTBOT_EMBEDDER__MODEL", "hashing")
    monkeypatch.setenv("SUPPORTBOT_GENERATOR__BACKEND", "extractive")
    monkeypatch.setenv("SUPPORTBOT_DIALOGUE__ANSWER_THRESHOLD", "0")
    monkeypatch.setenv("SUPPORTBOT_DIALOGUE__CLARIFY_THRESHOLD", "0")
    data = ["--data-dir", str(tmp_path / "var")]
    runner = CliRunner()
    assert runner.invoke(main, data + ["ingest", str(SAMPLE_FAQ)]).exit_code == 0
    result = runner.invoke(main, data + ["chat"], input=f"{REFUND_Q}\nI want to talk to a person\n/quit\n")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "[1]" in out and "(" in out.split("[1]", 2)[-1], "an answer citing [1] and the source listed"
    assert "member of our team" in out, "the request for a person is handed off"

    from bot.components import Components
    from bot.core.settings import Settings

    comps = Components(Settings(data_dir=tmp_path / "var"))
    convs = comps.conversations.list(comps.db.bot_id("default"))
    assert len(convs) == 1 and convs[0]["status"] == "waiting" and convs[0]["message_count"] == 4


def test_clarify_offers_a_second_topic_only_when_it_is_close():
    def faq(i, question, conf):
        return Hit(chunk_id=i, doc_id=f"d{i}", title="FAQ", text=question, score=1.0, confidence=conf,
                   metadata={"question": question})

    settings = dialogue_settings(clarify_ratio=0.5)
    pipeline = TurnPipeline(None, RuleSelector(settings), None, ExtractiveGenerator(), settings)
    close = [faq(1, "How long is the warranty?", 0.30), faq(2, "Can I return used gear?", 0.20)]
    text, offered = pipeline.clarify(close)
    assert [h.chunk_id for h in offered] == [1, 2] and "warranty" in text and "used gear" in text
    far = [faq(1, "How long is the warranty?", 0.30), faq(2, "Is an item missing from my order?", 0.05)]
    text, offered = pipeline.clarify(far)
    assert [h.chunk_id for h in offered] == [1] and "missing" not in text


def test_clarify_offers_entries_not_a_page_intro_nor_a_file_name():
    settings = dialogue_settings(clarify_ratio=0.5)
    pipeline = TurnPipeline(None, RuleSelector(settings), None, ExtractiveGenerator(), settings)
    intro = Hit(chunk_id=1, doc_id="returns.md", title="Returns & Refunds", text="Not the right fit? ...",
                score=1.0, confidence=0.40)
    entry = Hit(chunk_id=2, doc_id="returns.md", title="Returns & Refunds", text="How long do I have?",
                score=0.9, confidence=0.35, metadata={"question": "How long do I have to return something?"})
    text, offered = pipeline.clarify([intro, entry])
    assert [h.chunk_id for h in offered] == [2] and "Returns & Refunds" not in text
    bare = Hit(chunk_id=3, doc_id="faq.txt", title="faq", text="Crumb & Co. bakes every night.", score=1.0,
               confidence=0.40)
    text, offered = pipeline.clarify([bare])
    assert "\u201cfaq\u201d" not in text and "something in our help center" in text
    # A top hit without a topic of its own does not let a far one in behind it.
    far = Hit(chunk_id=4, doc_id="hours.md", title="Opening hours", text="We open at 9.", score=0.2,
              confidence=0.05)
    text, offered = pipeline.clarify([bare, far])
    assert offered == [] and "Opening hours" not in text and "something in our help center" in text


def test_a_passage_is_offered_with_its_article_and_section():
    from bot.pipeline import topic_text
    from retrieval.types import Hit

    def hit(title, heading, **meta):
        return Hit(chunk_id=1, doc_id="orders.md", title=title, text="...", score=1.0, confidence=0.3,
                   metadata={"heading": heading, **meta})

    assert topic_text(hit("Placing an Order", "Editing an order")) == "Placing an Order: Editing an order"
    assert topic_text(hit("Placing an Order", "Placing an Order > Editing an order")) == "Placing an Order: Editing an order"
    assert topic_text(hit("Placing an Order", "")) == "Placing an Order"  # the intro
    assert topic_text(hit("orders", "Editing an order")) == "Editing an order"  # titled by its file name
    assert topic_text(hit("HOBSONS HOUSE", "reviews", entity_name="hobsons house")) == "HOBSONS HOUSE"


def test_a_clarifying_question_offers_up_to_three_close_entries_and_never_a_far_one():
    from bot.faq_match import FAQMatch

    def entry(i, question, p):
        return Hit(chunk_id=i, doc_id="faq.csv", title="Warranty", text=f"{question}\nAnswer {i}.", score=1.0 - i / 10,
                   confidence=0.4, metadata={"question": question, "answer": f"Answer {i}."}), p

    (top, p0), *rivals = [entry(1, "Is a broken zipper covered?", 0.30), entry(2, "How do I make a claim?", 0.25),
                          entry(3, "What does the warranty cover?", 0.16), entry(4, "Do you repair gear?", 0.07)]

    class Matcher:
        direct, clarify = 0.45, 0.1

        def match(self, message, hits):
            return FAQMatch(top, p0, tuple(rivals))

    settings = dialogue_settings(clarify_ratio=0.5)
    pipeline = TurnPipeline(None, RuleSelector(settings), None, ExtractiveGenerator(), settings, matcher=Matcher())
    plan = pipeline.plan("how long is the warranty", [top] + [h for h, _ in rivals])
    assert plan.decision.action == CLARIFY
    assert [h.chunk_id for h in plan.topics] == [1, 2, 3]  # 0.07 < 0.5 * 0.30: not offered
    text, _ = pipeline.clarify(plan.hits, plan.topics)
    assert "\u201cIs a broken zipper covered?\u201d, \u201cHow do I make a claim?\u201d or \u201cWhat does the warranty cover?\u201d" in text
    two = TurnPipeline(None, RuleSelector(settings), None, ExtractiveGenerator(),
                       dialogue_settings(clarify_ratio=0.5, clarify_topics=2), matcher=Matcher())
    assert [h.chunk_id for h in two.plan("how long is the warranty", [top]).topics] == [1, 2]


def test_a_help_centers_passage_is_written_from_not_quoted_and_its_verdict_decides():
    # No FAQ entry was retrieved: the matcher weighs the passages (``kind`` "passage"). A sure one
    # is the reply, quoted as an FAQ entry is (``passage_reply = "quote"``, the default), or the
    # source a reply is written from ("write": reason "passage"); a likely one is offered as a
    # topic; below the passage clarify threshold the bot hands off.
    from bot.faq_match import FAQMatch
    from bot.policy import PASSAGE

    def passage(i, doc, text):
        return Hit(chunk_id=i, doc_id=doc, title=doc.replace(".md", "").title(), text=text, score=1.0 - i / 10,
                   confidence=0.05)

    top = passage(1, "refunds.md", "Refunds reach your card within 7 business days.")
    other = passage(2, "tickets.md", "Tickets are sold in the app and at stations.")

    class Matcher:
        direct, clarify = 0.45, 0.1
        passages = {"direct": 0.6, "clarify": 0.3}

        def __init__(self, p):
            self.p = p

        def match(self, message, hits):
            return FAQMatch(top, self.p, ((other, self.p * 0.8),), 0.6, "passage")

    def plan(p, reply="quote"):
        settings = dialogue_settings(clarify_ratio=0.5, passage_reply=reply)
        pipeline = TurnPipeline(None, RuleSelector(settings), None, ExtractiveGenerator(), settings, matcher=Matcher(p))
        return pipeline.plan("when do i get my money back", [top, other])

    sure = plan(0.7)
    assert sure.decision.action == ANSWER and sure.direct and sure.sources == [top]
    written = plan(0.7, "write")
    assert (written.decision.action, written.decision.reason) == (ANSWER, PASSAGE)
    assert not written.direct and written.sources == [top]
    likely = plan(0.4)  # above the passage clarify threshold (0.3), below its direct one (0.6)
    assert likely.decision.action == CLARIFY and [h.chunk_id for h in likely.topics] == [1, 2]
    unlikely = plan(0.2)  # above the FAQ clarify threshold (0.1), below the passage one
    assert unlikely.decision.action == HANDOFF and not unlikely.sources
