"""Admin sessions and logins (items 5 and 10 of the hardening issue).

5. A session cookie is dead after logout (the session is recorded server-side); a new API key's
   secret is shown once and never stored in the client-side session cookie.
10. Failed logins lock the account for a while whatever the IP they come from; bot names cannot
    be probed before login.
"""
from __future__ import annotations

import json
import re

import pytest

from web_fixtures import *  # noqa: F401,F403 - fixtures

PASSWORD = "correct horse battery"
COOKIE = "supportbot_admin"


@pytest.fixture
def login(app, components):
    from web.auth import create_user

    create_user(components.db, "alice", PASSWORD)
    app.config["WTF_CSRF_ENABLED"] = False

    def do(client=None, **environ):
        client = client or app.test_client()
        r = client.post("/admin/login", data={"username": "alice", "password": PASSWORD},
                        environ_base=environ or {})
        assert r.status_code == 302, r.get_data(as_text=True)
        return client

    return do


def _cookie(client) -> str:
    return client.get_cookie(COOKIE).value


def _decoded(app, value: str) -> dict:
    return app.session_interface.get_signing_serializer(app).loads(value)


def test_a_session_cookie_is_dead_after_logout(app, login):
    client = login()
    stolen = _cookie(client)
    assert client.get("/admin/documents").status_code == 200
    assert client.post("/admin/logout").status_code == 302
    replay = app.test_client()
    replay.set_cookie(COOKIE, stolen)
    r = replay.get("/admin/documents")
    assert r.status_code == 302 and "/admin/login" in r.headers["Location"]


def test_logging_in_again_does_not_revive_an_old_cookie(app, login):
    first = login()
    old = _cookie(first)
    first.post("/admin/logout")
    login()  # a new session elsewhere
    replay = app.test_client()
    replay.set_cookie(COOKIE, old)
    assert replay.get("/admin/keys").status_code == 302


def test_a_forged_cookie_naming_a_user_id_is_not_a_session(app, login):
    login()
    forged = app.session_interface.get_signing_serializer(app).dumps({"user_id": 1, "_permanent": True})
    c = app.test_client()
    c.set_cookie(COOKIE, forged)
    assert c.get("/admin/documents").status_code == 302


def test_a_new_api_secret_is_shown_once_and_never_in_the_cookie(app, login):
    client = login()
    r = client.post("/admin/keys/api", data={"name": "crm"}, follow_redirects=True)
    assert r.status_code in (200, 201)
    secret = re.search(r"(sb-[A-Za-z0-9_-]{20,})", r.get_data(as_text=True)).group(1)
    for response in list(r.history) + [r]:
        for header in response.headers.getlist("Set-Cookie"):
            assert secret not in header
            value = header.split(";", 1)[0].split("=", 1)[1]
            if value:
                assert secret not in json.dumps(_decoded(app, value))
    assert secret not in json.dumps(_decoded(app, _cookie(client)))
    assert secret not in client.get("/admin/keys").get_data(as_text=True)
    assert r.headers.get("Cache-Control", "").startswith("no-store")


def test_failed_logins_lock_the_account_whatever_the_ip(app, components, login):
    from web.auth import create_user

    create_user(components.db, "bob", PASSWORD)
    client = app.test_client()
    codes = [client.post("/admin/login", data={"username": "alice", "password": f"guess {i}"},
                         environ_base={"REMOTE_ADDR": f"10.0.0.{i}"}).status_code for i in range(5)]
    assert codes == [401] * 5
    # Locked: even the right password, from yet another address, is refused for a while.
    r = client.post("/admin/login", data={"username": "alice", "password": PASSWORD},
                    environ_base={"REMOTE_ADDR": "10.0.1.1"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    assert client.get("/admin/documents").status_code == 302
    # Other accounts are not locked.
    r = client.post("/admin/login", data={"username": "bob", "password": PASSWORD},
                    environ_base={"REMOTE_ADDR": "10.0.2.1"})
    assert r.status_code == 302


def test_an_unknown_account_locks_the_same_way(app, login):
    client = app.test_client()
    codes = [client.post("/admin/login", data={"username": "nobody", "password": "x"},
                         environ_base={"REMOTE_ADDR": f"10.0.3.{i}"}).status_code for i in range(6)]
    assert codes == [401] * 5 + [429]  # existence is not revealed by the lockout either


def test_a_success_resets_the_failure_count(app, login):
    client = app.test_client()
    for i in range(4):
        client.post("/admin/login", data={"username": "alice", "password": "wrong"},
                    environ_base={"REMOTE_ADDR": f"10.0.4.{i}"})
    login()
    for i in range(4):
        assert client.post("/admin/login", data={"username": "alice", "password": "wrong"},
                           environ_base={"REMOTE_ADDR": f"10.0.5.{i}"}).status_code == 401
    login()


def test_bot_names_cannot_be_probed_before_login(client):
    for path in ("/admin/documents?bot=nosuchbot", "/admin/documents?bot=default",
                 "/admin/keys?bot=nosuchbot", "/admin/conversations?bot=nosuchbot"):
        r = client.get(path)
        assert r.status_code == 302 and "/admin/login" in r.headers["Location"], (path, r.status_code)


def test_a_logged_in_admin_still_gets_404_for_an_unknown_bot(login):
    client = login()
    assert client.get("/admin/documents?bot=nosuchbot").status_code == 404
    assert client.get("/admin/documents?bot=default").status_code == 200
