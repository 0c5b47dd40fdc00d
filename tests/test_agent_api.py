"""The agent API (/api/agent) with each kind of credential: an agent key works, a chat key, a
visitor token, no key and a junk key are refused with clear messages (and /v1 refuses agent
keys); the whole hand-off through it, with 409s for refused transitions and 404 for another bot's
conversation."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from web_fixtures import *  # noqa: F401,F403
from web_fixtures import Visitor, events_of


@pytest.fixture
def keys(app):
    api_keys = app.extensions["supportbot"].api_keys
    _, agent = api_keys.create("default", "helpdesk", scope="agent")
    _, chat = api_keys.create("default", "crm")
    return {"agent": agent, "chat": chat}


def bearer(secret):
    return {"Authorization": f"Bearer {secret}"}


def waiting_visitor(client, site_key) -> Visitor:
    v = Visitor(client, site_key).start()
    v.ask("How much does shipping cost?")
    r = client.post(f"/api/conversations/{v.conversation}/handoff", json={"reason": "requested"}, headers=v.headers())
    assert r.status_code == 200 and r.json["status"] == "waiting"
    return v


def test_each_kind_of_credential(client, keys, visitor):
    r = client.get("/api/agent/handoffs")
    assert r.status_code == 401 and "scope 'agent'" in r.json["error"]["message"]
    r = client.get("/api/agent/handoffs", headers=bearer("sb-not-a-real-key"))
    assert r.status_code == 401 and r.json["error"]["message"] == "invalid API key"
    r = client.get("/api/agent/handoffs", headers=bearer(keys["chat"]))
    assert r.status_code == 403
    assert "scope 'chat'" in r.json["error"]["message"] and "needs a key of scope 'agent'" in r.json["error"]["message"]
    r = client.get("/api/agent/handoffs", headers=bearer(visitor.token))
    assert r.status_code == 403 and "visitor tokens are not accepted" in r.json["error"]["message"]
    r = client.post(f"/api/agent/conversations/{visitor.conversation}/take", headers=bearer(visitor.token))
    assert r.status_code == 403
    r = client.get("/api/agent/handoffs", headers=bearer(keys["agent"]))
    assert r.status_code == 200 and r.json == {"conversations": []}
    # The OpenAI-compatible API refuses agent keys, and still takes chat keys.
    body = {"messages": [{"role": "user", "content": "How much does shipping cost?"}]}
    r = client.post("/v1/chat/completions", json=body, headers=bearer(keys["agent"]))
    assert r.status_code == 403 and "needs a key of scope 'chat'" in r.json["error"]["message"]
    assert client.post("/v1/chat/completions", json=body, headers=bearer(keys["chat"])).status_code == 200
    # A visitor token is no chat key either.
    assert client.post("/v1/chat/completions", json=body, headers=bearer(visitor.token)).status_code == 401


def test_hand_off_through_the_agent_api(client, keys, site_key, components):
    v = waiting_visitor(client, site_key)
    h = bearer(keys["agent"])
    listing = client.get("/api/agent/handoffs", headers=h).json["conversations"]
    assert [c["id"] for c in listing] == [v.conversation]
    item = listing[0]
    assert item["status"] == "waiting" and item["reason"] == "requested" and item["waiting_since"]
    assert item["assigned_to"] == "" and item["position"] == 1
    assert item["question"] == "How much does shipping cost?" and item["sources"]
    assert "visitor_email" in item
    detail = client.get(f"/api/agent/conversations/{v.conversation}", headers=h).json
    assert [m["role"] for m in detail["messages"]] == ["user", "bot"] and detail["handoffs"][0]["reason"] == "requested"

    r = client.post(f"/api/agent/conversations/{v.conversation}/take", headers=h)
    assert r.status_code == 200 and r.json["conversation"]["status"] == "human"
    assert r.json["conversation"]["assigned_to"] == "helpdesk"
    r = client.post(f"/api/agent/conversations/{v.conversation}/messages", json={"text": "Hi, I can help."}, headers=h)
    assert r.status_code == 201 and r.json["message"]["role"] == "human"
    # The visitor sees it as an agent message by a human.
    conv = client.get(f"/api/conversations/{v.conversation}", headers=v.headers()).json
    assert conv["status"] == "human" and conv["messages"][-1]["by"] == "human"
    assert conv["messages"][-1]["text"] == "Hi, I can help." and conv["queue"]["status"] == "human"
    # The visitor writes while a person has it: stored, not answered by the bot.
    events = events_of(v.ask("Thanks! It is order 1234."))
    assert [t for _, t, _ in events] == ["meta", "queued", "done"]
    detail = client.get(f"/api/agent/conversations/{v.conversation}", headers=h).json
    assert detail["messages"][-1] == {**detail["messages"][-1], "role": "user", "text": "Thanks! It is order 1234."}
    assert [m["role"] for m in detail["messages"]].count("bot") == 1, "the bot did not answer"

    r = client.post(f"/api/agent/conversations/{v.conversation}/hand-back", headers=h)
    assert r.status_code == 200 and r.json["conversation"]["status"] == "bot"
    r = client.post(f"/api/agent/conversations/{v.conversation}/resolve", headers=h)
    assert r.status_code == 409 and "with the assistant" in r.json["error"]["message"]
    client.post(f"/api/conversations/{v.conversation}/handoff", json={}, headers=v.headers())
    r = client.post(f"/api/agent/conversations/{v.conversation}/resolve", headers=h)
    assert r.status_code == 200 and r.json["conversation"]["status"] == "resolved"
    assert components.handoffs.agents_online() == 1, "agent API calls count as online"


def test_two_agents_and_refusals(client, app, keys, site_key):
    _, other = app.extensions["supportbot"].api_keys.create("default", "slack-bridge", scope="agent")
    v = waiting_visitor(client, site_key)
    assert client.post(f"/api/agent/conversations/{v.conversation}/take", headers=bearer(keys["agent"])).status_code == 200
    r = client.post(f"/api/agent/conversations/{v.conversation}/take", headers=bearer(other))
    assert r.status_code == 409 and "helpdesk has taken this conversation" in r.json["error"]["message"]
    r = client.post(f"/api/agent/conversations/{v.conversation}/messages", json={"text": "me too"}, headers=bearer(other))
    assert r.status_code == 409
    for body, status in (({}, 400), ({"text": ""}, 400), ({"text": 5}, 400), ({"text": "x" * 5000}, 400)):
        r = client.post(f"/api/agent/conversations/{v.conversation}/messages", json=body, headers=bearer(keys["agent"]))
        assert r.status_code == status and "text" in r.json["error"]["message"]
    r = client.post(f"/api/agent/conversations/{v.conversation}/messages", data="text=hi",
                    content_type="text/plain", headers=bearer(keys["agent"]))
    assert r.status_code == 415
    assert client.get("/api/agent/conversations/not-a-uuid", headers=bearer(keys["agent"])).status_code == 404
    missing = "00000000-0000-4000-8000-000000000000"
    assert client.post(f"/api/agent/conversations/{missing}/take", headers=bearer(keys["agent"])).status_code == 404
    assert client.get("/api/agent/handoffs?status=resolved", headers=bearer(keys["agent"])).status_code == 400


def test_another_bots_conversations_are_not_visible(client, app, components, keys, site_key):
    components.db.bot_id("other")  # created on first use
    _, other_bot_key = app.extensions["supportbot"].api_keys.create("other", "desk", scope="agent")
    v = waiting_visitor(client, site_key)
    h = bearer(other_bot_key)
    assert client.get("/api/agent/handoffs", headers=h).json == {"conversations": []}
    assert client.get(f"/api/agent/conversations/{v.conversation}", headers=h).status_code == 404
    assert client.post(f"/api/agent/conversations/{v.conversation}/take", headers=h).status_code == 404


def test_cli_creates_agent_keys(tmp_path, monkeypatch):
    from bot.cli import main

    data = str(tmp_path / "var")
    monkeypatch.setenv("SUPPORTBOT_EMBEDDER__MODEL", "hashing")
    runner = CliRunner()
    r = runner.invoke(main, ["--data-dir", data, "admin", "api-key", "--name", "zendesk", "--scope", "agent"])
    assert r.exit_code == 0, r.output
    assert r.output.strip().splitlines()[0].startswith("sb-")
    listing = runner.invoke(main, ["--data-dir", data, "admin", "api-key", "--list"]).output
    assert "\tagent\t" in listing and "zendesk" in listing
    r = runner.invoke(main, ["--data-dir", data, "admin", "api-key", "--scope", "root"])
    assert r.exit_code != 0 and "root" in r.output
