"""The index is derived state (items 2 and 3 of the hardening issue).

2. A lost index (DATA/index removed while the server is down) is rebuilt from the database at
   start, the rebuild is logged, and /healthz says ``ready: false`` (503) until it is done.
3. A crash between the database commit and the index publish (``supportbot ingest`` killed with
   SIGKILL just after embedding) is mended by the next ingest, even one that finds every document
   unchanged, and by the next start.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from web_fixtures import ORIGIN, SAMPLE_FAQ, Visitor, events_of, make_components, make_settings

REPO = Path(__file__).resolve().parent.parent


def _wait_ready(client, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        r = client.get("/healthz")
        if r.status_code == 200 and r.get_json().get("ready") is True:
            return r
        assert time.monotonic() < deadline, r.get_data(as_text=True)
        time.sleep(0.1)


def _decision(app, question="How much does shipping cost?"):
    key = app.extensions["supportbot"].site_keys.create("default", [ORIGIN]).key
    v = Visitor(app.test_client(), key).start()
    events = events_of(v.ask(question))
    return events[0][2]["decision"], events


def test_a_lost_index_is_rebuilt_at_start_and_logged(tmp_path, caplog):
    from web import create_app

    settings = make_settings(tmp_path)
    first = make_components(settings)  # ingests the sample FAQ and publishes its index
    n_docs = len(first.knowledge.documents("default"))
    first.db.dispose()
    shutil.rmtree(settings.data_dir / "index")  # the operator's mistake, while the server is down

    comps = make_components(settings, ingest=False)
    assert len(comps.knowledge.documents("default")) == n_docs  # `supportbot docs` lists them all
    with caplog.at_level(logging.WARNING):
        app = create_app(settings, comps)
        health = _wait_ready(app.test_client())
    assert health.get_json()["status"] == "ok"
    assert "index" in caplog.text.lower() and "rebuil" in caplog.text.lower()
    decision, events = _decision(app)
    assert decision == "answer", events
    comps.db.dispose()


def test_healthz_is_503_not_ready_while_the_index_is_rebuilt(tmp_path, monkeypatch):
    from retrieval.knowledge import KnowledgeBase
    from web import create_app

    settings = make_settings(tmp_path)
    make_components(settings).db.dispose()
    shutil.rmtree(settings.data_dir / "index")

    gate = threading.Event()
    real = KnowledgeBase.publish

    def slow_publish(self, *a, **k):
        gate.wait(30)
        return real(self, *a, **k)

    monkeypatch.setattr(KnowledgeBase, "publish", slow_publish)
    comps = make_components(settings, ingest=False)
    app = create_app(settings, comps)
    client = app.test_client()
    r = client.get("/healthz")
    assert r.status_code == 503
    body = r.get_json()
    assert body["ready"] is False and body["status"] != "ok"
    # Visitors are told to come back, not silently handed off for want of knowledge.
    key = app.extensions["supportbot"].site_keys.create("default", [ORIGIN]).key
    v = Visitor(client, key).start()
    r = v.ask("How much does shipping cost?")
    assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
    gate.set()
    _wait_ready(client)
    decision, _ = _decision(app)
    assert decision == "answer"
    comps.db.dispose()


def test_an_empty_knowledge_base_is_ready(tmp_path):
    from web import create_app

    settings = make_settings(tmp_path)
    comps = make_components(settings, ingest=False)
    r = create_app(settings, comps).test_client().get("/healthz")
    assert r.status_code == 200 and r.get_json()["ready"] is True
    comps.db.dispose()


KILLED_INGEST = r"""
import os, signal, sys
from bot.components import Components
from bot.core.settings import Settings
from retrieval.snapshot import SnapshotStore

settings = Settings(data_dir=sys.argv[1], embedder={"model": "hashing"}, generator={"backend": "extractive"})
comps = Components(settings)
if len(sys.argv) > 3:
    comps.knowledge.ingest("default", [sys.argv[3]])  # a first, complete ingest
# The database has committed the new rows; the process dies before the index is published.
SnapshotStore.publish = lambda self, bot, snap: os.kill(os.getpid(), signal.SIGKILL)
comps.knowledge.ingest("default", [sys.argv[2]])
"""


def _killed_ingest(data_dir: Path, folder: Path, first: Path | None = None) -> None:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    args = [sys.executable, "-c", KILLED_INGEST, str(data_dir), str(folder)] + ([str(first)] if first else [])
    proc = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]


def test_an_unchanged_reingest_after_a_killed_ingest_publishes_the_documents(tmp_path):
    settings = make_settings(tmp_path)
    _killed_ingest(settings.data_dir, SAMPLE_FAQ)
    comps = make_components(settings, ingest=False)
    kb = comps.knowledge
    docs = kb.documents("default")
    assert docs  # listed ...
    assert not comps.retriever("default").search("How much does shipping cost?", k=3)  # ... never found
    report = kb.ingest("default", [SAMPLE_FAQ])
    assert len(report.unchanged) == len(docs) and not report.added and not report.replaced
    assert report.version is not None  # published all the same
    hits = comps.retriever("default").search("How much does shipping cost?", k=3)
    assert hits and "shipping" in hits[0].text.lower()
    # In sync now: a second unchanged ingest publishes nothing new.
    assert kb.ingest("default", [SAMPLE_FAQ]).version is None
    comps.db.dispose()


def test_a_document_added_by_a_killed_ingest_is_found_after_a_restart(tmp_path):
    from web import create_app

    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "telescopes.md").write_text("# Telescopes\n\n## Do you service telescopes?\n"
                                         "Yes. Our Bend workshop cleans and collimates telescopes in a week.\n")
    settings = make_settings(tmp_path)
    _killed_ingest(settings.data_dir, extra, first=SAMPLE_FAQ)  # the samples are indexed, the card is not
    comps = make_components(settings, ingest=False)
    assert not any("telescope" in h.text.lower()
                   for h in comps.retriever("default").search("Do you service telescopes?", k=3))
    app = create_app(settings, comps)
    _wait_ready(app.test_client())
    hits = comps.retriever("default").search("Do you service telescopes?", k=3)
    assert hits and "telescope" in hits[0].text.lower()
    comps.db.dispose()


def test_in_sync_start_does_not_rebuild(tmp_path):
    from web import create_app

    settings = make_settings(tmp_path)
    comps = make_components(settings)
    version = comps.snapshots.latest_version("default")
    app = create_app(settings, comps)
    _wait_ready(app.test_client())
    assert comps.snapshots.latest_version("default") == version
    comps.db.dispose()
