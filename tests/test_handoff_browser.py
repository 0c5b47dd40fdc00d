"""The live hand-off in a real browser (Debian's Chromium, headless, Playwright), two pages open:

the visitor (the demo page's widget) asks a question, then for a person; the agent (the admin
console's queue, logged in) sees the conversation arrive live, with the reason and the bot's
sources, opens and takes it, sees the visitor typing and replies; the reply appears in the
visitor's open widget within a second or two; the agent resolves and the widget says so. The
widget's "Talk to a person" link is hidden while the conversation waits for or is with a person
and shown again once it is handed back to the bot or resolved, also after a reload.

Set ``SUPPORTBOT_HANDOFF_SCREENSHOTS=docs/screenshots`` to save ``handoff-visitor.png`` and
``handoff-agent.png`` there (the README's pictures).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from test_web_browser import browser, require_browser, serving  # noqa: F401 - the same server and browser setup
from web_fixtures import ScriptedGenerator

pytestmark = pytest.mark.browser

PASSWORD = "correct horse battery"
QUESTION = "How much does shipping cost?"
REPLY = "Hi, I'm Alice from the team. Orders over $50 ship free; I've upgraded yours to express."


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_browser()
    with serving(tmp_path_factory.mktemp("handoff"), ScriptedGenerator(words=14)) as info:
        from web.auth import create_user

        create_user(info["components"].db, "alice", PASSWORD)
        yield info


def test_visitor_and_agent_in_two_pages(server, browser):
    url, comps = server["url"], server["components"]
    visitor_ctx = browser.new_context(viewport={"width": 760, "height": 700})
    agent_ctx = browser.new_context(viewport={"width": 1280, "height": 760})
    visitor, agent = visitor_ctx.new_page(), agent_ctx.new_page()
    dialogs: list[str] = []
    for page in (visitor, agent):
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

    # The agent logs in and opens the queue: nobody is waiting.
    agent.goto(url + "/admin/login?next=/admin/queue")
    agent.fill("input[name=username]", "alice")
    agent.fill("input[name=password]", PASSWORD)
    agent.click("button[type=submit]")
    agent.wait_for_url("**/admin/queue")
    agent.locator("#live-state", has_text="live").wait_for()
    assert "Nobody is waiting" in agent.locator("#queue-rows").inner_text()

    # The visitor asks a question, gets the bot's answer, then asks for a person.
    visitor.goto(url + "/demo")
    visitor.locator("supportbot-chat .bubble").click()
    box = visitor.locator("supportbot-chat textarea")
    box.fill(QUESTION)
    box.press("Enter")
    visitor.locator("supportbot-chat .msg.agent .rate").first.wait_for(timeout=20000)
    visitor.locator("supportbot-chat .human").click()
    queue_note = visitor.locator("supportbot-chat .msg.note.queue")
    queue_note.wait_for()
    assert "number 1 in the queue" in queue_note.inner_text(), "an agent is online: the visitor's place"
    link = visitor.locator("supportbot-chat button.human")
    link.wait_for(state="hidden", timeout=5000)  # waiting for a person: no second request

    # The queue shows it live (no reload), with the reason and the bot's sources.
    row = agent.locator("#queue-rows tr[data-id]")
    row.wait_for(timeout=5000)
    text = row.inner_text()
    assert "waiting #1" in text and "requested" in text and QUESTION in text and "[1]" in text
    cid = row.get_attribute("data-id")
    row.get_by_role("link", name="Open").click()
    agent.wait_for_url(f"**/admin/queue?open={cid}")
    agent.locator("#live-state", has_text="live").wait_for()
    agent.locator("#open-messages li.msg.user", has_text=QUESTION).wait_for()
    agent.locator("form[data-action=take] button").click()
    agent.locator("#open-meta", has_text="human").wait_for()
    assert comps.conversations.get(cid)["assigned_to"] == "alice"
    visitor.locator("supportbot-chat .msg.note.queue", has_text="joined").wait_for(timeout=5000)
    assert link.is_hidden(), "a person has the conversation: no 'Talk to a person' link"

    # The agent sees the visitor typing.
    visitor.locator("supportbot-chat textarea").press_sequentially("Thanks, my order is 12")
    agent.locator("#open-typing").wait_for(state="visible", timeout=5000)

    # The agent replies; it appears in the visitor's open widget, as the team's.
    agent.fill("#reply-form textarea", REPLY)
    sent = time.monotonic()
    agent.locator("#reply-form button[type=submit]").click()
    human = visitor.locator("supportbot-chat .msg.team")
    human.wait_for(timeout=5000)
    took = time.monotonic() - sent
    assert REPLY in human.inner_text() and "Support team" in human.inner_text()
    assert took < 2.0, f"the reply took {took:.2f} s to reach the widget"
    agent.locator("#open-messages li.msg.human", has_text="Alice from the team").wait_for()
    assert agent.locator("#reply-form textarea").input_value() == ""

    # The visitor writes back: stored for the agent, the bot does not answer.
    box.fill("Great, thank you!")
    box.press("Enter")
    agent.locator("#open-messages li.msg.user", has_text="Great, thank you!").wait_for(timeout=5000)
    assert visitor.locator("supportbot-chat .msg.agent:not(.team) .rate").count() == 1, "no second bot answer"

    shots = os.environ.get("SUPPORTBOT_HANDOFF_SCREENSHOTS")
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True)
        visitor.screenshot(path=str(Path(shots) / "handoff-visitor.png"))
        agent.screenshot(path=str(Path(shots) / "handoff-agent.png"), full_page=True)

    # The agent resolves: the queue empties and the visitor is told.
    agent.locator("form[data-action=resolve] button").click()
    agent.locator("#queue-rows", has_text="Nobody is waiting").wait_for(timeout=5000)
    visitor.locator("supportbot-chat .msg.note.queue", has_text="resolved").wait_for(timeout=5000)
    link.wait_for(state="visible", timeout=5000)  # resolved: the visitor may ask for a person again
    assert comps.conversations.get(cid)["status"] == "resolved"
    assert dialogs == []
    visitor_ctx.close()
    agent_ctx.close()


def test_talk_to_a_person_link_follows_the_conversation(server, browser):
    """Hidden while waiting and with a person, back after hand-back, hidden again on a second
    request (also after a reload, from the restored state), back after resolving."""
    url, comps = server["url"], server["components"]
    desk = comps.handoffs
    ctx = browser.new_context(viewport={"width": 760, "height": 700})
    page = ctx.new_page()
    page.goto(url + "/demo")
    page.locator("supportbot-chat .bubble").click()
    link = page.locator("supportbot-chat button.human")
    link.wait_for(state="visible")
    box = page.locator("supportbot-chat textarea")
    box.fill(QUESTION)
    box.press("Enter")
    page.locator("supportbot-chat .msg.agent .rate").first.wait_for(timeout=20000)
    assert link.is_visible(), "the bot has the conversation: the visitor may ask for a person"

    link.click()
    link.wait_for(state="hidden", timeout=5000)
    cid = page.evaluate("""() => {
      const key = Object.keys(localStorage).find((k) => k.startsWith("supportbot:"));
      return JSON.parse(localStorage.getItem(key)).conversation;
    }""")
    assert comps.conversations.get(cid)["status"] == "waiting"
    assert page.evaluate("document.activeElement.shadowRoot.activeElement.tagName") == "TEXTAREA", \
        "the focus moves to the message box, not to the page, when the link goes"

    desk.take(cid, "alice")
    page.locator("supportbot-chat .msg.note.queue", has_text="joined").wait_for(timeout=5000)
    assert link.is_hidden()
    desk.hand_back(cid, "alice")
    link.wait_for(state="visible", timeout=5000)
    assert comps.conversations.get(cid)["status"] == "bot"

    # A second request; a reload restores the hidden link from the conversation's state.
    link.click()
    link.wait_for(state="hidden", timeout=5000)
    page.reload()
    page.locator("supportbot-chat textarea").wait_for(state="visible")  # the panel reopens
    page.locator("supportbot-chat .msg.note.queue").wait_for(timeout=5000)
    link.wait_for(state="hidden", timeout=5000)
    desk.take(cid, "alice")
    page.locator("supportbot-chat .msg.note.queue", has_text="joined").wait_for(timeout=5000)
    assert link.is_hidden()
    desk.resolve(cid, "alice")
    page.locator("supportbot-chat .msg.note.queue", has_text="resolved").wait_for(timeout=5000)
    link.wait_for(state="visible", timeout=5000)
    ctx.close()
