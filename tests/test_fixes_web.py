"""The admin console's fixes page (web/fixes.py): behind login, CSRF on every form, output
escaped; an agent writes the right answer to a rated-down reply and approves or dismisses drafts."""
from __future__ import annotations

import pytest
from sqlalchemy import select, update

from bot.core.store.models import Conversation, Document, Fix
from web_fixtures import *  # noqa: F401,F403 - fixtures
from test_web_admin import PASSWORD, csrf_of


@pytest.fixture
def admin(app, components):
    from web.auth import create_user

    create_user(components.db, "alice", PASSWORD)
    app.config["WTF_CSRF_ENABLED"] = True
    client = app.test_client()
    r = client.post("/admin/login", data={"username": "alice", "password": PASSWORD,
                                          "csrf_token": csrf_of(client.get("/admin/login"))})
    assert r.status_code == 302
    return client


def rated_down(components, question: str) -> int:
    """A visitor's question answered by the bot and rated down; the bot message's id."""
    cid = components.conversations.create(components.db.bot_id("default"), "v1")
    events = list(components.dialogue("default").respond(cid, question))
    message_id = next(e.data["message_id"] for e in events if e.type == "meta")
    components.conversations.add_feedback(cid, message_id, -1)
    return message_id


def test_the_page_and_its_forms_need_a_login(app, components):
    message_id = rated_down(components, "Do you offer gift wrapping?")
    client = app.test_client()
    r = client.get("/admin/fixes/")
    assert r.status_code == 302 and "/admin/login" in r.headers["Location"]
    app.config["WTF_CSRF_ENABLED"] = False  # the login check alone (with CSRF on it is refused first)
    r = client.post("/admin/fixes/write", data={"message_id": message_id, "question": "q", "answer": "a"})
    assert r.status_code == 302 and "/admin/login" in r.headers["Location"]
    with components.db.session() as s:
        assert s.scalars(select(Fix)).all() == []


def test_forms_without_the_csrf_token_are_refused(admin, components):
    message_id = rated_down(components, "Do you offer gift wrapping?")
    r = admin.post("/admin/fixes/write", data={"message_id": message_id, "question": "Gift wrap?", "answer": "Yes."})
    assert r.status_code == 400
    with components.db.session() as s:
        assert s.scalars(select(Fix)).all() == []


def test_an_agent_writes_the_right_answer_to_a_rated_down_reply(admin, components):
    message_id = rated_down(components, "Do you offer <b>gift</b> wrapping?")
    page = admin.get("/admin/fixes/")
    body = page.get_data(as_text=True)
    assert page.status_code == 200 and "Bad answers (1)" in body
    assert "Do you offer &lt;b&gt;gift&lt;/b&gt; wrapping?" in body and "<b>gift</b>" not in body  # escaped
    assert f'name="message_id" value="{message_id}"' in body and "What it retrieved" in body
    token = csrf_of(page)

    r = admin.post("/admin/fixes/write", data={"message_id": message_id, "question": "Do you offer gift wrapping?",
                                               "answer": "   ", "csrf_token": token})
    assert r.status_code == 400 and "the answer is empty" in r.get_data(as_text=True)
    r = admin.post("/admin/fixes/write", data={"message_id": "x1", "question": "q", "answer": "a", "csrf_token": token})
    assert r.status_code == 400
    r = admin.post("/admin/fixes/write", data={
        "message_id": message_id, "question": "Do you offer gift wrapping?",
        "answer": "Yes, gift wrapping is $4 per item.", "csrf_token": token}, follow_redirects=True)
    body = r.get_data(as_text=True)
    assert r.status_code == 200 and "Bad answers (0)" in body and "curated/fix-1" in body
    with components.db.session() as s:
        fix = s.scalar(select(Fix))
        assert (fix.status, fix.kind, fix.message_id, fix.created_by) == ("approved", "rated_down", message_id, "alice")
        assert s.scalar(select(Document).where(Document.external_id == "curated/fix-1")) is not None


def test_drafts_are_approved_with_edits_or_dismissed(admin, components):
    store = components.conversations
    for question, answer in (("Do you offer gift wrapping?", "Yes, $4."), ("Can I pay with crypto?", "No.")):
        cid = store.create(components.db.bot_id("default"), "v2")
        store.add_message(cid, "user", question)
        store.add_message(cid, "human", answer)
        with components.db.session() as s:
            s.execute(update(Conversation).where(Conversation.id == cid).values(status="resolved"))
    token = csrf_of(admin.get("/admin/fixes/"))
    r = admin.post("/admin/fixes/draft", data={"csrf_token": token}, follow_redirects=True)
    assert "2 drafted" in r.get_data(as_text=True)
    with components.db.session() as s:
        gift, crypto = s.scalars(select(Fix).order_by(Fix.id)).all()
    r = admin.post(f"/admin/fixes/{gift.id}/approve", data={
        "question": "Do you offer gift wrapping?", "answer": "Yes, gift wrapping is $4 per item.", "csrf_token": token})
    assert r.status_code == 302
    r = admin.post(f"/admin/fixes/{crypto.id}/dismiss", data={"csrf_token": token})
    assert r.status_code == 302
    r = admin.post("/admin/fixes/99999/approve", data={"csrf_token": token})
    assert r.status_code == 404
    with components.db.session() as s:
        assert [(f.status, f.answer) for f in s.scalars(select(Fix).order_by(Fix.id))] == [
            ("approved", "Yes, gift wrapping is $4 per item."), ("dismissed", "No.")]
    assert "Drafts from resolved conversations (0)" in admin.get("/admin/fixes/").get_data(as_text=True)
    assert admin.get("/admin/fixes/?bot=nobody").status_code == 404
    assert admin.get("/admin/fixes/?bot=default").status_code == 200


def test_the_analytics_link_carries_the_reply_into_the_write_form(admin, components):
    message_id = rated_down(components, "Do you deliver on Sundays?")
    body = admin.get(f"/admin/fixes/?message_id={message_id}&question=Do+you+deliver+on+Sundays%3F").get_data(as_text=True)
    form = body.split('id="write"', 1)[1].split("</form>", 1)[0]
    assert f'name="message_id" value="{message_id}"' in form and 'value="Do you deliver on Sundays?"' in form
    assert 'name="message_id"' not in admin.get("/admin/fixes/").get_data(as_text=True).split('id="write"', 1)[1].split("</form>", 1)[0]
