"""The widget in a real browser (Debian's Chromium, headless, driven by Playwright).

Loads the demo page from a real server on 127.0.0.1, opens the bubble, asks a sample-FAQ question,
watches tokens arrive and a source link appear, reloads and finds the history, rates the answer
and finds the rating in the database, and checks that a knowledge-base document carrying
``<img onerror>`` and ``<script>`` is shown as text and runs nothing. Also: the host page's CSS
does not reach into the widget, Escape closes it, and it fills a phone-sized screen.

Set ``SUPPORTBOT_WIDGET_SCREENSHOT=docs/widget.png`` to save the mid-answer screenshot there.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.core.store.models import Feedback
from web_fixtures import ScriptedGenerator, make_components, make_settings

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
QUESTION = "How much does shipping cost?"
XSS_CSV = (
    b"question,answer,title\n"
    b"Can I use the Trailblazer stove inside my tent?,"
    b"\"Never. <img src=x onerror='window.__pwned=1;alert(1)'> Use it outdoors only. "
    b"<script>window.__pwned=2;alert(2)</script> Carbon monoxide is deadly.\",Stove safety\n"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from werkzeug.serving import make_server

    from web import create_app

    if not CHROMIUM.exists():
        if os.environ.get("SUPPORTBOT_REQUIRE_BROWSER"):
            pytest.fail("the browser test is required (SUPPORTBOT_REQUIRE_BROWSER) but chromium is missing")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")
    tmp = tmp_path_factory.mktemp("browser")
    settings = make_settings(tmp)
    # Slow enough to see the answer grow word by word (and to take a picture mid-answer).
    comps = make_components(settings, generator=ScriptedGenerator(words=40, delay_s=0.08))
    report = comps.knowledge.ingest_bytes("default", "safety.csv", XSS_CSV)
    assert not report.errors
    probe = make_server("127.0.0.1", 0, None)
    port = probe.server_port
    probe.server_close()
    origin = f"http://127.0.0.1:{port}"
    key = None
    app = create_app(settings, comps)
    key = app.extensions["supportbot"].site_keys.create("default", [origin]).key
    app.extensions["supportbot"].demo_site_key = key
    httpd = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield {"url": origin, "components": comps, "key": key}
    httpd.shutdown()
    comps.db.dispose()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--no-first-run"],
        )
        yield b
        b.close()


def open_widget(page, url: str):
    page.goto(url + "/demo")
    page.locator("supportbot-chat .bubble").click()
    page.locator("supportbot-chat textarea").wait_for(state="visible")


def ask(page, text: str):
    box = page.locator("supportbot-chat textarea")
    box.fill(text)
    box.press("Enter")


def test_widget_streams_an_answer_with_sources_keeps_history_and_stores_thumbs(server, browser):
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    open_widget(page, server["url"])
    greeting = page.locator("supportbot-chat .msg.agent").first
    assert "Northwind assistant" in greeting.inner_text()

    ask(page, QUESTION)
    answer = page.locator("supportbot-chat .msg.agent").nth(1)
    body = answer.locator(".body")
    # Tokens arrive: the text grows while the answer is still being typed.
    page.wait_for_function(
        "() => { const b = document.querySelector('supportbot-chat').shadowRoot"
        ".querySelector('.msg.agent .body'); return b && b.textContent.split(' ').length >= 12; }"
    )
    partial = body.inner_text()
    assert "typing" in (body.get_attribute("class") or "")
    shot = os.environ.get("SUPPORTBOT_WIDGET_SCREENSHOT")
    if shot:
        Path(shot).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=shot)
    link = answer.locator(".sources a").first
    link.wait_for(timeout=15000)
    final = body.inner_text()
    assert final.startswith(partial.strip()[:10]) and len(final) > len(partial)
    assert "shipping" in final.lower()
    href = link.get_attribute("href")
    assert href.startswith(server["url"] + "/source/") and link.get_attribute("rel") == "noopener noreferrer"
    source_page = context.request.get(href)
    assert source_page.ok and "Shipping" in source_page.text()

    # The page's own CSS (hot-pink 30px buttons) does not reach into the shadow DOM.
    bg = page.locator("supportbot-chat .send").evaluate("b => getComputedStyle(b).backgroundColor")
    assert bg != "rgb(255, 105, 180)"

    # Reload: the same conversation comes back, from the server.
    page.reload()
    page.locator("supportbot-chat .msg.user").first.wait_for()
    assert page.locator("supportbot-chat .msg.user").first.inner_text() == QUESTION
    restored = page.locator("supportbot-chat .msg.agent").nth(1)
    restored.locator(".rate").wait_for()
    assert restored.locator(".body").inner_text().strip() == final.strip()

    # Thumbs up is stored in the database.
    restored.get_by_role("button", name="Helpful", exact=True).click()
    deadline = time.time() + 10
    rows = []
    while time.time() < deadline and not rows:
        with server["components"].db.session() as s:
            rows = s.scalars(select(Feedback)).all()
        time.sleep(0.1)
    assert rows and rows[0].rating == 1
    assert restored.get_by_role("button", name="Helpful", exact=True).get_attribute("aria-pressed") == "true"

    # Keyboard: Escape closes the panel and gives focus back to the bubble.
    page.locator("supportbot-chat textarea").press("Escape")
    assert page.locator("supportbot-chat .panel").is_hidden()
    assert page.evaluate("document.querySelector('supportbot-chat').shadowRoot.activeElement.className") == "bubble"
    assert dialogs == []
    context.close()


def test_markup_from_the_knowledge_base_is_shown_as_text_and_runs_nothing(server, browser):
    context = browser.new_context()
    page = context.new_page()
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    open_widget(page, server["url"])
    ask(page, "Can I use the Trailblazer stove inside my tent?")
    answer = page.locator("supportbot-chat .msg.agent").nth(1)
    answer.locator(".rate").wait_for(timeout=20000)  # the answer is complete
    text = answer.locator(".body").inner_text()
    assert "<img src=x onerror=" in text and "<script>" in text
    assert answer.locator("img").count() == 0 and answer.locator("script").count() == 0
    page.wait_for_timeout(300)
    assert page.evaluate("window.__pwned === undefined")
    assert dialogs == []
    context.close()


def test_widget_fills_a_phone_screen(server, browser):
    context = browser.new_context(viewport={"width": 375, "height": 667}, is_mobile=True, has_touch=True)
    page = context.new_page()
    open_widget(page, server["url"])
    box = page.locator("supportbot-chat .panel").bounding_box()
    assert box["width"] == pytest.approx(375, abs=1) and box["height"] == pytest.approx(667, abs=1)
    assert page.locator("supportbot-chat textarea").is_visible()
    context.close()
