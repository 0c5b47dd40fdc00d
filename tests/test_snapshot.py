"""Snapshot store (atomic versioned publish, crash safety, corruption, GC) and LiveSnapshot hot swap."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bot.core.errors import IndexCorrupt, SupportbotError
from bot.core.settings import IndexSettings
from retrieval.bm25_index import BM25Index
from retrieval.faiss_index import FaissIndex, NumpyIndex
from retrieval.snapshot import LiveSnapshot, Snapshot, SnapshotStore
from retrieval.types import ChunkInfo

REPO = Path(__file__).resolve().parents[1]
DIM = 16


def make_snapshot(tag: int, n: int = 40, dense_cls=FaissIndex, embedder_id: str = "hash-16") -> Snapshot:
    """Chunks tag*1000 .. tag*1000+n-1; chunk tag*1000 has the vector QUERY, so it always ranks first."""
    rng = np.random.default_rng(tag)
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    vecs[0] = QUERY
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = np.arange(tag * 1000, tag * 1000 + n, dtype=np.int64)
    dense = dense_cls(DIM, IndexSettings()) if dense_cls is FaissIndex else dense_cls(DIM)
    dense.add(ids, vecs)
    catalog = {
        int(i): ChunkInfo(chunk_id=int(i), doc_id=f"doc-{tag}", title=f"Version {tag}",
                          text=f"answer {j} of version {tag} about refunds", metadata={"v": tag})
        for j, i in enumerate(ids)
    }
    lexical = BM25Index().build(list(map(int, ids)), [c.text for c in catalog.values()])
    return Snapshot(dense=dense, lexical=lexical, catalog=catalog, version=0, embedder_id=embedder_id)


QUERY = np.ones(DIM, dtype=np.float32) / np.sqrt(DIM)


def top_id(snap: Snapshot) -> int:
    return int(snap.dense.search(QUERY, 1)[1][0, 0])


@pytest.fixture
def store(tmp_path):
    return SnapshotStore(tmp_path / "index", keep=3, grace_s=0.0)


# ---- publish / load ----------------------------------------------------------------------------


def test_nothing_published_means_version_zero_and_no_snapshot(store):
    assert store.latest_version("default") == 0
    assert store.load("default") is None
    assert store.versions("default") == []


@pytest.mark.parametrize("dense_cls", [FaissIndex, NumpyIndex])
def test_publish_then_load_round_trips_everything(store, dense_cls):
    snap = make_snapshot(1, dense_cls=dense_cls)
    assert store.publish("default", snap) == 1 and snap.version == 1
    assert store.publish("default", make_snapshot(2, dense_cls=dense_cls)) == 2
    assert store.latest_version("default") == 2

    current = store.load("default")
    assert current.version == 2 and current.embedder_id == "hash-16"
    assert type(current.dense) is dense_cls and len(current.dense) == 40
    assert top_id(current) == 2000
    assert current.catalog[2005] == make_snapshot(2).catalog[2005]
    _, lex_ids = current.lexical.search("refunds version", 3)
    assert set(lex_ids[lex_ids >= 0]) <= set(current.catalog)

    old = store.load("default", 1)
    assert old.version == 1 and top_id(old) == 1000


def test_loaded_dense_index_uses_the_store_settings(tmp_path):
    settings = IndexSettings(hnsw_ef_search=33, search_threads=0)
    store = SnapshotStore(tmp_path / "index", settings)
    store.publish("default", make_snapshot(1))
    assert store.load("default").dense.settings is settings


def test_snapshot_without_lexical_index(store):
    snap = make_snapshot(1)
    snap.lexical = None
    store.publish("default", snap)
    assert store.load("default").lexical is None


def test_bots_are_separate(store):
    store.publish("shop-a", make_snapshot(1))
    store.publish("shop-b", make_snapshot(7))
    store.publish("shop-b", make_snapshot(8))
    assert store.latest_version("shop-a") == 1 and store.latest_version("shop-b") == 2
    assert top_id(store.load("shop-a")) == 1000 and top_id(store.load("shop-b")) == 8000


@pytest.mark.parametrize("name", ["../escape", "", "a/b", ".hidden", "x" * 65])
def test_bad_bot_name_is_refused(store, name):
    with pytest.raises(SupportbotError, match="invalid bot name"):
        store.publish(name, make_snapshot(1))


def test_keeps_the_newest_versions_and_deletes_older_ones(tmp_path):
    store = SnapshotStore(tmp_path / "index", keep=2, grace_s=0.0)
    for tag in range(1, 6):
        store.publish("default", make_snapshot(tag))
    assert store.versions("default") == [4, 5]
    assert top_id(store.load("default", 4)) == 4000
    assert not [p for p in (tmp_path / "index" / "default").iterdir() if p.name.startswith((".tmp-", ".trash-"))]


def test_grace_period_keeps_recently_superseded_versions(tmp_path):
    store = SnapshotStore(tmp_path / "index", keep=2, grace_s=3600.0)
    for tag in range(1, 5):
        store.publish("default", make_snapshot(tag))
    assert store.versions("default") == [1, 2, 3, 4]  # a reader may still be loading 1 or 2


# ---- crashes -----------------------------------------------------------------------------------


def test_exception_mid_write_leaves_previous_version_current(store, monkeypatch):
    store.publish("default", make_snapshot(1))

    def power_cut(top):
        raise OSError("power cut while syncing")

    monkeypatch.setattr("retrieval.snapshot._fsync_tree", power_cut)
    with pytest.raises(OSError, match="power cut"):
        store.publish("default", make_snapshot(2))
    monkeypatch.undo()
    assert store.latest_version("default") == 1
    assert top_id(store.load("default", strict=True)) == 1000
    assert store.versions("default") == [1]
    assert store.publish("default", make_snapshot(3)) == 2


def test_crash_between_rename_and_current_keeps_old_version(store, monkeypatch):
    store.publish("default", make_snapshot(1))
    monkeypatch.setattr(SnapshotStore, "_write_current", lambda self, d, v: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError):
        store.publish("default", make_snapshot(2))
    monkeypatch.undo()
    assert store.latest_version("default") == 1
    assert top_id(store.load("default")) == 1000
    v = store.publish("default", make_snapshot(3))
    assert v == 3 and top_id(store.load("default")) == 3000  # the orphan's number is never reused


def test_process_killed_mid_publish_leaves_previous_version_loadable(store, tmp_path):
    store.publish("default", make_snapshot(1))
    # A real crash: the child dies (os._exit, no cleanup) after writing the dense index.
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(REPO / 'tests')!r})
        import retrieval.snapshot as snapmod
        from test_snapshot import make_snapshot
        real = snapmod._fsync_tree
        def die(top):
            assert any(top.rglob("dense.faiss"))
            os._exit(17)
        snapmod._fsync_tree = die
        snapmod.SnapshotStore({str(store.root)!r}).publish("default", make_snapshot(2))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 17, proc.stderr
    bot_dir = store.root / "default"
    assert [p for p in bot_dir.iterdir() if p.name.startswith(".tmp-")]  # the torn write is there
    assert store.latest_version("default") == 1
    assert top_id(store.load("default", strict=True)) == 1000
    assert store.publish("default", make_snapshot(3)) == 2
    assert not [p for p in bot_dir.iterdir() if p.name.startswith(".tmp-")]


def test_unserialisable_metadata_is_a_clear_error_and_keeps_the_old_version(store):
    store.publish("default", make_snapshot(1))
    bad = make_snapshot(2)
    bad.catalog[2003].metadata = {"when": object()}
    with pytest.raises(SupportbotError, match="chunk 2003: metadata is not JSON"):
        store.publish("default", bad)
    assert store.latest_version("default") == 1 and top_id(store.load("default")) == 1000


# ---- corruption --------------------------------------------------------------------------------


def _vdir(store, version=1):
    return store.root / "default" / f"v{version:08d}"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "dense" / "dense.faiss").write_bytes(b"x" * 10), "bytes on disk"),
        (lambda d: (d / "catalog.jsonl").write_text("{}\n" * 40), "catalog.jsonl"),
        (lambda d: (d / "manifest.json").write_text("{not json"), "manifest.json: unreadable"),
        (lambda d: (d / "manifest.json").write_text(
            (d / "manifest.json").read_text().replace('"format": 1', '"format": 7')), "snapshot format 7"),
        (lambda d: (d / "dense" / "dense.json").unlink(), "dense.json"),
    ],
)
def test_corrupt_version_is_a_clear_error_or_none(store, caplog, damage, message):
    store.publish("default", make_snapshot(1))
    damage(_vdir(store))
    with pytest.raises(IndexCorrupt, match=message) as err:
        store.load("default", strict=True)
    assert "v00000001" in str(err.value)
    with caplog.at_level(logging.WARNING, logger="retrieval.snapshot"):
        assert store.load("default") is None  # the knowledge base rebuilds from the database
    assert "rebuild" in caplog.text and "v00000001" in caplog.text


def test_catalog_edited_consistently_but_short_is_caught(store):
    store.publish("default", make_snapshot(1))
    cat = _vdir(store) / "catalog.jsonl"
    lines = cat.read_text().splitlines(keepends=True)
    manifest = json.loads((_vdir(store) / "manifest.json").read_text())
    cat.write_text("".join(lines[:-1]))
    manifest["files"]["catalog.jsonl"] = cat.stat().st_size
    (_vdir(store) / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexCorrupt, match="39 chunks and 40 vectors"):
        store.load("default", strict=True)


def test_embedder_mismatch_needs_a_rebuild(store):
    store.publish("default", make_snapshot(1, embedder_id="minilm"))
    assert store.load("default", embedder_id="minilm").version == 1
    with pytest.raises(IndexCorrupt, match="built with embedder 'minilm', serving with 'other'"):
        store.load("default", embedder_id="other", strict=True)
    assert store.load("default", embedder_id="other") is None


def test_garbage_current_file_is_reported(store):
    store.publish("default", make_snapshot(1))
    (store.root / "default" / "CURRENT").write_text("hello")
    with pytest.raises(IndexCorrupt, match="CURRENT: expected a version"):
        store.latest_version("default")


# ---- LiveSnapshot ------------------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_live_sees_its_own_process_writes_at_once(store):
    live = LiveSnapshot(store, "default", interval_s=3600)
    assert live.get() is None
    store.publish("default", make_snapshot(1))
    assert live.get().version == 1
    store.publish("default", make_snapshot(2))
    assert top_id(live.get()) == 2000


def test_live_polls_other_writers_every_interval(tmp_path):
    root = tmp_path / "index"
    writer, reader_store = SnapshotStore(root, grace_s=0), SnapshotStore(root)  # as two processes
    writer.publish("default", make_snapshot(1))
    clock = FakeClock()
    live = LiveSnapshot(reader_store, "default", interval_s=5.0, background=False, clock=clock)
    held = live.get()
    assert held.version == 1
    writer.publish("default", make_snapshot(2))
    clock.t = 1.0
    assert live.get() is held  # not due yet: no I/O at all
    clock.t = 5.0
    assert live.get().version == 2
    assert top_id(held) == 1000  # a query that held v1 still works on v1


def test_live_background_reload_swaps_without_blocking(tmp_path):
    root = tmp_path / "index"
    writer, reader_store = SnapshotStore(root), SnapshotStore(root)
    writer.publish("default", make_snapshot(1))
    live = LiveSnapshot(reader_store, "default", interval_s=0.05)
    assert live.get().version == 1
    writer.publish("default", make_snapshot(2))
    deadline = time.monotonic() + 20
    while live.get().version != 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert live.get().version == 2


def test_live_skips_a_corrupt_version_and_takes_the_next_good_one(tmp_path, caplog):
    root = tmp_path / "index"
    writer, reader_store = SnapshotStore(root), SnapshotStore(root)
    writer.publish("default", make_snapshot(1))
    live = LiveSnapshot(reader_store, "default", interval_s=0, background=False)
    assert live.get().version == 1
    writer.publish("default", make_snapshot(2))
    (root / "default" / "v00000002" / "dense" / "dense.faiss").write_bytes(b"torn")
    with caplog.at_level(logging.WARNING, logger="retrieval.snapshot"):
        assert live.get().version == 1
    assert "not swapping in index v2" in caplog.text
    writer.publish("default", make_snapshot(3))
    assert live.get().version == 3


def test_hot_swap_under_concurrent_searches_never_fails(tmp_path):
    root = tmp_path / "index"
    writer = SnapshotStore(root, keep=2, grace_s=0.0)  # old versions deleted as soon as allowed
    writer.publish("default", make_snapshot(1))
    readers = [LiveSnapshot(SnapshotStore(root), "default", interval_s=0.01) for _ in range(2)]
    stop = threading.Event()
    failures: list[str] = []
    seen: set[int] = set()
    searches = [0]

    def hammer(live):
        while not stop.is_set():
            try:
                snap = live.get()
                _, ids = snap.dense.search(QUERY, 5)
                assert ids[0, 0] == snap.version * 1000, (ids[0, 0], snap.version)
                assert all(int(i) in snap.catalog for i in ids[0] if i >= 0)
                _, lex = snap.lexical.search("refunds", 3)
                assert all(int(i) in snap.catalog for i in lex if i >= 0)
                seen.add(snap.version)
                searches[0] += 1
            except Exception as e:  # collected: the test asserts there are none
                failures.append(repr(e))

    pool = [threading.Thread(target=hammer, args=(r,)) for r in readers for _ in range(2)]
    for t in pool:
        t.start()
    for tag in range(2, 9):
        writer.publish("default", make_snapshot(tag))
        time.sleep(0.05)
    deadline = time.monotonic() + 20
    while any(r.version != 8 for r in readers) and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    for t in pool:
        t.join()
    assert failures == []
    assert all(r.version == 8 for r in readers)
    assert searches[0] > 50 and len(seen) >= 2
    assert writer.versions("default") == [7, 8]


def test_another_process_sees_a_publish_within_its_interval(tmp_path):
    root = tmp_path / "index"
    store = SnapshotStore(root)
    store.publish("default", make_snapshot(1))
    script = textwrap.dedent(f"""
        import sys, time, numpy as np
        sys.path.insert(0, {str(REPO)!r})
        from retrieval.snapshot import LiveSnapshot, SnapshotStore
        live = LiveSnapshot(SnapshotStore({str(root)!r}), "default", interval_s=0.2)
        q = np.ones({DIM}, dtype=np.float32)
        last = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            snap = live.get()
            if snap.version != last:
                last = snap.version
                print(snap.version, int(snap.dense.search(q, 1)[1][0, 0]), time.monotonic(), flush=True)
                if last == 2:
                    break
            time.sleep(0.01)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        first = child.stdout.readline().split()
        assert first[:2] == ["1", "1000"], child.stderr.read() if not first else first
        store.publish("default", make_snapshot(2))
        published_at = time.monotonic()
        second = child.stdout.readline().split()
        assert second[:2] == ["2", "2000"]
        assert float(second[2]) - published_at < 10  # interval 0.2 s; generous for a busy machine
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
