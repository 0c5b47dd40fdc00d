"""The widget embedded cross-origin, in a real browser (item 1 of the hardening issue).

The host page is served from one loopback port and the chat server from another, so every API
call is a CORS request and the browser hides any response without ``Access-Control-Allow-Origin``.
An expired visitor token (a 401) is renewed through /api/session with the old token and the
question is answered; a rate limit (a 429) shows a wait message from ``Retry-After`` and the
message is sent again after it.
"""
from __future__ import annotations

import json
import re
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from test_web_browser import browser, require_browser  # noqa: F401 - the browser fixture
from web_fixtures import ScriptedGenerator, make_components, make_settings

pytestmark = pytest.mark.browser

HOST_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>A shop on another origin</title></head>
<body><h1>Another origin's shop</h1>
<script src="{api}/widget.js" data-site-key="{key}" data-title="Shop help" async></script>
</body></html>"""


def _port() -> int:
    from werkzeug.serving import make_server

    probe = make_server("127.0.0.1", 0, None)
    port = probe.server_port
    probe.server_close()
    return port


@contextmanager
def cross_origin(tmp: Path, **web):
    """The chat server on one port and a host page on another; yields their URLs and components."""
    from werkzeug.serving import make_server
    from werkzeug.wrappers import Response

    from web import create_app

    settings = make_settings(tmp, **web)
    comps = make_components(settings, generator=ScriptedGenerator(words=8))
    api_port, page_port = _port(), _port()
    api, page = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{page_port}"
    app = create_app(settings, comps)
    key = app.extensions["supportbot"].site_keys.create("default", [page]).key
    html = HOST_PAGE.format(api=api, key=key)

    def host(environ, start_response):
        return Response(html, mimetype="text/html")(environ, start_response)

    servers = [make_server("127.0.0.1", api_port, app, threaded=True),
               make_server("127.0.0.1", page_port, host, threaded=True)]
    for httpd in servers:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield {"api": api, "page": page, "components": comps}
    finally:
        for httpd in servers:
            httpd.shutdown()
        comps.db.dispose()


def _open(page, url):
    page.goto(url)
    page.locator("supportbot-chat .bubble").click()
    page.locator("supportbot-chat textarea").wait_for(state="visible")


def _ask(page, text):
    box = page.locator("supportbot-chat textarea")
    box.fill(text)
    box.press("Enter")


def _answered(page, n, timeout=20000):
    """Wait until ``n`` agent answers are complete (each gets its rating row)."""
    page.wait_for_function(
        "n => document.querySelector('supportbot-chat').shadowRoot.querySelectorAll('.msg.agent .rate').length >= n",
        arg=n, timeout=timeout)


def test_an_expired_token_is_renewed_across_origins_and_the_question_answered(tmp_path, browser):  # noqa: F811
    with cross_origin(tmp_path, visitor_token_ttl_s=2) as srv:
        context = browser.new_context()
        page = context.new_page()
        log = []
        page.on("response", lambda r: log.append((r.request.method, r.url, r.status, r.request.post_data)))
        _open(page, srv["page"])
        _ask(page, "How much does shipping cost?")
        _answered(page, 1)
        page.wait_for_timeout(3000)  # the visitor token expires
        _ask(page, "Can I return used gear?")
        _answered(page, 2)
        root = "document.querySelector('supportbot-chat').shadowRoot"
        errors = page.evaluate(f"[...{root}.querySelectorAll('.msg.error')].map(e => e.textContent)")
        assert errors == []
        answers = page.evaluate(f"[...{root}.querySelectorAll('.msg.agent .body')].map(e => e.textContent)")
        assert len(answers) == 2 and all(a.strip() for a in answers)
        refused = [e for e in log if e[2] == 401 and "/messages" in e[1]]
        assert refused, log  # the expired token was refused, and the widget could read that
        renewals = [json.loads(e[3]) for e in log
                    if e[0] == "POST" and e[1].endswith("/api/session") and e[2] == 200]
        assert len(renewals) == 2 and renewals[1]["visitor_token"]  # renewed with the old token
        # One conversation, one visitor: the renewed token still owns it.
        with srv["components"].db.session() as s:
            from sqlalchemy import func, select

            from bot.core.store.models import Conversation, Message

            assert s.scalar(select(func.count(Conversation.id))) == 1
            assert s.scalar(select(func.count(Message.id)).where(Message.role == "user")) == 2
        context.close()


def test_a_rate_limit_shows_a_wait_message_and_sends_again_after_it(tmp_path, browser):  # noqa: F811
    with cross_origin(tmp_path, rate_limit_visitor="1 per 4 seconds") as srv:
        context = browser.new_context()
        page = context.new_page()
        _open(page, srv["page"])
        _ask(page, "How much does shipping cost?")
        _answered(page, 1)
        _ask(page, "Can I return used gear?")
        note = page.locator("supportbot-chat .msg.note, supportbot-chat .msg.error").filter(
            has_text=re.compile(r"wait \d+ seconds?"))
        note.first.wait_for(timeout=10000)
        assert "Failed to fetch" not in page.locator("supportbot-chat .log").inner_text()
        _answered(page, 2, timeout=30000)  # sent again after Retry-After, and answered
        with srv["components"].db.session() as s:
            from sqlalchemy import func, select

            from bot.core.store.models import Message

            assert s.scalar(select(func.count(Message.id)).where(Message.role == "user")) == 2
        context.close()
