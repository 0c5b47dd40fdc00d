"""The hand-off state machine (bot/handoff.py) on SQLite and a real PostgreSQL: every transition,
the refused ones (409, with the reason), racing agents, reopening, presence, e-mail, the queue."""
from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import select, update

from bot.conversations import ConversationStore
from bot.core.errors import NotFound, SupportbotError
from bot.core.settings import HandoffSettings
from bot.core.store.models import AgentPresence, Conversation, utcnow
from bot.handoff import HandoffConflict, HandoffDesk, without_request




@pytest.fixture
def events():
    return []


@pytest.fixture
def desk(db, events):
    return HandoffDesk(ConversationStore(db), HandoffSettings(agent_online_s=60),
                       emit=lambda bot_id, event, data: events.append((bot_id, event, data)))


def new_conversation(desk, question="Where is my parcel?") -> str:
    store = desk.store
    cid = store.create(store.db.bot_id("default"), "visitor-1")
    store.add_message(cid, "user", question)
    store.add_message(cid, "bot", "Shipping takes 3 days [1].", decision="answer",
                      sources=[{"n": 1, "chunk_id": 3, "doc_id": "faq.csv#2", "title": "Shipping", "source": "faq.csv"}])
    return cid


def test_full_cycle_bot_waiting_human_resolved_reopened(desk, events):
    cid = new_conversation(desk)
    assert desk.store.get(cid)["status"] == "bot"
    state = desk.request(cid, "requested")
    assert state["status"] == "waiting" and state["position"] == 1
    conv = desk.store.get(cid)
    assert conv["waiting_since"] and conv["assigned_to"] == ""
    assert [h["reason"] for h in desk.store.handoffs(cid)] == ["requested"]
    assert desk.take(cid, "alice")["status"] == "human"
    assert desk.store.get(cid)["assigned_to"] == "alice"
    msg = desk.reply(cid, "alice", "Hi, I am looking at your parcel now.")
    assert msg["role"] == "human" and msg["complete"] and msg["text"].startswith("Hi, I am")
    resolved = desk.resolve(cid, "alice")
    assert resolved["status"] == "resolved" and resolved["resolved_at"]
    assert all(h["resolved_at"] for h in desk.store.handoffs(cid)), "the open hand-off is closed"
    # A visitor message on a resolved conversation reopens it to the bot.
    assert desk.visitor_turn(cid) == "bot"
    reopened = desk.store.get(cid)
    assert reopened["status"] == "bot" and reopened["reopened_at"] and reopened["assigned_to"] == ""
    assert [e for _, e, _ in events] == ["handoff", "agent_reply", "resolved"]
    handoff = events[0][2]
    assert handoff["conversation_id"] == cid and handoff["reason"] == "requested"
    assert handoff["question"] == "Where is my parcel?"
    assert events[1][2]["agent"] == "alice" and events[1][2]["text"].startswith("Hi")


def test_hand_back_returns_the_conversation_to_the_bot(desk):
    cid = new_conversation(desk)
    desk.request(cid, "low_confidence")
    desk.take(cid, "alice")
    back = desk.hand_back(cid, "alice")
    assert back["status"] == "bot" and back["assigned_to"] == "" and back["waiting_since"] is None
    assert desk.store.handoffs(cid)[0]["resolved_at"], "hand-back closes the hand-off"
    # It can be handed off again later: a new hand-off row.
    desk.request(cid, "requested")
    assert [h["reason"] for h in desk.store.handoffs(cid)] == ["low_confidence", "requested"]


def test_refused_transitions_say_why(desk):
    cid = new_conversation(desk)
    with pytest.raises(HandoffConflict, match="not|with the assistant") as err:
        desk.take(cid, "alice")  # nobody asked for a person
    assert err.value.status == 409 and "status 'bot'" in err.value.message
    with pytest.raises(HandoffConflict, match="resolve"):
        desk.resolve(cid, "alice")
    with pytest.raises(HandoffConflict, match="hand this conversation back"):
        desk.hand_back(cid, "alice")
    with pytest.raises(HandoffConflict, match="reply"):
        desk.reply(cid, "alice", "hello?")
    desk.request(cid, "requested")
    with pytest.raises(HandoffConflict, match="hand this conversation back.*waiting"):
        desk.hand_back(cid, "alice")  # only a conversation a person has goes back
    desk.take(cid, "alice")
    assert desk.take(cid, "alice")["assigned_to"] == "alice", "taking one's own again is a no-op"
    with pytest.raises(HandoffConflict, match="alice has taken this conversation"):
        desk.take(cid, "bob")
    with pytest.raises(HandoffConflict, match="alice has taken"):
        desk.reply(cid, "bob", "I'll answer instead")
    with pytest.raises(HandoffConflict, match="alice has taken"):
        desk.resolve(cid, "bob")
    with pytest.raises(HandoffConflict, match="alice has taken"):
        desk.hand_back(cid, "bob")
    desk.resolve(cid, "alice")
    with pytest.raises(HandoffConflict, match="resolved"):
        desk.take(cid, "alice")
    with pytest.raises(HandoffConflict, match="resolved"):
        desk.resolve(cid, "alice")
    with pytest.raises(NotFound):
        desk.take("00000000-0000-4000-8000-000000000000", "alice")
    with pytest.raises(SupportbotError, match="empty"):
        desk.reply(cid, "alice", "   ")
    with pytest.raises(SupportbotError, match="agent's name"):
        desk.take(cid, "")


def test_asking_again_while_waiting_changes_nothing(desk, events):
    cid = new_conversation(desk)
    first = desk.store.get(cid)
    desk.request(cid, "requested")
    since = desk.store.get(cid)["waiting_since"]
    desk.request(cid, "requested")
    assert desk.store.get(cid)["waiting_since"] == since and len(desk.store.handoffs(cid)) == 1
    assert [e for _, e, _ in events] == ["handoff"]
    assert first["status"] == "bot"


def test_a_request_on_a_resolved_conversation_reopens_it(desk):
    cid = new_conversation(desk)
    desk.request(cid)
    desk.resolve(cid, "alice")
    assert desk.request(cid, "requested")["status"] == "waiting"
    assert desk.store.get(cid)["reopened_at"]


def test_replying_to_a_waiting_conversation_takes_it(desk):
    cid = new_conversation(desk)
    desk.request(cid)
    desk.reply(cid, "bob", "Hello, Bob here.")
    conv = desk.store.get(cid)
    assert conv["status"] == "human" and conv["assigned_to"] == "bob"


def test_two_agents_racing_to_take_one_conversation_one_wins(desk):
    cid = new_conversation(desk)
    desk.request(cid)
    outcomes: dict[str, str] = {}
    barrier = threading.Barrier(4)

    def take(agent):
        barrier.wait()
        try:
            desk.take(cid, agent)
            outcomes[agent] = "took"
        except HandoffConflict:
            outcomes[agent] = "refused"

    threads = [threading.Thread(target=take, args=(a,)) for a in ("a1", "a2", "a3", "a4")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [a for a, o in outcomes.items() if o == "took"]
    assert len(winners) == 1 and len(outcomes) == 4
    assert desk.store.get(cid)["assigned_to"] == winners[0]


def test_queue_positions_reason_sources_and_typing(desk):
    first, second = new_conversation(desk, "Where is my parcel?"), new_conversation(desk, "Can I pay by invoice?")
    desk.request(first, "low_confidence")
    desk.request(second, "requested")
    assert desk.position(first) == 1 and desk.position(second) == 2
    desk.typing(second)
    queue = desk.queue(desk.store.db.bot_id("default"))
    assert [c["id"] for c in queue] == [first, second] and [c["position"] for c in queue] == [1, 2]
    assert queue[0]["reason"] == "low_confidence" and queue[1]["question"] == "Can I pay by invoice?"
    assert queue[0]["sources"][0]["title"] == "Shipping" and queue[0]["waiting_since"]
    assert queue[1]["visitor_typing"] and not queue[0]["visitor_typing"]
    desk.take(first, "alice")
    assert desk.position(second) == 1, "taking the first moves the second up"
    queue = desk.queue(desk.store.db.bot_id("default"))
    assert [(c["status"], c["position"]) for c in queue] == [("waiting", 1), ("human", 0)]
    assert [c["id"] for c in desk.queue(desk.store.db.bot_id("default"), "human")] == [first]
    with pytest.raises(SupportbotError, match="queue holds"):
        desk.queue(desk.store.db.bot_id("default"), "resolved")


def test_typing_is_only_recorded_while_a_person_is_involved(desk):
    cid = new_conversation(desk)
    assert desk.typing(cid) is False
    desk.request(cid)
    assert desk.typing(cid) is True
    desk.visitor_wrote(cid)
    assert desk.queue(desk.store.db.bot_id("default"))[0]["visitor_typing"] is False


def test_presence_and_no_agent_online(desk, db):
    cid = new_conversation(desk)
    state = desk.request(cid)
    assert state["agents_online"] == 0 and state["ask_email"] and "No one from our team" in state["message"]
    desk.seen("alice")
    state = desk.visitor_state(cid)
    assert state["agents_online"] == 1 and not state["ask_email"] and "number 1 in the queue" in state["message"]
    with db.session() as s:  # alice was last seen long ago
        s.execute(update(AgentPresence).values(last_seen_at=utcnow() - dt.timedelta(minutes=10)))
    assert desk.agents_online() == 0


def test_email_is_validated_normalised_and_kept_out_of_conversation_dicts(desk, db):
    cid = new_conversation(desk)
    with pytest.raises(HandoffConflict):
        desk.leave_email(cid, "pat@example.com")  # only while waiting for / with a person
    desk.request(cid)
    for bad in ("not an email", "pat@", "pat@@example.com", "a" * 300 + "@example.com", ""):
        with pytest.raises(SupportbotError, match="email address"):
            desk.leave_email(cid, bad)
    assert desk.leave_email(cid, "Pat.Doe@Example.COM") == "Pat.Doe@example.com"
    with db.session() as s:
        assert s.scalar(select(Conversation.visitor_email).where(Conversation.id == cid)) == "Pat.Doe@example.com"
    assert desk.visitor_state(cid)["email_left"] is True
    assert "visitor_email" not in desk.store.get(cid)
    assert all("visitor_email" not in c for c in desk.store.list(db.bot_id("default")))
    assert desk.detail(cid)["visitor_email"] == "Pat.Doe@example.com", "the agent sees it"


def test_ask_bot_first_option(desk, db):
    cid = new_conversation(desk)
    bot_id = db.bot_id("default")
    assert desk.ask_bot_first(cid) is False
    desk.set_ask_bot_first(bot_id, True)
    assert desk.bot_options(bot_id)["handoff_ask_bot_first"] is True
    assert desk.ask_bot_first(cid) is False, "the bot has answered here already"
    fresh = desk.store.create(bot_id, "v2")
    assert desk.ask_bot_first(fresh) is True


def test_without_request_keeps_the_question():
    assert without_request("I want to talk to a person. My refund has not arrived") == "My refund has not arrived"
    assert without_request("Can I talk to a human please?") == ""
    assert without_request("where is my order, and can I speak to an agent") == "where is my order,"


def test_changes_wake_waiters(desk):
    cid = new_conversation(desk)
    seen = desk.changes.version
    woke = []
    t = threading.Thread(target=lambda: woke.append(desk.changes.wait(seen, 5)))
    t.start()
    desk.request(cid)
    t.join(2)
    assert woke and woke[0] > seen
