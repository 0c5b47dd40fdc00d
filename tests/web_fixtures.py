"""Fixtures for the web tests: the real app over real tiny components.

The components are the product's own (``bot.components.Components``: SQLite in a temp dir, the
hashing embedder, the real knowledge base, retriever and dialogue manager); only the generator is
a scripted one, which streams an extract of the first source it was given, word by word, so
answers are grounded and fast. Import the fixtures into a test module with
``from web_fixtures import *``.
"""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from bot.core.events import Event

REPO = Path(__file__).resolve().parent.parent
SAMPLE_FAQ = REPO / "samples" / "faq"
ORIGIN = "https://shop.example"


def as_stream(generator, messages, pieces):
    """``pieces`` as the Generator contract's ``GenerationStream`` (bot/generators/base.py), with
    usage counted as they are produced: the dialogue reads ``usage`` off the stream it gets."""
    from bot.generators.base import GenerationStream

    def run(handle):
        handle.usage["prompt_tokens"] = sum(generator.count_tokens(m["content"]) for m in messages)
        for piece in pieces:
            handle.usage["completion_tokens"] += generator.count_tokens(piece)
            yield piece
        handle.finish_reason = "stop"

    return GenerationStream(run, generator.model_id)


class ScriptedGenerator:
    """A real Generator (``stream(messages)``) that needs no model: it quotes source [1]."""

    model_id = "scripted"
    tokenizer = None

    def __init__(self, words: int = 12, delay_s: float = 0.0, gate: threading.Event | None = None):
        self.words = words
        self.delay_s = delay_s
        self.gate = gate  # when set, generation waits for it after the first token
        self.last_usage = None

    def load(self) -> "ScriptedGenerator":
        return self

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def stream(self, messages, **params):
        return as_stream(self, messages, self._pieces(messages))

    def _pieces(self, messages):
        # The prompt builder puts the numbered sources in the last user turn, before the question.
        last = messages[-1]["content"].split("\n\nQuestion: ")[0] if messages else ""
        found = re.search(r"\[1\][^:\n]*:\s*(.+)", last, re.S)
        source = found.group(1) if found else "I do not know."
        words = source.split()[: self.words]
        for i, word in enumerate(words):
            if i == 1 and self.gate is not None:
                self.gate.wait(10)
            if self.delay_s:
                time.sleep(self.delay_s)
            yield ("" if i == 0 else " ") + word
        yield " [1]"


class CannedGenerator:
    """A real Generator that streams a fixed reply, in exactly the pieces given, for replies no
    source contains (Markdown, markup). The reply is the one whose key occurs in the question
    (case-insensitive): ``CannedGenerator({"tent": ["Pitch it **fl", "at** [1]"]})``."""

    model_id = "canned"
    tokenizer = None

    def __init__(self, replies: dict[str, list[str]], default: str = "I do not know.", delay_s: float = 0.0):
        self.replies = replies
        self.default = [default]
        self.delay_s = delay_s
        self.last_usage = None

    def load(self) -> "CannedGenerator":
        return self

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def stream(self, messages, **params):
        return as_stream(self, messages, self._pieces(messages))

    def _pieces(self, messages):
        # The prompt builder ends the last user turn with "Question: <the visitor's message>".
        question = messages[-1]["content"].rsplit("Question: ", 1)[-1].lower() if messages else ""
        pieces = next((p for key, p in self.replies.items() if key.lower() in question), self.default)
        for piece in pieces:
            if self.delay_s:
                time.sleep(self.delay_s)
            yield piece


def make_settings(tmp_path: Path, dialogue: dict | None = None, **web):
    """``dialogue``: settings that replace the test defaults (e.g. ``direct_answer_threshold``)."""
    from bot.core.settings import Settings

    web = {"rate_limit_ip": "10000 per minute", "rate_limit_visitor": "1000 per minute",
           "heartbeat_s": 5.0, **web}
    return Settings(
        data_dir=tmp_path / "var",
        embedder={"model": "hashing"},
        generator={"backend": "extractive"},
        dialogue={"answer_threshold": 0.0, "clarify_threshold": 0.0, **(dialogue or {})},
        web=web,
    )


def make_components(settings, generator=None, ingest: bool = True):
    from bot.components import Components

    comps = Components(settings, parts={"generator": generator or ScriptedGenerator()})
    if ingest:
        comps.knowledge.ingest(settings.default_bot, [SAMPLE_FAQ])
    return comps


class Visitor:
    """A browser-like API client: one visitor on ``origin`` with a site key."""

    def __init__(self, client, site_key: str, origin: str = ORIGIN):
        self.client = client
        self.site_key = site_key
        self.origin = origin
        self.token = None
        self.conversation = None

    def headers(self, **extra) -> dict:
        h = {"Origin": self.origin}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        h.update(extra)
        return h

    def start(self) -> "Visitor":
        r = self.client.post("/api/session", json={"site_key": self.site_key}, headers=self.headers())
        assert r.status_code == 200, r.get_data(as_text=True)
        self.token = r.json["visitor_token"]
        r = self.client.post("/api/conversations", json={}, headers=self.headers())
        assert r.status_code == 201, r.get_data(as_text=True)
        self.conversation = r.json["id"]
        return self

    def ask(self, message: str, **headers):
        """Post a message and read the whole stream (the answer is complete on return)."""
        r = self.client.post(f"/api/conversations/{self.conversation}/messages",
                             json={"message": message}, headers=self.headers(**headers))
        r.get_data()
        return r


def events_of(response) -> list[tuple[str | None, str, dict]]:
    import json

    from web.sse import parse

    return [(i, t, json.loads(d)) for i, t, d in parse(response.get_data(as_text=True))]


@pytest.fixture
def web_settings(tmp_path):
    return make_settings(tmp_path)


@pytest.fixture
def components(web_settings):
    comps = make_components(web_settings)
    yield comps
    comps.db.dispose()


@pytest.fixture
def app(web_settings, components):
    from web import create_app

    app = create_app(web_settings, components)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def site_key(app):
    return app.extensions["supportbot"].site_keys.create("default", [ORIGIN]).key


@pytest.fixture
def visitor(client, site_key):
    return Visitor(client, site_key).start()


__all__ = [
    "ScriptedGenerator", "CannedGenerator", "Visitor", "events_of", "make_settings", "make_components", "ORIGIN",
    "SAMPLE_FAQ", "Event", "web_settings", "components", "app", "client", "site_key", "visitor",
]
