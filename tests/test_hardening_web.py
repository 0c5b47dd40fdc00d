"""Hardening of the HTTP edge, each test written against a defect found by attacking the server:

1. errors rejected before the origin check (401, 429, a bad /api/session body) carry CORS headers
   for an allowed origin, so an embedded widget can read them;
6. a dead generator is a generic message for visitors and a 502 in the OpenAI error shape on /v1,
   with the details in the log only;
7. hostile input is a 4xx, never a 500 (schema-checked bodies, JSON depth, 413, 415);
9. ``Origin: null`` is refused and never echoed, and never falls back to the Referer.
"""
from __future__ import annotations

import json
import logging
import socket

import pytest
from sqlalchemy import func, select

from bot.core.store.models import Feedback, Message
from web_fixtures import *  # noqa: F401,F403 - fixtures
from web_fixtures import ORIGIN, Visitor, events_of, make_components, make_settings

EVIL = "https://evil.example"


def error_of(resp) -> str:
    body = resp.get_json()
    assert body and "error" in body, resp.get_data(as_text=True)
    return body["error"]["message"]


def _app(tmp_path, generator=None, ingest=True, dialogue=None, **web):
    from web import create_app

    settings = make_settings(tmp_path, dialogue=dialogue, **web)
    comps = make_components(settings, generator=generator, ingest=ingest)
    app = create_app(settings, comps)
    key = app.extensions["supportbot"].site_keys.create("default", [ORIGIN]).key
    return app, comps, key


# -- 1. CORS on every /api response to an allowed origin ---------------------------------------
def _cors_ok(resp, origin=ORIGIN):
    assert resp.headers.get("Access-Control-Allow-Origin") == origin, dict(resp.headers)
    assert "Retry-After" in resp.headers.get("Access-Control-Expose-Headers", "")
    assert "Origin" in resp.headers.get("Vary", "")


def test_a_bad_visitor_token_is_a_401_the_widget_can_read(client, site_key):
    r = client.get("/api/conversations/x", headers={"Origin": ORIGIN, "Authorization": "Bearer junk"})
    assert r.status_code == 401
    _cors_ok(r)


def test_an_expired_visitor_token_is_a_401_the_widget_can_read(tmp_path):
    import time

    app, comps, key = _app(tmp_path, ingest=False, visitor_token_ttl_s=1)
    client = app.test_client()
    v = Visitor(client, key).start()
    time.sleep(2.1)
    r = client.post(f"/api/conversations/{v.conversation}/messages", json={"message": "hi"},
                    headers=v.headers())
    assert r.status_code == 401 and "expired" in error_of(r)
    _cors_ok(r)
    comps.db.dispose()


def test_rate_limits_are_429s_the_widget_can_read(tmp_path):
    app, comps, key = _app(tmp_path, rate_limit_visitor="1 per minute")
    client = app.test_client()
    v = Visitor(client, key).start()
    assert v.ask("How much does shipping cost?").status_code == 200
    r = v.ask("Can I return used gear?")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    _cors_ok(r)
    comps.db.dispose()

    app, comps, key = _app(tmp_path / "ip", ingest=False, rate_limit_ip="1 per minute")
    client = app.test_client()
    assert client.post("/api/session", json={"site_key": key}, headers={"Origin": ORIGIN}).status_code == 200
    r = client.post("/api/session", json={"site_key": key}, headers={"Origin": ORIGIN})
    assert r.status_code == 429
    _cors_ok(r)
    comps.db.dispose()


def test_a_malformed_session_body_is_a_400_the_widget_can_read(client, site_key):
    r = client.post("/api/session", data=b"{not json", headers={"Origin": ORIGIN, "Content-Type": "application/json"})
    assert r.status_code == 400
    _cors_ok(r)
    r = client.post("/api/session", json={}, headers={"Origin": ORIGIN})
    assert r.status_code == 400 and "site_key" in error_of(r)
    _cors_ok(r)


def test_unknown_api_paths_and_server_errors_carry_cors_too(app, client, visitor, monkeypatch):
    r = client.get("/api/nothing-here", headers={"Origin": ORIGIN})
    assert r.status_code == 404
    _cors_ok(r)

    def boom(*a, **k):
        raise RuntimeError("internal detail")

    monkeypatch.setattr(app.extensions["supportbot"].components.conversations, "history", boom)
    r = client.get(f"/api/conversations/{visitor.conversation}", headers=visitor.headers())
    assert r.status_code == 500
    _cors_ok(r)


def test_origins_no_site_key_allows_get_no_cors_on_errors(client, site_key):
    r = client.get("/api/conversations/x", headers={"Origin": EVIL, "Authorization": "Bearer junk"})
    assert r.status_code == 401
    assert "Access-Control-Allow-Origin" not in r.headers
    r = client.post("/api/session", data=b"{", headers={"Origin": EVIL, "Content-Type": "application/json"})
    assert r.status_code == 400 and "Access-Control-Allow-Origin" not in r.headers


# -- 9. Origin: null ----------------------------------------------------------------------------
def test_origin_null_is_refused_not_replaced_by_the_referer_and_never_echoed(client, site_key, visitor):
    r = client.post("/api/session", json={"site_key": site_key},
                    headers={"Origin": "null", "Referer": ORIGIN + "/help"})
    assert r.status_code == 403
    assert "Access-Control-Allow-Origin" not in r.headers
    r = client.get(f"/api/conversations/{visitor.conversation}",
                   headers={"Origin": "null", "Referer": ORIGIN + "/help",
                            "Authorization": f"Bearer {visitor.token}"})
    assert r.status_code == 403
    assert r.headers.get("Access-Control-Allow-Origin") in (None,)
    # Without any Origin (a same-origin GET), the Referer still names the page.
    r = client.get(f"/api/conversations/{visitor.conversation}",
                   headers={"Referer": EVIL + "/x", "Authorization": f"Bearer {visitor.token}"})
    assert r.status_code == 403
    r = client.get(f"/api/conversations/{visitor.conversation}",
                   headers={"Referer": ORIGIN + "/x", "Authorization": f"Bearer {visitor.token}"})
    assert r.status_code == 200


def test_preflight_of_origin_null_is_refused(client, site_key):
    r = client.options("/api/session", headers={"Origin": "null", "Access-Control-Request-Method": "POST"})
    assert r.status_code == 403 and "Access-Control-Allow-Origin" not in r.headers


# -- 6. a dead generator ------------------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LEAKS = ("127.0.0.1", "http://", "HTTPConnectionPool", "chat/completions", "cannot reach")


@pytest.fixture
def dead_generator_app(tmp_path):
    from bot.generators.openai_generator import OpenAIGenerator

    dead = OpenAIGenerator("m", base_url=f"http://127.0.0.1:{_closed_port()}/v1", timeout_s=3)
    # Always generate (never an FAQ's own answer), so every answer needs the generator.
    app, comps, key = _app(tmp_path, generator=dead, dialogue={"direct_answer_threshold": 2.0})
    yield app, comps, key
    comps.db.dispose()


def test_a_dead_generator_is_a_generic_message_for_visitors(dead_generator_app, caplog):
    app, comps, key = dead_generator_app
    v = Visitor(app.test_client(), key).start()
    with caplog.at_level(logging.WARNING):
        r = v.ask("How much does shipping cost?")
    assert r.status_code == 200
    events = events_of(r)
    assert events[-1][1] == "error"
    shown = json.dumps(events)
    for leak in LEAKS:
        assert leak not in shown, shown
    assert "try again" in events[-1][2]["message"].lower()
    # The details are in the log, for the operator.
    assert "cannot reach the generator server" in caplog.text


def test_a_dead_generator_is_a_502_in_the_openai_error_shape(dead_generator_app, caplog):
    app, comps, key = dead_generator_app
    _, secret = app.extensions["supportbot"].api_keys.create("default")
    client = app.test_client()
    auth = {"Authorization": f"Bearer {secret}"}
    body = {"messages": [{"role": "user", "content": "How much does shipping cost?"}]}
    for stream in (False, True):
        with caplog.at_level(logging.WARNING):
            r = client.post("/v1/chat/completions", headers=auth, json={**body, "stream": stream})
        assert r.status_code in (502, 503), (stream, r.status_code, r.get_data(as_text=True))
        err = r.get_json()["error"]
        assert set(err) >= {"message", "type", "code"} and err["code"] == r.status_code
        for leak in LEAKS:
            assert leak not in r.get_data(as_text=True)
    assert "cannot reach the generator server" in caplog.text


# -- 7. hostile input is a 4xx ------------------------------------------------------------------
def _counts(components):
    with components.db.session() as s:
        return s.scalar(select(func.count(Message.id))), s.scalar(select(func.count(Feedback.id)))


def test_hostile_feedback_is_a_400(components, client, visitor):
    events = events_of(visitor.ask("How much does shipping cost?"))
    mid = events[0][2]["message_id"]
    before = _counts(components)
    path = f"/api/conversations/{visitor.conversation}/feedback"
    for body in ({"message_id": mid, "rating": [1]}, {"message_id": mid, "rating": {"a": 1}},
                 {"message_id": 10**30, "rating": 1}, {"message_id": -(10**30), "rating": 1},
                 {"message_id": [mid], "rating": 1}, {"message_id": mid, "rating": 1, "comment": ["x"]},
                 {"message_id": True, "rating": 1}, {"message_id": mid, "rating": True},
                 {"message_id": 1.5, "rating": 1}, {"message_id": "1e400", "rating": 1}):
        r = client.post(path, json=body, headers=visitor.headers())
        assert r.status_code == 400, (body, r.status_code, r.get_data(as_text=True))
        assert "error" in r.get_json()
    assert _counts(components) == before


def test_deeply_nested_json_is_a_400(components, client, visitor):
    deep = b"[" * 20_000 + b"]" * 20_000
    for path in (f"/api/conversations/{visitor.conversation}/messages", "/api/session",
                 f"/api/conversations/{visitor.conversation}/feedback"):
        r = client.post(path, data=deep, headers=visitor.headers(**{"Content-Type": "application/json"}))
        assert r.status_code == 400, (path, r.status_code)
    deep_obj = json.dumps({"message": "hi", "x": json.loads("[" * 100 + "]" * 100)})
    r = client.post(f"/api/conversations/{visitor.conversation}/messages", data=deep_obj,
                    headers=visitor.headers(**{"Content-Type": "application/json"}))
    assert r.status_code == 400 and "deep" in error_of(r)
    assert _counts(components) == (0, 0)


@pytest.mark.parametrize("last_event_id", ["²:0", "1:²", "١:0", "99999999999999999999999:0", "1:-1", " : "])
def test_odd_last_event_ids_are_a_404_not_a_500(client, visitor, last_event_id):
    for method in ("get", "post"):
        path = f"/api/conversations/{visitor.conversation}/" + ("events" if method == "get" else "messages")
        r = getattr(client, method)(path, headers=visitor.headers(**{"Last-Event-ID": last_event_id}))
        assert r.status_code == 404, (method, last_event_id, r.status_code)


def test_json_in_text_plain_is_a_415(components, client, visitor, site_key):
    r = client.post(f"/api/conversations/{visitor.conversation}/messages",
                    data=json.dumps({"message": "How much does shipping cost?"}),
                    headers=visitor.headers(**{"Content-Type": "text/plain"}))
    assert r.status_code == 415
    r = client.post("/api/session", data=json.dumps({"site_key": site_key}),
                    headers={"Origin": ORIGIN, "Content-Type": "text/plain;charset=UTF-8"})
    assert r.status_code == 415
    _cors_ok(r)
    assert _counts(components) == (0, 0)


def test_a_10_mb_body_is_a_413(app, client, visitor, site_key):
    big = json.dumps({"message": "x" * 10_000_000})
    r = client.post(f"/api/conversations/{visitor.conversation}/messages", data=big,
                    headers=visitor.headers(**{"Content-Type": "application/json"}))
    assert r.status_code == 413
    _cors_ok(r)
    _, secret = app.extensions["supportbot"].api_keys.create("default")
    r = client.post("/v1/chat/completions", data=big,
                    headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"})
    assert r.status_code == 413 and r.get_json()["error"]["code"] == 413


def test_v1_refuses_text_plain_and_bad_shapes_with_4xx(app, client):
    _, secret = app.extensions["supportbot"].api_keys.create("default")
    auth = {"Authorization": f"Bearer {secret}"}
    body = {"messages": [{"role": "user", "content": "hi"}]}
    r = client.post("/v1/chat/completions", data=json.dumps(body), headers={**auth, "Content-Type": "text/plain"})
    assert r.status_code == 415
    for bad in ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"},
                {"messages": [{"role": ["user"], "content": "hi"}]},
                {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
                {"messages": "hi"}, {"messages": [1]}, {"model": {"a": 1}, "messages": body["messages"]}):
        r = client.post("/v1/chat/completions", json=bad, headers=auth)
        assert r.status_code == 400, (bad, r.status_code, r.get_data(as_text=True))


def test_preflights_are_not_rate_limited_so_the_429_itself_is_readable(tmp_path):
    app, comps, key = _app(tmp_path, ingest=False, rate_limit_ip="2 per minute")
    client = app.test_client()
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    for _ in range(5):
        r = client.options("/api/session", headers=preflight)
        assert r.status_code == 204 and "POST" in r.headers["Access-Control-Allow-Methods"]
    codes = [client.post("/api/session", json={"site_key": key}, headers={"Origin": ORIGIN}).status_code
             for _ in range(3)]
    assert codes == [200, 200, 429]
    r = client.options("/api/session", headers=preflight)
    assert r.status_code == 204  # the browser may still send the request, and read its 429
    comps.db.dispose()
