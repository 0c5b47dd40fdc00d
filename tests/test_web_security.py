"""Every security rule of the web app, each shown refusing a bad request with a clear 4xx."""
from __future__ import annotations

import io
import time

import pytest
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import func, select

from bot.core.store.models import Document, Feedback, Message
from web_fixtures import *  # noqa: F401,F403 - fixtures
from web_fixtures import ORIGIN, Visitor, make_components, make_settings


def error_of(resp) -> str:
    body = resp.get_json()
    assert body and "error" in body, resp.get_data(as_text=True)
    return body["error"]["message"]


# -- origins and CORS ---------------------------------------------------------------------------
def test_session_from_wrong_origin_is_refused(client, site_key):
    r = client.post("/api/session", json={"site_key": site_key}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert "origin https://evil.example is not allowed" in error_of(r)
    assert "Access-Control-Allow-Origin" not in r.headers


def test_session_without_origin_is_refused(client, site_key):
    r = client.post("/api/session", json={"site_key": site_key})
    assert r.status_code == 403
    assert "Origin" in error_of(r)


def test_allowed_origin_gets_cors_headers_and_origin_is_normalised(client, site_key):
    r = client.post("/api/session", json={"site_key": site_key}, headers={"Origin": "HTTPS://Shop.Example:443"})
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == "HTTPS://Shop.Example:443"
    assert "Origin" in r.headers.get("Vary", "")


def test_unknown_and_deactivated_site_keys_are_refused(app, client, site_key):
    r = client.post("/api/session", json={"site_key": "sk_nope"}, headers={"Origin": ORIGIN})
    assert r.status_code == 403 and "site key" in error_of(r)
    ctx = app.extensions["supportbot"]
    ctx.site_keys.set_active(site_key, False)
    r = client.post("/api/session", json={"site_key": site_key}, headers={"Origin": ORIGIN})
    assert r.status_code == 403


def test_cors_preflight_only_for_allowed_origins(client, site_key):
    ok = client.options("/api/session", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert ok.status_code == 204
    assert ok.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Authorization" in ok.headers["Access-Control-Allow-Headers"]
    bad = client.options("/api/session", headers={"Origin": "https://evil.example",
                                                  "Access-Control-Request-Method": "POST"})
    assert bad.status_code == 403
    assert "Access-Control-Allow-Origin" not in bad.headers


def test_valid_token_used_from_another_origin_is_refused(visitor):
    r = visitor.ask("How much does shipping cost?", Origin="https://evil.example")
    assert r.status_code == 403
    assert "not allowed" in error_of(r)


# -- visitor tokens -----------------------------------------------------------------------------
def test_missing_and_tampered_tokens_are_refused(client, visitor):
    path = f"/api/conversations/{visitor.conversation}"
    r = client.get(path, headers={"Origin": ORIGIN})
    assert r.status_code == 401 and "missing visitor token" in error_of(r)
    r = client.get(path, headers={"Origin": ORIGIN, "Authorization": f"Bearer {visitor.token}x"})
    assert r.status_code == 401 and "invalid visitor token" in error_of(r)


def _token_issued_at(app, payload: dict, seconds_ago: int) -> str:
    """A genuine token, signed with the app's secret, as if issued ``seconds_ago``."""

    class Past(URLSafeTimedSerializer):
        pass

    serializer = Past(app.config["SECRET_KEY"], salt="supportbot.visitor.v1")
    signer = serializer.make_signer(serializer.salt)
    signer.get_timestamp = lambda: int(time.time()) - seconds_ago  # type: ignore[method-assign]
    return signer.sign(serializer.dump_payload(payload)).decode()


def test_expired_token_is_refused_but_renews_to_the_same_visitor(app, client, visitor):
    ctx = app.extensions["supportbot"]
    vid = ctx.tokens.verify(visitor.token).visitor_id
    old = _token_issued_at(app, {"v": vid, "k": visitor.site_key}, ctx.tokens.ttl_s + 60)
    r = client.get(f"/api/conversations/{visitor.conversation}",
                   headers={"Origin": ORIGIN, "Authorization": f"Bearer {old}"})
    assert r.status_code == 401
    assert "expired" in error_of(r)
    # The widget exchanges it for a fresh token of the same visitor, who still sees the conversation.
    r = client.post("/api/session", json={"site_key": visitor.site_key, "visitor_token": old},
                    headers={"Origin": ORIGIN})
    assert r.status_code == 200 and r.json["renewed"] is True and r.json["visitor_id"] == vid
    r = client.get(f"/api/conversations/{visitor.conversation}",
                   headers={"Origin": ORIGIN, "Authorization": f"Bearer {r.json['visitor_token']}"})
    assert r.status_code == 200


def test_token_older_than_refresh_age_starts_a_new_visitor(app, client, visitor):
    ctx = app.extensions["supportbot"]
    vid = ctx.tokens.verify(visitor.token).visitor_id
    ancient = _token_issued_at(app, {"v": vid, "k": visitor.site_key}, ctx.tokens.refresh_max_age_s + 60)
    r = client.post("/api/session", json={"site_key": visitor.site_key, "visitor_token": ancient},
                    headers={"Origin": ORIGIN})
    assert r.status_code == 200
    assert r.json["renewed"] is False and r.json["visitor_id"] != vid


def test_token_of_another_site_key_does_not_renew(app, client, visitor):
    other = app.extensions["supportbot"].site_keys.create("default", [ORIGIN]).key
    r = client.post("/api/session", json={"site_key": other, "visitor_token": visitor.token},
                    headers={"Origin": ORIGIN})
    assert r.status_code == 200 and r.json["renewed"] is False


def test_another_visitors_conversation_is_not_found(client, site_key, visitor):
    r = visitor.ask("How much does shipping cost?")
    assert r.status_code == 200
    intruder = Visitor(client, site_key).start()
    cid = visitor.conversation
    for resp in (
        client.get(f"/api/conversations/{cid}", headers=intruder.headers()),
        client.post(f"/api/conversations/{cid}/messages", json={"message": "hi"}, headers=intruder.headers()),
        client.post(f"/api/conversations/{cid}/feedback", json={"message_id": 1, "rating": 1},
                    headers=intruder.headers()),
        client.post(f"/api/conversations/{cid}/handoff", json={}, headers=intruder.headers()),
        client.get(f"/api/conversations/{cid}/events", headers=intruder.headers(**{"Last-Event-ID": "2:0"})),
    ):
        assert resp.status_code == 404, resp.get_data(as_text=True)
        assert cid in error_of(resp)
    # ... and none of that touched the conversation.
    assert len(client.get(f"/api/conversations/{cid}", headers=visitor.headers()).json["messages"]) == 2


# -- input validation ---------------------------------------------------------------------------
def test_malformed_json_is_a_400_and_stores_nothing(components, client, visitor):
    r = client.post(f"/api/conversations/{visitor.conversation}/messages", data=b"{not json",
                    headers=visitor.headers(**{"Content-Type": "application/json"}))
    assert r.status_code == 400
    assert "not valid JSON" in error_of(r)
    r = client.post(f"/api/conversations/{visitor.conversation}/messages", json=["a", "list"],
                    headers=visitor.headers())
    assert r.status_code == 400 and "JSON object" in error_of(r)
    r = client.post(f"/api/conversations/{visitor.conversation}/messages", json={"text": "wrong field"},
                    headers=visitor.headers())
    assert r.status_code == 400 and "message" in error_of(r)
    with components.db.session() as s:
        assert s.scalar(select(func.count(Message.id))) == 0


def test_too_long_message_is_refused(app, visitor):
    limit = app.extensions["supportbot"].settings.dialogue.max_message_chars
    r = visitor.ask("x" * (limit + 1))
    assert r.status_code == 400
    assert f"max {limit}" in error_of(r)


def test_bad_feedback_is_refused(client, visitor):
    path = f"/api/conversations/{visitor.conversation}/feedback"
    r = client.post(path, json={"message_id": 1, "rating": 5}, headers=visitor.headers())
    assert r.status_code == 400 and "rating" in error_of(r)
    r = client.post(path, json={"message_id": "abc", "rating": 1}, headers=visitor.headers())
    assert r.status_code == 400 and "message_id" in error_of(r)


# -- rate limits --------------------------------------------------------------------------------
def test_visitor_rate_limit_answers_429_with_retry_after(tmp_path):
    from web import create_app

    settings = make_settings(tmp_path, rate_limit_visitor="2 per minute")
    comps = make_components(settings)
    app = create_app(settings, comps)
    key = app.extensions["supportbot"].site_keys.create("default", [ORIGIN]).key
    client = app.test_client()
    v = Visitor(client, key).start()
    assert v.ask("How much does shipping cost?").status_code == 200
    assert v.ask("Can I return used gear?").status_code == 200
    r = v.ask("How long does delivery take?")
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) > 0
    assert "error" in r.get_json()
    # The limit is per visitor: another visitor from the same address still gets answers.
    assert Visitor(client, key).start().ask("How much does shipping cost?").status_code == 200
    comps.db.dispose()


def test_ip_rate_limit_answers_429(tmp_path):
    from web import create_app

    settings = make_settings(tmp_path, rate_limit_ip="3 per minute")
    comps = make_components(settings, ingest=False)
    app = create_app(settings, comps)
    key = app.extensions["supportbot"].site_keys.create("default", [ORIGIN]).key
    client = app.test_client()
    codes = [client.post("/api/session", json={"site_key": key}, headers={"Origin": ORIGIN}).status_code
             for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    comps.db.dispose()


# -- admin: login, CSRF, uploads, CSP -----------------------------------------------------------
@pytest.fixture
def admin_client(app, components):
    from web.auth import create_user

    create_user(components.db, "alice", "correct horse battery")
    app.config["WTF_CSRF_ENABLED"] = True
    client = app.test_client()
    page = client.get("/admin/login")
    token = _csrf(page)
    r = client.post("/admin/login", data={"username": "alice", "password": "correct horse battery",
                                          "csrf_token": token})
    assert r.status_code == 302
    return client


def _csrf(resp) -> str:
    import re

    found = re.search(r'name="csrf_token" value="([^"]+)"', resp.get_data(as_text=True))
    assert found, "the page has no CSRF token"
    return found.group(1)


def test_admin_pages_need_a_login(client):
    for path in ("/admin/documents", "/admin/keys", "/admin/conversations"):
        r = client.get(path)
        assert r.status_code == 302 and "/admin/login" in r.headers["Location"]
    r = client.post("/admin/documents/upload", data={})
    assert r.status_code in (302, 400)  # CSRF (400) or login (302): never accepted


def test_wrong_password_is_refused(app, components, client):
    from web.auth import create_user

    create_user(components.db, "alice", "correct horse battery")
    app.config["WTF_CSRF_ENABLED"] = False
    r = client.post("/admin/login", data={"username": "alice", "password": "wrong"})
    assert r.status_code == 401
    assert "Wrong username or password" in r.get_data(as_text=True)
    assert client.get("/admin/documents").status_code == 302


def test_admin_post_without_csrf_token_is_refused(admin_client, components):
    before = len(components.knowledge.documents("default"))
    r = admin_client.post("/admin/documents/delete", data={"doc_id": "faq.csv"})
    assert r.status_code == 400
    assert "CSRF" in r.get_data(as_text=True)
    assert len(components.knowledge.documents("default")) == before


def test_session_cookie_is_httponly_and_samesite(app, components):
    from web.auth import create_user

    create_user(components.db, "bob", "correct horse battery")
    app.config["WTF_CSRF_ENABLED"] = False
    r = app.test_client().post("/admin/login", data={"username": "bob", "password": "correct horse battery"})
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_admin_has_strict_csp(admin_client):
    r = admin_client.get("/admin/documents")
    assert r.status_code == 200
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp and "frame-ancestors 'none'" in csp


def test_oversized_upload_is_refused_and_loses_nothing(tmp_path):
    from web import create_app
    from web.auth import create_user

    settings = make_settings(tmp_path, max_upload_mb=0.01)  # 10 kB
    comps = make_components(settings)
    app = create_app(settings, comps)
    create_user(comps.db, "alice", "correct horse battery")
    app.config["WTF_CSRF_ENABLED"] = False
    client = app.test_client()
    client.post("/admin/login", data={"username": "alice", "password": "correct horse battery"})
    before = comps.knowledge.documents("default")
    big = io.BytesIO(b"# Big\n\n" + b"word " * 40_000)  # 200 kB
    r = client.post("/admin/documents/upload", data={"files": (big, "big.md")},
                    headers={"X-Requested-With": "fetch"}, content_type="multipart/form-data")
    assert r.status_code == 413
    assert "MB limit" in r.get_json()["error"]["message"]
    assert comps.knowledge.documents("default") == before
    comps.db.dispose()


def test_unsupported_upload_type_is_refused_naming_the_file(app, admin_client, components):
    app.config["WTF_CSRF_ENABLED"] = False
    r = admin_client.post("/admin/documents/upload", data={"files": (io.BytesIO(b"MZ\x90\x00"), "setup.exe")},
                          headers={"X-Requested-With": "fetch"}, content_type="multipart/form-data")
    assert r.status_code == 415
    result = r.get_json()["files"][0]
    assert result["file"] == "setup.exe" and not result["ok"]
    assert "setup.exe" in result["errors"][0] and "unsupported" in result["errors"][0]
    with components.db.session() as s:
        assert s.scalar(select(func.count(Document.id)).where(Document.external_id.like("%setup%"))) == 0


# -- errors never leak internals ----------------------------------------------------------------
def test_unexpected_error_is_a_plain_500_without_traceback(app, client, visitor, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("secret internal detail /etc/passwd")

    monkeypatch.setattr(app.extensions["supportbot"].components.conversations, "history", boom)
    r = client.get(f"/api/conversations/{visitor.conversation}", headers=visitor.headers())
    assert r.status_code == 500
    assert r.get_json() == {"error": {"message": "internal error", "type": "InternalError", "code": 500}}
    assert "Traceback" not in r.get_data(as_text=True) and "secret" not in r.get_data(as_text=True)


def test_unknown_path_is_json_404_on_the_api(client):
    r = client.get("/api/nothing-here")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == 404


def test_feedback_is_stored_only_for_replies_in_the_conversation(components, client, visitor):
    from web_fixtures import events_of

    events = events_of(visitor.ask("How much does shipping cost?"))
    mid = next(d["message_id"] for _, t, d in events if t == "meta")
    r = client.post(f"/api/conversations/{visitor.conversation}/feedback",
                    json={"message_id": mid - 1, "rating": 1}, headers=visitor.headers())
    assert r.status_code == 400  # the visitor's own message
    with components.db.session() as s:
        assert s.scalar(select(func.count(Feedback.id))) == 0


def test_login_attempts_are_rate_limited_per_ip(tmp_path):
    from web import create_app

    settings = make_settings(tmp_path, rate_limit_login="3 per minute")
    comps = make_components(settings, ingest=False)
    app = create_app(settings, comps)
    app.config["WTF_CSRF_ENABLED"] = False
    client = app.test_client()
    codes = [client.post("/admin/login", data={"username": "x", "password": "guess"}).status_code
             for _ in range(4)]
    assert codes == [401, 401, 401, 429]
    assert client.get("/admin/login").status_code == 200  # only attempts count
    comps.db.dispose()


def test_per_ip_limit_also_counts_messages(tmp_path):
    from web import create_app

    settings = make_settings(tmp_path, rate_limit_ip="4 per minute")
    comps = make_components(settings)
    app = create_app(settings, comps)
    key = app.extensions["supportbot"].site_keys.create("default", [ORIGIN]).key
    v = Visitor(app.test_client(), key).start()  # 2 requests
    codes = [v.ask("How much does shipping cost?").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    comps.db.dispose()


@pytest.mark.parametrize("raw,expected", [
    ("https://Shop.Example.com/", "https://shop.example.com"),
    ("http://localhost:8080", "http://localhost:8080"),
    ("https://a.example:443", "https://a.example"),
])
def test_origins_are_normalised(raw, expected):
    from web.keys import normalize_origin

    assert normalize_origin(raw) == expected


@pytest.mark.parametrize("raw", ["shop.example", "ftp://x.example", "https://", "javascript:alert(1)"])
def test_bad_origins_are_refused(raw):
    from bot.core.errors import SupportbotError
    from web.keys import normalize_origin

    with pytest.raises(SupportbotError, match="not an origin"):
        normalize_origin(raw)


def test_file_over_the_upload_limit_is_refused_by_name(tmp_path):
    """A file just over the limit that still fits the request envelope is refused on its own."""
    from web import create_app
    from web.auth import create_user

    settings = make_settings(tmp_path, max_upload_mb=0.01)  # 10 kB; the request may be a bit larger
    comps = make_components(settings, ingest=False)
    app = create_app(settings, comps)
    create_user(comps.db, "alice", "correct horse battery")
    app.config["WTF_CSRF_ENABLED"] = False
    client = app.test_client()
    client.post("/admin/login", data={"username": "alice", "password": "correct horse battery"})
    r = client.post("/admin/documents/upload", data={"files": (io.BytesIO(b"x" * 12_000), "notes.txt")},
                    headers={"X-Requested-With": "fetch"}, content_type="multipart/form-data")
    assert r.status_code == 413
    assert r.get_json()["files"][0]["errors"] == ["notes.txt: larger than the 0.01 MB upload limit"]
    assert comps.knowledge.documents("default") == []
    comps.db.dispose()
