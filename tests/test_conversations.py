"""ConversationStore against SQLite (temp file, WAL) and a real PostgreSQL server."""
from __future__ import annotations

import threading

import pytest

from bot.conversations import ConversationStore
from bot.core.errors import NotFound, SupportbotError




def test_conversation_round_trip(db):
    store = ConversationStore(db)
    bot = db.bot_id("default")
    cid = store.create(bot, "visitor-1", {"page": "/pricing"})
    conv = store.get(cid)
    assert conv["bot_id"] == bot and conv["visitor_id"] == "visitor-1"
    assert conv["status"] == "bot" and conv["metadata"] == {"page": "/pricing"}

    u = store.add_message(cid, "user", "Where is my order?")
    b = store.add_message(cid, "bot", "", decision="answer", complete=False)
    store.update_message(
        b, text="It ships tomorrow [1].", sources=[{"n": 1, "doc_id": "shipping.md"}],
        model_id="tiny", latency_ms=12.5, ttft_ms=3.0, prompt_tokens=40, completion_tokens=7,
        complete=True,
    )
    h = store.add_message(cid, "human", "Hi, Sam here from support.")
    hist = store.history(cid)
    assert [m["id"] for m in hist] == [u, b, h]
    assert [m["role"] for m in hist] == ["user", "bot", "human"]
    assert hist[1]["text"] == "It ships tomorrow [1]." and hist[1]["sources"][0]["doc_id"] == "shipping.md"
    assert hist[1]["completion_tokens"] == 7 and hist[1]["complete"] is True
    assert store.turns(cid, limit=2) == [
        {"role": "agent", "text": "It ships tomorrow [1]."},
        {"role": "agent", "text": "Hi, Sam here from support."},
    ]
    assert store.get(cid)["message_count"] == 3


def test_feedback_and_handoff(db):
    store = ConversationStore(db)
    bot = db.bot_id("default")
    cid = store.create(bot, "v")
    other = store.create(bot, "w")
    u = store.add_message(cid, "user", "hi")
    b = store.add_message(cid, "bot", "hello")
    fid = store.add_feedback(cid, b, -1, "not helpful")
    store.add_feedback(cid, b, 1)
    assert fid > 0
    # the latest rating is the one shown
    assert store.history(cid)[1]["feedback"] == {"rating": 1, "comment": ""}
    with pytest.raises(NotFound, match="no message"):
        store.add_feedback(other, b, 1)  # message of another conversation
    with pytest.raises(SupportbotError, match="visitor's own"):
        store.add_feedback(cid, u, 1)
    with pytest.raises(SupportbotError, match=r"\+1 or -1"):
        store.add_feedback(cid, b, 5)

    hid = store.request_handoff(cid, "low_confidence")
    assert store.get(cid)["status"] == "waiting" and store.get(cid)["waiting_since"]
    assert [h["id"] for h in store.handoffs(cid)] == [hid]
    assert store.handoffs(cid)[0]["reason"] == "low_confidence"
    assert store.list(bot, status="waiting")[0]["id"] == cid
    assert [c["id"] for c in store.list(bot, status="bot")] == [other]
    store.set_status(cid, "resolved")
    assert store.get(cid)["status"] == "resolved"


def test_errors_name_what_is_wrong(db):
    store = ConversationStore(db)
    cid = store.create(db.bot_id("default"), "v")
    with pytest.raises(NotFound, match="no conversation 'nope'"):
        store.add_message("nope", "user", "x")
    with pytest.raises(NotFound):
        store.get("nope")
    with pytest.raises(NotFound):
        store.history("nope")
    with pytest.raises(SupportbotError, match="role must be one of"):
        store.add_message(cid, "robot", "x")
    with pytest.raises(SupportbotError, match="unknown message field"):
        store.add_message(cid, "user", "x", colour="red")
    with pytest.raises(NotFound, match="no message 999999"):
        store.update_message(999999, text="x")
    with pytest.raises(NotFound, match="no bot"):
        store.create(424242, "v")
    # nothing half-written by the failed calls
    assert store.history(cid) == []


def test_list_orders_by_activity_and_pages(db):
    store = ConversationStore(db)
    bot = db.bot_id("default")
    other_bot = db.bot_id("other")
    ids = [store.create(bot, f"v{i}") for i in range(3)]
    store.create(other_bot, "x")
    store.add_message(ids[0], "user", "latest activity")
    listed = store.list(bot)
    assert len(listed) == 3 and listed[0]["id"] == ids[0] and listed[0]["message_count"] == 1
    assert {c["id"] for c in listed} == set(ids)  # never another bot's conversations
    assert len(store.list(bot, limit=2)) == 2
    assert [c["id"] for c in store.list(bot, limit=2, offset=2)] == [listed[2]["id"]]


def test_concurrent_writers_lose_nothing(db):
    """Threads appending messages, feedback and hand-offs to shared conversations at once."""
    store = ConversationStore(db)
    bot = db.bot_id("default")
    convs = [store.create(bot, f"v{i}") for i in range(4)]
    n_threads, per_thread = 8, 15
    errors: list[BaseException] = []
    start = threading.Barrier(n_threads)

    def writer(t: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                cid = convs[(t + i) % len(convs)]
                store.add_message(cid, "user", f"t{t}-m{i}")
                mid = store.add_message(cid, "bot", "", complete=False)
                store.update_message(mid, text=f"reply t{t}-m{i}", complete=True)
                store.add_feedback(cid, mid, 1 if i % 2 else -1)
                if i % 5 == 0:
                    store.request_handoff(cid, "requested")
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    texts = [m["text"] for cid in convs for m in store.history(cid)]
    expected_user = {f"t{t}-m{i}" for t in range(n_threads) for i in range(per_thread)}
    assert {x for x in texts if not x.startswith("reply")} == expected_user
    assert len(texts) == 2 * n_threads * per_thread
    rated = sum(1 for cid in convs for m in store.history(cid) if "feedback" in m)
    assert rated == n_threads * per_thread
    assert sum(len(store.handoffs(cid)) for cid in convs) == n_threads * 3
