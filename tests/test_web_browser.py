"""The widget in a real browser (Debian's Chromium, headless, driven by Playwright).

Loads the demo page from a real server on 127.0.0.1, opens the bubble, asks a sample-FAQ question,
watches tokens arrive and a source link appear, reloads and finds the history, rates the answer
and finds the rating in the database, and checks that a knowledge-base document carrying
``<img onerror>`` and ``<script>`` is shown as text and runs nothing. Also: the host page's CSS
does not reach into the widget, Escape closes it, and it fills a phone-sized screen.

A second server's generator streams canned replies (``CannedGenerator``) in chosen pieces: one in
Markdown, which must become <strong>/<em>/<ul>/<ol>/<a> elements even where a ``**`` is split
between two pieces, one full of markup and script links, which must stay text and run nothing.
The icons are SVG, not emoji (headless Chromium has no emoji font: emoji would be empty boxes).

Set ``SUPPORTBOT_WIDGET_SCREENSHOT=docs/widget.png`` to save the mid-answer screenshot there.
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.core.store.models import Feedback
from web_fixtures import CannedGenerator, ScriptedGenerator, make_components, make_settings

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
QUESTION = "How much does shipping cost?"
XSS_CSV = (
    b"question,answer,title\n"
    b"Can I use the Trailblazer stove inside my tent?,"
    b"\"Never. <img src=x onerror='window.__pwned=1;alert(1)'> Use it outdoors only. "
    b"<script>window.__pwned=2;alert(2)</script> Carbon monoxide is deadly.\",Stove safety\n"
)

# Canned replies, in the pieces the SSE stream carries them. Both "**" pairs and a "*" pair are
# split between pieces: the widget must render the whole text so far, not piece by piece.
MARKDOWN_QUESTION = "How do I get my tent repaired, step by step?"
MARKDOWN_PIECES = [
    "To get the *", "*Trail", "blazer*", "* tent fixed [1]:\n",
    "\n",
    "1. Fill in the *warr", "anty* form\n",
    "2. Add _two photos_ of the damage\n",
    "3. Ship it with the **free label**\n",
    "\n",
    "Pack it with:\n",
    "- the poles\n",
    "* the rain fly\n",
    "\n",
    "Details: [repair guide](https://northwind.example/repairs?x=1&y=2) or https://northwind.example/warranty.",
]
XSS_QUESTION = "Is a broken zipper covered?"
XSS_PIECES = [
    "Careful: <scr", "ipt>window.__pwned=1</script> and ",
    "<img src=x onerror=\"window.__pwned=1\"> and <a href=\"javascript:window.__pwned=1\">raw</a>. ",
    "Try [click](javascript:window.__pwned=1), [Click](JavaScript:window.__pwned=1), ",
    "[data](data:text/html,<script>window.__pwned=1</script>) or [vb](vbscript:msgbox) [1]",
]
# The widget's shadow root, for checks in page JavaScript: Playwright's CSS locators pierce it by
# themselves, but reading many elements' own properties (tagName, href, getBBox) is one call there.
ROOT_JS = "document.querySelector('supportbot-chat').shadowRoot"


def require_browser():
    """Skip without Chromium/Playwright, but fail when SUPPORTBOT_REQUIRE_BROWSER says they must run."""
    required = bool(os.environ.get("SUPPORTBOT_REQUIRE_BROWSER"))
    if not CHROMIUM.exists():
        if required:
            pytest.fail("the browser test is required (SUPPORTBOT_REQUIRE_BROWSER) but chromium is missing")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        if required:
            pytest.fail("the browser test is required (SUPPORTBOT_REQUIRE_BROWSER) but playwright is missing")
        pytest.skip("playwright is not installed")


@contextmanager
def serving(tmp: Path, generator, csv: bytes | None = None, dialogue: dict | None = None):
    """The real app with ``generator`` on a loopback port; yields url, components and site key."""
    from werkzeug.serving import make_server

    from web import create_app

    settings = make_settings(tmp, dialogue=dialogue)
    comps = make_components(settings, generator=generator)
    if csv is not None:
        report = comps.knowledge.ingest_bytes("default", "safety.csv", csv)
        assert not report.errors
    probe = make_server("127.0.0.1", 0, None)
    port = probe.server_port
    probe.server_close()
    origin = f"http://127.0.0.1:{port}"
    app = create_app(settings, comps)
    key = app.extensions["supportbot"].site_keys.create("default", [origin]).key
    app.extensions["supportbot"].demo_site_key = key
    httpd = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"url": origin, "components": comps, "key": key}
    finally:
        httpd.shutdown()
        comps.db.dispose()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_browser()
    # Slow enough to see the answer grow word by word (and to take a picture mid-answer).
    with serving(tmp_path_factory.mktemp("browser"), ScriptedGenerator(words=40, delay_s=0.08),
                 csv=XSS_CSV) as info:
        yield info


@pytest.fixture(scope="module")
def canned_server(tmp_path_factory):
    require_browser()
    generator = CannedGenerator({"step by step": MARKDOWN_PIECES, "zipper": XSS_PIECES}, delay_s=0.02)
    # Never the FAQ's own answer (a direct reply): every answer here comes from the generator.
    with serving(tmp_path_factory.mktemp("canned"), generator,
                 dialogue={"direct_answer_threshold": 2.0}) as info:
        yield info


@pytest.fixture(scope="module")
def browser():
    require_browser()
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
    # bypass_csp: the demo page's CSP alone would stop parsed markup from running (see
    # test_markup_and_script_links_in_a_reply_stay_text_and_run_nothing).
    context = browser.new_context(bypass_csp=True)
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


def body_structure(page, index: int) -> dict:
    """What the widget built for agent message ``index`` (0 is the greeting), read off its DOM."""
    return page.evaluate(
        """([root, index]) => {
            const body = root.querySelectorAll('.msg.agent')[index].querySelector('.body');
            const texts = sel => [...body.querySelectorAll(sel)].map(e => e.textContent);
            return {
                strong: texts('strong'), em: texts('em'),
                ol: texts('ol > li'), ul: texts('ul > li'),
                olStart: [...body.querySelectorAll('ol')].map(e => e.getAttribute('start')),
                paragraphs: texts(':scope > p'),
                links: [...body.querySelectorAll('a')].map(a => ({
                    href: a.getAttribute('href'), text: a.textContent,
                    rel: a.getAttribute('rel'), target: a.getAttribute('target')})),
                blocks: [...body.children].map(e => e.tagName.toLowerCase()),
                text: body.textContent,
            };
        }""",
        [page.evaluate_handle(ROOT_JS), index],
    )


def test_markdown_in_a_streamed_reply_renders_as_elements_and_again_from_history(canned_server, browser):
    context = browser.new_context()
    page = context.new_page()
    open_widget(page, canned_server["url"])
    ask(page, MARKDOWN_QUESTION)
    answer = page.locator("supportbot-chat .msg.agent").nth(1)
    answer.locator(".rate").wait_for(timeout=15000)  # the answer is complete
    answer.locator(".sources a").first.wait_for()

    got = body_structure(page, 1)
    assert got["blocks"] == ["p", "ol", "p", "ul", "p"]
    assert got["strong"] == ["Trailblazer", "free label"]
    assert got["em"] == ["warranty", "two photos"]
    assert got["ol"] == ["Fill in the warranty form", "Add two photos of the damage", "Ship it with the free label"]
    assert got["olStart"] == [None]
    assert got["ul"] == ["the poles", "the rain fly"]
    assert got["paragraphs"][0] == "To get the Trailblazer tent fixed [1]:"
    assert got["links"] == [
        {"href": "https://northwind.example/repairs?x=1&y=2", "text": "repair guide",
         "rel": "noopener noreferrer nofollow", "target": "_blank"},
        # The full stop after a bare URL ends the sentence, it is not part of the link.
        {"href": "https://northwind.example/warranty", "text": "https://northwind.example/warranty",
         "rel": "noopener noreferrer nofollow", "target": "_blank"},
    ]
    # No Markdown syntax is left over, and the citation stays as written.
    assert "*" not in got["text"] and "_" not in got["text"] and "](" not in got["text"]
    assert "[1]" in got["text"]
    assert answer.locator(".sources a").first.inner_text().startswith("[1] ")

    # History renders through the same code: the same elements after a reload.
    page.reload()
    restored = page.locator("supportbot-chat .msg.agent").nth(1)
    restored.locator(".rate").wait_for()
    assert body_structure(page, 1) == got
    context.close()


def test_markup_and_script_links_in_a_reply_stay_text_and_run_nothing(canned_server, browser):
    # bypass_csp: the demo page's strict CSP would block inline scripts and javascript: URLs by
    # itself and hide a widget that parsed markup; a customer's page may have no CSP at all.
    context = browser.new_context(bypass_csp=True)
    page = context.new_page()
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    open_widget(page, canned_server["url"])
    ask(page, XSS_QUESTION)
    answer = page.locator("supportbot-chat .msg.agent").nth(1)
    answer.locator(".rate").wait_for(timeout=15000)
    text = answer.locator(".body").inner_text()
    for shown in ("<script>window.__pwned=1</script>", '<img src=x onerror="window.__pwned=1">',
                  '<a href="javascript:window.__pwned=1">raw</a>', "[click](javascript:window.__pwned=1)",
                  "[Click](JavaScript:window.__pwned=1)",
                  "[data](data:text/html,<script>window.__pwned=1</script>)", "[vb](vbscript:msgbox)", "[1]"):
        assert shown in text
    made = page.evaluate(
        """root => ({
            script: root.querySelectorAll('script').length,
            img: root.querySelectorAll('img').length,
            bodyLinks: root.querySelectorAll('.body a').length,
            hrefs: [...root.querySelectorAll('a')].map(a => a.href),
            pageScripts: document.querySelectorAll('script').length,
        })""",
        page.evaluate_handle(ROOT_JS),
    )
    assert made["script"] == 0 and made["img"] == 0 and made["bodyLinks"] == 0
    assert all(h.startswith(canned_server["url"] + "/source/") for h in made["hrefs"])  # the sources
    # Click where the script link is written: it is text, nothing happens.
    answer.locator(".body").get_by_text("[click](javascript:", exact=False).click()
    page.wait_for_timeout(300)
    assert page.evaluate("window.__pwned === undefined")
    assert dialogs == [] and len(context.pages) == 1
    assert page.evaluate("document.querySelectorAll('script').length") == made["pageScripts"]
    context.close()


def test_icons_are_svg_not_emoji_and_the_buttons_still_work(canned_server, browser):
    context = browser.new_context()
    page = context.new_page()
    open_widget(page, canned_server["url"])
    ask(page, MARKDOWN_QUESTION)
    answer = page.locator("supportbot-chat .msg.agent").nth(1)
    answer.locator(".rate").wait_for(timeout=15000)
    buttons = page.evaluate(
        r"""root => [...root.querySelectorAll('button')].map(b => {
            const svg = b.querySelector('svg'), box = svg && svg.getBoundingClientRect();
            return {label: b.getAttribute('aria-label') || b.textContent.trim(), text: b.textContent,
                    emoji: /\p{Extended_Pictographic}|\uFFFD/u.test(b.textContent),
                    svg: !!svg, ns: svg && svg.namespaceURI,
                    width: box ? box.width : 0, height: box ? box.height : 0,
                    drawn: svg ? [...svg.querySelectorAll('path')].every(p => p.getBBox().width > 0) : false};
        })""",
        page.evaluate_handle(ROOT_JS),
    )
    by_label = {b["label"]: b for b in buttons}
    assert not [b for b in buttons if b["emoji"]]
    for label in ("Helpful", "Not helpful", "Close chat", "Open chat: Northwind Help"):
        b = by_label[label]
        assert b["svg"] and b["ns"] == "http://www.w3.org/2000/svg" and b["drawn"], b
        assert b["width"] >= 12 and b["height"] >= 12 and b["text"].strip() == "", b
    assert by_label["Send"]["text"] == "Send"  # the text buttons keep their words

    # The thumbs still rate (the click lands on the SVG inside the button), and thumbs down
    # still asks what was wrong.
    down = answer.get_by_role("button", name="Not helpful", exact=True)
    down.locator("svg").click()
    answer.locator(".comment input").wait_for()
    assert down.get_attribute("aria-pressed") == "true"
    deadline = time.time() + 10
    rows = []
    while time.time() < deadline and not rows:
        with canned_server["components"].db.session() as s:
            rows = s.scalars(select(Feedback).where(Feedback.rating == -1)).all()
        time.sleep(0.1)
    assert rows
    page.locator("supportbot-chat header button[aria-label='Close chat']").click()
    assert page.locator("supportbot-chat .panel").is_hidden()
    context.close()


TOPIC_CSV = (
    b"question,answer,title\n"
    b"\"Is the <img src=x onerror='window.__pwned=1'> Ridgeline tent waterproof?\","
    b"\"Yes: its fly has a 3000 mm hydrostatic head.\",Tents\n"
)


@pytest.fixture(scope="module")
def clarify_server(tmp_path_factory):
    require_browser()
    # No answer is confident enough (answer_threshold above 1): every question is asked back.
    with serving(tmp_path_factory.mktemp("clarify"), ScriptedGenerator(), csv=TOPIC_CSV,
                 dialogue={"answer_threshold": 1.01}) as info:
        yield info


def test_a_clarifying_questions_topics_are_buttons_that_send_that_question(clarify_server, browser):
    from bot.core.store.models import Message

    context = browser.new_context()
    page = context.new_page()
    open_widget(page, clarify_server["url"])
    ask(page, "is the ridgeline tent waterproof")
    asked = page.locator("supportbot-chat .msg.agent").nth(1)
    buttons = asked.locator(".topics button")
    buttons.first.wait_for(timeout=15000)
    topic = "Is the <img src=x onerror='window.__pwned=1'> Ridgeline tent waterproof?"
    labels = [b.inner_text() for b in buttons.all()]
    assert topic in labels  # the entry's question, as text: its markup is not parsed
    assert asked.locator(".sources").count() == 0 and asked.locator("img").count() == 0

    buttons.nth(labels.index(topic)).click()
    page.locator("supportbot-chat .msg.user").nth(1).wait_for(timeout=15000)
    assert page.locator("supportbot-chat .msg.user").nth(1).inner_text() == topic
    page.locator("supportbot-chat .msg.agent").nth(2).locator(".rate").wait_for(timeout=15000)
    with clarify_server["components"].db.session() as s:
        sent = [m.text for m in s.scalars(select(Message).where(Message.role == "user").order_by(Message.id))]
    assert sent[-2:] == ["is the ridgeline tent waterproof", topic]

    # After a reload the buttons come back from the stored message and still send.
    page.reload()
    restored = page.locator("supportbot-chat .msg.agent").nth(1).locator(".topics button")
    restored.first.wait_for(timeout=15000)
    assert topic in [b.inner_text() for b in restored.all()]
    assert page.evaluate("window.__pwned") is None
    context.close()
