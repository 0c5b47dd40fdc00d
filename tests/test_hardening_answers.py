"""A producer that dies mid-answer (item 8 of the hardening issue).

The answer's producer persists its progress (the text so far and a heartbeat) as it goes, so:
the text a visitor already saw is in the row; a follower in another worker that sees no
heartbeat for ``web.answer_stale_s`` while the producer is gone ends with an error event within
seconds (not 120 s) and closes the row; a failure mid-answer closes the row with the text shown;
rows that no one will ever finish are closed at start.
"""
from __future__ import annotations

import datetime as dt
import threading
import time

from sqlalchemy import update

from bot.core.store.models import Message
from web.answers import parse_event_id
from web_fixtures import ORIGIN, Visitor, as_stream, events_of, make_components, make_settings


class StuckGenerator:
    """Streams two words, then hangs (a producer whose process is about to die)."""

    model_id = "stuck"
    tokenizer = None
    last_usage = None

    def __init__(self):
        self.release = threading.Event()

    def load(self):
        return self

    def count_tokens(self, text):
        return len(text.split())

    def stream(self, messages, **params):
        def pieces():
            yield "Shipping"
            yield " costs"
            self.release.wait(60)
            yield " more."
        return as_stream(self, messages, pieces())


class FailingGenerator(StuckGenerator):
    """Streams two words, then fails (a bug, an out-of-memory, a lost connection)."""

    def stream(self, messages, **params):
        def pieces():
            yield "Shipping"
            yield " costs"
            raise RuntimeError("worker state went bad")
        return as_stream(self, messages, pieces())


def _first_events(response, n):
    import json

    from web.sse import parse

    buf, events = "", []
    for chunk in response.response:
        buf += chunk.decode() if isinstance(chunk, bytes) else chunk
        events = parse(buf)
        if len(events) >= n:
            break
    response.close()
    return [(i, t, json.loads(d)) for i, t, d in events[:n]]


def _row(comps, mid):
    with comps.db.session() as s:
        return s.get(Message, mid)


def _wait(predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_dead_producers_stream_ends_within_seconds_with_the_text_shown_stored(tmp_path, monkeypatch):
    from web import create_app

    stuck = StuckGenerator()
    settings = make_settings(tmp_path, workers=2, dialogue={"direct_answer_threshold": 2.0})
    comps_a = make_components(settings, generator=stuck)
    app_a = create_app(settings, comps_a)
    key = app_a.extensions["supportbot"].site_keys.create("default", [ORIGIN]).key
    v = Visitor(app_a.test_client(), key).start()
    first = _first_events(app_a.test_client().post(
        f"/api/conversations/{v.conversation}/messages", json={"message": "How much does shipping cost?"},
        headers=v.headers(), buffered=False), 3)
    assert [t for _, t, _ in first] == ["meta", "token", "token"]
    mid, offset = parse_event_id(first[-1][0])
    shown = "".join(d["text"] for _, t, d in first if t == "token")
    # The text the visitor saw reaches the row while the producer is still alive.
    assert _wait(lambda: _row(comps_a, mid).text == shown, 5), _row(comps_a, mid).text

    # Worker A dies: no more heartbeats (its thread is stuck, its process would be gone).
    monkeypatch.setattr(comps_a.conversations, "heartbeat", lambda *a, **k: None, raising=False)
    monkeypatch.setattr(comps_a.conversations, "update_message", lambda *a, **k: None)

    comps_b = make_components(settings, ingest=False)
    app_b = create_app(settings, comps_b)
    result = {}

    def follow():
        t0 = time.monotonic()
        result["events"] = events_of(app_b.test_client().get(
            f"/api/conversations/{v.conversation}/events", headers=v.headers(**{"Last-Event-ID": first[-1][0]})))
        result["seconds"] = time.monotonic() - t0

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    follower.join(30)
    assert not follower.is_alive(), "the resumed stream still waits for a dead producer"
    events = result["events"]
    assert events[0][1] == "meta" and events[-1][1] == "error"
    assert result["seconds"] < 15, result["seconds"]
    row = _row(comps_b, mid)
    assert row.complete and row.decision == "error" and row.text == shown
    stuck.release.set()
    comps_a.db.dispose()
    comps_b.db.dispose()


def test_a_failure_mid_answer_closes_the_row_with_the_text_shown(tmp_path):
    from web import create_app

    settings = make_settings(tmp_path, dialogue={"direct_answer_threshold": 2.0})
    comps = make_components(settings, generator=FailingGenerator())
    app = create_app(settings, comps)
    key = app.extensions["supportbot"].site_keys.create("default", [ORIGIN]).key
    v = Visitor(app.test_client(), key).start()
    events = events_of(v.ask("How much does shipping cost?"))
    assert events[-1][1] == "error" and "worker state" not in events[-1][2]["message"]
    shown = "".join(d["text"] for _, t, d in events if t == "token")
    mid = events[0][2]["message_id"]
    assert _wait(lambda: _row(comps, mid).complete, 5)
    row = _row(comps, mid)
    assert row.text == shown == "Shipping costs" and row.decision == "error"
    history = app.test_client().get(f"/api/conversations/{v.conversation}", headers=v.headers()).get_json()
    assert history["messages"][-1]["complete"] is True
    comps.db.dispose()


def test_abandoned_rows_are_closed_at_start(tmp_path):
    from web import create_app

    settings = make_settings(tmp_path)
    comps = make_components(settings, ingest=False)
    cid = comps.conversations.create(comps.db.bot_id("default"), "v_x", {})
    comps.conversations.add_message(cid, "user", "hello?")
    mid = comps.conversations.add_message(cid, "bot", "Half an ans", complete=False)
    live = comps.conversations.add_message(cid, "bot", "Being written", complete=False)
    old = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(hours=1)
    with comps.db.session() as s:
        s.execute(update(Message).where(Message.id == mid).values(created_at=old, updated_at=old))
    create_app(settings, comps)
    row = _row(comps, mid)
    assert row.complete and row.decision == "error" and row.text == "Half an ans"
    assert not _row(comps, live).complete  # young: its producer may still be alive
    comps.db.dispose()
