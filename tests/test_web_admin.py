"""The admin console and the admin CLI: uploads, documents, keys, conversations."""
from __future__ import annotations

import html
import io
import re

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from bot.core.store.models import ApiKey, SiteKey, User
from web_fixtures import *  # noqa: F401,F403 - fixtures
from web_fixtures import ORIGIN, Visitor, events_of

PASSWORD = "correct horse battery"


def csrf_of(resp) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', resp.get_data(as_text=True))
    assert found, "no CSRF token on the page"
    return found.group(1)


@pytest.fixture
def admin(app, components):
    """A logged-in admin browser with CSRF checks on (every form sends its token)."""
    from web.auth import create_user

    create_user(components.db, "alice", PASSWORD)
    app.config["WTF_CSRF_ENABLED"] = True
    client = app.test_client()
    r = client.post("/admin/login?next=/admin/keys", data={
        "username": "alice", "password": PASSWORD, "csrf_token": csrf_of(client.get("/admin/login"))})
    assert r.status_code == 302 and r.headers["Location"].endswith("/admin/keys")
    return client


def test_login_redirect_never_leaves_the_site(app, components):
    from web.auth import create_user

    create_user(components.db, "eve", PASSWORD)
    app.config["WTF_CSRF_ENABLED"] = False
    r = app.test_client().post("/admin/login?next=//evil.example/x", data={"username": "eve", "password": PASSWORD})
    assert r.status_code == 302 and r.headers["Location"] == "/admin/documents"


def test_upload_several_files_reports_each(admin, components):
    token = csrf_of(admin.get("/admin/documents"))
    files = {
        "files": [
            (io.BytesIO(b"# Gift cards\n\n## Do gift cards expire?\nNo, Northwind gift cards never expire.\n"), "gifts.md"),
            (io.BytesIO(b"question,answer\nDo you ship to Canada?,Yes we ship to Canada in 5-8 days.\n"), "intl.csv"),
            (io.BytesIO(b"\x00\x01binary"), "photo.png"),
        ],
        "csrf_token": token,
    }
    r = admin.post("/admin/documents/upload", data=files, content_type="multipart/form-data",
                   headers={"X-Requested-With": "fetch", "X-CSRFToken": token})
    results = {f["file"]: f for f in r.get_json()["files"]}
    assert results["gifts.md"]["ok"] and results["gifts.md"]["chunks"] >= 1
    assert results["intl.csv"]["ok"]
    assert not results["photo.png"]["ok"] and "photo.png" in results["photo.png"]["errors"][0]
    assert r.status_code == 415  # the worst outcome of the batch
    ids = {d["id"] for d in components.knowledge.documents("default")}
    assert any("gifts" in i for i in ids) and any("intl" in i for i in ids)
    # The new document answers visitors right away (the upload published a new index).
    hits = components.retriever("default").search("Do gift cards expire?", k=3)
    assert "gift" in hits[0].text.lower()


def test_documents_list_search_delete_and_reindex(admin, components):
    page = admin.get("/admin/documents")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    doc_ids = [d["id"] for d in components.knowledge.documents("default")]
    assert doc_ids and all(i in html for i in doc_ids[:3])
    shipping = next(i for i in doc_ids if "shipping" in i)
    found = admin.get("/admin/documents?q=shipping").get_data(as_text=True)
    assert shipping in found and not any(i in found for i in doc_ids if "shipping" not in i and "billing" in i)

    token = csrf_of(page)
    r = admin.post("/admin/documents/delete", data={"doc_id": shipping, "csrf_token": token})
    assert r.status_code == 302
    assert shipping not in {d["id"] for d in components.knowledge.documents("default")}
    r = admin.post("/admin/reindex", data={"csrf_token": token}, follow_redirects=True)
    assert r.status_code == 200 and "Index rebuilt" in r.get_data(as_text=True)


def test_site_keys_and_api_keys_from_the_console(admin, components):
    page = admin.get("/admin/keys")
    token = csrf_of(page)
    r = admin.post("/admin/keys/site", data={"origins": "https://a.example\nhttps://b.example:8443",
                                            "csrf_token": token}, follow_redirects=True)
    assert r.status_code == 200
    with components.db.session() as s:
        key = s.scalars(select(SiteKey)).one()
    assert key.allowed_origins == ["https://a.example", "https://b.example:8443"]
    assert key.key in r.get_data(as_text=True)

    r = admin.post("/admin/keys/site", data={"origins": "not an origin", "csrf_token": token})
    assert r.status_code == 400 and "not an origin" in r.get_data(as_text=True)

    r = admin.post("/admin/keys/api", data={"name": "helpdesk", "csrf_token": token}, follow_redirects=True)
    html = r.get_data(as_text=True)
    secret = re.search(r"(sb-[A-Za-z0-9_-]{20,})", html).group(1)
    with components.db.session() as s:
        row = s.scalars(select(ApiKey)).one()
    assert row.name == "helpdesk" and secret not in row.key_hash  # only a hash is stored
    assert secret not in admin.get("/admin/keys").get_data(as_text=True)  # shown once


def test_conversations_show_sources_and_feedback(app, admin, client, components):
    key = app.extensions["supportbot"].site_keys.create("default", [ORIGIN]).key
    v = Visitor(client, key).start()
    events = events_of(v.ask("How much does shipping cost?"))
    mid = events[0][2]["message_id"]
    client.post(f"/api/conversations/{v.conversation}/feedback",
                json={"message_id": mid, "rating": 1, "comment": "spot on"}, headers=v.headers())
    listing = admin.get("/admin/conversations").get_data(as_text=True)
    assert v.conversation in listing
    detail = admin.get(f"/admin/conversations/{v.conversation}").get_data(as_text=True)
    assert "How much does shipping cost?" in detail
    assert "spot on" in detail
    title = next(d["sources"] for _, t, d in events if t == "sources")[0]["title"]
    assert html.escape(title) in detail
    token = csrf_of(admin.get(f"/admin/conversations/{v.conversation}"))
    # Resolving goes through the hand-off state machine: a conversation with the bot is refused.
    r = admin.post(f"/admin/conversations/{v.conversation}/status", data={"status": "resolved", "csrf_token": token})
    assert r.status_code == 409 and components.conversations.get(v.conversation)["status"] == "bot"
    client.post(f"/api/conversations/{v.conversation}/handoff", json={}, headers=v.headers())
    admin.post(f"/admin/conversations/{v.conversation}/status", data={"status": "resolved", "csrf_token": token})
    assert components.conversations.get(v.conversation)["status"] == "resolved"


def test_admin_cli_creates_users_site_keys_and_api_keys(tmp_path, monkeypatch):
    from bot.cli import main
    from bot.core.store import Database

    data = str(tmp_path / "var")
    monkeypatch.setenv("SUPPORTBOT_EMBEDDER__MODEL", "hashing")
    runner = CliRunner()
    r = runner.invoke(main, ["--data-dir", data, "admin", "create-user", "carol", "--password", PASSWORD])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["--data-dir", data, "admin", "create-user", "dave", "--password", "short"])
    assert r.exit_code != 0 and "at least 8 characters" in r.output
    r = runner.invoke(main, ["--data-dir", data, "admin", "site-key", "--origin", "https://shop.example"])
    assert r.exit_code == 0
    key = r.stdout.strip().splitlines()[0]
    assert key.startswith("sk_")
    r = runner.invoke(main, ["--data-dir", data, "admin", "site-key"])
    assert r.exit_code != 0 and "--origin" in r.output
    r = runner.invoke(main, ["--data-dir", data, "admin", "api-key", "--name", "crm"])
    assert r.exit_code == 0 and r.stdout.strip().splitlines()[0].startswith("sb-")

    db = Database(f"sqlite:///{tmp_path / 'var' / 'supportbot.db'}")
    with db.session() as s:
        assert s.scalars(select(User.username)).all() == ["carol"]
        assert s.scalars(select(SiteKey.key)).all() == [key]
        assert s.scalars(select(ApiKey.name)).all() == ["crm"]
    db.dispose()
