"""Webhooks (bot/webhooks.py) against a real local receiver on 127.0.0.1: the signature verifies
with the secret, failures are retried with back-off until the receiver answers 200, a receiver
that never does is marked failed after the maximum attempts; the admin page shows the secret once;
the web app's delivery worker sends hand-off, agent-reply, resolve and feedback events."""
from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from bot.core.errors import SupportbotError
from bot.core.settings import HandoffSettings
from bot.core.store import Database
from bot.core.store.models import WebhookDelivery
from bot.webhooks import DeliveryWorker, Webhooks, sign, verify_signature
from web_fixtures import *  # noqa: F401,F403
from web_fixtures import ORIGIN, Visitor, events_of, make_components, make_settings

PASSWORD = "correct horse battery"


class Receiver:
    """An HTTP server on 127.0.0.1 that records requests and answers ``statuses`` in turn
    (the last one for every request after)."""

    def __init__(self, statuses):
        self.statuses = list(statuses)
        self.requests: list[dict] = []
        self.times: list[float] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append({"headers": dict(self.headers), "body": body})
                receiver.times.append(time.monotonic())
                n = len(receiver.requests)
                status = receiver.statuses[min(n, len(receiver.statuses)) - 1]
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def db(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'hooks.db'}")
    db.migrate()
    yield db
    db.dispose()


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_signature_verifies_and_retries_back_off_until_delivered(db):
    receiver = Receiver([500, 500, 200])
    hooks = Webhooks(db, HandoffSettings(webhook_backoff_s=0.2, webhook_max_attempts=5, webhook_poll_s=0.05))
    bot_id = db.bot_id("default")
    info, secret = hooks.create(bot_id, receiver.url, ["handoff", "resolved"])
    assert secret.startswith("whsec_") and info.events == ("handoff", "resolved")
    assert hooks.enqueue(bot_id, "handoff", {"conversation_id": "c-1", "reason": "requested"}) == 1
    assert hooks.enqueue(bot_id, "feedback", {"rating": 1}) == 0, "not subscribed"
    worker = DeliveryWorker(hooks).start()
    try:
        assert wait_for(lambda: len(receiver.requests) >= 3)
        assert wait_for(lambda: hooks.deliveries(bot_id)[0]["status"] == "delivered")
    finally:
        worker.stop()
        receiver.close()
    d = hooks.deliveries(bot_id)[0]
    assert d["attempts"] == 3 and d["delivered_at"] and d["last_error"] == ""
    gaps = [b - a for a, b in zip(receiver.times, receiver.times[1:])]
    assert gaps[0] >= 0.18 and gaps[1] >= 0.38, f"exponential back-off: {gaps}"
    for req in receiver.requests:
        headers, body = req["headers"], req["body"]
        assert verify_signature(secret, body, headers["X-Supportbot-Signature"])
        assert headers["X-Supportbot-Signature"] == "sha256=" + __import__("hmac").new(
            secret.encode(), body, "sha256").hexdigest()
        assert not verify_signature("whsec_wrong", body, headers["X-Supportbot-Signature"])
        assert not verify_signature(secret, body + b" ", headers["X-Supportbot-Signature"])
        payload = json.loads(body)
        assert payload["event"] == "handoff" and payload["data"] == {"conversation_id": "c-1", "reason": "requested"}
        assert headers["X-Supportbot-Event"] == "handoff"
        assert abs(int(headers["X-Supportbot-Timestamp"]) - time.time()) < 60
        assert payload["sent_at"] == int(headers["X-Supportbot-Timestamp"]), "the timestamp is signed too"
    assert [json.loads(r["body"])["attempt"] for r in receiver.requests] == [1, 2, 3]


def test_a_receiver_that_never_answers_200_fails_after_max_attempts(db):
    receiver = Receiver([503])
    hooks = Webhooks(db, HandoffSettings(webhook_backoff_s=0.01, webhook_max_attempts=3))
    bot_id = db.bot_id("default")
    hooks.create(bot_id, receiver.url, ["resolved"])
    hooks.enqueue(bot_id, "resolved", {"conversation_id": "c-2"})
    try:
        assert wait_for(lambda: (hooks.deliver_due() or True) and hooks.deliveries(bot_id)[0]["status"] == "failed")
    finally:
        receiver.close()
    d = hooks.deliveries(bot_id)[0]
    assert d["attempts"] == 3 and d["last_error"] == "HTTP 503" and d["next_attempt_at"] is None
    assert len(receiver.requests) == 3
    assert hooks.deliver_due() == 0, "a failed delivery is not tried again"


def test_unreachable_receiver_and_redirects_are_failures(db):
    hooks = Webhooks(db, HandoffSettings(webhook_backoff_s=60, webhook_timeout_s=1))
    bot_id = db.bot_id("default")
    receiver = Receiver([302])
    hooks.create(bot_id, receiver.url, ["handoff"])
    hooks.create(bot_id, "http://127.0.0.1:9/nothing-listens", ["handoff"])
    hooks.enqueue(bot_id, "handoff", {})
    try:
        assert hooks.deliver_due() == 2
    finally:
        receiver.close()
    errors = sorted(d["last_error"] for d in hooks.deliveries(bot_id))
    assert errors[1] == "HTTP 302" and errors[0].startswith("ConnectionError")
    assert all(d["status"] == "pending" and d["next_attempt_at"] for d in hooks.deliveries(bot_id))
    assert hooks.deliver_due() == 0, "not due again before the back-off"


def test_only_http_urls_and_known_events(db):
    hooks = Webhooks(db, HandoffSettings())
    bot_id = db.bot_id("default")
    for url in ("ftp://example.com/x", "javascript:alert(1)", "file:///etc/passwd", "example.com/hook", "",
                "https://user:pw@example.com/hook", "https://" + "a" * 2100 + ".com"):
        with pytest.raises(SupportbotError):
            hooks.create(bot_id, url, ["handoff"])
    with pytest.raises(SupportbotError, match="unknown webhook event"):
        hooks.create(bot_id, "https://example.com/hook", ["handoff", "everything"])
    with pytest.raises(SupportbotError, match="at least one event"):
        hooks.create(bot_id, "https://example.com/hook", [])
    assert hooks.list(bot_id) == []
    assert sign("s", b"{}") == "sha256=" + __import__("hmac").new(b"s", b"{}", "sha256").hexdigest()


def csrf_of(resp) -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', resp.get_data(as_text=True)).group(1)


@pytest.fixture
def hook_app(tmp_path):
    from web import create_app
    from web.auth import create_user

    settings = make_settings(tmp_path)
    settings.handoff = HandoffSettings(webhook_backoff_s=0.05, webhook_poll_s=0.05)
    comps = make_components(settings)
    app = create_app(settings, comps)
    create_user(comps.db, "alice", PASSWORD)
    yield app, comps
    app.extensions["supportbot_webhooks"].stop()
    comps.db.dispose()


def test_admin_page_shows_the_secret_once_and_the_app_delivers_every_event(hook_app):
    app, comps = hook_app
    receiver = Receiver([200])
    admin = app.test_client()
    admin.post("/admin/login", data={"username": "alice", "password": PASSWORD,
                                     "csrf_token": csrf_of(admin.get("/admin/login"))})
    token = csrf_of(admin.get("/admin/webhooks"))
    assert admin.post("/admin/webhooks", data={"url": receiver.url, "events": ["handoff"]}).status_code == 400, \
        "CSRF required"
    assert admin.post("/admin/webhooks", data={"url": "ftp://x", "events": ["handoff"], "csrf_token": token}
                      ).status_code == 400
    r = admin.post("/admin/webhooks", data={"url": receiver.url, "csrf_token": token,
                                            "events": ["handoff", "agent_reply", "resolved", "feedback"]})
    assert r.status_code == 201
    secret = re.search(r"<code>(whsec_[^<]+)</code>", r.get_data(as_text=True)).group(1)
    assert secret not in admin.get("/admin/webhooks").get_data(as_text=True), "shown once"
    assert r.headers["Cache-Control"] == "no-store"

    key = app.extensions["supportbot"].site_keys.create("default", [ORIGIN]).key
    visitor = Visitor(app.test_client(), key).start()
    events = events_of(visitor.ask("How much does shipping cost?"))
    mid = events[0][2]["message_id"]
    visitor.client.post(f"/api/conversations/{visitor.conversation}/feedback",
                        json={"message_id": mid, "rating": -1, "comment": "too vague"}, headers=visitor.headers())
    visitor.client.post(f"/api/conversations/{visitor.conversation}/handoff", json={}, headers=visitor.headers())
    comps.handoffs.reply(visitor.conversation, "alice", "Hello from Alice")
    comps.handoffs.resolve(visitor.conversation, "alice")
    try:
        assert wait_for(lambda: len(receiver.requests) >= 4)
    finally:
        receiver.close()
    got = [json.loads(r["body"]) for r in receiver.requests]
    assert [g["event"] for g in got] == ["feedback", "handoff", "agent_reply", "resolved"]
    assert got[0]["data"]["rating"] == -1 and got[0]["data"]["comment"] == "too vague"
    assert got[2]["data"]["text"] == "Hello from Alice"
    assert all(verify_signature(secret, r["body"], r["headers"]["X-Supportbot-Signature"]) for r in receiver.requests)
    with comps.db.session() as s:
        assert set(s.scalars(select(WebhookDelivery.status))) == {"delivered"}
    page = admin.get("/admin/webhooks").get_data(as_text=True)
    assert "agent_reply" in page and "delivered" in page
