"""Property-based fuzzing of the visitor API, the OpenAI-compatible API and the admin console.

Hypothesis sends random JSON values (and raw bytes), content types, headers (Origin,
Authorization, Last-Event-ID) and ids to every endpoint of one real app (the product's own
components over SQLite, the scripted generator). Two properties hold for every request:

* no 5xx: hostile input is the client's error, and says so;
* a rejected request (4xx) changes no stored row: every table is read before and after it.

``last_used_at`` of API keys is left out of the comparison: it is a usage stamp written when a
key authenticates, also for a request refused afterwards for its body.
"""
from __future__ import annotations

import io
import json
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import inspect, select, text

from web_fixtures import ORIGIN, Visitor, make_components, make_settings

FUZZ = settings(max_examples=100, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
PASSWORD = "correct horse battery"
SKIP_COLUMNS = {("api_keys", "last_used_at")}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from web import create_app
    from web.auth import create_user

    settings_ = make_settings(tmp_path_factory.mktemp("fuzz"))
    comps = make_components(settings_)
    app = create_app(settings_, comps)
    ctx = app.extensions["supportbot"]
    key = ctx.site_keys.create("default", [ORIGIN]).key
    _, api_secret = ctx.api_keys.create("default", "fuzz")
    client = app.test_client()
    visitor = Visitor(client, key).start()
    events = client.post(f"/api/conversations/{visitor.conversation}/messages",
                         json={"message": "How much does shipping cost?"}, headers=visitor.headers())
    events.get_data()
    other = Visitor(client, key).start()
    create_user(comps.db, "alice", PASSWORD)
    app.config["WTF_CSRF_ENABLED"] = False
    admin = app.test_client()
    assert admin.post("/admin/login", data={"username": "alice", "password": PASSWORD}).status_code == 302
    with comps.db.session() as s:
        mids = list(s.scalars(text("SELECT id FROM messages")))
    yield {"app": app, "comps": comps, "client": client, "visitor": visitor, "other": other,
           "key": key, "api_secret": api_secret, "admin": admin, "mids": mids}
    comps.db.dispose()


def snapshot(comps) -> dict:
    """Every row of every table (blobs by length)."""
    out = {}
    with comps.db.engine.connect() as conn:
        insp = inspect(conn)
        for table in sorted(insp.get_table_names()):
            if table == "alembic_version":
                continue
            cols = [c["name"] for c in insp.get_columns(table) if (table, c["name"]) not in SKIP_COLUMNS]
            rows = conn.execute(text(f"SELECT {', '.join(cols)} FROM {table} ORDER BY 1")).all()
            out[table] = [tuple(len(v) if isinstance(v, (bytes, memoryview)) else v for v in r) for r in rows]
    return out


def check(env, send):
    """Send one request; no 5xx, and nothing stored changes when it is refused."""
    before = snapshot(env["comps"])
    resp = send()
    body = resp.get_data()  # a stream runs to its end
    assert resp.status_code < 500, (resp.status_code, body[:500])
    if resp.status_code >= 400:
        assert snapshot(env["comps"]) == before, (resp.status_code, body[:300])
        if resp.mimetype == "application/json":
            payload = json.loads(body)
            assert "error" in payload or "files" in payload  # an upload reports each file
    return resp


# -- strategies -------------------------------------------------------------------------------
leaves = (st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
          | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30))
json_values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)
latin1 = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=40)
ids = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.text(max_size=12), json_values)
event_ids = st.one_of(latin1, st.builds(lambda a, b: f"{a}:{b}", st.integers(-5, 2**40), st.integers(-5, 2**40)),
                      st.sampled_from(["²:0", "1:²", "١:0", ":", "1:", "0:0", "2:0"]))
content_types = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain",
                                 "application/x-www-form-urlencoded", "application/vnd.x+json", ""])
RAW = [b"", b"{", b"[" * 5000 + b"]" * 5000, b'{"message": "\\ud800"}', b'{"message": "a\\u0000b"}',
       b"\xff\xfe{}", b"null", b'{"rating": NaN, "message_id": Infinity}', b"1e999999"]


def bodies(fields: dict):
    """JSON objects with the endpoint's fields set to random values (sometimes right ones),
    any JSON value at all, or raw bytes."""
    fixed = st.fixed_dictionaries({}, optional={k: st.one_of(v, json_values) for k, v in fields.items()})
    return st.one_of(fixed, json_values, st.sampled_from(RAW))


def encode(body) -> bytes:
    if isinstance(body, bytes):
        return body
    return json.dumps(body).encode()


def conversation_ids(env_key="visitor"):
    return st.one_of(st.sampled_from(["own", "other"]), st.text(max_size=40))


def _cid(env, choice: str) -> str:
    if choice == "own":
        return env["visitor"].conversation
    if choice == "other":
        return env["other"].conversation
    return quote(choice, safe="") or "x"


def visitor_headers(env, auth: str, origin: str, content_type: str, extra: dict | None = None) -> dict:
    tokens = {"own": f"Bearer {env['visitor'].token}", "junk": "Bearer junk", "none": "",
              "other": f"Bearer {env['other'].token}"}
    h = {"Authorization": tokens.get(auth, auth), "Origin": origin}
    if content_type:
        h["Content-Type"] = content_type
    h.update(extra or {})
    return {k: v for k, v in h.items() if v}


auths = st.one_of(st.sampled_from(["own", "own", "junk", "none", "other"]), latin1)
origins = st.one_of(st.sampled_from([ORIGIN, ORIGIN, "null", "https://evil.example", ""]), latin1)


# -- the visitor API ----------------------------------------------------------------------------
@FUZZ
@given(body=bodies({"site_key": st.just("KEY"), "visitor_token": st.just("TOKEN")}),
       origin=origins, content_type=content_types)
def test_fuzz_session(env, body, origin, content_type):
    if isinstance(body, dict):
        body = {k: (env["key"] if v == "KEY" else env["visitor"].token if v == "TOKEN" else v)
                for k, v in body.items()}
    h = {"Origin": origin, "Content-Type": content_type}
    check(env, lambda: env["client"].post("/api/session", data=encode(body),
                                          headers={k: v for k, v in h.items() if v}))


@FUZZ
@given(body=bodies({"page": st.text(max_size=20)}), auth=auths, origin=origins, content_type=content_types)
def test_fuzz_create_conversation(env, body, auth, origin, content_type):
    check(env, lambda: env["client"].post("/api/conversations", data=encode(body),
                                          headers=visitor_headers(env, auth, origin, content_type)))


@FUZZ
@given(cid=conversation_ids(), auth=auths, origin=origins)
def test_fuzz_read_conversation(env, cid, auth, origin):
    check(env, lambda: env["client"].get(f"/api/conversations/{_cid(env, cid)}",
                                         headers=visitor_headers(env, auth, origin, "")))


@FUZZ
@given(cid=conversation_ids(), body=bodies({"message": st.text(max_size=40)}), auth=auths, origin=origins,
       content_type=content_types, last_event_id=st.none() | event_ids)
def test_fuzz_post_message(env, cid, body, auth, origin, content_type, last_event_id):
    extra = {"Last-Event-ID": last_event_id} if last_event_id else {}
    check(env, lambda: env["client"].post(
        f"/api/conversations/{_cid(env, cid)}/messages", data=encode(body),
        headers=visitor_headers(env, auth, origin, content_type, extra)))


@FUZZ
@given(cid=conversation_ids(), last_event_id=event_ids, auth=auths)
def test_fuzz_resume(env, cid, last_event_id, auth):
    check(env, lambda: env["client"].get(
        f"/api/conversations/{_cid(env, cid)}/events",
        headers=visitor_headers(env, auth, ORIGIN, "", {"Last-Event-ID": last_event_id} if last_event_id else {})))


@FUZZ
@given(cid=conversation_ids(),
       body=bodies({"message_id": st.one_of(st.just("MID"), ids),
                    "rating": st.sampled_from([1, -1, "up", "down", "+1", 0, 2, True, [1], 1.0]),
                    "comment": st.text(max_size=30)}),
       auth=auths, content_type=content_types)
def test_fuzz_feedback(env, cid, body, auth, content_type):
    if isinstance(body, dict) and body.get("message_id") == "MID":
        body["message_id"] = env["mids"][-1]
    check(env, lambda: env["client"].post(
        f"/api/conversations/{_cid(env, cid)}/feedback", data=encode(body),
        headers=visitor_headers(env, auth, ORIGIN, content_type)))


@FUZZ
@given(cid=conversation_ids(), body=bodies({"reason": st.text(max_size=80)}), auth=auths, content_type=content_types)
def test_fuzz_handoff(env, cid, body, auth, content_type):
    check(env, lambda: env["client"].post(
        f"/api/conversations/{_cid(env, cid)}/handoff", data=encode(body),
        headers=visitor_headers(env, auth, ORIGIN, content_type)))


# -- the OpenAI-compatible API ------------------------------------------------------------------
messages = st.lists(st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(["user", "assistant", "system", "tool"]), json_values)},
    optional={"content": st.one_of(st.text(max_size=30), json_values,
                                   st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"])},
                                                                  optional={"text": json_values}), max_size=2))}),
    max_size=4)


@FUZZ
@given(body=bodies({"messages": messages, "stream": st.booleans(), "model": json_values}),
       auth=st.sampled_from(["key", "junk", "none"]), content_type=content_types)
def test_fuzz_chat_completions(env, body, auth, content_type):
    h = {"Authorization": {"key": f"Bearer {env['api_secret']}", "junk": "Bearer sb-junk", "none": ""}[auth],
         "Content-Type": content_type}
    check(env, lambda: env["client"].post("/v1/chat/completions", data=encode(body),
                                          headers={k: v for k, v in h.items() if v}))


# -- the admin console --------------------------------------------------------------------------
paths = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters="/?#%"), max_size=30)


@FUZZ
@given(choice=st.sampled_from(["delete", "site", "site_active", "api_active", "status", "list", "detail",
                               "documents", "upload"]),
       value=st.text(max_size=60), number=st.integers(min_value=0, max_value=10**30), seg=paths,
       data=st.binary(max_size=300), suffix=st.sampled_from([".md", ".txt", ".csv", ".jsonl", ".docx", ".pdf",
                                                             ".html", ".exe", ""]))
def test_fuzz_admin(env, choice, value, number, seg, data, suffix):
    admin = env["admin"]
    cid = quote(seg, safe="") or "x"
    send = {
        "delete": lambda: admin.post("/admin/documents/delete", data={"doc_id": value}),
        "site": lambda: admin.post("/admin/keys/site", data={"origins": value}),
        "site_active": lambda: admin.post(f"/admin/keys/site/{cid}/active", data={"active": value}),
        "api_active": lambda: admin.post(f"/admin/keys/api/{number}/active", data={"active": "1"}),
        "status": lambda: admin.post(f"/admin/conversations/{cid}/status", data={"status": value}),
        "list": lambda: admin.get("/admin/conversations", query_string={"offset": value or str(number),
                                                                        "status": value}),
        "detail": lambda: admin.get(f"/admin/conversations/{cid}"),
        "documents": lambda: admin.get("/admin/documents", query_string={"q": value, "bot": value}),
        "upload": lambda: admin.post("/admin/documents/upload",
                                     data={"files": (io.BytesIO(data), (value[:20] or "f") + suffix)},
                                     headers={"X-Requested-With": "fetch"}, content_type="multipart/form-data"),
    }[choice]
    if choice == "delete" and any(value == d["id"] for d in env["comps"].knowledge.documents("default")):
        return  # a real document: its deletion is accepted, not fuzzed
    check(env, send)
