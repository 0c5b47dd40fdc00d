"""The chat API end to end: streamed events, stored rows, history, feedback, hand-off, resume."""
from __future__ import annotations

import threading
import time

from sqlalchemy import select

from bot.core.store.models import Feedback, Handoff, Message
from web.answers import parse_event_id
from web_fixtures import *  # noqa: F401,F403 - fixtures
from web_fixtures import ORIGIN, ScriptedGenerator, Visitor, events_of, make_components, make_settings


def test_message_streams_meta_tokens_sources_done_and_stores_rows(components, client, visitor):
    r = visitor.ask("How much does shipping cost?")
    assert r.status_code == 200
    assert r.mimetype == "text/event-stream"
    assert r.headers["X-Accel-Buffering"] == "no"
    assert "no-cache" in r.headers["Cache-Control"]
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    events = events_of(r)
    types = [t for _, t, _ in events]
    assert types[0] == "meta" and types[-1] == "done"
    assert types.count("token") >= 5  # streamed word by word, not one blob
    assert types.index("sources") > max(i for i, t in enumerate(types) if t == "token")
    meta = events[0][2]
    assert meta["decision"] == "answer" and meta["conversation_id"] == visitor.conversation
    text = "".join(d["text"] for _, t, d in events if t == "token")
    assert "shipping" in text.lower()
    sources = next(d["sources"] for _, t, d in events if t == "sources")
    assert sources and all(s["url"].startswith("/source/") for s in sources)
    # Event ids name the answer and the text offset: the last one covers the whole text.
    assert parse_event_id(events[-1][0]) == (meta["message_id"], len(text))
    with components.db.session() as s:
        rows = s.scalars(select(Message).where(Message.conversation_id == visitor.conversation)
                         .order_by(Message.id)).all()
    assert [m.role for m in rows] == ["user", "bot"]
    assert rows[0].text == "How much does shipping cost?"
    assert rows[1].text == text and rows[1].complete and rows[1].sources


def test_history_lists_the_visitors_messages_with_sources(client, visitor):
    visitor.ask("How much does shipping cost?")
    r = client.get(f"/api/conversations/{visitor.conversation}", headers=visitor.headers())
    assert r.status_code == 200
    msgs = r.json["messages"]
    assert [m["role"] for m in msgs] == ["user", "agent"]
    assert msgs[1]["complete"] is True and msgs[1]["sources"][0]["url"].startswith("/source/")
    # Internal figures (scores, model, tokens) are for the admin, not the visitor.
    assert "scores" not in msgs[1] and "model_id" not in msgs[1]


def test_source_link_shows_the_passage_as_escaped_text(app, client, visitor, components):
    events = events_of(visitor.ask("How much does shipping cost?"))
    url = next(d["sources"] for _, t, d in events if t == "sources")[0]["url"]
    page = client.get(url)
    assert page.status_code == 200
    assert "Shipping" in page.get_data(as_text=True)
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    # The passage is only shown for the site key's own bot.
    assert client.get(url.split("?")[0] + "?k=sk_unknown").status_code == 403


def test_feedback_is_stored(components, client, visitor):
    events = events_of(visitor.ask("How much does shipping cost?"))
    mid = events[0][2]["message_id"]
    r = client.post(f"/api/conversations/{visitor.conversation}/feedback",
                    json={"message_id": mid, "rating": "down", "comment": "too vague"}, headers=visitor.headers())
    assert r.status_code == 201
    with components.db.session() as s:
        fb = s.scalars(select(Feedback)).one()
    assert (fb.message_id, fb.rating, fb.comment) == (mid, -1, "too vague")
    history = client.get(f"/api/conversations/{visitor.conversation}", headers=visitor.headers()).json
    assert history["messages"][1]["feedback"] == {"rating": -1, "comment": "too vague"}


def test_asking_for_a_person_hands_off(components, client, visitor):
    r = client.post(f"/api/conversations/{visitor.conversation}/handoff", json={}, headers=visitor.headers())
    assert r.status_code == 200 and r.json["status"] == "waiting" and r.json["message"]
    assert client.get(f"/api/conversations/{visitor.conversation}", headers=visitor.headers()).json["status"] == "waiting"
    with components.db.session() as s:
        assert s.scalars(select(Handoff.reason)).all() == ["requested"]


def test_asking_for_a_human_in_the_chat_streams_a_handoff_event(visitor):
    events = events_of(visitor.ask("I want to talk to a human please"))
    types = [t for _, t, _ in events]
    assert types == ["meta", "handoff", "done"]
    assert events[1][2]["message"]


def test_heartbeats_keep_a_slow_stream_alive(tmp_path):
    from web import create_app

    settings = make_settings(tmp_path, heartbeat_s=0.05)
    comps = make_components(settings, generator=ScriptedGenerator(words=4, delay_s=0.2))
    app = create_app(settings, comps)
    key = app.extensions["supportbot"].site_keys.create("default", [ORIGIN]).key
    v = Visitor(app.test_client(), key).start()
    body = v.ask("How much does shipping cost?").get_data(as_text=True)
    assert body.count(": ping") >= 3
    assert body.rstrip().endswith("}") and "event: done" in body
    comps.db.dispose()


def _first_events(response, n):
    """Read the first ``n`` events of a streaming response, then drop the connection."""
    import json

    from web.sse import parse

    buf, events = "", []
    chunks = response.response
    for chunk in chunks:
        buf += chunk.decode() if isinstance(chunk, bytes) else chunk
        events = parse(buf)
        if len(events) >= n:
            break
    response.close()  # the client goes away mid-answer
    return [(i, t, json.loads(d)) for i, t, d in events[:n]]


def test_reconnecting_with_last_event_id_gets_the_rest_not_a_second_answer(tmp_path):
    from web import create_app

    gate = threading.Event()
    settings = make_settings(tmp_path)
    comps = make_components(settings, generator=ScriptedGenerator(words=10, gate=gate))
    app = create_app(settings, comps)
    key = app.extensions["supportbot"].site_keys.create("default", [ORIGIN]).key
    v = Visitor(app.test_client(), key).start()
    first = _first_events(app.test_client().post(f"/api/conversations/{v.conversation}/messages",
                                                 json={"message": "How much does shipping cost?"},
                                                 headers=v.headers(), buffered=False), 2)
    assert [t for _, t, _ in first] == ["meta", "token"]
    last_id = first[-1][0]
    gate.set()  # the answer goes on without the client
    resumed = events_of(app.test_client().post(f"/api/conversations/{v.conversation}/messages",
                                               headers=v.headers(**{"Last-Event-ID": last_id})))
    assert resumed[0][1] == "meta" and resumed[0][2]["resumed"] is True
    assert resumed[-1][1] == "done"
    full = "".join(d["text"] for _, t, d in first + resumed if t == "token")
    with comps.db.session() as s:
        rows = s.scalars(select(Message).where(Message.conversation_id == v.conversation)).all()
    assert [m.role for m in rows] == ["user", "bot"]  # one answer, not two
    assert rows[1].text == full  # nothing lost, nothing repeated
    comps.db.dispose()


def test_another_worker_resumes_from_the_stored_progress(tmp_path):
    """Two apps over one database stand for two gunicorn workers: the answer runs in the first,
    the client reconnects to the second, which follows the message row to the end."""
    from web import create_app

    gate = threading.Event()
    settings = make_settings(tmp_path, resume_persist_s=0.0, workers=2)
    comps_a = make_components(settings, generator=ScriptedGenerator(words=10, gate=gate))
    app_a = create_app(settings, comps_a)
    key = app_a.extensions["supportbot"].site_keys.create("default", [ORIGIN]).key
    v = Visitor(app_a.test_client(), key).start()
    first = _first_events(app_a.test_client().post(f"/api/conversations/{v.conversation}/messages",
                                                   json={"message": "How much does shipping cost?"},
                                                   headers=v.headers(), buffered=False), 2)
    mid, offset = parse_event_id(first[-1][0])

    comps_b = make_components(settings, ingest=False)
    app_b = create_app(settings, comps_b)
    app_b.extensions["supportbot"].answers.poll_s = 0.02
    threading.Timer(0.3, gate.set).start()  # the first worker finishes while the second follows
    t0 = time.monotonic()
    resumed = events_of(app_b.test_client().get(f"/api/conversations/{v.conversation}/events",
                                                headers=v.headers(**{"Last-Event-ID": first[-1][0]})))
    assert time.monotonic() - t0 < 10
    types = [t for _, t, _ in resumed]
    assert types[0] == "meta" and types[-1] == "done" and "sources" in types
    full = "".join(d["text"] for _, t, d in first + resumed if t == "token")
    with comps_a.db.session() as s:
        row = s.get(Message, mid)
    assert row.complete and row.text == full
    comps_a.db.dispose()
    comps_b.db.dispose()


def test_resume_of_an_unknown_answer_is_a_404(client, visitor):
    r = client.get(f"/api/conversations/{visitor.conversation}/events",
                   headers=visitor.headers(**{"Last-Event-ID": "999:0"}))
    assert r.status_code == 404
    r = client.get(f"/api/conversations/{visitor.conversation}/events",
                   headers=visitor.headers(**{"Last-Event-ID": "garbage"}))
    assert r.status_code == 404


def test_openai_compatible_completion_answers_from_the_knowledge_base(app, client, components):
    info, secret = app.extensions["supportbot"].api_keys.create("default", "tests")
    auth = {"Authorization": f"Bearer {secret}"}
    r = client.post("/v1/chat/completions", headers=auth, json={
        "model": "anything",
        "messages": [{"role": "system", "content": "ignored"},
                     {"role": "user", "content": "hello"}, {"role": "assistant", "content": "Hi!"},
                     {"role": "user", "content": "How much does shipping cost?"}]})
    assert r.status_code == 200, r.get_data(as_text=True)
    body = r.get_json()
    assert body["object"] == "chat.completion" and body["model"] == "anything"
    content = body["choices"][0]["message"]["content"]
    assert "shipping" in content.lower() and body["choices"][0]["finish_reason"] == "stop"
    assert body["supportbot"]["decision"] == "answer" and body["supportbot"]["sources"]
    # Stored as a conversation with its history, for the admin console.
    history = components.conversations.history(body["supportbot"]["conversation_id"])
    assert [m["role"] for m in history] == ["user", "bot", "user", "bot"]

    models = client.get("/v1/models", headers=auth).get_json()
    assert models["data"][0]["id"] == "default"


def test_openai_compatible_streaming(app, client):
    import json

    _, secret = app.extensions["supportbot"].api_keys.create("default")
    r = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                    json={"stream": True, "messages": [{"role": "user", "content": "How do I start a return?"}]})
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    lines = [l[6:] for l in r.get_data(as_text=True).split("\n") if l.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(l) for l in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert len([c for c in chunks if c["choices"][0]["delta"].get("content")]) >= 5
    assert "return" in text.lower()
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_openai_endpoint_refuses_site_keys_bad_keys_and_bad_messages(app, client, site_key):
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 401 and "API key" in r.get_json()["error"]["message"]
    r = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {site_key}"},
                    json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 401
    info, secret = app.extensions["supportbot"].api_keys.create("default")
    auth = {"Authorization": f"Bearer {secret}"}
    r = client.post("/v1/chat/completions", headers=auth, json={"messages": []})
    assert r.status_code == 400 and "messages" in r.get_json()["error"]["message"]
    r = client.post("/v1/chat/completions", headers=auth,
                    json={"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    assert r.status_code == 400 and "last message" in r.get_json()["error"]["message"]
    app.extensions["supportbot"].api_keys.set_active(info.id, False)
    r = client.post("/v1/chat/completions", headers=auth, json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 401


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.get_json() == {"status": "ok", "ready": True, "database": "ok", "index": "ok"}
