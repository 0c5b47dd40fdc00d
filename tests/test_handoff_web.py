"""The live hand-off over HTTP: the visitor's live stream (an agent's reply arrives within a
second, the stream ends when resolved), typing pings, the e-mail left when nobody is online (and
kept out of training transcripts), "ask the bot first", and the admin queue page (login, CSRF,
live SSE snapshot, take / reply / hand back / resolve, conflicts)."""
from __future__ import annotations

import json
import re
import threading
import time

import pytest

from web.sse import parse
from web_fixtures import *  # noqa: F401,F403
from web_fixtures import Visitor, events_of

PASSWORD = "correct horse battery"


def csrf_of(resp) -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', resp.get_data(as_text=True)).group(1)


@pytest.fixture
def admin(app, components):
    from web.auth import create_user

    create_user(components.db, "alice", PASSWORD)
    c = app.test_client()
    c.post("/admin/login", data={"username": "alice", "password": PASSWORD, "csrf_token": csrf_of(c.get("/admin/login"))})
    return c


def hand_off(client, v: Visitor) -> dict:
    r = client.post(f"/api/conversations/{v.conversation}/handoff", json={}, headers=v.headers())
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.json


class Stream:
    """Reads an SSE response in a thread; ``events`` grows as frames arrive (with arrival times)."""

    def __init__(self, request):
        self.request = request  # called in the reading thread: a streamed body keeps its context there
        self.response = None
        self.events: list[tuple[float, str, dict]] = []
        self.started = threading.Event()
        self.done = threading.Event()
        self.stop = False
        threading.Thread(target=self._read, daemon=True).start()
        assert self.started.wait(5)

    def _read(self):
        buf = ""
        try:
            self.response = self.request()
            self.started.set()
            for chunk in self.response.response:
                if self.stop:
                    break
                buf += chunk.decode() if isinstance(chunk, bytes) else chunk
                while "\n\n" in buf:
                    block, buf = buf.split("\n\n", 1)
                    for _, t, d in parse(block + "\n\n"):
                        self.events.append((time.monotonic(), t, json.loads(d)))
        finally:
            self.done.set()

    def wait_for(self, kind, pred=lambda d: True, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, t, d in list(self.events):
                if t == kind and pred(d):
                    return at, d
            time.sleep(0.01)
        raise AssertionError(f"no {kind} event in {[(t, d) for _, t, d in self.events]}")


def test_agent_reply_reaches_the_visitors_live_stream_within_a_second(client, visitor, components):
    visitor.ask("How much does shipping cost?")
    state = hand_off(client, visitor)
    assert state["status"] == "waiting" and state["queue"]["position"] == 1
    assert state["queue"]["ask_email"] is True, "no agent online yet"
    stream = Stream(lambda: client.get(f"/api/conversations/{visitor.conversation}/live", headers=visitor.headers(),
                                       buffered=False))
    assert stream.response.status_code == 200 and stream.response.mimetype == "text/event-stream"
    _, first = stream.wait_for("status")
    assert first["status"] == "waiting" and "No one from our team" in first["message"]
    components.handoffs.seen("alice")
    stream.wait_for("status", lambda d: d["agents_online"] == 1 and "number 1" in d["message"])
    components.handoffs.take(visitor.conversation, "alice")
    stream.wait_for("status", lambda d: d["status"] == "human")
    sent = time.monotonic()
    msg = components.handoffs.reply(visitor.conversation, "alice", "Hello, this is **Alice**.")
    at, got = stream.wait_for("message")
    assert got == {"id": msg["id"], "by": "human", "text": "Hello, this is **Alice**.", "created_at": msg["created_at"]}
    assert at - sent < 1.0, f"the reply took {at - sent:.2f} s"
    components.handoffs.resolve(visitor.conversation, "alice")
    stream.wait_for("status", lambda d: d["status"] == "resolved")
    assert stream.done.wait(3), "the stream ends once the conversation is resolved"
    # Reconnecting after the last message id seen sends nothing old.
    components.handoffs.request(visitor.conversation)
    again = Stream(lambda: client.get(f"/api/conversations/{visitor.conversation}/live?after={msg['id']}",
                                      headers=visitor.headers(), buffered=False))
    again.wait_for("status")
    time.sleep(0.3)
    assert not [e for e in again.events if e[1] == "message"]
    again.stop = True


def test_a_reply_from_another_process_arrives_by_polling(client, visitor, components, app):
    """A reply written straight to the database (as another worker process would) reaches the
    stream through its poll of handoff.poll_s (0.5 s)."""
    hand_off(client, visitor)
    components.handoffs.take(visitor.conversation, "alice")
    stream = Stream(lambda: client.get(f"/api/conversations/{visitor.conversation}/live", headers=visitor.headers(),
                                       buffered=False))
    stream.wait_for("status")
    sent = time.monotonic()
    components.conversations.add_message(visitor.conversation, "human", "Written elsewhere")  # no wake-up
    at, got = stream.wait_for("message")
    assert got["text"] == "Written elsewhere" and at - sent < 1.0
    stream.stop = True


def test_the_live_stream_needs_the_visitors_own_token(client, site_key, visitor):
    other = Visitor(client, site_key).start()
    r = client.get(f"/api/conversations/{visitor.conversation}/live", headers=other.headers())
    assert r.status_code == 404
    assert client.get(f"/api/conversations/{visitor.conversation}/live").status_code == 401


def test_typing_and_email(client, visitor, components, tmp_path):
    assert client.post(f"/api/conversations/{visitor.conversation}/typing", json={},
                       headers=visitor.headers()).status_code == 204
    assert components.handoffs.queue(components.db.bot_id("default")) == []
    visitor.ask("How much does shipping cost?")
    hand_off(client, visitor)
    client.post(f"/api/conversations/{visitor.conversation}/typing", json={}, headers=visitor.headers())
    assert components.handoffs.queue(components.db.bot_id("default"))[0]["visitor_typing"] is True
    r = client.post(f"/api/conversations/{visitor.conversation}/email", json={"email": "nope@"}, headers=visitor.headers())
    assert r.status_code == 400 and "not a valid email address" in r.json["error"]["message"]
    r = client.post(f"/api/conversations/{visitor.conversation}/email", json={"email": 7}, headers=visitor.headers())
    assert r.status_code == 400
    r = client.post(f"/api/conversations/{visitor.conversation}/email", json={"email": "pat@Example.org"},
                    headers=visitor.headers())
    assert r.status_code == 200 and r.json["email"] == "pat@example.org"
    assert "pat@" not in client.get(f"/api/conversations/{visitor.conversation}", headers=visitor.headers()
                                    ).get_data(as_text=True)
    # Never in training data: the transcripts read from the store carry messages only.
    components.handoffs.resolve(visitor.conversation, "alice")
    from training.importers import read_store

    transcripts = list(read_store(components.db, "default"))
    assert transcripts and "pat@example.org" not in json.dumps([t.__dict__ for t in transcripts], default=str)


def test_ask_bot_first(client, visitor, components):
    components.handoffs.set_ask_bot_first(components.db.bot_id("default"), True)
    r = hand_off(client, visitor)
    assert r["status"] == "bot" and r["ask_bot_first"] and "what is your question" in r["message"]
    events = events_of(visitor.ask("Can I talk to a person please?"))
    kinds = [t for _, t, _ in events]
    assert kinds == ["meta", "token", "offer", "done"] and "what is your question" in events[1][2]["text"]
    assert components.conversations.get(visitor.conversation)["status"] == "bot"
    events = events_of(visitor.ask("I want to talk to a person. How much does shipping cost?"))
    kinds = [t for _, t, _ in events]
    assert events[0][2]["decision"] == "answer" and "token" in kinds and kinds[-2:] == ["offer", "done"]
    assert components.conversations.get(visitor.conversation)["status"] == "bot", "the bot tried first"
    # After an answer, asking for a person reaches the queue.
    assert hand_off(client, visitor)["status"] == "waiting"


def test_without_the_option_a_request_hands_off_at_once(client, visitor):
    events = events_of(visitor.ask("Can I talk to a person please?"))
    handoff = next(d for _, t, d in events if t == "handoff")
    assert handoff["status"] == "waiting" and handoff["queue"]["position"] == 1


def test_queue_page(client, admin, app, visitor, components):
    assert client.get("/admin/queue").status_code == 302, "login required"
    assert client.get("/admin/queue/events").status_code == 302
    visitor.ask("How much does shipping cost?")
    hand_off(client, visitor)
    page = admin.get(f"/admin/queue?open={visitor.conversation}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and visitor.conversation in html and "requested" in html
    assert "How much does shipping cost?" in html
    assert components.handoffs.agents_online() == 1, "an open queue page counts as online"
    token = csrf_of(page)
    stream = Stream(lambda: admin.get(f"/admin/queue/events?open={visitor.conversation}", buffered=False))
    _, snap = stream.wait_for("queue")
    assert [c["id"] for c in snap["conversations"]] == [visitor.conversation]
    assert snap["open"]["id"] == visitor.conversation and snap["open"]["messages"][0]["role"] == "user"
    assert snap["conversations"][0]["sources"], "the bot's sources of its last answer"

    url = f"/admin/queue/{visitor.conversation}"
    assert admin.post(url + "/take").status_code == 400, "CSRF token required"
    js = {"X-CSRFToken": token, "X-Requested-With": "fetch", "Accept": "application/json"}
    r = admin.post(url + "/take", headers=js)
    assert r.status_code == 200 and r.json["result"]["assigned_to"] == "alice"
    stream.wait_for("queue", lambda d: d["conversations"][0]["status"] == "human")
    client.post(f"/api/conversations/{visitor.conversation}/typing", json={}, headers=visitor.headers())
    stream.wait_for("queue", lambda d: d["open"]["visitor_typing"])
    r = admin.post(url + "/reply", data={"text": "<b>Hi</b> from Alice", "csrf_token": token})
    assert r.status_code == 302, "a form post redirects back to the queue"
    stream.wait_for("queue", lambda d: d["open"]["messages"][-1]["text"] == "<b>Hi</b> from Alice")
    html = admin.get(f"/admin/queue?open={visitor.conversation}").get_data(as_text=True)
    assert "&lt;b&gt;Hi&lt;/b&gt; from Alice" in html and "<b>Hi</b>" not in html

    # Another agent is refused.
    from web.auth import create_user

    create_user(components.db, "bob", PASSWORD)
    bob = app.test_client()
    bob.post("/admin/login", data={"username": "bob", "password": PASSWORD, "csrf_token": csrf_of(bob.get("/admin/login"))})
    btoken = csrf_of(bob.get("/admin/queue"))
    r = bob.post(url + "/reply", data={"text": "mine"},
                 headers={"X-CSRFToken": btoken, "X-Requested-With": "fetch", "Accept": "application/json"})
    assert r.status_code == 409 and "alice has taken" in r.json["error"]["message"]
    r = bob.post(url + "/resolve", data={"csrf_token": btoken}, follow_redirects=True)
    assert "alice has taken" in r.get_data(as_text=True), "a refused form post is flashed"

    assert admin.post(url + "/hand-back", headers=js).json["result"]["status"] == "bot"
    stream.wait_for("queue", lambda d: d["conversations"] == [])
    hand_off(client, visitor)
    assert admin.post(url + "/resolve", headers=js).json["result"]["status"] == "resolved"
    assert admin.post("/admin/queue/00000000-0000-4000-8000-000000000000/take", headers=js).status_code == 404
    stream.stop = True


def test_queue_option_form(admin, components):
    token = csrf_of(admin.get("/admin/queue"))
    admin.post("/admin/queue/options", data={"ask_bot_first": "1", "csrf_token": token})
    assert components.handoffs.bot_options(components.db.bot_id("default"))["handoff_ask_bot_first"] is True
    assert 'name="ask_bot_first" value="1" checked' in admin.get("/admin/queue").get_data(as_text=True)
